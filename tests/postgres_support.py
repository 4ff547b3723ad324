"""A real PostgreSQL server for the tests, in a temporary directory.

Debian's ``initdb`` and ``pg_ctl`` refuse to run as root, so as root they
run as the ``postgres`` user (runuser), on a socket directory that user
owns; no TCP port is opened. ``pg_ctl start`` gets a log file: without
one the server would keep the caller's output pipes open.
"""

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql (as .ci/run does)")
    return Path(initdb).parent


class PostgresServer:
    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="crev-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self.superuser = "postgres" if self.as_root else (os.environ.get("USER") or "postgres")

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=check)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", self.superuser, "--no-sync", "-E", "UTF8")

    def start(self, durable: bool = False) -> None:
        """``durable``: fsync as a production server does (benchmarks). The tests kill
        clients, never the server, so they run without it on this shared disk."""
        options = "-k %s -c listen_addresses='' -c max_connections=200" % self.root
        if not durable:
            options += " -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres", user: str | None = None) -> str:
        return "postgresql://%s@/%s?host=%s" % (user or self.superuser, database, self.root)

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.url(), autocommit=True)

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database; its URL (as the superuser, who owns it)."""
        name = name or "t_" + uuid.uuid4().hex[:12]
        with self.admin() as admin:
            admin.execute('CREATE DATABASE "%s"' % name)
        return self.url(name)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
