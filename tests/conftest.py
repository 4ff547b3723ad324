"""Shared fixtures: core vectors, a real mosquitto, an MQTT collector, a real PostgreSQL, and the store under test."""

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from harness import Mosquitto, ReadingCollector
from store_support import STORES
from support import load_vectors

# The files that take longest, longest first: `make test` runs two pytest processes, each taking
# the next file as it finishes one, and the suite ends sooner when no long file is left for last.
LONGEST_FIRST = (
    "test_benchmarks_run.py",
    "test_demo.py",
    "test_gateway_pipeline.py",
    "test_ingest_pipeline.py",
    "test_postgres_ingest.py",
    "test_registry_pipeline.py",
    "test_registry_crash.py",
    "test_market_pipeline.py",
    "test_provision.py",
    "test_ingest_validation.py",
    "test_control_pipeline.py",
    "test_mirror.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order


if TYPE_CHECKING:
    from postgres_support import PostgresServer


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    return load_vectors()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real mosquitto on a free loopback port, with persistence."""
    server = Mosquitto(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def collector(broker: Mosquitto) -> Iterator[ReadingCollector]:
    client = ReadingCollector(broker.port)
    yield client
    client.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator["PostgresServer"]:
    """One real PostgreSQL server for the session; each test takes its own database."""
    from postgres_support import PostgresServer

    server = PostgresServer()
    server.init()
    server.start()
    yield server
    server.destroy()


@pytest.fixture
def pg_url(postgres: "PostgresServer") -> str:
    """A fresh, empty database on the session's server."""
    return postgres.create_database()


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> str:
    """Which store the test runs on: "sqlite" (the test's crev.sqlite) or "postgresql"."""
    return str(request.param)


@pytest.fixture
def store_url(store: str, request: pytest.FixtureRequest) -> str | None:
    """None on SQLite; on PostgreSQL, the URL of a fresh database (the session's server starts on first use).

    What harness.ingest_config, LocalIngest and the other helpers take as their store.
    """
    if store == "sqlite":
        return None
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def pure_cbor(monkeypatch: pytest.MonkeyPatch) -> None:
    """The core's pure CBOR decoder alone, without the fast path crev_ingest installs on import."""
    from crev import cbor

    monkeypatch.setattr(cbor, "_fast_loads", None)
