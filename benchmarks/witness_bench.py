"""Witnessing and mirroring (SPEC §11): add-checkpoint requests per second, and mirror leaves per second.

add-checkpoint: a real `crev witness run` on loopback, one keep-alive HTTP connection, requests one after
the other as a log sends them (each needs the size the one before made the witness hold). Every request
is a valid checkpoint of a real RFC 9162 tree of 10,000 leaves and more, growing by 10 leaves a request,
signed with the log's Ed25519 key, with the consistency proof from the previous one; every answer must be
a cosignature that verifies. The requests are made before the clock starts. The baseline, in the same run:
the same bodies POSTed over the same kind of connection to a stdlib HTTP server (its own process) that
reads them and answers "ok", so the ratio is what the witness's work costs over bare loopback HTTP in
Python. For the breakdown, the decision alone in this process (crev_witness.witness on its SQLite state,
with the same durability: a synced commit per cosignature), without HTTP.

Mirror: a ledger of N leaves of 360 bytes (about a reading leaf's size), published by `crev ingest
publish`, copied and checked by `crev audit mirror` from that directory into a new one: the whole
command, its interpreter's start included. The baseline: the same leaves, already in memory, hashed
into the tree's root with hashlib (each leaf and each interior node once), which is the least any check
of the tiles must do.
"""

import hashlib
import http.client
import itertools
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import Service, crev_command, free_port, port_open, run_crev, wait_for, write_toml  # noqa: E402

from crev import merkle, note, tiles  # noqa: E402
from crev.keys import SigningKey  # noqa: E402
from crev_ingest.ledger import Ledger, make_checkpoint  # noqa: E402
from crev_ingest.store import Store  # noqa: E402
from crev_witness.state import WitnessState  # noqa: E402
from crev_witness.witness import Witness  # noqa: E402

ORIGIN = "crev.bench/ledger"
LOG_KEY = SigningKey(hashlib.sha256(b"crev witness bench log").digest())
LOG_VKEY = note.VerifierKey(ORIGIN, note.SIG_ED25519, LOG_KEY.public_key)
FIRST_SIZE = 10_000
STEP = 10
LEAF_BYTES = 360

BARE_SERVER = r"""
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the witness's clients use
    disable_nagle_algorithm = True  # as uvicorn's sockets (asyncio sets TCP_NODELAY)
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def add_checkpoint_bodies(requests: int) -> list[bytes]:
    """The first request (old 0) and ``requests`` more, each proving the tree grew from the previous one."""
    frontier = merkle.MerkleFrontier()
    nodes: dict[tuple[int, int], bytes] = {}
    sizes = [FIRST_SIZE + STEP * i for i in range(requests + 1)]
    roots = {}
    for size in sizes:
        while frontier.size < size:
            leaf = merkle.leaf_hash(b"leaf %d" % frontier.size)
            for level, index, value in frontier.append(leaf):
                nodes[(level, index)] = value
        roots[size] = frontier.root()
    bodies = [note.add_checkpoint_body(0, [], make_checkpoint(LOG_KEY, ORIGIN, sizes[0], roots[sizes[0]]))]
    for old, new in itertools.pairwise(sizes):
        proof = merkle.consistency_path(old, new, lambda level, index: nodes[(level, index)])
        bodies.append(note.add_checkpoint_body(old, proof, make_checkpoint(LOG_KEY, ORIGIN, new, roots[new])))
    return bodies


def post_all(port: int, bodies: list[bytes]) -> tuple[float, list[bytes]]:
    """Seconds to POST every body after the first (sent untimed), one at a time on one connection; the answers."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.connect()
    # http.client writes the headers and the body apart: without this, Nagle's algorithm holds the body
    # back until the server's delayed ACK of the headers, 40 ms a request on Linux.
    assert connection.sock is not None
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    answers = []

    def post(body: bytes) -> bytes:
        connection.request("POST", "/add-checkpoint", body, {"Content-Type": "text/plain"})
        response = connection.getresponse()
        answer = response.read()
        if response.status != 200:
            raise SystemExit("add-checkpoint answered %d: %r" % (response.status, answer[:200]))
        return answer

    post(bodies[0])
    start = time.perf_counter()
    for body in bodies[1:]:
        answers.append(post(body))
    elapsed = time.perf_counter() - start
    connection.close()
    return elapsed, answers


