"""The one connection the store talks through, to SQLite or to PostgreSQL.

The store's SQL is written once, in the subset both engines share: ``?``
placeholders, ``ON CONFLICT`` upserts, ``CASE`` instead of SQLite's two-
argument ``max``. This module carries what differs: how a connection opens,
how a write transaction takes the ledger's one writer lock, how a read
snapshot starts, the schema's column types, and the catalogue queries.

SQLite's ``BEGIN IMMEDIATE`` makes one writer at a time across every
process sharing the file. PostgreSQL runs writers side by side, so a write
transaction there takes a transaction-scoped advisory lock first: the leaf
index a transaction gives is the ledger's size when it started, and two
transactions must never both see the same size.
"""

import re
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from crev_ingest import StoreUnavailable

# pg_advisory_xact_lock key of the ledger's writer lock: "crev" in ASCII.
WRITER_LOCK = 0x63726576


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Any: ...


def is_postgres_url(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def redacted(url: str) -> str:
    """The URL without its password, fit for a log line."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = "%s:***@%s" % (parts.username or "", parts.hostname or "")
    if parts.port:
        netloc += ":%d" % parts.port
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class Database:
    dialect = ""
    label = ""
    # What a lost or locked database raises, for callers that wait and retry.
    errors: tuple[type[BaseException], ...] = ()
    integrity_errors: tuple[type[BaseException], ...] = ()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        raise NotImplementedError

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        raise NotImplementedError

    def insert_many(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Append ``rows`` to ``table`` (rows that conflict with none), in as few round trips as the engine allows."""
        if rows:
            self.executemany(
                "INSERT INTO %s (%s) VALUES (%s)" % (table, ", ".join(columns), ", ".join("?" * len(columns))), rows
            )

    def script(self, schema: str) -> None:
        """Run ``;``-separated DDL, one statement at a time (inside the caller's transaction, if any).

        ``--`` comments are dropped first, so that they may hold any text.
        """
        code = "\n".join(line.split("--", 1)[0] for line in schema.splitlines())
        for statement in code.split(";"):
            if statement.strip():
                self.execute(self.column_types(statement))

    def column_types(self, statement: str) -> str:
        return statement

    def has_table(self, name: str) -> bool:
        raise NotImplementedError

    def columns(self, table: str) -> list[str]:
        raise NotImplementedError

    def begin(self, lock: bool = True) -> None:
        """Start a write transaction, holding the ledger's writer lock unless ``lock`` is False."""
        raise NotImplementedError

    def begin_snapshot(self) -> None:
        """Start a read-only transaction that sees one consistent state throughout."""
        raise NotImplementedError

    def ensure_connected(self) -> None:
        """Replace a connection the server dropped; call it only between transactions."""

    def try_session_lock(self, key: int) -> bool:
        """Take a lock held as long as this connection lives, if nobody holds it (PostgreSQL only)."""
        raise NotImplementedError("%s has no session locks" % self.dialect)

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        self.execute("ROLLBACK")

    def close(self) -> None:
        raise NotImplementedError


class SQLiteDatabase(Database):
    dialect = "sqlite"
    errors = (sqlite3.Error,)
    integrity_errors = (sqlite3.IntegrityError,)

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = path
        self.label = str(path)
        if read_only:
            self.connection = sqlite3.connect(
                "file:%s?mode=ro" % path, uri=True, isolation_level=None, timeout=30, check_same_thread=False
            )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.connection = sqlite3.connect(str(path), isolation_level=None, timeout=30, check_same_thread=False)
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute("PRAGMA synchronous=FULL")
        # The hot path calls these a dozen times a reading: no wrapper in between.
        self.execute = self.connection.execute  # type: ignore[method-assign,assignment]
        self.executemany = self.connection.executemany  # type: ignore[method-assign,assignment]

    def has_table(self, name: str) -> bool:
        row = self.connection.execute(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        return row is not None

    def columns(self, table: str) -> list[str]:
        return [str(row[1]) for row in self.connection.execute("PRAGMA table_info(%s)" % table)]

    def begin(self, lock: bool = True) -> None:
        self.connection.execute("BEGIN IMMEDIATE")  # SQLite: always the one writer

    def begin_snapshot(self) -> None:
        self.connection.execute("BEGIN")

    def close(self) -> None:
        self.connection.close()


_PLACEHOLDER = re.compile(r"\?")
_TYPES = (
    # An id nobody supplies is numbered by the database; every other key is given.
    (re.compile(r"\bid INTEGER PRIMARY KEY\b"), "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
)


class PostgresDatabase(Database):
    dialect = "postgresql"

    def __init__(self, url: str, application_name: str = "crev") -> None:
        try:
            import psycopg
        except ImportError:
            raise StoreUnavailable(
                "[storage] url names PostgreSQL, but psycopg is not installed: pip install 'crev[postgres]'"
            ) from None
        self.label = redacted(url)
        self.errors = (psycopg.OperationalError, psycopg.errors.LockNotAvailable)
        self.integrity_errors = (psycopg.IntegrityError,)
        try:
            self.connection = _connect(url, application_name)
        except psycopg.Error as err:
            raise StoreUnavailable("cannot reach PostgreSQL at %s: %s" % (self.label, first_line(err))) from None
        self._url = url
        self._application_name = application_name
        self._sql: dict[str, str] = {}

    def _translate(self, sql: str) -> str:
        translated = self._sql.get(sql)
        if translated is None:
            translated = _PLACEHOLDER.sub("%s", sql.replace("%", "%%"))
            self._sql[sql] = translated
        return translated

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        cursor: Cursor = self.connection.execute(self._translate(sql), params)
        return cursor

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self.connection.cursor() as cursor:
            cursor.executemany(self._translate(sql), rows)

    def insert_many(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        # COPY: one stream for the lot, several times faster than a pipelined INSERT per row.
        if not rows:
            return
        with (
            self.connection.cursor() as cursor,
            cursor.copy("COPY %s (%s) FROM STDIN" % (table, ", ".join(columns))) as copy,
        ):
            for row in rows:
                copy.write_row(row)

    def column_types(self, statement: str) -> str:
        for pattern, replacement in _TYPES:
            statement = pattern.sub(replacement, statement)
        return statement

    def has_table(self, name: str) -> bool:
        row = self.execute("SELECT to_regclass(?)", (name,)).fetchone()
        return row is not None and row[0] is not None

    def columns(self, table: str) -> list[str]:
        rows = self.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = ? ORDER BY ordinal_position",
            (table,),
        )
        return [str(row[0]) for row in rows]

    def ensure_connected(self) -> None:
        self._reconnect_if_lost()

    def _reconnect_if_lost(self) -> None:
        # A restarted server leaves this connection broken for good: a new
        # transaction is the one safe place to replace it.
        if self.connection.closed or self.connection.broken:
            import psycopg

            try:
                self.connection = _connect(self._url, self._application_name)
            except psycopg.Error as err:
                raise StoreUnavailable("cannot reach PostgreSQL at %s: %s" % (self.label, first_line(err))) from None

    def begin(self, lock: bool = True) -> None:
        self._reconnect_if_lost()
        self.execute("BEGIN")
        if lock:
            self.execute("SELECT pg_advisory_xact_lock(?)", (WRITER_LOCK,))

    def try_session_lock(self, key: int) -> bool:
        """Take advisory lock ``key`` for as long as this connection lives, if nobody holds it."""
        self._reconnect_if_lost()
        row = self.execute("SELECT pg_try_advisory_lock(?)", (key,)).fetchone()
        return bool(row[0])

    def rollback(self) -> None:
        if not (self.connection.closed or self.connection.broken):  # a lost connection took its transaction along
            self.execute("ROLLBACK")

    def begin_snapshot(self) -> None:
        self._reconnect_if_lost()
        self.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def close(self) -> None:
        self.connection.close()


def _connect(url: str, application_name: str) -> Any:
    """A psycopg connection that reads numeric (what sum() of integers gives) as int, as SQLite does."""
    import psycopg
    from psycopg.adapt import Loader

    class WholeNumbers(Loader):
        def load(self, data: Any) -> int | float:
            text = bytes(data).decode("ascii")
            return int(text) if text.lstrip("-").isdigit() else float(text)

    connection = psycopg.connect(url, autocommit=True, application_name=application_name)
    connection.adapters.register_loader("numeric", WholeNumbers)
    return connection


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def connect(location: str | Path, read_only: bool = False) -> Database:
    """A connection to the store at ``location``: a postgresql:// URL or an SQLite file's path."""
    if is_postgres_url(location):
        return PostgresDatabase(str(location))
    return SQLiteDatabase(Path(location), read_only=read_only)
