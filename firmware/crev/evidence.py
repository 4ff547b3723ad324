"""Evidence bundles (SPEC §6): their layout and the offline checks, without I/O.

A bundle is one deterministic CBOR array with definite lengths, so a writer
that counts first can stream it and a reader can walk it item by item::

    ["crev-evidence", 2, meta, [block...], [key_event...], [group...]]
    ["crev-evidence", 3, meta, [block...], [key_event...], [registry_leaf...], [group...]]

    meta       {0: origin, 1: ledger kid, 2: dev, 3: from_s, 4: to_s,
                5: exported_ms, 6: emission factor in mg-CO2/kWh,
                7: the newest listed block's checkpoint signed note}
               The checkpoint is what ties the origin to the ledger key: the
               block headers do not name it. exported_ms and the factor are
               the exporter's statements, not signed.
               Version 3 adds 8: the reconciliation parameters the
               exporter's ingest uses (SPEC §13), [basis_points, steps,
               step_mWh, digits] (digits 0: roll-over unknown), also a
               statement, not signed; the verifier can be given others.
    block      [height, signed_header, consistency]
               ``consistency`` proves (RFC 9162 §2.1.4) that the previous
               block in the list is a prefix of this one; [] for the first.
    key_event  [leaf_index, received_ms, statement, height, inclusion_path]
    registry_leaf
               [leaf_index, received_ms, leaf_type, statement, height, inclusion_path]
               version 3 only, in ledger order: the releases (type 5, action 3)
               and issuances (type 6) of the device's slots inside the range
    group      [height, nodes, count, readings]
               ``count`` consecutive readings proven together in the tree
               of the listed block at ``height``: ``nodes`` is their
               multi-proof (crev.merkle.multiproof), the 32-byte hashes
               concatenated in one byte string, each tree node the group
               needs carried once; ``readings`` is one zlib stream (RFC
               1950) of ``count`` reading items, which the reader (not this
               I/O-free module) inflates before handing them on
    reading    a byte string holding the CBOR of
               [leaf_index, received_ms, cose, leaf_tag]
               ``leaf_tag`` is the first 4 bytes of the leaf's hash: not a
               proof (the group's root is), only what lets the verifier name
               a changed reading rather than its whole group

A reading is wrapped in a byte string so that a reader can hand it on
without decoding it (the verifier's main process passes readings to worker
processes that way). Each proof is of the leaf ``[type, received_ms, data]``.
Readings are in seq order; the one before the range and the one after it
are included when the ledger has them, so the first reading's energies can
be recomputed and a cut-off end shows.

Version 3 is written for a device whose readings carry smart-meter values
(key 12): the verifier reconciles each 30-minute slot inside the range from
the readings (crev.reconcile) and checks the releases and issuances against
the verdicts (check 8), by the rules the registry replay applies. A device
without them still gets version 2.

Version 1, still verified, had no groups: its last section was [reading...],
each reading [leaf_index, received_ms, cose, height, inclusion_path], an
RFC 9162 audit path per reading (about 33 bytes per tree level each).

The checks, numbered as in the report and in docs/auditing.md:

    0 the bundle's structure
    1 block header signatures, and hash links between consecutive blocks
    2 consistency proofs between the listed blocks
    3 inclusion proofs (key events and readings)
    4 reading signatures, by a key enrolled for the device before the reading
      was recorded and not revoked at its t1 (key events: the ledger key)
    5 schema and canonical form
    6 seq continuity and the prev chain; every gap is reported
    7 DGC-C values recomputed from the counters
    8 smart-meter reconciliation: no issuance of a slot held by a
      SMART_METER_MISMATCH without a release before it, no release of a slot
      not held (SPEC §13)
"""

from crev import cbor, merkle
from crev.cose import Sign1
from crev.errors import CrevError
from crev.keys import key_id
from crev.ledger_format import (
    ACTION_ENROL,
    ACTION_REVOKE,
    B_HEIGHT,
    B_PREV,
    B_ROOT,
    B_SIZE,
    B_TIME,
    LEAF_KEY_EVENT,
    LEAF_READING,
    LedgerFormatError,
    block_hash,
    encode_leaf,
    parse_block_header,
    parse_key_event,
    verify_checkpoint,
)
from crev.reading import Reading, reading_hash, recompute_problem
from crev.reconcile import (
    OK,
    SLOT_S,
    SMART_METER_MISMATCH,
    UNCHECKED,
    Params,
    hold_problem,
    release_problem,
    slot_of,
    slot_verdict,
)
from crev.registry_format import LEAF_ISSUANCE, LEAF_SITE, Issuance, RegistryFormatError, Release, parse_site_leaf

MAGIC = "crev-evidence"
VERSION = 2  # what the exporter writes for a device without smart-meter values
VERSION_RECONCILED = 3  # ... and for one with them: the registry section and meta field 8
VERSIONS = (1, 2, 3)  # what the verifier reads
LEAF_TAG_SIZE = 4
M_ORIGIN, M_LEDGER_KID, M_DEV, M_FROM, M_TO, M_EXPORTED, M_FACTOR, M_CHECKPOINT, M_RECONCILIATION = range(9)

