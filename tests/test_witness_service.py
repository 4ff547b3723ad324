"""A real `crev witness run` on loopback: tlog-witness over HTTP, forks kept, state across SIGKILL."""

import hashlib
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Service, free_port, port_open, run_crev, wait_for
from test_witness import ORIGIN, TreeLog

from crev import note
from crev.keys import SigningKey
from crev_ingest.ledger import make_checkpoint
from crev_witness.state import WitnessState


class RunningWitness:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.config = workdir / "witness.toml"
        self.config.write_text(
            '[witness]\nname = "witness.test"\nkey = "witness.key"\nlisten = "127.0.0.1:%d"\n'
            'state = "witness.sqlite"\n\n[[log]]\norigin = "%s"\nvkey = "%s"\n' % (self.port, ORIGIN, TreeLog().vkey)
        )
        done = run_crev(workdir, "witness", "init", "--config", str(self.config))
        assert done.returncode == 0, done.stderr
        printed = dict(line.split(None, 1) for line in done.stdout.splitlines())
        self.vkey = note.parse_vkey(printed["vkey"])
        self.service = Service("witness", ["witness", "run", "--config", str(self.config)], workdir)

    def start(self) -> None:
        self.service.start()
        wait_for(lambda: port_open(self.port) or not self.service.alive(), 30, "crev witness run to listen")
        assert self.service.alive(), self.service.log()

    def post(self, body: bytes) -> tuple[int, str, str]:
        """(status, Content-Type, body) of POST /add-checkpoint."""
        request = urllib.request.Request("http://127.0.0.1:%d/add-checkpoint" % self.port, body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers["Content-Type"], response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.headers["Content-Type"], err.read().decode()

    def cosigned(self, checkpoint: str, answer: str) -> note.NoteSignature:
        """The witness's cosignature in ``answer``, checked as tlog-witness clients do: appended to the checkpoint."""
        (line,) = note.open_note(checkpoint + answer, [self.vkey]).verified
        return line


@pytest.fixture
def witness(tmp_path: Path) -> Iterator[RunningWitness]:
    running = RunningWitness(tmp_path)
    running.start()
    try:
        yield running
    finally:
        running.service.stop()


def test_cosigns_refuses_forks_and_keeps_its_state_across_sigkill(witness: RunningWitness) -> None:
    log, rewritten = TreeLog(), TreeLog(leaf_prefix=b"rewritten")
    # A first checkpoint, from old size 0.
    status, content_type, body = witness.post(log.body(0, 5))
    assert (status, content_type) == (200, "text/plain; charset=utf-8"), body
    assert witness.cosigned(log.checkpoint(5), body).name == "witness.test"
    # A larger one, with the real consistency proof from 5.
    status, _, body = witness.post(log.body(5, 12))
    assert status == 200, body
    witness.cosigned(log.checkpoint(12), body)
    # A wrong old size: 409 and the size the witness holds, typed text/x.tlog.size.
    assert witness.post(log.body(5, 13)) == (409, "text/x.tlog.size", "12\n")
    # A bad proof: 422.
    proof = log.proof(12, 16)
    assert witness.post(note.add_checkpoint_body(12, proof[::-1], log.checkpoint(16)))[0] == 422
    # Forks, signed by the log's own key: the same size with another root, and a smaller tree.
    assert witness.post(note.add_checkpoint_body(12, [], rewritten.checkpoint(12)))[:2] == (
        409,
        "text/plain; charset=utf-8",
    )
    assert witness.post(rewritten.body(0, 9))[0] == 409

    witness.service.kill()  # SIGKILL: nothing gets to flush or close
    witness.start()

    assert witness.post(log.body(0, 12)) == (409, "text/x.tlog.size", "12\n")
    status, _, body = witness.post(log.body(12, 20))
    assert status == 200, body
    witness.cosigned(log.checkpoint(20), body)
    origin_hash = hashlib.sha256(ORIGIN.encode()).hexdigest()
    with urllib.request.urlopen("http://127.0.0.1:%d/%s/checkpoint" % (witness.port, origin_hash)) as response:
        assert response.read().decode() == log.checkpoint(20) + body

    state = WitnessState(witness.workdir / "witness.sqlite")
    try:
        kept = [(e.reason, e.size, e.root, e.latest_size) for e in state.evidence(ORIGIN)]
    finally:
        state.close()
    assert kept == [
        ("bad-proof", 16, log.roots[16], 12),
        ("fork", 12, rewritten.roots[12], 12),
        ("smaller", 9, rewritten.roots[9], 12),
    ]
    assert "EVIDENCE (fork)" in witness.service.log()
    assert witness.service.stop() == 0  # SIGTERM: a graceful stop
    assert "witness stopped" in witness.service.log()


def test_statuses_over_http(witness: RunningWitness) -> None:
    log = TreeLog()
    assert witness.post(b"hello\n")[0] == 400
    assert witness.post(note.add_checkpoint_body(3, [], log.checkpoint(2)))[0] == 400
    assert witness.post(TreeLog(origin="other.test/log").body(0, 2))[0] == 404
    impostor = SigningKey(hashlib.sha256(b"impostor").digest())
    assert witness.post(TreeLog(key=impostor).body(0, 2))[0] == 403
    forged = log.checkpoint(2).replace("\n2\n", "\n3\n", 1)  # the text changed under the log's signature
    assert witness.post(note.add_checkpoint_body(0, [], forged))[0] == 403
    assert witness.post(note.add_checkpoint_body(0, [], make_checkpoint(log.key, ORIGIN, 0, bytes(32))))[0] == 422
    assert witness.post(note.add_checkpoint_body(0, [bytes(32)], log.checkpoint(2)))[0] == 422
    assert witness.post(b"old 0\n\n" + b"x" * (600 * 1024))[0] == 413
    # None of that moved the witness: the first real checkpoint still comes from old size 0.
    assert witness.post(log.body(0, 2))[0] == 200


def test_concurrent_submissions_cosign_exactly_one(witness: RunningWitness) -> None:
    # tlog-witness: checking the old size and recording the new checkpoint are one atomic step.
    log = TreeLog()
    assert witness.post(log.body(0, 4))[0] == 200
    bodies = [log.body(4, size) for size in range(5, 11)]
    answers: list[tuple[int, str, str]] = []
    start = threading.Barrier(len(bodies))

    def submit(body: bytes) -> None:
        start.wait()
        answers.append(witness.post(body))

    threads = [threading.Thread(target=submit, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(status for status, _, _ in answers) == [200] + [409] * (len(bodies) - 1)
    sizes = {body for status, _, body in answers if status == 409}
    assert len(sizes) == 1
    (winner,) = sizes
    assert 5 <= int(winner) <= 10
    assert witness.post(log.body(int(winner), 11))[0] == 200