def check_cosignatures(bodies: list[bytes], answers: list[bytes], vkey: note.VerifierKey) -> None:
    for body, answer in zip(bodies[1:], answers, strict=True):
        checkpoint = note.parse_add_checkpoint(body).checkpoint
        note.open_note(checkpoint + answer.decode(), [vkey])  # raises unless the witness's cosignature verifies


def witness_http(directory: Path, bodies: list[bytes]) -> float:
    """Requests per second of a real `crev witness run`, every cosignature checked after the clock stops."""
    port = free_port()
    config = write_toml(
        directory / "witness.toml",
        '[witness]\nname = "witness.bench"\nkey = "witness.key"\nlisten = "127.0.0.1:%d"\nstate = "witness.sqlite"\n'
        '\n[[log]]\norigin = "%s"\nvkey = "%s"\n' % (port, ORIGIN, LOG_VKEY.vkey()),
    )
    made = run_crev(directory, "witness", "init", "--config", str(config))
    if made.returncode != 0:
        raise SystemExit("crev witness init failed:\n" + made.stderr)
    vkey = note.parse_vkey(dict(line.split(None, 1) for line in made.stdout.splitlines())["vkey"])
    witness = Service("witness", ["witness", "run", "--config", str(config)], directory).start()
    try:
        wait_for(lambda: port_open(port) or not witness.alive(), 30, "crev witness run to listen")
        if not witness.alive():
            raise SystemExit("crev witness run did not start:\n" + witness.log())
        elapsed, answers = post_all(port, bodies)
    finally:
        witness.stop()
    check_cosignatures(bodies, answers, vkey)
    return (len(bodies) - 1) / elapsed


def bare_http(bodies: list[bytes]) -> float:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(port)])
    try:
        wait_for(lambda: port_open(port), 20, "the stdlib server to listen")
        elapsed, _answers = post_all(port, bodies)
    finally:
        server.kill()
        server.wait()
    return (len(bodies) - 1) / elapsed


def decision_alone(directory: Path, bodies: list[bytes]) -> float:
    state = WitnessState(directory / "in-process.sqlite")
    witness = Witness("witness.bench", SigningKey(bytes([7]) * 32), {ORIGIN: [LOG_VKEY]}, state)
    try:
        witness.add_checkpoint(bodies[0], int(time.time()))
        start = time.perf_counter()
        for body in bodies[1:]:
            if witness.add_checkpoint(body, int(time.time())).status != 200:
                raise SystemExit("the in-process witness refused a request")
        elapsed = time.perf_counter() - start
    finally:
        state.close()
    return (len(bodies) - 1) / elapsed


def report_witness(requests: int, rounds: int) -> None:
    bodies = add_checkpoint_bodies(requests)
    proof_lines = len(note.parse_add_checkpoint(bodies[-1]).proof)
    rates: dict[str, list[float]] = {"bare": [], "witness": [], "decision": []}
    with tempfile.TemporaryDirectory(prefix="crev-witness-bench-") as tmp:
        for round_ in range(rounds):
            directory = Path(tmp) / str(round_)
            directory.mkdir()
            # A fresh witness each round (its state must start empty); the baseline around it.
            rates["bare"].append(bare_http(bodies))
            rates["witness"].append(witness_http(directory, bodies))
            rates["decision"].append(decision_alone(directory, bodies))
    bare, served, decided = (statistics.median(rates[k]) for k in ("bare", "witness", "decision"))
    print(
        "== witness: add-checkpoint over loopback HTTP, %d requests a round, %d rounds (median) ==" % (requests, rounds)
    )
    print(
        "(a log of %d leaves growing by %d a request; %d proof lines at the end; one keep-alive connection)"
        % (FIRST_SIZE, STEP, proof_lines)
    )
    print("%-62s %12s %8s" % ("setup", "requests/s", "ratio"))
    print("%-62s %12.0f %7.2fx" % ("bare POST to a stdlib HTTP server, same bodies (baseline)", bare, 1.0))
    print("%-62s %12.0f %7.2fx" % ("crev witness run: verify, proof, cosign, synced commit", served, served / bare))
    print("%-62s %12.0f %7.2fx" % ("  its decision alone, in process, no HTTP", decided, decided / bare))


