"""The witness's add-checkpoint decisions, its SQLite state and its configuration, in process.

The logs here are real RFC 9162 trees (crev.merkle) whose checkpoints are
signed by the ledger's own code (crev_ingest.ledger.make_checkpoint). The
same decisions over real HTTP, with a real process, are in
test_witness_service.py.
"""

import hashlib
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from harness import run_crev

from crev import merkle, note
from crev.keys import SigningKey
from crev_ingest.ledger import make_checkpoint
from crev_witness.state import WitnessState
from crev_witness.witness import TLOG_SIZE, Witness

ORIGIN = "crev.test/ledger"
LOG_KEY = SigningKey(hashlib.sha256(b"test_witness log").digest())
WITNESS_KEY = SigningKey(hashlib.sha256(b"test_witness witness").digest())
NOW = 1_800_000_000


class TreeLog:
    """A log: a real Merkle tree over numbered leaves, its signed checkpoints and consistency proofs."""

    def __init__(self, origin: str = ORIGIN, key: SigningKey = LOG_KEY, leaf_prefix: bytes = b"reading") -> None:
        self.origin = origin
        self.key = key
        self.leaf_prefix = leaf_prefix
        self.frontier = merkle.MerkleFrontier()
        self.nodes: dict[tuple[int, int], bytes] = {}
        self.roots = {0: note.EMPTY_ROOT}

    @property
    def vkey(self) -> str:
        return note.VerifierKey(self.origin, note.SIG_ED25519, self.key.public_key).vkey()

    def grow(self, size: int) -> "TreeLog":
        while self.frontier.size < size:
            leaf = merkle.leaf_hash(b"%s %d" % (self.leaf_prefix, self.frontier.size))
            for level, index, value in self.frontier.append(leaf):
                self.nodes[(level, index)] = value
            self.roots[self.frontier.size] = self.frontier.root()
        return self

    def checkpoint(self, size: int) -> str:
        self.grow(size)
        return make_checkpoint(self.key, self.origin, size, self.roots[size])

    def proof(self, old: int, new: int) -> list[bytes]:
        self.grow(new)
        return merkle.consistency_path(old, new, lambda level, index: self.nodes[(level, index)])

    def body(self, old: int, new: int) -> bytes:
        return note.add_checkpoint_body(old, self.proof(old, new), self.checkpoint(new))


def witness_vkey() -> note.VerifierKey:
    return note.VerifierKey("witness.test", note.SIG_COSIGNATURE_V1, WITNESS_KEY.public_key)


@pytest.fixture
def state(tmp_path: Path) -> WitnessState:
    return WitnessState(tmp_path / "witness.sqlite")


@pytest.fixture
def witness(state: WitnessState) -> Witness:
    log_key = note.VerifierKey(ORIGIN, note.SIG_ED25519, LOG_KEY.public_key)
    return Witness("witness.test", WITNESS_KEY, {ORIGIN: [log_key]}, state)


def test_cosigns_a_growing_log_and_only_then_moves_on(witness: Witness, state: WitnessState) -> None:
    log = TreeLog()
    first = witness.add_checkpoint(log.body(0, 5), NOW)
    assert (first.status, first.content_type) == (200, "text/plain; charset=utf-8")
    cosigned = note.open_note(log.checkpoint(5) + first.body, [witness_vkey()])
    assert note.cosignature_timestamp(cosigned.verified[0]) == NOW
    latest = state.latest(ORIGIN)
    assert latest is not None and (latest.size, latest.root) == (5, log.roots[5])
    # The kept note: the log's verified signature, then ours.
    kept = note.open_note(latest.note, [witness_vkey(), note.parse_vkey(log.vkey)])
    assert [s.name for s in kept.verified] == [ORIGIN, "witness.test"]

    assert witness.add_checkpoint(log.body(5, 13), NOW + 1).status == 200
    stale = witness.add_checkpoint(log.body(5, 14), NOW + 2)
    assert (stale.status, stale.body, stale.content_type) == (409, "13\n", TLOG_SIZE)
    # The same checkpoint again, from its own size: cosigned again, nothing moves.
    assert witness.add_checkpoint(log.body(13, 13), NOW + 3).status == 200
    again = state.latest(ORIGIN)
    assert again is not None and again.size == 13 and again.cosigned_at == NOW + 3
    assert state.evidence() == []


def test_never_dates_a_cosignature_before_the_last_one(witness: Witness) -> None:
    log = TreeLog()
    assert witness.add_checkpoint(log.body(0, 3), NOW).status == 200
    later = witness.add_checkpoint(log.body(3, 4), NOW - 3600)  # the clock stepped back an hour
    line = note.open_note(log.checkpoint(4) + later.body, [witness_vkey()]).verified[0]
    assert note.cosignature_timestamp(line) == NOW


