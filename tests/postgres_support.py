"""A real PostgreSQL server for the tests, in a temporary directory.

The demo's server (crev_cli.local_postgres) with what tests need on top: a
throw-away directory, settings for speed, a database per test, and a
teardown that does not wait. As there, as root initdb and pg_ctl run as the
``postgres`` user, the socket is in the server's directory (no TCP port),
and ``pg_ctl start`` gets a log file.
"""

import shutil
import tempfile
import uuid
from pathlib import Path
from urllib.parse import quote

import psycopg

from crev_cli.local_postgres import LocalPostgres


class PostgresServer(LocalPostgres):
    def __init__(self) -> None:
        super().__init__(Path(tempfile.mkdtemp(prefix="crev-pg-")))
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")

    def init(self, *flags: str) -> None:
        super().init("--no-sync", *flags)

    def start(self, settings: str = "", durable: bool = False) -> None:
        """``durable``: fsync as a production server does (benchmarks). The tests kill
        clients, never the server, so they run without it on this shared disk."""
        settings = ("-c max_connections=200 " + settings + ("" if durable else " -c fsync=off")).strip()
        super().start(settings)

    def stop(self, mode: str = "fast") -> bool:
        self._run("pg_ctl stop", "pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)
        return not self.running()

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres", user: str | None = None) -> str:
        user = user or self.superuser
        return "postgresql://%s@/%s?host=%s" % (quote(user, safe=""), database, quote(str(self.root)))

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.url(), autocommit=True)

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database; its URL (as the superuser, who owns it)."""
        return super().create_database(name or "t_" + uuid.uuid4().hex[:12])

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