def build_ledger(directory: Path, leaves: int) -> None:
    """``leaves`` leaves of the reserved type 3, LEAF_BYTES of data each, under one block; a config to publish it."""
    key = SigningKey(hashlib.sha256(b"crev mirror bench ledger").digest())
    (directory / "ledger.key").write_text(key.seed_bytes().hex() + "\n")
    (directory / "ledger.key").chmod(0o600)
    (directory / "ledger.pub").write_text(key.public_key.hex() + "\n")
    write_toml(
        directory / "ingest.toml",
        '[storage]\npath = "crev.sqlite"\n[ledger]\nkey = "ledger.key"\norigin = "%s"\n' % ORIGIN,
    )
    store = Store(directory / "crev.sqlite")
    ledger = Ledger(store, key, ORIGIN, 3600, 10**9)
    filler = hashlib.sha256(b"filler").digest() * (LEAF_BYTES // 32 + 1)
    with store.transaction():
        for i in range(leaves):
            ledger.append(3, 1_800_000_000_000 + i, i.to_bytes(8, "big") + filler[: LEAF_BYTES - 8])
        ledger.seal(1_800_000_000_000 + leaves)
    store.close()


def hash_in_memory(leaves: list[bytes]) -> bytes:
    """RFC 9162 root by plain hashlib, level by level (an odd last node goes up as it is)."""
    level = [hashlib.sha256(b"\x00" + leaf).digest() for leaf in leaves]
    while len(level) > 1:
        paired = [hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        level = paired + ([level[-1]] if len(level) % 2 else [])
    return level[0]


def read_leaves(www: Path, size: int) -> list[bytes]:
    """The published entry bundles' leaves: each a big-endian 16-bit length and the bytes (tlog-tiles)."""
    leaves: list[bytes] = []
    for index in range((size + 255) // 256):
        data = (www / tiles.entries_path(index, min(256, size - 256 * index))).read_bytes()
        at = 0
        while at < len(data):
            length = int.from_bytes(data[at : at + 2], "big")
            leaves.append(data[at + 2 : at + 2 + length])
            at += 2 + length
    return leaves


def timed(directory: Path, *args: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(crev_command(*args), capture_output=True, text=True, cwd=directory, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit("crev %s failed:\n%s" % (" ".join(args[:2]), done.stderr))
    return elapsed


def report_mirror(leaves: int) -> None:
    with tempfile.TemporaryDirectory(prefix="crev-mirror-bench-") as tmp:
        directory = Path(tmp)
        start = time.perf_counter()
        build_ledger(directory, leaves)
        built = time.perf_counter() - start
        published = timed(directory, "ingest", "publish", "--config", "ingest.toml", "--out", "www")
        mirrored = timed(directory, "audit", "mirror", "www", "--ledger-key", "ledger.pub", "--out", "mirror")
        again = timed(directory, "audit", "mirror", "www", "--ledger-key", "ledger.pub", "--out", "mirror")
        checkpoint = (directory / "www" / "checkpoint").read_text()
        size = int(checkpoint.splitlines()[1])
        in_memory = read_leaves(directory / "www", size)
        hashing = []
        for _ in range(3):
            start = time.perf_counter()
            root = hash_in_memory(in_memory)
            hashing.append(time.perf_counter() - start)
        if note.encode_base64(root) != checkpoint.splitlines()[2] or size != leaves:
            raise SystemExit("the in-memory root is not the published checkpoint's")
        files = sum(1 for p in (directory / "mirror").rglob("*") if p.is_file())
    baseline = leaves / statistics.median(hashing)
    title = "crev audit mirror of %d leaves of %d bytes, from a crev ingest publish directory" % (leaves, LEAF_BYTES)
    print("== mirror: %s ==" % title)
    print(
        "(ledger built in %.1f s; crev ingest publish took %.1f s; the mirror holds %d files)"
        % (built, published, files)
    )
    print("%-62s %12s %8s" % ("setup", "leaves/s", "ratio"))
    print("%-62s %12.0f %7.2fx" % ("hash the leaves and the tree in memory, hashlib (baseline)", baseline, 1.0))
    command = "crev audit mirror, a new copy (the whole command, %.1f s)" % mirrored
    print("%-62s %12.0f %7.2fx" % (command, leaves / mirrored, leaves / mirrored / baseline))
    print("crev audit mirror again with nothing new: %.2f s (the checkpoint, and the kept tree's root rebuilt)" % again)


def report(requests: int, rounds: int, leaves: int) -> None:
    report_witness(requests, rounds)
    print()
    report_mirror(leaves)


if __name__ == "__main__":
    # On its own: python benchmarks/witness_bench.py [--quick]; `make bench` runs it from run.py.
    quick = "--quick" in sys.argv
    report(50 if quick else 1000, 1 if quick else 3, 5000 if quick else 100_000)