CHECK_NAMES = (
    "bundle structure",
    "block signatures and hash links",
    "consistency between blocks",
    "inclusion proofs",
    "signatures by an enrolled key",
    "schema and canonical form",
    "seq continuity and prev chain",
    "DGC-C values recomputed",
    "smart-meter reconciliation",
)
FORMAT, BLOCKS, CONSISTENCY, INCLUSION, SIGNATURE, SCHEMA, SEQUENCE, RECOMPUTE, RECONCILE = range(9)


def sections(version: int) -> int:
    """How many elements the bundle's top-level array has in this version."""
    return 7 if version >= VERSION_RECONCILED else 6


class Failure:
    """The first thing wrong with one item of a bundle."""

    def __init__(self, check: int, item: str, position: int, detail: str) -> None:
        self.check = check
        self.item = item  # "bundle", "block", "key event", "registry leaf", "reading" or "proof group"
        self.position = position  # index within its section, -1 for the bundle
        self.detail = detail
        self.dev = None  # type: str | None
        self.seq = None  # type: int | None
        self.height = None  # type: int | None
        # When the reading is too damaged to say its seq: what its place implies.
        self.expected_seq = None  # type: int | None

    def where(self) -> str:
        if self.item == "reading":
            label = "reading #%d" % self.position
            if self.seq is not None:
                label += " (%s seq %d)" % (self.dev, self.seq)
            elif self.expected_seq is not None:
                label += " (unreadable; seq %d expected here)" % self.expected_seq
            return label
        if self.item == "block":
            label = "block #%d" % self.position
            return label + (" (height %d)" % self.height if self.height is not None else "")
        if self.item == "key event":
            return "key event #%d" % self.position
        if self.item == "proof group":
            label = "proof group #%d" % self.position
            return label + (" (block %d)" % self.height if self.height is not None else "")
        return "bundle"

    def describe(self) -> str:
        return "%s: check %d (%s) failed: %s" % (self.where(), self.check, CHECK_NAMES[self.check], self.detail)

    def to_dict(self) -> dict:
        return {
            "check": self.check,
            "check_name": CHECK_NAMES[self.check],
            "item": self.item,
            "position": self.position,
            "dev": self.dev,
            "seq": self.seq,
            "height": self.height,
            "expected_seq": self.expected_seq,
            "detail": self.detail,
        }


def _uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _hash_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(h, bytes) and len(h) == 32 for h in value)


def params_of(value: object) -> "Params | None":
    """Meta field 8, [basis_points, steps, step_mWh, digits], as crev.reconcile.Params; None if malformed."""
    if not isinstance(value, list) or len(value) != 4 or not all(_uint(v) for v in value):
        return None
    try:
        return Params(value[0], value[1], value[2], value[3] or None)
    except CrevError:
        return None


def params_value(params: Params) -> list:
    """The inverse of params_of: what the exporter writes in meta field 8."""
    return [params.basis_points, params.steps, params.step_mwh, params.digits or 0]


def check_meta(meta: object, ledger_public_key: bytes, version: int = VERSION) -> "Failure | None":
    """The bundle's meta map, and that it names the ledger key we were given."""
    last = M_RECONCILIATION if version >= VERSION_RECONCILED else M_CHECKPOINT
    if not isinstance(meta, dict) or sorted(meta) != list(range(last + 1)):
        return Failure(FORMAT, "bundle", -1, "meta must be a map with keys 0..%d" % last)
    if last == M_RECONCILIATION and params_of(meta[M_RECONCILIATION]) is None:
        return Failure(
            FORMAT,
            "bundle",
            -1,
            "meta field 8 (the reconciliation parameters) is not [basis points 0..10000, steps, step mWh > 0, "
            "digits 0..8]",
        )
    if not isinstance(meta[M_CHECKPOINT], str):
        return Failure(FORMAT, "bundle", -1, "meta field 7 (the checkpoint) is not text")
    for key in (M_FROM, M_TO, M_EXPORTED, M_FACTOR):
        if not _uint(meta[key]):
            return Failure(FORMAT, "bundle", -1, "meta field %d is not an unsigned integer" % key)
    if not isinstance(meta[M_ORIGIN], str) or not isinstance(meta[M_DEV], str):
        return Failure(FORMAT, "bundle", -1, "meta origin and dev must be text")
    if meta[M_LEDGER_KID] != key_id(ledger_public_key):
        given = key_id(ledger_public_key).hex()
        named = meta[M_LEDGER_KID].hex() if isinstance(meta[M_LEDGER_KID], bytes) else "?"
        return Failure(BLOCKS, "bundle", -1, "the bundle names ledger key %s, not the given key %s" % (named, given))
    if meta[M_TO] <= meta[M_FROM]:
        return Failure(FORMAT, "bundle", -1, "the range ends before it starts")
    return None


