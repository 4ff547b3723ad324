"""``crev audit mirror URL --ledger-key KEY [--witness VKEY]... [--quorum K] --out DIR`` (SPEC §11).

Fetches a ledger published as C2SP tlog-tiles (``crev ingest publish``'s
files, or ingest's ``/log/`` on HTTP), checks it, and keeps a copy in DIR,
laid out as the log is, with the checkpoint it verified:

1. the checkpoint must be signed by the ledger key (its origin is the key's
   name), and, with ``--witness``, cosigned by K of those witnesses;
2. every tile and entry bundle must hash to that checkpoint (crev.tiles);
3. run again, it fetches only the resources its copy lacks: a full tile or
   bundle it holds never changes; a partial one is fetched at its new width.
   The new checkpoint must extend the kept one: the old root is recomputed
   from the new tree's tiles. If it is not, the log's own tiles are fetched
   to tell a fork (the ledger key signed two histories) from a bad tile.

It refuses, with one line and exit code 1, at the first thing that does not
hold, and then leaves DIR as it was: new files are fetched into DIR/.incoming,
renamed into place only once all is verified, the checkpoint last, and the
partial files the new checkpoint no longer needs deleted after it.

Only the standard library fetches (urllib): an auditor needs crev alone.
"""

import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from crev import merkle, note, tiles
from crev_cli import UsageError

INCOMING = ".incoming"
TIMEOUT_S = 30.0
# The largest resource: a bundle of 256 entries of up to 65535 bytes, with their lengths.
MAX_BODY = 256 * (2 + tiles.MAX_ENTRY)


class MirrorError(Exception):
    """The log, or the kept copy, does not verify: one line, exit code 1."""


@dataclass
class Signed:
    """A checkpoint verified by the ledger key, as it was served (cosignatures included)."""

    data: bytes
    origin: str
    size: int
    root: bytes


def open_signed(data: bytes, ledger_key: bytes, where: str, origin: str | None = None) -> Signed:
    """The checkpoint in ``data``, if the ledger key signed it (for ``origin``, when given). Raises MirrorError."""
    try:
        parsed = note.parse_note(data)
        checkpoint = note.parse_checkpoint(parsed.text)
    except note.NoteError as err:
        raise MirrorError("%s is not a checkpoint: %s" % (where, err.detail)) from err
    if origin is not None and checkpoint.origin != origin:
        raise MirrorError("%s is the checkpoint of %r, not of %r" % (where, checkpoint.origin, origin))
    if not note.valid_key_name(checkpoint.origin):
        raise MirrorError("%s names an origin that cannot be a key name" % where)
    try:
        note.verify_note(parsed, [note.VerifierKey(checkpoint.origin, note.SIG_ED25519, ledger_key)])
    except note.NoteError as err:
        raise MirrorError("%s is not signed by the ledger key: %s" % (where, err.detail)) from err
    return Signed(bytes(data), checkpoint.origin, checkpoint.size, checkpoint.root)


class Source:
    """The log at ``url``: http(s)://, file://, or a directory path."""

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = urllib.parse.urlsplit(url)
        self.http = parsed.scheme in ("http", "https")
        if self.http:
            self.base = url if url.endswith("/") else url + "/"
        elif parsed.scheme == "file":
            self.base = urllib.parse.unquote(parsed.path)
        elif parsed.scheme and len(parsed.scheme) > 1:
            raise UsageError("%s: a log is an http(s):// or file:// URL, or a directory" % url)
        else:
            self.base = url
        if not self.http and not Path(self.base).is_dir():
            raise UsageError("%s is not a directory (`crev ingest publish --out` writes one)" % url)
        self.fetched = 0

    def get(self, path: str) -> bytes:
        """The resource at ``path``. MirrorError if the log lacks it; UsageError if the log cannot be reached."""
        self.fetched += 1
        if not self.http:
            try:
                return (Path(self.base) / path).read_bytes()
            except FileNotFoundError:
                raise MirrorError("the log at %s has no %s" % (self.url, path)) from None
            except OSError as err:
                raise UsageError("cannot read %s: %s" % (Path(self.base) / path, err.strerror)) from err
        try:
            with urllib.request.urlopen(self.base + path, timeout=TIMEOUT_S) as answer:
                body: bytes = answer.read(MAX_BODY + 1)
        except urllib.error.HTTPError as err:
            raise MirrorError("the log at %s answers %d for %s" % (self.url, err.code, path)) from None
        except (urllib.error.URLError, OSError) as err:
            raise UsageError("cannot reach %s: %s" % (self.url, getattr(err, "reason", err))) from None
        if len(body) > MAX_BODY:
            raise MirrorError("the log at %s answers more than %d bytes for %s" % (self.url, MAX_BODY, path))
        return body


def _stage(incoming: Path, path: str, data: bytes) -> None:
    """Fetched bytes into the staging directory, synced: they move into the mirror once everything verifies."""
    staged = incoming / path
    staged.parent.mkdir(parents=True, exist_ok=True)
    with staged.open("wb") as handle:
        handle.write(data)
        os.fsync(handle.fileno())


def _lookups(read: Callable[[str], bytes]) -> "tuple[tiles.TileLookup, tiles.EntriesLookup]":
    def tile(level: int, index: int, width: int) -> bytes:
        return read(merkle.tile_path(level, index, width))

    def entries(index: int, width: int) -> bytes:
        return read(tiles.entries_path(index, width))

    return tile, entries


