"""A PostgreSQL server of the demo's own, in its work directory.

``crev demo --store postgres`` without CREV_DEMO_POSTGRES_URL starts one:
``initdb`` then ``pg_ctl start``, with only a unix socket in the server's
directory (no TCP port, so nothing clashes with a system server) and trust
authentication, which is safe because that directory is 0700: only its owner
(and root) can reach the socket.

Debian's ``initdb`` and ``pg_ctl`` refuse to run as root, so as root they run
as the ``postgres`` user (runuser), in a directory that user owns. That user
must be able to reach the directory; when it cannot (the work directory lies
in a 0700 directory such as /root or a ``mkdtemp`` one), or when the path
is too long for a unix socket, the server lives in a short temporary
directory instead, and the work directory gets a ``postgres`` link to it.
``pg_ctl start`` always gets a log file: without one the server would keep
the caller's output pipes open.
"""

import getpass
import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

from crev_cli import UsageError

INSTALL_HINT = "apt-get install postgresql, or set CREV_DEMO_POSTGRES_URL to an empty database's URL"
# sun_path holds 108 bytes with its NUL; the server refuses a longer socket path.
MAX_SOCKET_PATH = 103
SOCKET_NAME = ".s.PGSQL.5432"


def find_bin() -> Path:
    """The directory of initdb and pg_ctl: Debian's newest /usr/lib/postgresql/N/bin, else the PATH."""

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.split("/")[-3]))

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise UsageError("PostgreSQL is not installed (no initdb): %s" % INSTALL_HINT)
    return Path(initdb).parent


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


class LocalPostgres:
    """One server whose data, log and socket are all in ``root``."""

    def __init__(self, root: Path) -> None:
        self.bin = find_bin()
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self.as_root = os.geteuid() == 0
        if self.as_root:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise UsageError(
                    "as root, PostgreSQL runs as the postgres user, and there is none: %s" % INSTALL_HINT
                ) from None
        self.superuser = "postgres" if self.as_root else getpass.getuser()
        self.note = ""  # why the server is not in the work directory itself, if it is not

    @classmethod
    def create(cls, workdir: Path) -> "LocalPostgres":
        """An initialised, stopped server for the demo in ``workdir``: ``workdir/postgres`` or its link."""
        link = workdir / "postgres"
        if link.exists() or link.is_symlink():
            raise UsageError("%s already holds a demo's PostgreSQL server; give an empty --workdir" % workdir)
        server = cls(link)
        link.mkdir(mode=0o700)
        os.chmod(link, 0o700)  # the socket trusts whoever reaches it: its owner only
        if server.as_root:
            shutil.chown(link, "postgres", "postgres")
        reason = ""
        if len(str(link / SOCKET_NAME)) > MAX_SOCKET_PATH:
            reason = "the work directory's path is too long for a unix socket"
        elif server.as_root and not server._postgres_can_write(link):
            reason = "the postgres user cannot reach the work directory"
        if reason:
            link.rmdir()
            outside = Path(tempfile.mkdtemp(prefix="crev-demo-pg-"))
            if server.as_root:
                shutil.chown(outside, "postgres", "postgres")
            link.symlink_to(outside, target_is_directory=True)
            server.root, server.data, server.log = outside, outside / "data", outside / "server.log"
            server.note = "%s, so it is in %s (linked from %s)" % (reason, outside, link)
        server.init()
        return server

    def _postgres_can_write(self, directory: Path) -> bool:
        done = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(directory)], check=False)
        return done.returncode == 0

    def _run(self, what: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        try:
            # A session of its own: Ctrl-C in the terminal reaches the demo, which stops
            # its services first and the database last, rather than all at once.
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=120, check=False, start_new_session=True
            )
        except subprocess.TimeoutExpired:
            raise UsageError("PostgreSQL: %s took over 2 minutes; see %s" % (what, self.log)) from None
        if check and done.returncode != 0:
            detail = _last_line(done.stderr or done.stdout)
            if self.log.exists():
                detail = "%s (server log %s: %s)" % (detail, self.log, _last_line(self.log.read_text(errors="replace")))
            raise UsageError("PostgreSQL: %s failed: %s" % (what, detail))
        return done

    def init(self, *flags: str) -> None:
        self._run("initdb", "initdb", "-D", str(self.data), "-A", "trust", "-U", self.superuser, "-E", "UTF8", *flags)

    def start(self, settings: str = "") -> None:
        """Start it; ``settings``: more ``-c name=value`` for the server."""
        options = ("-k %s -c listen_addresses='' %s" % (self.root, settings)).strip()
        self._run(
            "pg_ctl start",
            *("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"),
        )

    def running(self) -> bool:
        # pg_ctl status: 0 running, 3 not running, 4 no data directory.
        return self._run("pg_ctl status", "pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def stop(self) -> bool:
        """A clean (fast) shutdown: every committed transaction stays. True if the server is down."""
        if not self.data.exists():
            return True
        self._run("pg_ctl stop", "pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop", check=False)
        return not self.running()

    def url(self, database: str) -> str:
        return "postgresql://%s@/%s?host=%s" % (quote(self.superuser, safe=""), database, quote(str(self.root)))

    def create_database(self, name: str) -> str:
        """A new, empty database owned by the superuser; its URL."""
        try:
            import psycopg
        except ImportError:
            raise UsageError("psycopg is not installed: pip install 'crev[postgres]'") from None
        try:
            with psycopg.connect(self.url("postgres"), autocommit=True) as admin:
                admin.execute('CREATE DATABASE "%s"' % name)
        except psycopg.Error as err:
            raise UsageError("PostgreSQL: cannot create database %s: %s" % (name, _last_line(str(err)))) from None
        return self.url(name)
