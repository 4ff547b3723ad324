"""``crev witness run``: the tlog-witness HTTP interface, served by uvicorn.

- ``POST /add-checkpoint``: crev_witness.witness decides; the answer's status,
  body and Content-Type are sent exactly as decided.
- ``GET /<origin hash>/checkpoint``: the monitoring endpoint of tlog-witness,
  the latest cosigned checkpoint of a log (SHA-256 of its origin, lowercase hex).

The submission and monitoring prefixes are both the server's root. The
decision runs in a worker thread, so the fsync of one commit never stalls
the event loop; the Witness serialises decisions itself.
"""

import logging
import signal
import socket
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from crev_witness import ConfigError
from crev_witness.config import WitnessConfig
from crev_witness.keyfile import load_key
from crev_witness.state import WitnessState
from crev_witness.witness import TEXT, Witness

log = logging.getLogger("crev.witness")

# A checkpoint with 100 signatures of post-quantum size is under 512 kB; proofs add 3 kB.
MAX_BODY = 512 * 1024


def _answer(status: int, body: str, content_type: str) -> Response:
    # The Content-Type goes in as a header, so Starlette adds no "; charset=" to text/x.tlog.size.
    return Response(body.encode(), status_code=status, headers={"Content-Type": content_type})


def create_app(witness: Witness) -> FastAPI:
    app = FastAPI(title="crev witness", openapi_url=None, docs_url=None, redoc_url=None)

    @app.post("/add-checkpoint")
    async def add_checkpoint(request: Request) -> Response:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return _answer(413, "an add-checkpoint body is at most %d bytes\n" % MAX_BODY, TEXT)
        answer = await run_in_threadpool(witness.add_checkpoint, bytes(body), int(time.time()))
        return _answer(answer.status, answer.body, answer.content_type)

    @app.get("/{origin_hash}/checkpoint")
    async def checkpoint(origin_hash: str) -> Response:
        cosigned = await run_in_threadpool(witness.checkpoint, origin_hash)
        if cosigned is None:
            return _answer(404, "no cosigned checkpoint for that origin hash\n", TEXT)
        return _answer(200, cosigned, TEXT)

    return app


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on connections whose socket says TCP, and without it
    # the body of each answer waits for the client's delayed ACK of its headers (40 ms on Linux).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as err:
        sock.close()
        raise ConfigError(
            "[witness] listen %s:%d: cannot listen there (%s); stop what uses the port or choose another"
            % (host, port, err.strerror or err)
        ) from err
    return sock


def serve(config: WitnessConfig) -> int:
    """Run the witness until SIGTERM or SIGINT; a bad key, state or port is a ConfigError first."""
    if not config.logs:
        raise ConfigError("%s: no [[log]]: add one per log to witness, with its origin and vkey" % config.path.name)
    key = load_key(config.key_path)
    state = WitnessState(config.state_path)
    try:
        sock = _bind(*config.listen)
    except ConfigError:
        state.close()
        raise
    witness = Witness(config.name, key, {entry.origin: [entry.key] for entry in config.logs}, state)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    host, port = config.listen
    log.info(
        "witness %s on http://%s:%d/ for %d logs; vkey %s",
        config.name,
        host,
        port,
        len(config.logs),
        witness.vkey.vkey(),
    )
    server = uvicorn.Server(uvicorn.Config(create_app(witness), log_level="warning", access_log=False))

    def stopped(signum: int, frame: FrameType | None) -> None:
        log.info("stopping on signal %d", signum)

    # uvicorn shuts down gracefully on SIGTERM or SIGINT, then raises the signal again under
    # the handler it found: this one, so the state is closed and the exit code is 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stopped)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        state.close()
    log.info("witness stopped")
    return 0
