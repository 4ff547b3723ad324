"""The ledger as C2SP tlog-tiles over HTTP, read-only, on ingest's listener (SPEC §11).

``GET /log/checkpoint``, ``/log/tile/<L>/<N>[.p/<W>]`` and
``/log/tile/entries/<N>[.p/<W>]`` answer with the same bytes as the files
``crev ingest publish`` writes (both take them from crev_ingest.publish.body).
They need no operator token: a log is meant to be mirrored.

Only what the newest sealed block's checkpoint covers is served, so every
answer is proven by the checkpoint a client can fetch; anything beyond it,
or a path that is not a tlog-tiles resource, is 404. A tile narrower than
the stored one is served as the prefix it was when the tree had that width:
a mirror holding an older checkpoint can still read its tiles.

A full tile or bundle never changes, so it may be cached for good; a
partial one is replaced by a wider one as the log grows, and the checkpoint
changes with every block.
"""

import threading
from pathlib import Path

from fastapi import FastAPI, HTTPException, Response

from crev import tiles
from crev_ingest.publish import body, newest_block
from crev_ingest.store import Store

PREFIX = "/log/"
IMMUTABLE = "public, max-age=31536000, immutable"
PARTIAL = "public, max-age=5"
CHECKPOINT = "no-cache"


class _Stores:
    """A read-only store per server thread, opened on its first request."""

    def __init__(self, location: Path | str) -> None:
        self.location = location
        self.local = threading.local()

    def get(self) -> Store:
        store: Store | None = getattr(self.local, "store", None)
        if store is None:
            store = Store(self.location, read_only=True)
            self.local.store = store
        return store


def add_routes(app: FastAPI, store_location: Path | str) -> None:
    stores = _Stores(store_location)

    @app.get(PREFIX + "{path:path}", include_in_schema=False)
    def resource(path: str) -> Response:
        wanted = tiles.parse_path(path)
        if wanted is None:
            raise HTTPException(status_code=404, detail="not a tlog-tiles resource")
        store = stores.get()
        store.begin_snapshot()  # the checkpoint and the tile bytes from one state of the store
        try:
            latest = newest_block(store)
            if latest is None:
                raise HTTPException(status_code=404, detail="the ledger has no sealed block yet")
            height, size = latest
            if wanted[0] != tiles.CHECKPOINT and not tiles.covered(size, wanted):
                raise HTTPException(status_code=404, detail="beyond the newest checkpoint (tree size %d)" % size)
            data = body(store, height, wanted)
        finally:
            store.db.execute("COMMIT")
        if wanted[0] == tiles.CHECKPOINT:
            return Response(data, media_type="text/plain; charset=utf-8", headers={"Cache-Control": CHECKPOINT})
        cache = IMMUTABLE if wanted[2] == 256 else PARTIAL
        return Response(data, media_type="application/octet-stream", headers={"Cache-Control": cache})