def checkpoint_failure(note: str, origin: str, ledger_public_key: bytes, blocks: "BlockChecks") -> "Failure | None":
    """Check 1 for the origin: the newest listed block's checkpoint, signed by the ledger key, names it."""
    if not blocks.heights:
        return Failure(BLOCKS, "bundle", -1, "the bundle lists no block")
    newest = blocks.heights[-1]
    try:
        stated = verify_checkpoint(note, origin, ledger_public_key)
    except LedgerFormatError as err:
        return Failure(BLOCKS, "bundle", -1, "checkpoint of block %d: %s" % (newest, err.detail))
    if stated != blocks.roots[newest]:
        return Failure(BLOCKS, "bundle", -1, "the checkpoint's size and root are not block %d's" % newest)
    return None


class BlockChecks:
    """Checks 1 and 2 over the listed blocks, in order; then their roots."""

    def __init__(self, ledger_public_key: bytes) -> None:
        self.key = ledger_public_key
        self.roots = {}  # type: dict[int, tuple[int, bytes]]
        self.heights = []  # type: list[int]
        self._last = None  # type: tuple[int, bytes, int, bytes] | None
        self.latest_time_ms = 0

    def add(self, position: int, item: object) -> "Failure | None":
        if (
            not isinstance(item, list)
            or len(item) != 3
            or not _uint(item[0])
            or not isinstance(item[1], bytes)
            or not _hash_list(item[2])
        ):
            return Failure(FORMAT, "block", position, "a block is [height, signed header, consistency proof]")
        height, signed, consistency = item
        failure = self._check(height, signed, consistency)
        if failure is not None:
            failure.position = position
            failure.height = height
        return failure

    def _check(self, height: int, signed: bytes, consistency: list) -> "Failure | None":
        try:
            header = parse_block_header(signed, self.key)
        except LedgerFormatError as err:
            return Failure(BLOCKS, "block", 0, "header is not signed by the ledger key: %s" % err.detail)
        if header[B_HEIGHT] != height:
            return Failure(BLOCKS, "block", 0, "listed as height %d, signed as %d" % (height, header[B_HEIGHT]))
        size, root = header[B_SIZE], header[B_ROOT]
        last = self._last
        if last is not None:
            last_height, last_hash, last_size, last_root = last
            if height <= last_height:
                return Failure(BLOCKS, "block", 0, "height %d follows height %d" % (height, last_height))
            if height == last_height + 1 and header[B_PREV] != last_hash:
                return Failure(BLOCKS, "block", 0, "prev_block_hash does not link to block %d" % last_height)
            if not merkle.verify_consistency(last_size, size, consistency, last_root, root):
                return Failure(
                    CONSISTENCY,
                    "block",
                    0,
                    "the tree of size %d at height %d is not proven a prefix of size %d"
                    % (last_size, last_height, size),
                )
        elif consistency:
            return Failure(CONSISTENCY, "block", 0, "the first listed block has nothing to be consistent with")
        self._last = (height, block_hash(signed), size, root)
        self.roots[height] = (size, root)
        self.heights.append(height)
        self.latest_time_ms = header[B_TIME]
        return None


def _inclusion_failure(roots: dict, leaf_type: int, item: list, kind: str, position: int) -> "Failure | None":
    leaf_index, received_ms, data, height, path = item
    anchor = roots.get(height)
    if anchor is None:
        return Failure(INCLUSION, kind, position, "its proof names block %d, which is not in the bundle" % height)
    size, root = anchor
    leaf = merkle.leaf_hash(encode_leaf(leaf_type, received_ms, data))
    if not merkle.verify_inclusion(leaf, leaf_index, size, path, root):
        return Failure(
            INCLUSION, kind, position, "leaf %d is not proven in block %d (tree size %d)" % (leaf_index, height, size)
        )
    return None


def _leaf_item(item: object) -> bool:
    return (
        isinstance(item, list)
        and len(item) == 5
        and _uint(item[0])
        and _uint(item[1])
        and isinstance(item[2], bytes)
        and _uint(item[3])
        and _hash_list(item[4])
    )


def _grouped_item(item: object) -> bool:
    return (
        isinstance(item, list)
        and len(item) == 4
        and _uint(item[0])
        and _uint(item[1])
        and isinstance(item[2], bytes)
        and isinstance(item[3], bytes)
        and len(item[3]) == LEAF_TAG_SIZE
    )


