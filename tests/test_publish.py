"""`crev ingest publish`: the ledger as C2SP tlog-tiles static files, checked by an independent reader.

The reader here follows the tlog-tiles spec from scratch: it splits the entry
bundles, hashes each entry (SHA-256 of 0x00 || entry), builds every tile level
from the one below (SHA-256 of 0x01 || left || right, 256 hashes per tile),
and compares the root of the published tree with the signed checkpoint.
"""

import base64
import hashlib
from collections.abc import Callable
from pathlib import Path

from harness import run_crev
from ingest_support import LEDGER_KEY, NOW, Device, LocalIngest
from postgres_support import PostgresServer

from crev.keys import SigningKey
from crev.ledger_format import verify_checkpoint
from crev_ingest.publish import publish

ORIGIN = "crev.test/ledger"


def n_path(index: int) -> str:
    groups = ["%03d" % (index % 1000)]
    index //= 1000
    while index:
        groups.append("x%03d" % (index % 1000))
        index //= 1000
    return "/".join(reversed(groups))


def path(kind: str, index: int, width: int) -> str:
    return "tile/%s/%s%s" % (kind, n_path(index), "" if width == 256 else ".p/%d" % width)


def read_entries(out: Path, size: int) -> list[bytes]:
    entries: list[bytes] = []
    for index in range((size + 255) // 256):
        data = (out / path("entries", index, min(256, size - 256 * index))).read_bytes()
        while data:
            length = int.from_bytes(data[:2], "big")
            entries.append(data[2 : 2 + length])
            data = data[2 + length :]
    return entries


def mth(hashes: list[bytes]) -> bytes:
    """RFC 9162 MTH over leaf hashes."""
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(hashes[:k]) + mth(hashes[k:])).digest()


def check_published(out: Path, size: int) -> None:
    entries = read_entries(out, size)
    assert len(entries) == size
    level = [hashlib.sha256(b"\x00" + e).digest() for e in entries]
    tile_level = 0
    while level:
        for index in range((len(level) + 255) // 256):
            chunk = level[256 * index : 256 * (index + 1)]
            assert (out / path(str(tile_level), index, len(chunk))).read_bytes() == b"".join(chunk), (tile_level, index)
        # The next tile level holds the roots of this level's full tiles.
        level = [mth(level[256 * i : 256 * (i + 1)]) for i in range(len(level) // 256)]
        tile_level += 1
    stated_size, root = verify_checkpoint((out / "checkpoint").read_text(), ORIGIN, LEDGER_KEY.public_key)
    assert stated_size == size
    assert root == mth([hashlib.sha256(b"\x00" + e).digest() for e in entries])
    assert base64.b64encode(root).decode() in (out / "checkpoint").read_text()


def write_config(directory: Path) -> None:
    (directory / "ingest.toml").write_text(
        '[storage]\npath = "crev.sqlite"\n\n[ledger]\nkey = "ledger.key"\norigin = "%s"\n' % ORIGIN
    )


def add_readings(
    ingest: LocalIngest, device: Device, count: int, before_seal: Callable[[Device, LocalIngest], None] | None = None
) -> None:
    """``count`` readings of ``device`` through ingest, then whatever ``before_seal`` appends, all sealed."""
    for _ in range(count):
        assert ingest.send(device.next()).status == "accepted"
    with ingest.store.transaction():
        ingest.ledger.sync()
        if before_seal is not None:
            before_seal(device, ingest)
        if ingest.ledger.size > ingest.ledger.sealed_size:
            ingest.ledger.seal(NOW * 1000)


def readings_ledger(
    directory: Path,
    dev: str,
    seed: int,
    count: int,
    before_seal: Callable[[Device, LocalIngest], None] | None = None,
) -> tuple[LocalIngest, Device]:
    """A ledger of one enrolled device's ``count`` readings (its key's seed is ``seed`` repeated), sealed."""
    ingest = LocalIngest(directory)
    device = Device(dev, SigningKey(bytes([seed]) * 32), t1=NOW - 86400)
    ingest.enroll(device)
    add_readings(ingest, device, count, before_seal)
    return ingest, device


def test_publish_writes_tiles_and_entries_an_independent_reader_accepts_and_then_only_what_is_new(
    tmp_path: Path,
) -> None:
    ingest, device = readings_ledger(tmp_path, "dgc-publish-0001", 41, 300)
    (tmp_path / "ledger.key").write_text(LEDGER_KEY.seed_bytes().hex() + "\n")
    (tmp_path / "ledger.key").chmod(0o600)
    write_config(tmp_path)
    out = tmp_path / "www"
    first = run_crev(tmp_path, "ingest", "publish", "--config", "ingest.toml", "--out", str(out))
    assert first.returncode == 0, first.stderr
    size = ingest.ledger.sealed_size
    assert size == 301  # the key event and 300 readings
    check_published(out, size)
    assert "3 new tiles, 2 new entry bundles" in first.stdout, first.stdout  # level 1 has a 1-hash tile

    add_readings(ingest, device, 220)
    full_tile = (out / path("0", 0, 256)).stat().st_mtime_ns
    again = run_crev(tmp_path, "ingest", "publish", "--config", "ingest.toml", "--out", str(out))
    assert again.returncode == 0, again.stderr
    check_published(out, ingest.ledger.sealed_size)
    # The full tile and bundle of the first 256 leaves were kept, not written again.
    assert (out / path("0", 0, 256)).stat().st_mtime_ns == full_tile
    assert "3 new tiles, 2 new entry bundles" in again.stdout, again.stdout


def test_publish_of_an_empty_ledger_is_one_line(tmp_path: Path) -> None:
    LocalIngest(tmp_path).store.close()
    write_config(tmp_path)
    done = run_crev(tmp_path, "ingest", "publish", "--config", "ingest.toml", "--out", str(tmp_path / "www"))
    assert done.returncode == 2 and "no sealed block yet" in done.stderr and "Traceback" not in done.stderr


def test_the_same_ledger_publishes_the_same_bytes_from_sqlite_and_from_postgresql(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """SPEC §11: tiles and entry bundles depend on the leaves alone, never on the engine that stores them."""
    published: dict[str, dict[str, bytes]] = {}
    for name, location in (("sqlite", None), ("postgresql", postgres.create_database())):
        directory = tmp_path / name
        directory.mkdir()
        ingest = LocalIngest(directory, location)
        device = Device("dgc-publish-both", SigningKey(bytes([61]) * 32), t1=NOW - 86400)
        ingest.enroll(device)
        add_readings(ingest, device, 150)  # a block of 151 leaves: one partial tile
        add_readings(ingest, device, 150)  # then 301: a full tile and a partial one
        out = directory / "published"
        publish(ingest.store, out)
        ingest.store.close()
        published[name] = {str(f.relative_to(out)): f.read_bytes() for f in sorted(out.rglob("*")) if f.is_file()}
        check_published(out, 301)
    assert published["sqlite"] == published["postgresql"]
    assert "tile/0/000" in published["sqlite"] and "tile/0/001.p/45" in published["sqlite"]