def test_a_fork_of_the_same_size_is_refused_and_kept(witness: Witness, state: WitnessState) -> None:
    log, fork = TreeLog(), TreeLog(leaf_prefix=b"rewritten")
    assert witness.add_checkpoint(log.body(0, 8), NOW).status == 200
    body = note.add_checkpoint_body(8, [], fork.checkpoint(8))
    answer = witness.add_checkpoint(body, NOW + 1)
    # tlog-witness: the same size with another root is a 409, with a text body (not text/x.tlog.size).
    assert (answer.status, answer.content_type) == (409, "text/plain; charset=utf-8")
    # From another old size it is a 409, and the same fork is kept once.
    assert witness.add_checkpoint(note.add_checkpoint_body(0, [], fork.checkpoint(8)), NOW + 2).status == 409
    (evidence,) = state.evidence(ORIGIN)
    assert (evidence.reason, evidence.size, evidence.root) == ("fork", 8, fork.roots[8])
    assert (evidence.latest_size, evidence.latest_root) == (8, log.roots[8])
    assert evidence.note == fork.checkpoint(8) and evidence.body == body.decode()
    latest = state.latest(ORIGIN)
    assert latest is not None and latest.root == log.roots[8]


def test_a_smaller_tree_is_refused_and_kept(witness: Witness, state: WitnessState) -> None:
    log = TreeLog()
    assert witness.add_checkpoint(log.body(0, 10), NOW).status == 200
    assert witness.add_checkpoint(log.body(0, 6), NOW).status == 409
    assert witness.add_checkpoint(note.add_checkpoint_body(10, [], log.checkpoint(6)), NOW).status == 400
    assert [(e.reason, e.size, e.latest_size) for e in state.evidence()] == [("smaller", 6, 10)]


def test_a_bad_proof_is_refused_and_kept(witness: Witness, state: WitnessState) -> None:
    log = TreeLog()
    assert witness.add_checkpoint(log.body(0, 6), NOW).status == 200
    proof = log.proof(6, 11)
    bent = [proof[0], proof[1][::-1], *proof[2:]]
    answer = witness.add_checkpoint(note.add_checkpoint_body(6, bent, log.checkpoint(11)), NOW)
    assert answer.status == 422
    assert witness.add_checkpoint(note.add_checkpoint_body(6, proof[:-1], log.checkpoint(11)), NOW).status == 422
    assert [e.reason for e in state.evidence()] == ["bad-proof"]
    assert witness.add_checkpoint(log.body(6, 11), NOW).status == 200


def test_statuses_of_tlog_witness(witness: Witness, state: WitnessState) -> None:
    log = TreeLog()
    assert witness.add_checkpoint(b"old 0\n\nnot a checkpoint\n", NOW).status == 400
    assert witness.add_checkpoint(note.add_checkpoint_body(3, [], log.checkpoint(2)), NOW).status == 400
    # (2) another origin: 404, whoever signed it.
    other = TreeLog(origin="other.test/log")
    assert witness.add_checkpoint(other.body(0, 2), NOW).status == 404
    # (3) our origin, but a key the witness does not trust: 403.
    impostor = TreeLog(key=SigningKey(hashlib.sha256(b"impostor").digest()))
    assert witness.add_checkpoint(impostor.body(0, 2), NOW).status == 403
    # (3) a line of the log's key that does not verify: 403, even beside a good one.
    good = log.checkpoint(2)
    bad_line = note.sign_ed25519(log.checkpoint(3).split("\n\n")[0] + "\n", ORIGIN, LOG_KEY).line()
    assert witness.add_checkpoint(note.add_checkpoint_body(0, [], good + bad_line), NOW).status == 403
    # (7) size 0 with a root that is not the empty tree's.
    zero = make_checkpoint(LOG_KEY, ORIGIN, 0, bytes(32))
    assert witness.add_checkpoint(note.add_checkpoint_body(0, [], zero), NOW).status == 422
    # (8) a proof from old size 0.
    assert witness.add_checkpoint(note.add_checkpoint_body(0, [bytes(32)], log.checkpoint(2)), NOW).status == 422
    assert state.latest(ORIGIN) is None
    # The empty tree itself is cosigned; the next checkpoint then comes from old size 0.
    assert witness.add_checkpoint(note.add_checkpoint_body(0, [], log.checkpoint(0)), NOW).status == 200
    assert witness.add_checkpoint(log.body(0, 2), NOW).status == 200
    assert state.evidence() == []