def read_kept(out: Path, ledger_key: bytes) -> Signed | None:
    """The mirror's checkpoint, checked, and its root recomputed from the kept tiles. Raises MirrorError."""
    if not (out / tiles.CHECKPOINT).exists():
        return None
    kept = open_signed((out / tiles.CHECKPOINT).read_bytes(), ledger_key, "the mirror's checkpoint")

    def read(path: str) -> bytes:
        try:
            return (out / path).read_bytes()
        except FileNotFoundError:
            raise MirrorError("the mirror at %s lacks %s, which its checkpoint needs" % (out, path)) from None

    tile, _entries = _lookups(read)
    try:
        root = merkle.root_of(kept.size, tiles.node_lookup(kept.size, tile))
    except tiles.TileError as err:
        raise MirrorError("the mirror at %s is damaged: %s" % (out, err.detail)) from err
    if root != kept.root:
        raise MirrorError("the mirror at %s is damaged: its tiles do not hash to its checkpoint" % out)
    return kept


def _forked(source: Source, kept: Signed, new: Signed) -> bool:
    """Whether the log's own tiles hash to its new checkpoint and, under it, to another old root.

    Only asked when something failed: the tiles under the kept tree are
    then fetched again from the log, not taken from the mirror.
    """
    fetched: dict[str, bytes] = {}

    def read(path: str) -> bytes:
        if path not in fetched:
            fetched[path] = source.get(path)
        return fetched[path]

    tile, _entries = _lookups(read)
    node = tiles.node_lookup(new.size, tile)
    try:
        if merkle.root_of(new.size, node) != new.root:
            return False  # the log's tiles are not its checkpoint's: a bad tile, not a proven fork
        return merkle.root_of(kept.size, node) != kept.root
    except (MirrorError, tiles.TileError):
        return False


@dataclass
class Mirrored:
    origin: str
    size: int
    old_size: int | None
    tiles: int
    bundles: int
    requests: int
    cosigned: list[tuple[str, int]]


def mirror(url: str, ledger_key: bytes, out: Path, witnesses: tuple[list[note.VerifierKey], int] | None) -> Mirrored:
    """Bring the mirror in ``out`` up to the log at ``url``. Raises MirrorError or UsageError."""
    if out.exists() and not out.is_dir():
        raise UsageError("--out %s is not a directory" % out)
    out.mkdir(parents=True, exist_ok=True)
    source = Source(url)
    kept = read_kept(out, ledger_key)
    new = open_signed(
        source.get(tiles.CHECKPOINT), ledger_key, "the checkpoint of %s" % url, kept.origin if kept else None
    )
    cosigned: list[tuple[str, int]] = []
    if witnesses is not None:
        keys, quorum = witnesses
        cosigned = note.cosigners(new.data, keys)
        if len(cosigned) < quorum:
            raise MirrorError(
                "only %d of the %d witnesses required (of %d given) cosigned the checkpoint of %s (size %d)"
                % (len(cosigned), quorum, len(keys), url, new.size)
            )
    fork = "the log at %s is not consistent with the mirror's checkpoint of size %%d: " % url
    if kept is not None and new.size < kept.size:
        raise MirrorError(fork % kept.size + "it serves a checkpoint of size %d, smaller: a log only grows" % new.size)
    if kept is not None and new.size == kept.size and new.root != kept.root:
        raise MirrorError(fork % kept.size + "its checkpoint of the same size has another root (a fork)")

    kept_paths = {tiles.resource_path(r) for r in tiles.resources(kept.size)} if kept else set()
    wanted = [r for r in tiles.resources(new.size) if tiles.resource_path(r) not in kept_paths]
    incoming = out / INCOMING
    shutil.rmtree(incoming, ignore_errors=True)
    try:
        for resource in wanted:
            path = tiles.resource_path(resource)
            _stage(incoming, path, source.get(path))
        fetched = {tiles.resource_path(r) for r in wanted}

        def read(path: str) -> bytes:
            return (incoming / path if path in fetched else out / path).read_bytes()

        tile, entries = _lookups(read)
        failure: tiles.TileError | None = None
        consistent = True
        try:
            tiles.verify_tree(new.size, new.root, tile, entries, kept_paths.__contains__)
            if kept is not None:
                consistent = merkle.root_of(kept.size, tiles.node_lookup(new.size, tile)) == kept.root
        except tiles.TileError as err:
            failure = err
        if kept is not None and (failure is not None or not consistent) and _forked(source, kept, new):
            raise MirrorError(
                fork % kept.size
                + "its checkpoint of size %d, signed by the ledger key, rewrites the history under it (a fork)"
                % new.size
            )
        if failure is not None:
            where = "the mirror's copy of" if failure.path in kept_paths else "the log's"
            raise MirrorError("refused: %s %s: %s" % (where, failure.path, failure.what))
        if not consistent and kept is not None:
            raise MirrorError(
                "refused: the tree of the log at %s does not extend the mirror's of size %d" % (url, kept.size)
            )
        _stage(incoming, tiles.CHECKPOINT, new.data)
        for path in [*sorted(fetched), tiles.CHECKPOINT]:  # the checkpoint last: what it covers is in place
            (out / path).parent.mkdir(parents=True, exist_ok=True)
            os.replace(incoming / path, out / path)
        for path in kept_paths - {tiles.resource_path(r) for r in tiles.resources(new.size)}:
            (out / path).unlink(missing_ok=True)  # a partial tile, now wider or full
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    bundles = sum(1 for r in wanted if r[0] == tiles.ENTRIES)
    return Mirrored(
        new.origin,
        new.size,
        kept.size if kept else None,
        len(wanted) - bundles,
        bundles,
        source.fetched,
        cosigned,
    )
