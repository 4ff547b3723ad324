"""SPEC §11 mirrors: ingest serves its tiles over HTTP, `crev audit mirror` copies and checks them.

Real components throughout: ledgers in real SQLite stores signed by the
ledger key, the dashboard app served by a real uvicorn on loopback (or the
published files by a real stdlib HTTP server), and `crev` run in-process
through its entry point. What the tiles must hold is computed here from the
leaves alone (test_publish's independent reader), never from crev.tiles.
"""

import hashlib
import http.server
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import uvicorn
from fastapi import Request, Response
from harness import free_port, port_open, wait_for
from ingest_support import LEDGER_KEY, NOW, Device, LocalIngest
from test_publish import ORIGIN, check_published, mth, path, read_entries, readings_ledger
from trace_support import make_retired

from crev import cbor, note, tiles
from crev.keys import SigningKey
from crev.ledger_format import LEAF_READING, decode_leaf
from crev_cli.main import main
from crev_ingest.config import parse
from crev_ingest.dashboard.app import create_app
from crev_ingest.ledger import Ledger
from crev_ingest.publish import publish
from crev_ingest.registry_audit import replay_registry
from crev_ingest.store import Store

KEY_HEX = LEDGER_KEY.public_key.hex()
TOKEN = "mirror-test-operator-token-0123"


def grow(store: Store, start: int, stop: int, salt: bytes = b"") -> None:
    """Leaves of the reserved type 3 (nothing else reads them), written in one transaction, then sealed."""
    ledger = Ledger(store, LEDGER_KEY, ORIGIN, 3600, 10**9)
    store.begin()
    for i in range(start, stop):
        ledger.append(3, i, salt + i.to_bytes(4, "big"))
    ledger.seal(NOW * 1000 + stop)
    store.commit()


