"""The store under test, an SQLite file or a PostgreSQL database, as tests reach it from outside.

A *location* is what ``Store`` and ``crev_ingest.database.connect`` take: the
SQLite file's path, or a ``postgresql://`` URL (the ``store_url`` fixture of
conftest.py). These helpers read rows, copy a whole store, and change rows
the way someone holding the store would, past the application's guards.
"""

import sqlite3
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from crev_ingest.database import connect, is_postgres_url

Location = Path | str
# The two stores a store-facing test runs on (SPEC §5), as the ids of its variants: the ``store`` fixture's params.
STORES = ["sqlite", "postgresql"]


def location(directory: Path, store_url: str | None) -> Location:
    """The store a config written by harness.ingest_config (or registry_support.write_ingest_config) names."""
    return store_url or directory / "crev.sqlite"


def storage_toml(store_url: str | None, path: str = "crev.sqlite") -> str:
    """The ``[storage]`` line of an ingest config: the SQLite file ``path``, or the database at ``store_url``."""
    return 'url = "%s"' % store_url if store_url else 'path = "%s"' % path


def rows(where: Location, query: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of a query (``?`` placeholders on both stores), on a connection of its own."""
    db = connect(where, read_only=True)
    try:
        return [tuple(r) for r in db.execute(query, params)]
    finally:
        db.close()


def count(where: Location, query: str, params: tuple[object, ...] = ()) -> int:
    return int(rows(where, query, params)[0][0])


def tamper(where: Location, statement: str, params: tuple[object, ...] = ()) -> int:
    """Run one statement as the store's owner, past every guard; its rowcount.

    SQLite has no guard but the application's own code. On PostgreSQL the
    append-only triggers refuse even the owner, so the statement runs with
    them skipped (``session_replication_role = replica``, as the superuser
    the tests connect as): what a DBA forcing a change through could do.
    """
    if is_postgres_url(where):
        import psycopg

        with psycopg.connect(str(where), autocommit=True) as owner:
            owner.execute("SET session_replication_role = replica")
            return owner.execute(statement.replace("?", "%s"), params).rowcount
    with sqlite3.connect(where) as db:
        return db.execute(statement, params).rowcount


def _database(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def _with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + database))


def copy(source: Location, target: Path) -> Location:
    """A copy of the whole store: to the SQLite file ``target``, or a new PostgreSQL database (``target`` unused).

    PostgreSQL copies from ``source`` as a template, so no connection to it may be open.
    """
    if is_postgres_url(source):
        import psycopg

        url = str(source)
        name = "c_" + uuid.uuid4().hex[:12]
        with psycopg.connect(_with_database(url, "postgres"), autocommit=True) as admin:
            admin.execute('CREATE DATABASE "%s" TEMPLATE "%s"' % (name, _database(url)))
        return _with_database(url, name)
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    return target


def discard(where: Location) -> None:
    """Remove a store made by copy() once a test is done with it: the file, or the database."""
    if is_postgres_url(where):
        import psycopg

        url = str(where)
        with psycopg.connect(_with_database(url, "postgres"), autocommit=True) as admin:
            admin.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % _database(url))
    else:
        Path(where).unlink(missing_ok=True)