class ProofGroup:
    """Check 3 for one group of readings proven together by a multi-proof (version 2).

    Each reading adds its leaf as it is checked; ``finish`` then hashes the
    leaves and the group's nodes up to the block's root. A reading whose
    leaf does not match its tag is named by itself and left out, and the
    group is then not reported again: its root cannot hold without it.
    """

    def __init__(self, roots: dict, position: int, height: object, nodes: object, first_reading: int) -> None:
        self.position = position
        self.height = height
        self.nodes = nodes
        self.first_reading = first_reading
        self.count = 0
        self.leaves = {}  # type: dict[int, bytes]
        self.left_out = False
        self.anchor = roots.get(height) if _uint(height) else None  # type: tuple[int, bytes] | None

    def failure(self, check: int, detail: str) -> Failure:
        made = Failure(check, "proof group", self.position, detail)
        made.height = self.height if _uint(self.height) else None  # type: ignore[assignment]
        return made

    def head_failure(self) -> "Failure | None":
        """What is wrong with the group before any reading: its block, its nodes' form."""
        if not _uint(self.height) or not isinstance(self.nodes, bytes) or len(self.nodes) % merkle.HASH_SIZE:
            return self.failure(FORMAT, "a proof group is [height, nodes (32-byte hashes), [reading...]]")
        if self.anchor is None:
            return self.failure(INCLUSION, "its proofs name block %r, which is not in the bundle" % (self.height,))
        return None

    def add(self, position: int, item: list) -> "Failure | None":
        """Check 3, first part, of one reading: its leaf matches its tag and has a place in the tree."""
        self.count += 1
        leaf_index, received_ms, cose, tag = item
        leaf = merkle.leaf_hash(encode_leaf(LEAF_READING, received_ms, cose))
        if leaf[:LEAF_TAG_SIZE] != tag:
            self.left_out = True
            return Failure(
                INCLUSION,
                "reading",
                position,
                "leaf %d hashes to %s..., not to the %s... its item states: the reading or its received_ms "
                "is not what was exported" % (leaf_index, leaf[:LEAF_TAG_SIZE].hex(), tag.hex()),
            )
        if self.anchor is None:
            self.left_out = True
            return None  # the group's failure says why
        size = self.anchor[0]
        if leaf_index >= size:
            self.left_out = True
            return Failure(
                INCLUSION,
                "reading",
                position,
                "leaf %d is not in block %r (tree size %d)" % (leaf_index, self.height, size),
            )
        if leaf_index in self.leaves:
            self.left_out = True
            return Failure(FORMAT, "reading", position, "leaf %d is listed twice in its proof group" % leaf_index)
        self.leaves[leaf_index] = leaf
        return None

    def skip(self) -> None:
        """A reading too broken to add its leaf."""
        self.count += 1
        self.left_out = True

    def finish(self) -> "Failure | None":
        """Check 3, second part: the leaves and the nodes hash to the block's root, nothing left over."""
        if self.anchor is None or self.left_out:
            return None
        if not self.leaves:
            return self.failure(FORMAT, "a proof group holds no reading")
        size, root = self.anchor
        indices = sorted(self.leaves)
        hashes = [self.leaves[i] for i in indices]
        nodes = self.nodes
        assert isinstance(nodes, bytes)
        span = "readings #%d..#%d" % (self.first_reading, self.first_reading + self.count - 1)
        try:
            computed, used = merkle.multiproof_root(indices, hashes, size, nodes)
        except merkle.MissingNode as err:
            return self.failure(
                INCLUSION,
                "its nodes end before the proof of %s does: %s of the tree of size %d is lacking"
                % (span, merkle.describe_range(err.start, err.end), size),
            )
        if used != len(nodes):
            return self.failure(
                INCLUSION,
                "it carries %d nodes, but the proof of %s in the tree of size %d needs %d"
                % (len(nodes) // merkle.HASH_SIZE, span, size, used // merkle.HASH_SIZE),
            )
        if computed != root:
            return self.failure(
                INCLUSION,
                "%s and its %d nodes do not hash to the root of block %r (tree size %d): a node was changed"
                % (span, used // merkle.HASH_SIZE, self.height, size),
            )
        return None


class KeyHistory:
    """Checks 3 and 4 over the device's key events; then which key was valid when."""

    def __init__(self, ledger_public_key: bytes, dev: str) -> None:
        self.key = ledger_public_key
        self.dev = dev
        # kid -> [(enrol leaf, pubkey, revoked_at or None)], in leaf order
        self.enrolments = {}  # type: dict[bytes, list]
        self._last_leaf = -1

    def add(self, roots: dict, position: int, item: object) -> "Failure | None":
        if not _leaf_item(item):
            return Failure(FORMAT, "key event", position, "a key event is [leaf, received_ms, statement, height, path]")
        assert isinstance(item, list)
        if item[0] <= self._last_leaf:
            # History is replayed in ledger order: a revocation must not precede its enrolment.
            return Failure(FORMAT, "key event", position, "key events are not in ledger order")
        self._last_leaf = item[0]
        failure = _inclusion_failure(roots, LEAF_KEY_EVENT, item, "key event", position)
        if failure is not None:
            return failure
        try:
            action, dev, pubkey, when = parse_key_event(item[2], self.key)
        except LedgerFormatError as err:
            return Failure(SIGNATURE, "key event", position, err.detail)
        if dev != self.dev:
            return Failure(SIGNATURE, "key event", position, "it is for %s, not %s" % (dev, self.dev))
        self.record(item[0], action, pubkey, when)
        return None

    def record(self, leaf_index: int, action: int, pubkey: bytes, when: int) -> None:
        """A verified key event of this device, in ledger order."""
        history = self.enrolments.setdefault(key_id(pubkey), [])
        if action == ACTION_ENROL:
            history.append([leaf_index, pubkey, None])
        elif action == ACTION_REVOKE:
            for entry in history:
                if entry[1] == pubkey and entry[2] is None:
                    entry[2] = when

    def key_for(self, kid: bytes) -> "bytes | None":
        history = self.enrolments.get(kid)
        return history[0][1] if history else None

    def validity_problem(self, kid: bytes, leaf_index: int, t1: int) -> "str | None":
        """None when the key was enrolled before this leaf and not revoked at t1."""
        history = self.enrolments.get(kid)
        if not history:
            return "key %s is not enrolled for %s" % (kid.hex(), self.dev)
        current = None
        for entry in history:
            if entry[0] < leaf_index:
                current = entry
        if current is None:
            return "key %s was enrolled only after this reading was recorded" % kid.hex()
        if current[2] is not None and t1 >= current[2]:
            return "signed for t1 %d, but key %s was revoked at %d" % (t1, kid.hex(), current[2])
        return None


class Summary:
    """What check 6 needs of a reading that passed checks 3-5 and 7."""

    def __init__(
        self,
        dev: str,
        seq: int,
        prev: bytes,
        own_hash: bytes,
        t0: int,
        t1: int,
        energies: "list | None",
        flags: int,
        recomputed: bool,
        smart_meter: "list | None" = None,
        leaf: int = -1,
    ) -> None:
        self.dev = dev
        self.seq = seq
        self.prev = prev
        self.hash = own_hash
        self.t0 = t0
        self.t1 = t1
        self.energies = energies
        self.flags = flags
        self.recomputed = recomputed
        self.smart_meter = smart_meter  # key 12, for the reconciliation (check 8)
        self.leaf = leaf  # the reading's leaf index: what the ledger held before a registry leaf

    @classmethod
    def of(cls, reading: Reading, own_hash: bytes, recomputed: bool, leaf: int = -1) -> "Summary":
        return cls(
            reading.dev,
            reading.seq,
            reading.prev,
            own_hash,
            reading.t0,
            reading.t1,
            reading.energies,
            reading.flags,
            recomputed,
            reading.smart_meter,
            leaf,
        )

    def __reduce__(self) -> tuple:
        # Worker processes send one per reading: a flat tuple pickles several times faster.
        fields = (self.dev, self.seq, self.prev, self.hash, self.t0, self.t1, self.energies, self.flags)
        return Summary, fields + (self.recomputed, self.smart_meter, self.leaf)


class ReadingChecks:
    """Checks 3, 4, 5 and 7 for a run of consecutive readings.

    It holds only the verified block roots and key history, so worker
    processes can each have a copy and check batches in parallel.
    """

    def __init__(self, roots: dict, keys: KeyHistory, backend: "str | None" = None) -> None:
        self.roots = roots
        self.keys = keys
        self.backend = backend

    def check_batch(
        self, first_position: int, items: list, before: "bytes | None", group: "ProofGroup | None" = None
    ) -> list:
        """Check encoded reading items; ``before`` is the encoded item before the batch.

        Returns one ``(failure, summary)`` pair per item; exactly one is None.
        """
        results = []
        previous = None  # type: Reading | None
        if before is not None:
            previous = _peek(_cose_of(before))
        for offset, raw in enumerate(items):
            position = first_position + offset
            try:
                split = _split_item(raw) if group is not None else None
                item = cbor.loads(raw) if split is None else split  # type: object
            except CrevError as err:
                failure = Failure(FORMAT, "reading", position, "the reading item is not CBOR: %s" % err)
                results.append((failure, None))
                previous = None
                if group is not None:
                    group.skip()
                continue
            failure, reading, summary = self.check_one(position, item, previous, group)
            if failure is not None and reading is not None:
                failure.dev, failure.seq = reading.dev, reading.seq
            results.append((failure, summary))
            previous = reading if failure is None else None  # never a baseline we did not verify
        return results

    def check_group(self, group: ProofGroup, items: list, before: "bytes | None") -> list:
        """Check one proof group's encoded reading items (version 2); ``before`` as for check_batch.

        Returns one ``(failure, summary)`` pair per item, as check_batch does;
        the group's own failure, if any, is ``group.finish()``'s.
        """
        return self.check_batch(group.first_reading, items, before, group)

    def check_one(
        self, position: int, item: object, previous: "Reading | None", group: "ProofGroup | None" = None
    ) -> tuple:
        if group is None:
            if not _leaf_item(item):
                return (
                    Failure(FORMAT, "reading", position, "a reading is [leaf, received_ms, cose, height, path]"),
                    None,
                    None,
                )
            assert isinstance(item, list)
            failure = _inclusion_failure(self.roots, LEAF_READING, item, "reading", position)  # (3)
        elif not _grouped_item(item):
            group.skip()
            return Failure(FORMAT, "reading", position, "a reading is [leaf, received_ms, cose, leaf tag]"), None, None
        else:
            assert isinstance(item, list)
            failure = group.add(position, item)  # (3), the leaf's part; the group's root at its end
        if failure is not None:
            return failure, _peek(item[2]), None
        cose = item[2]
        try:
            envelope = Sign1.from_bytes(cose)
        except CrevError as err:
            return Failure(SCHEMA, "reading", position, "not a COSE_Sign1 reading: %s" % err), None, None
        public_key = self.keys.key_for(envelope.kid)  # (4)
        if public_key is None:
            return (
                Failure(
                    SIGNATURE,
                    "reading",
                    position,
                    "key %s is not enrolled for %s" % (envelope.kid.hex(), self.keys.dev),
                ),
                _peek(cose),
                None,
            )
        try:
            envelope.verify(public_key, self.backend)
        except CrevError as err:
            return Failure(SIGNATURE, "reading", position, err.detail), _peek(cose), None
        try:
            reading = Reading.from_payload(envelope.payload)  # (5)
        except CrevError as err:
            return Failure(SCHEMA, "reading", position, str(err)), None, None
        problem = self.keys.validity_problem(envelope.kid, item[0], reading.t1)  # (4) needs the signed t1
        if problem is not None:
            return Failure(SIGNATURE, "reading", position, problem), reading, None
        recomputed = False
        if reading.seq == 0 or (
            previous is not None and previous.dev == reading.dev and previous.seq == reading.seq - 1
        ):
            before = None if reading.seq == 0 or previous is None else previous.channels
            problem = recompute_problem(before, reading)  # (7)
            if problem is not None:
                return Failure(RECOMPUTE, "reading", position, problem), reading, None
            recomputed = True
        return None, reading, Summary.of(reading, reading_hash(cose), recomputed, item[0])


def _split_item(raw: object) -> "list | None":
    """A version 2 reading item [uint, uint, bstr, bstr] read head by head, or None to decode it in full.

    Shortest-form heads and nothing after the last byte string: what this
    accepts is deterministic CBOR with the value cbor.loads would give.
    """
    if type(raw) is not bytes or raw[:1] != b"\x84":
        return None
    try:
        major, leaf_index, at = cbor.decode_head(raw, 1)
        if major != 0:
            return None
        major, received_ms, at = cbor.decode_head(raw, at)
        if major != 0:
            return None
        major, length, at = cbor.decode_head(raw, at)
        if major != 2:
            return None
        cose = raw[at : at + length]
        major, tag_length, at = cbor.decode_head(raw, at + length)
        if major != 2 or at + tag_length != len(raw) or len(cose) != length:
            return None
    except CrevError:
        return None
    return [leaf_index, received_ms, cose, raw[at:]]


def _peek(cose: "bytes | None") -> "Reading | None":
    """The reading's claimed identity, for naming a failed item; never trusted."""
    if cose is None:
        return None
    try:
        return Reading.from_cose(cose)
    except CrevError:
        return None


def _cose_of(raw: bytes) -> "bytes | None":
    try:
        item = cbor.loads(raw)
    except CrevError:
        return None
    return item[2] if _leaf_item(item) or _grouped_item(item) else None  # type: ignore[index]


class Totals:
    def __init__(self) -> None:
        self.readings = 0
        self.energies = [0, 0, 0, 0, 0]  # G, I, E, self, demand in mWh
        self.without_energies = 0
        self.not_recomputed = 0
        self.flags = 0


class SequenceChecks:
    """Check 6 over the readings in bundle order, and the totals of the range."""

    def __init__(self, dev: str, from_s: int, to_s: int, allow_gaps: bool) -> None:
        self.dev = dev
        self.from_s = from_s
        self.to_s = to_s
        self.allow_gaps = allow_gaps
        self.last = None  # type: Summary | None
        self.gaps = []  # type: list[dict]
        self.totals = Totals()
        self.first_seq = None  # type: int | None
        self.ends_after_range = False

    def in_range(self, summary: Summary) -> bool:
        return summary.t1 > self.from_s and summary.t0 < self.to_s

    def add(self, position: int, summary: Summary) -> "Failure | None":
        failure = self._link(position, summary)
        if self.last is None or summary.seq > self.last.seq:
            self.last = summary
        if self.in_range(summary):
            totals = self.totals
            totals.readings += 1
            totals.flags |= summary.flags
            if summary.energies is None:
                totals.without_energies += 1
            else:
                for j in range(5):
                    totals.energies[j] += summary.energies[j]
            if not summary.recomputed:
                totals.not_recomputed += 1
        elif summary.t0 >= self.to_s:
            self.ends_after_range = True
        if failure is not None:
            failure.dev, failure.seq = summary.dev, summary.seq
        return failure

    def _gap(self, position: int, first: int, last: int, after_t1: "int | None", before_t0: int) -> "Failure | None":
        self.gaps.append({"first_seq": first, "last_seq": last, "from_t": after_t1, "to_t": before_t0})
        if self.allow_gaps:
            return None
        span = "before t0 %d" % before_t0 if after_t1 is None else "between t %d and %d" % (after_t1, before_t0)
        missing = "seq %d" % first if first == last else "seq %d..%d" % (first, last)
        return Failure(SEQUENCE, "reading", position, "gap: %s missing, %s" % (missing, span))

    def _link(self, position: int, summary: Summary) -> "Failure | None":
        if summary.dev != self.dev:
            return Failure(
                SEQUENCE, "reading", position, "a reading of %s in a bundle for %s" % (summary.dev, self.dev)
            )
        last = self.last
        if last is None:
            self.first_seq = summary.seq
            # A reading before the range only anchors the chain; the first
            # reading in the range needs its predecessor in the bundle.
            if summary.seq > 0 and self.in_range(summary):
                return self._gap(position, summary.seq - 1, summary.seq - 1, None, summary.t0)
            return None
        if summary.seq <= last.seq:
            return Failure(
                SEQUENCE, "reading", position, "seq %d after seq %d: out of order or repeated" % (summary.seq, last.seq)
            )
        if summary.seq > last.seq + 1:
            return self._gap(position, last.seq + 1, summary.seq - 1, last.t1, summary.t0)
        if summary.prev != last.hash:
            return Failure(SEQUENCE, "reading", position, "prev does not link to seq %d" % last.seq)
        return None


# ---------------------------------------------------------------- version 3: smart-meter reconciliation


def _registry_item(item: object) -> bool:
    return (
        isinstance(item, list)
        and len(item) == 6
        and _uint(item[0])
        and _uint(item[1])
        and _uint(item[2])
        and isinstance(item[3], bytes)
        and _uint(item[4])
        and _hash_list(item[5])
    )


class RegistryFailure(Failure):
    """The first thing wrong with a registry leaf of a version 3 bundle (checks 0, 3, 4, 5 and 8)."""

    def __init__(self, check: int, position: int, detail: str, leaf: "int | None" = None) -> None:
        Failure.__init__(self, check, "registry leaf", position, detail)
        self.leaf = leaf  # its index in the ledger

    def where(self) -> str:
        label = "registry leaf #%d" % self.position
        return label + (" (leaf %d)" % self.leaf if self.leaf is not None else "")

    def to_dict(self) -> dict:
        result = Failure.to_dict(self)
        result["leaf"] = self.leaf
        return result


class RegistryItems:
    """Checks 0, 3, 4 and 5 over the registry section (version 3): the releases and issuances of
    the device's slots in the range, in ledger order. Then, per slot, its release and issuances."""

    def __init__(self, ledger_public_key: bytes, dev: str) -> None:
        self.key = ledger_public_key
        self.dev = dev
        self.count = 0
        # slot -> (leaf, reason, position, time_s)
        self.releases = {}  # type: dict[int, tuple]
        # slot -> [(leaf, position)], in ledger order
        self.issuances = {}  # type: dict[int, list]
        self._last_leaf = -1

    def add(self, roots: dict, position: int, item: object) -> "Failure | None":
        self.count += 1
        found = self._add(roots, position, item)
        if found is None:
            return None
        leaf = item[0] if isinstance(item, list) and item and _uint(item[0]) else None
        failure = RegistryFailure(found.check, position, found.detail, leaf)
        failure.dev = self.dev
        return failure

    def _add(self, roots: dict, position: int, item: object) -> "Failure | None":
        if not _registry_item(item):
            return Failure(
                FORMAT,
                "registry leaf",
                position,
                "a registry leaf is [leaf, received_ms, type, statement, height, path]",
            )
        assert isinstance(item, list)
        leaf, received_ms, leaf_type, statement, height, path = item
        if leaf <= self._last_leaf:
            return Failure(FORMAT, "registry leaf", position, "registry leaves are not in ledger order")
        self._last_leaf = leaf
        if leaf_type not in (LEAF_SITE, LEAF_ISSUANCE):
            return Failure(
                FORMAT,
                "registry leaf",
                position,
                "a leaf of type %d has no place here: only releases (type 5) and issuances (type 6)" % leaf_type,
            )
        failure = _inclusion_failure(
            roots, leaf_type, [leaf, received_ms, statement, height, path], "registry leaf", position
        )
        if failure is not None:
            return failure
        try:
            if leaf_type == LEAF_SITE:
                event = parse_site_leaf(statement, self.key)  # type: object
            else:
                event = Issuance.parse(statement, self.key)
        except RegistryFormatError as err:
            check = SIGNATURE if "BAD_SIGNATURE" in err.detail else SCHEMA
            return Failure(check, "registry leaf", position, err.detail)
        if isinstance(event, Release):
            if event.dev != self.dev:
                return Failure(SIGNATURE, "registry leaf", position, "a release for %s, not %s" % (event.dev, self.dev))
            if event.slot in self.releases:
                return Failure(
                    RECONCILE,
                    "registry leaf",
                    position,
                    "slot %d of %s was released already, at leaf %d"
                    % (event.slot, event.dev, self.releases[event.slot][0]),
                )
            self.releases[event.slot] = (leaf, event.reason, position, event.time_s)
        elif isinstance(event, Issuance):
            if event.dev != self.dev:
                return Failure(
                    SIGNATURE, "registry leaf", position, "an issuance for %s, not %s" % (event.dev, self.dev)
                )
            self.issuances.setdefault(event.slot, []).append((leaf, position))
        else:
            return Failure(
                FORMAT,
                "registry leaf",
                position,
                "a site event other than a release has no place in an evidence bundle",
            )
        return None


class SlotRecord:
    """One slot's verdict, with what the registry section says of it (None: no registry section)."""

    def __init__(self, verdict: object, release: "tuple | None", issued: "list | None") -> None:
        self.verdict = verdict  # crev.reconcile.Verdict
        self.release = release  # (leaf, reason, position, time_s) or None
        self.issued = issued  # issuance leaves, or None when the bundle has no registry section
        self.failed = False  # an issuance of it broke the hold (check 8)

    def status(self) -> str:
        """passed, incomplete, and for a mismatch: released, held, issued without release, or unknown."""
        verdict = getattr(self.verdict, "verdict", None)
        if verdict == OK:
            return "passed"
        if verdict == UNCHECKED:
            return "incomplete"
        if self.release is not None:
            return "released"
        if self.failed:
            return "issued without release"
        if self.issued is None:
            return "unknown"
        return "held"


class Reconciliation:
    """Check 8, and the verdict of every slot (S, S+1800] inside the range (SPEC §13).

    Fed the summaries of the readings that passed checks 3-5 (and 7), in
    bundle order: per device in seq order, so in time order. A slot's
    verdict needs only the readings of ``crev.reconcile.window``: each slot
    is decided once a reading starts a slot past that window, and readings
    older than every undecided slot's window are let go, so a few slots'
    readings are held at a time. Each verdict is ``crev.reconcile.slot_verdict``
    of the window's readings, as ingest and the registry compute it; a release
    and an issuance are judged on the readings before their leaf, with the
    rules of the registry replay (``hold_problem``, ``release_problem``).
    """

    SLACK_S = SLOT_S  # a clock that steps back a little does not close a window early

    def __init__(
        self, dev: str, from_s: int, to_s: int, params: Params, registry: "RegistryItems | None" = None
    ) -> None:
        self.dev = dev
        self.from_s = from_s
        self.to_s = to_s
        self.params = params
        self.registry = registry
        self.readings = []  # type: list[Summary]
        self.pending = []  # type: list[int]  # slots seen, not decided, in order
        self.decided = set()  # type: set[int]
        self.records = []  # type: list[SlotRecord]
        self.counts = {OK: 0, SMART_METER_MISMATCH: 0, UNCHECKED: 0}
        self.latest_t0 = None  # type: int | None

    def inside(self, slot: int) -> bool:
        return self.from_s <= slot and slot + SLOT_S <= self.to_s

    def add(self, summary: Summary) -> list:
        """Take one verified reading; the check 8 failures of the slots it lets be decided."""
        if summary.dev != self.dev:
            return []
        slot = slot_of(summary.t1)
        if self.inside(slot) and slot not in self.decided and slot not in self.pending:
            self.pending.append(slot)
            self.pending.sort()
        self.readings.append(summary)
        if self.latest_t0 is None or summary.t0 > self.latest_t0:
            self.latest_t0 = summary.t0
        failures = []  # type: list[Failure]
        while self.pending and self.pending[0] + 2 * SLOT_S + self.SLACK_S <= self.latest_t0:
            failures.extend(self._decide(self.pending.pop(0)))
            low = (self.pending[0] if self.pending else slot_of(summary.t1)) - 2 * SLOT_S
            if self.readings and self.readings[0].t1 <= low:
                self.readings = [r for r in self.readings if r.t1 > low]
        return failures

    def finish(self) -> list:
        """Decide the slots left; then releases of slots the bundle has no readings of."""
        failures = []  # type: list[Failure]
        while self.pending:
            failures.extend(self._decide(self.pending.pop(0)))
        self.readings = []
        if self.registry is not None:
            for slot in sorted(self.registry.releases):
                if slot not in self.decided and self.inside(slot):
                    failures.extend(self._judge(slot, [])[0])
        return failures

    def _decide(self, slot: int) -> list:
        self.decided.add(slot)
        low, high = slot - SLOT_S, slot + 2 * SLOT_S  # crev.reconcile.window(slot)
        window = [r for r in self.readings if r.t1 > low and r.t0 < high]
        verdict = None
        if any(r.smart_meter is not None for r in window):
            verdict = slot_verdict(window, slot, self.params)
        failures, unreleased = self._judge(slot, window)
        if verdict is not None:
            registry = self.registry
            release = None if registry is None else registry.releases.get(slot)
            issued = None if registry is None else [leaf for leaf, _position in registry.issuances.get(slot, [])]
            record = SlotRecord(verdict, release, issued)
            record.failed = unreleased
            self.records.append(record)
            self.counts[verdict.verdict] += 1
        return failures

    def _judge(self, slot: int, window: list) -> "tuple[list, bool]":
        """Check 8 for the slot's release and issuances in the registry section: (failures, whether an
        issuance broke the hold)."""
        registry = self.registry
        if registry is None:
            return [], False
        failures = []
        unreleased = False
        release = registry.releases.get(slot)
        for leaf, position in registry.issuances.get(slot, []):
            if release is not None and release[0] < leaf:
                continue
            problem = hold_problem([r for r in window if r.leaf < leaf], slot, self.dev, self.params)
            if problem is not None:
                failures.append(self._failure(position, leaf, "issuance: " + problem))
                unreleased = True
        if release is not None:
            problem = release_problem([r for r in window if r.leaf < release[0]], slot, self.dev, self.params)
            if problem is not None:
                failures.append(self._failure(release[2], release[0], "release: " + problem))
        return failures, unreleased

    def _failure(self, position: int, leaf: int, detail: str) -> Failure:
        failure = RegistryFailure(RECONCILE, position, detail, leaf)
        failure.dev = self.dev
        return failure