class Served:
    """The dashboard app of a store on a real uvicorn, counting the log requests it answers."""

    def __init__(self, directory: Path) -> None:
        config = parse(
            {"storage": {"path": "crev.sqlite"}, "ledger": {"origin": ORIGIN, "key": "ledger.key"}},
            directory / "ingest.toml",
        )
        app = create_app(config, TOKEN)
        self.requests: list[str] = []

        @app.middleware("http")
        async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            if request.url.path.startswith("/log/"):
                self.requests.append(request.url.path[len("/log/") :])
            return await call_next(request)

        self.port = free_port()
        self.url = "http://127.0.0.1:%d/log/" % self.port
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "Served":
        self.thread.start()
        wait_for(lambda: port_open(self.port), 20, "the dashboard to listen")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class StaticFiles:
    """A directory served by the standard library's HTTP server: a published log on a plain web server."""

    def __init__(self, root: Path) -> None:
        handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
        http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None  # type: ignore[method-assign]
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = "http://127.0.0.1:%d/" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "StaticFiles":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class Answer:
    def __init__(self, status_code: int, headers: dict[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content
        self.text = content.decode(errors="replace")


class Client:
    """Plain GETs with the standard library, no token."""

    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, relative: str) -> Answer:
        url = relative if relative.startswith("http") else self.base + relative
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                return Answer(answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read())
        except urllib.error.HTTPError as err:
            return Answer(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


def crev(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def files_of(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def expected_paths(size: int) -> set[str]:
    """Every tile and bundle path of a tree of ``size`` leaves, from the tlog-tiles definition."""
    paths = set()
    level, hashes = 0, size
    while hashes:
        paths |= {path(str(level), n, min(256, hashes - 256 * n)) for n in range((hashes + 255) // 256)}
        level, hashes = level + 1, hashes // 256
    return paths | {path("entries", n, min(256, size - 256 * n)) for n in range((size + 255) // 256)}


# ------------------------------------------------------------------ serving


def test_served_tiles_are_the_published_bytes_and_only_what_the_checkpoint_covers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ingest, _device = readings_ledger(tmp_path, "dgc-mirror-0001", 43, 600)
    size = ingest.ledger.sealed_size
    out = tmp_path / "www"
    publish(ingest.store, out)
    check_published(out, size)  # the independent reader accepts the published files
    published = files_of(out)
    assert set(published) == expected_paths(size) | {"checkpoint"}

    # Leaves appended after the newest block are neither published nor served.
    with ingest.store.transaction():
        ingest.ledger.sync()
        ingest.ledger.append(3, NOW * 1000, b"unsealed")
    with Served(tmp_path) as served:
        client = Client(served.url)
        for relative, data in sorted(published.items()):
            answer = client.get(relative)  # no operator token: the log is public
            assert answer.status_code == 200, relative
            assert answer.content == data, relative
            expected_cache = (
                "no-cache"
                if relative == "checkpoint"
                else "public, max-age=5"
                if ".p/" in relative
                else "public, max-age=31536000, immutable"
            )
            assert answer.headers["cache-control"] == expected_cache, relative
        edge = size % 256
        assert client.get(path("0", size // 256, edge + 1)).status_code == 404  # the unsealed leaf's
        assert client.get(path("entries", size // 256, edge + 1)).status_code == 404
        assert client.get(path("0", size // 256 + 1, 1)).status_code == 404
        # A narrower tile than the newest is its prefix, as it was at that size (an older mirror reads it).
        narrower = client.get(path("0", size // 256, 1))
        assert narrower.content == published[path("0", size // 256, edge)][:32]
        for bad in (
            "tile/0/2",
            "tile/0/x000/002",
            "tile/0/002.p/0",
            "tile/0/000.p/256",
            "tile/64/000",
            "tile/entries/x1/000",
            "tile/abc/000",
            "..%2F..%2Fcrev.sqlite",
            "tile/0/000/../../../crev.sqlite",
            "checkpoint.tmp",
            "",
        ):
            answer = client.get(bad)
            assert answer.status_code == 404, bad
            assert "Traceback" not in answer.text
        assert client.get("http://127.0.0.1:%d/api/v1/fleet" % served.port).status_code == 401  # the rest is not
    ingest.store.close()


# ------------------------------------------------------------------ a big ledger, then an update


@pytest.mark.slow
def test_a_200000_leaf_mirror_then_only_the_new_tiles_of_10000_more(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store(tmp_path / "crev.sqlite")
    grow(store, 0, 200_000)
    mirror = tmp_path / "mirror"
    with Served(tmp_path) as served:
        code, out, err = crev(capsys, "audit", "mirror", served.url, "--ledger-key", KEY_HEX, "--out", str(mirror))
        assert code == 0, err
        first_paths = expected_paths(200_000)
        assert sorted(served.requests) == sorted(first_paths | {"checkpoint"})  # each once
        assert "tree size 200000 (new)" in out and "%d entry bundles" % 782 in out, out
        published = tmp_path / "published"
        publish(store, published)
        assert files_of(mirror) == files_of(published)

        grow(store, 200_000, 210_000)
        served.requests.clear()
        code, out, err = crev(capsys, "audit", "mirror", served.url, "--ledger-key", KEY_HEX, "--out", str(mirror))
        assert code == 0, err
        new_paths = expected_paths(210_000) - first_paths
        # Only what is new: the full tiles and bundles of the 10,000 leaves, the new partial edges, the checkpoint.
        assert sorted(served.requests) == sorted(new_paths | {"checkpoint"})
        assert len(new_paths) == 39 + 1 + 39 + 1 + 1  # level-0 tiles, bundles, the level-1 edge
        assert "tree size 210000 (up from size 200000, consistent with it)" in out, out
    mirrored = files_of(mirror)
    assert set(mirrored) == expected_paths(210_000) | {"checkpoint"}  # the narrower partials are gone
    publish(store, published)
    assert all(
        published_file == mirrored[name] for name, published_file in files_of(published).items() if name in mirrored
    )
    code, out, err = crev(capsys, "audit", "ledger", "--mirror", str(mirror), "--ledger-key", KEY_HEX)
    assert code == 0, out + err
    assert out.startswith("OK (mirror of crev.test/ledger): 210000 leaves"), out
    store.close()


# ------------------------------------------------------------------ tampering


@pytest.fixture(scope="module")
def published_70000(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ledger of 70,000 leaves published: three tile levels, full and partial tiles on the first two."""
    directory = tmp_path_factory.mktemp("log70000")
    store = Store(directory / "crev.sqlite")
    grow(store, 0, 70_000)
    publish(store, directory / "www")
    store.close()
    return directory / "www"


@pytest.mark.parametrize(
    "target",
    [
        "tile/0/005",  # a full level-0 tile
        "tile/1/000",  # a full level-1 tile
        "tile/0/273.p/112",  # the partial level-0 tile
        "tile/1/001.p/17",  # the partial level-1 tile
        "tile/2/000.p/1",  # the top
        "tile/entries/007",  # an entry bundle
        "tile/entries/273.p/112",  # the partial entry bundle
    ],
)
def test_one_changed_byte_in_a_served_file_is_refused_and_named(
    published_70000: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    www = tmp_path / "www"
    shutil.copytree(published_70000, www)
    assert target in files_of(www)
    data = bytearray((www / target).read_bytes())
    data[len(data) // 2] ^= 0x01
    (www / target).write_bytes(bytes(data))
    mirror = tmp_path / "mirror"
    with StaticFiles(www) as served:
        code, out, err = crev(capsys, "audit", "mirror", served.url, "--ledger-key", KEY_HEX, "--out", str(mirror))
    assert code == 1, out + err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "refused: the log's %s:" % target in err, err
    assert not (mirror / "checkpoint").exists() and not any(mirror.rglob("*"))  # nothing half-written


def test_a_checkpoint_not_signed_by_the_ledger_key_or_without_its_quorum_is_refused(
    published_70000: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = SigningKey(bytes([77]) * 32).public_key.hex()
    code, _out, err = crev(
        capsys, "audit", "mirror", str(published_70000), "--ledger-key", other, "--out", str(tmp_path / "m")
    )
    assert code == 1 and "is not signed by the ledger key" in err, err

    witness = SigningKey(bytes([78]) * 32)
    vkey = note.VerifierKey("witness.test", note.SIG_COSIGNATURE_V1, witness.public_key).vkey()
    code, _out, err = crev(
        capsys, "audit", "mirror", str(published_70000), "--ledger-key", KEY_HEX, "--witness", vkey,
        "--out", str(tmp_path / "m"),
    )  # fmt: skip
    assert code == 1 and "only 0 of the 1 witnesses required (of 1 given) cosigned" in err, err

    # The same checkpoint cosigned by that witness: one is the default quorum, two are not met.
    www = tmp_path / "www"
    shutil.copytree(published_70000, www)
    text = note.parse_note((www / "checkpoint").read_bytes()).text
    line = note.cosign_v1(text, "witness.test", witness, 1_800_000_000).line()
    (www / "checkpoint").write_text((www / "checkpoint").read_text() + line)
    code, out, err = crev(
        capsys, "audit", "mirror", "file://%s" % www, "--ledger-key", KEY_HEX, "--witness", vkey,
        "--out", str(tmp_path / "m"),
    )  # fmt: skip
    assert code == 0, err
    assert "cosigned by 1 of the 1 witnesses given (1 required): witness.test" in out
    second = note.VerifierKey("witness2.test", note.SIG_COSIGNATURE_V1, SigningKey(bytes([79]) * 32).public_key)
    code, _out, err = crev(
        capsys, "audit", "mirror", str(www), "--ledger-key", KEY_HEX, "--witness", vkey, "--witness",
        second.vkey(), "--quorum", "2", "--out", str(tmp_path / "m"),
    )  # fmt: skip
    assert code == 1 and "only 1 of the 2 witnesses required" in err, err


# ------------------------------------------------------------------ forks


def test_a_fork_with_the_same_key_and_origin_is_refused_after_the_honest_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    honest = Store(tmp_path / "honest.sqlite")
    grow(honest, 0, 1000)
    forked = Store(tmp_path / "forked.sqlite")
    grow(forked, 0, 500)
    grow(forked, 500, 1300, salt=b"rewritten")  # the same key and origin, another history from leaf 500
    same_size = Store(tmp_path / "same.sqlite")
    grow(same_size, 0, 1000, salt=b"x")
    for name, store in (("honest", honest), ("forked", forked), ("same", same_size)):
        publish(store, tmp_path / name)
        store.close()
    mirror = tmp_path / "mirror"
    code, _out, err = crev(
        capsys, "audit", "mirror", str(tmp_path / "honest"), "--ledger-key", KEY_HEX, "--out", str(mirror)
    )
    assert code == 0, err
    kept = files_of(mirror)
    for name, detail in (
        ("forked", "its checkpoint of size 1300, signed by the ledger key, rewrites the history under it (a fork)"),
        ("same", "its checkpoint of the same size has another root (a fork)"),
    ):
        with StaticFiles(tmp_path / name) as served:
            code, out, err = crev(capsys, "audit", "mirror", served.url, "--ledger-key", KEY_HEX, "--out", str(mirror))
        assert code == 1, out
        assert (
            "the log at %s is not consistent with the mirror's checkpoint of size 1000: %s" % (served.url, detail)
            in err
        )
        assert files_of(mirror) == kept  # the mirror is as it was
    # A log that went back to an older checkpoint is refused too.
    older = Store(tmp_path / "older.sqlite")
    grow(older, 0, 900)
    publish(older, tmp_path / "older")
    older.close()
    code, _out, err = crev(
        capsys, "audit", "mirror", str(tmp_path / "older"), "--ledger-key", KEY_HEX, "--out", str(mirror)
    )
    assert code == 1 and "serves a checkpoint of size 900, smaller" in err, err


# ------------------------------------------------------------------ auditing a mirror


def test_audit_ledger_of_a_mirror_replays_readings_and_the_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    traced = make_retired(tmp_path)
    traced.seal()
    publish(traced.ingest.store, tmp_path / "www")
    local = replay_registry(traced.ingest.store, LEDGER_KEY.public_key)  # what `crev audit ledger` replays
    traced.ingest.store.close()
    mirror = tmp_path / "mirror"
    code, _out, err = crev(
        capsys, "audit", "mirror", str(tmp_path / "www"), "--ledger-key", KEY_HEX, "--out", str(mirror)
    )
    assert code == 0, err
    code, out, err = crev(capsys, "audit", "ledger", "--mirror", str(mirror), "--ledger-key", KEY_HEX)
    assert code == 0, out + err
    assert "211 leaves under its checkpoint, 200 readings verified (0 gaps)" in out, out
    assert local["issuances"] > 1 and local["retirements"] == 1
    assert (
        "registry replayed: %(registry_leaves)d leaves, %(issuances)d issuances (%(issued_grams)d g), "
        "%(retirements)d retirements" % local in out
    ), out

    # Entries forged and every tile rehashed to match: only the checkpoint's signed root tells.
    forged = tmp_path / "forged"
    shutil.copytree(mirror, forged)
    size = int((forged / "checkpoint").read_text().splitlines()[1])
    leaves = read_entries(forged, size)
    position = next(i for i, leaf in enumerate(leaves) if decode_leaf(leaf)[0] == LEAF_READING)
    leaves[position] = cbor.dumps([LEAF_READING, 1, b"forged"])
    rewrite(forged, leaves)
    code, out, _err = crev(capsys, "audit", "ledger", "--mirror", str(forged), "--ledger-key", KEY_HEX)
    assert code == 1
    assert out.startswith("FAIL: checkpoint: the tiles and entry bundles agree with each other but hash to a root")


def rewrite(directory: Path, leaves: list[bytes]) -> None:
    """Entry bundles and every tile of ``leaves``, computed here from the tlog-tiles definition."""
    size = len(leaves)
    for n in range((size + 255) // 256):
        chunk = leaves[256 * n : 256 * (n + 1)]
        (directory / path("entries", n, len(chunk))).write_bytes(b"".join(len(e).to_bytes(2, "big") + e for e in chunk))
    level_hashes = [hashlib.sha256(b"\x00" + e).digest() for e in leaves]
    level = 0
    while level_hashes:
        for n in range((len(level_hashes) + 255) // 256):
            chunk = level_hashes[256 * n : 256 * (n + 1)]
            (directory / path(str(level), n, len(chunk))).write_bytes(b"".join(chunk))
        level_hashes = [mth(level_hashes[256 * i : 256 * (i + 1)]) for i in range(len(level_hashes) // 256)]
        level += 1


def signed_ledger(directory: Path, bad: Callable[[Device, LocalIngest], None]) -> Path:
    """A ledger whose operator signed a block over a leaf ingest would have refused; published and mirrored."""
    ingest, _device = readings_ledger(directory, "dgc-mirror-0002", 44, 20, bad)
    publish(ingest.store, directory / "www")
    ingest.store.close()
    assert (
        main(["audit", "mirror", str(directory / "www"), "--ledger-key", KEY_HEX, "--out", str(directory / "m")]) == 0
    )
    return directory / "m"


def _unenrolled(device: Device, ingest: LocalIngest) -> None:
    stranger = Device(
        device.dev, SigningKey(bytes([45]) * 32), head=device.head, counters=device.counters, t1=device.t1
    )
    ingest.ledger.append(LEAF_READING, NOW * 1000, stranger.next())


def _broken_chain(device: Device, ingest: LocalIngest) -> None:
    # Seq 20 of another history of the same device and key: its prev is not the ledger's seq 19.
    other = Device(device.dev, device.key, t1=NOW - 86400, counters=[2_000_000, 500_000, 200_000])
    for _ in range(20):
        other.next()
    ingest.ledger.append(LEAF_READING, NOW * 1000, other.next())


def _twice(device: Device, ingest: LocalIngest) -> None:
    again = Device(device.dev, device.key, t1=NOW - 86400)
    ingest.ledger.append(LEAF_READING, NOW * 1000, again.next())


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        (_unenrolled, "FAIL: leaf 21 (reading dgc-mirror-0002 seq 20): key %s is not enrolled for dgc-mirror-0002"),
        (_broken_chain, "FAIL: leaf 21 (reading dgc-mirror-0002 seq 20): prev does not link to seq 19 (leaf 20)"),
        (_twice, "FAIL: leaf 21 (reading dgc-mirror-0002 seq 0): the same seq is at leaf 1 too"),
    ],
)
def test_audit_ledger_of_a_mirror_names_a_signed_but_invalid_leaf(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: Callable[[Device, LocalIngest], None], named: str
) -> None:
    mirror = signed_ledger(tmp_path, bad)
    capsys.readouterr()
    code, out, _err = crev(capsys, "audit", "ledger", "--mirror", str(mirror), "--ledger-key", KEY_HEX)
    assert code == 1, out
    expected = named % SigningKey(bytes([45]) * 32).kid.hex() if "%s" in named else named
    assert out.strip() == expected, out


def test_a_bad_new_file_in_an_update_is_refused_as_bad_not_as_a_fork_and_the_mirror_stays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store(tmp_path / "crev.sqlite")
    grow(store, 0, 1000)
    publish(store, tmp_path / "www")
    mirror = tmp_path / "mirror"
    assert main(["audit", "mirror", str(tmp_path / "www"), "--ledger-key", KEY_HEX, "--out", str(mirror)]) == 0
    kept = files_of(mirror)
    grow(store, 1000, 1300)
    publish(store, tmp_path / "www")
    store.close()
    target = tmp_path / "www" / path("entries", 5, 1300 - 1280)
    target.write_bytes(target.read_bytes()[:-1] + b"!")
    capsys.readouterr()
    code, _out, err = crev(
        capsys, "audit", "mirror", str(tmp_path / "www"), "--ledger-key", KEY_HEX, "--out", str(mirror)
    )
    assert code == 1
    assert err.strip() == (
        "crev: refused: the log's tile/entries/005.p/20: entry 19 (leaf 1299) does not hash to hash 19 "
        "of tile/0/005.p/20"
    )
    assert files_of(mirror) == kept


def test_resource_paths_parse_back_only_in_their_canonical_form() -> None:
    for index in (0, 7, 999, 1000, 1234067, 2**40 + 5):
        for width in (1, 17, 255, 256):
            for kind in ("0", "3", "entries"):
                parsed = tiles.parse_path(path(kind, index, width))
                assert parsed == ((kind if kind == "entries" else int(kind)), index, width)
    assert tiles.parse_path("checkpoint") == ("checkpoint",)
    for bad in ("tile/0/1234", "tile/0/x1/234", "tile/0/x000/234", "tile/00/000", "tile/0/000.p/", "tile/0/000.p/01"):
        assert tiles.parse_path(bad) is None, bad