def test_monitoring_checkpoint(witness: Witness) -> None:
    log = TreeLog()
    origin_hash = hashlib.sha256(ORIGIN.encode()).hexdigest()
    assert witness.checkpoint(origin_hash) is None
    answer = witness.add_checkpoint(log.body(0, 4), NOW)
    assert witness.checkpoint(origin_hash) == log.checkpoint(4) + answer.body
    assert witness.checkpoint(hashlib.sha256(b"other").hexdigest()) is None


# ------------------------------------------------------------------ configuration and the command line


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "witness.toml"
    path.write_text(text)
    return path


WITNESS = '[witness]\nname = "witness.test"\nkey = "witness.key"\nlisten = "127.0.0.1:%d"\nstate = "w.sqlite"\n'
LOG = '[[log]]\norigin = "%s"\nvkey = "%s"\n' % (ORIGIN, TreeLog().vkey)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "[witness] is missing"),
        ("[witness\n", "is not valid TOML"),
        (WITNESS.replace("witness.test", "witness test") % 8100 + LOG, "[witness] name"),
        (WITNESS.replace("listen", "lisen") % 8100 + LOG, "unknown setting 'lisen' in [witness]"),
        (WITNESS.replace(":%d", "") + LOG, "[witness] listen must be host:port"),
        (WITNESS % 8100 + LOG.replace("[[log]]", "[log]"), "[[log]] table (double brackets)"),
        (WITNESS % 8100 + LOG.replace("vkey", "key"), "unknown setting 'key' in [[log]] 1"),
        (WITNESS % 8100 + LOG.replace(TreeLog().vkey, TreeLog().vkey[:-2]), "[[log]] 1 (crev.test/ledger) vkey:"),
        (WITNESS % 8100 + LOG.replace(TreeLog().vkey, witness_vkey().vkey()), "type 0x04"),
        (WITNESS % 8100 + LOG + LOG, "listed twice"),
        (WITNESS % 8100 + "[[logs]]\n", "unknown setting 'logs'"),
    ],
)
def test_a_bad_config_is_one_line_and_exit_2(tmp_path: Path, text: str, says: str) -> None:
    done = run_crev(tmp_path, "witness", "init", "--config", str(_config(tmp_path, text)))
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert says in done.stderr


def test_init_writes_a_private_key_and_prints_its_vkey(tmp_path: Path) -> None:
    config = _config(tmp_path, WITNESS % 8100)
    done = run_crev(tmp_path, "witness", "init", "--config", str(config))
    assert done.returncode == 0, done.stderr
    printed = dict(line.split(None, 1) for line in done.stdout.splitlines())
    vkey = note.parse_vkey(printed["vkey"])
    seed = bytes.fromhex((tmp_path / "witness.key").read_text())
    assert (vkey.name, vkey.sig_type, vkey.public_key) == ("witness.test", 4, SigningKey(seed).public_key)
    assert (tmp_path / "witness.key").stat().st_mode & 0o777 == 0o600
    again = run_crev(tmp_path, "witness", "init", "--config", str(config))
    assert again.returncode == 2 and "already exists" in again.stderr
    assert bytes.fromhex((tmp_path / "witness.key").read_text()) == seed
    # run refuses a key others may read, in one line, before it listens.
    (tmp_path / "witness.key").chmod(0o644)
    config.write_text(WITNESS % 8100 + LOG)
    refused = run_crev(tmp_path, "witness", "run", "--config", str(config))
    assert refused.returncode == 2 and "chmod 600" in refused.stderr and refused.stderr.count("\n") == 1


def test_the_witness_imports_only_the_core() -> None:
    code = (
        "import sys, crev_witness.cli, crev_witness.server\n"
        "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith('crev')}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "['crev', 'crev_witness']"


def test_run_refuses_a_busy_port_and_a_bad_state_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        config = _config(tmp_path, WITNESS % port + LOG)
        assert run_crev(tmp_path, "witness", "init", "--config", str(config)).returncode == 0
        done = run_crev(tmp_path, "witness", "run", "--config", str(config))
        assert done.returncode == 2 and done.stderr.count("\n") == 1
        assert "[witness] listen 127.0.0.1:%d: cannot listen there" % port in done.stderr
    (tmp_path / "dir.sqlite").mkdir()
    config.write_text((WITNESS % port).replace("w.sqlite", "dir.sqlite") + LOG)
    done = run_crev(tmp_path, "witness", "run", "--config", str(config))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "cannot open the witness state" in done.stderr
