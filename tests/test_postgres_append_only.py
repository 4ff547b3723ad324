"""Append-only on PostgreSQL: the application role cannot change ledger rows, triggers refuse
everyone, and a change the owner forces through is caught by `crev audit ledger`, naming the row."""

import random
import time
from pathlib import Path

import psycopg
import pytest
from ingest_support import LEDGER_KEY, Device, LocalIngest
from postgres_support import PostgresServer

from crev.keys import SigningKey
from crev_cli.main import main
from crev_ingest import LedgerError
from crev_ingest.audit import verify_ledger
from crev_ingest.store import Store

ROLE = "crev_app_test"


def _write_config(directory: Path, url: str) -> Path:
    (directory / "ledger.key").write_text(LEDGER_KEY.seed_bytes().hex() + "\n")
    (directory / "ledger.key").chmod(0o600)
    config = directory / "ingest.toml"
    config.write_text('[storage]\nurl = "%s"\n\n[ledger]\norigin = "crev.test/ledger"\nblock_max_leaves = 8\n' % url)
    return config


@pytest.fixture
def ledger(postgres: PostgresServer, tmp_path: Path) -> tuple[str, Path, Device]:
    """A PostgreSQL ledger with some readings, and the grants printed by the CLI applied."""
    url = postgres.create_database()
    config = _write_config(tmp_path, url)
    ingest = LocalIngest(tmp_path, url)
    device = Device("dgc-append-only", SigningKey(bytes([31]) * 32))
    ingest.enroll(device)
    for _ in range(20):  # two blocks, sealed at 8 and 16 leaves
        assert ingest.send(device.next()).status == "accepted"
    ingest.store.close()
    return url, config, device


def _grant(postgres: PostgresServer, url: str, config: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["ingest", "init", "--config", str(config), "--print-grants", "--role", ROLE]) == 0
    sql = capsys.readouterr().out
    assert "GRANT SELECT, INSERT ON leaves" in sql
    with psycopg.connect(url, autocommit=True) as owner:
        if owner.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone():
            sql = sql.replace("CREATE ROLE %s LOGIN;" % ROLE, "")  # one server for the session
        owner.execute(sql)
    database = url.split("/")[3].split("?")[0]
    return postgres.url(database, user=ROLE)


def test_the_application_role_cannot_change_ledger_rows(
    postgres: PostgresServer, ledger: tuple[str, Path, Device], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, config, device = ledger
    app_url = _grant(postgres, url, config, capsys)
    with psycopg.connect(app_url, autocommit=True) as app:
        for statement in (
            "UPDATE readings SET t1 = 0 WHERE seq = 3",
            "DELETE FROM leaves WHERE idx = 0",
            "TRUNCATE blocks",
            "UPDATE tiles SET data = data",
            "DELETE FROM lot_moves",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                app.execute(statement)
        assert app.execute("SELECT count(*) FROM readings").fetchone() == (20,)
    # And the role does its work: opening the store needs no DDL, and readings go in.
    ingest = LocalIngest(tmp_path, app_url)
    for _ in range(3):
        assert ingest.send(device.next()).status == "accepted"
    assert ingest.store.max_seq(device.dev) == 22
    ingest.store.close()


def test_triggers_refuse_the_owner_too(ledger: tuple[str, Path, Device]) -> None:
    url, _config, _device = ledger
    with psycopg.connect(url, autocommit=True) as owner:
        for statement in ("UPDATE readings SET t1 = t1 + 1", "DELETE FROM blocks", "TRUNCATE leaves CASCADE"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="ledger rows are only ever inserted"):
                owner.execute(statement)
        owner.execute("UPDATE devices SET status = 'offline'")  # bookkeeping changes in place


@pytest.mark.parametrize(
    ("table", "change", "named"),
    [
        ("readings", "UPDATE readings SET t1 = t1 + 60 WHERE seq = 4", "readings row (dgc-append-only, 4): columns"),
        ("leaves", "UPDATE leaves SET data = data || '\\x00'::bytea WHERE idx = 3", "leaves row idx 3: leaf_hash"),
        ("blocks", "DELETE FROM blocks WHERE height = 0", "blocks row height 1: does not link"),
    ],
)
def test_a_change_forced_by_the_owner_is_caught_and_named(
    ledger: tuple[str, Path, Device], capsys: pytest.CaptureFixture[str], table: str, change: str, named: str
) -> None:
    url, config, _device = ledger
    assert main(["audit", "ledger", "--config", str(config)]) == 0
    assert "OK" in capsys.readouterr().out
    with psycopg.connect(url, autocommit=True) as owner:
        owner.execute("ALTER TABLE %s DISABLE TRIGGER crev_append_only" % table)
        owner.execute(change)
        owner.execute("ALTER TABLE %s ENABLE TRIGGER crev_append_only" % table)
    assert main(["audit", "ledger", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert "FAIL: %s" % named in out, out


def test_init_creates_the_schema_and_print_grants_needs_postgres(
    postgres: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = postgres.create_database()
    config = tmp_path / "ingest.toml"
    config.write_text('[storage]\nurl = "%s"\n' % url)
    assert main(["ingest", "init", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "schema version" in out and "pubkey" in out
    store = Store(url)
    assert store.db.has_table("leaves") and store.db.has_table("cosignatures") and store.leaf_count() == 0
    store.close()
    sqlite_config = tmp_path / "sqlite.toml"
    sqlite_config.write_text('[storage]\npath = "crev.sqlite"\n')
    assert main(["ingest", "init", "--config", str(sqlite_config), "--print-grants"]) == 2
    assert "--print-grants is for PostgreSQL" in capsys.readouterr().err


# ------------------------------------------------------------ tampering, as in test_ledger_tamper, on PostgreSQL

TAMPERED_COLUMNS = [
    # (table, the column that orders its rows, the bytea column changed, what the audit names)
    ("leaves", "idx", "data", "leaves"),
    ("leaves", "idx", "leaf_hash", "leaves"),
    ("tile_edge", "level", "data", "tiles"),
    ("tiles", "idx", "data", "tiles"),
    ("blocks", "height", "header", "blocks"),
    ("blocks", "height", "block_hash", "blocks"),
    ("blocks", "height", "root", "blocks"),
    ("key_events", "leaf_idx", "pubkey", "key_events"),
]


@pytest.fixture(scope="module")
def template(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A ledger of 300 readings (one full tile and an edge), as a template database to copy per case."""
    url = postgres.create_database("tamper_template")
    ingest = LocalIngest(tmp_path_factory.mktemp("tamper"), url)
    device = Device("dgc-tamper-pg", SigningKey(bytes([32]) * 32), t1=int(time.time()) // 60 * 60 - 60 * 400)
    ingest.enroll(device)
    for _ in range(300):
        assert ingest.send(device.next()).status == "accepted"
    with ingest.store.transaction():
        ingest.ledger.sync()
        ingest.ledger.seal(int(time.time()) * 1000)
    ingest.store.close()
    return "tamper_template"


@pytest.mark.parametrize(("table", "order", "column", "named"), TAMPERED_COLUMNS)
@pytest.mark.parametrize("seed", [1, 2])
def test_any_changed_byte_is_caught_and_named_on_postgres(
    postgres: PostgresServer, template: str, table: str, order: str, column: str, named: str, seed: int
) -> None:
    name = "tamper_%s_%s_%d" % (table, column, seed)
    with postgres.admin() as admin:
        admin.execute('CREATE DATABASE "%s" TEMPLATE "%s"' % (name, template))
    url = postgres.url(name)
    rng = random.Random(seed)
    with psycopg.connect(url, autocommit=True) as owner:
        owner.execute("SET session_replication_role = replica")  # the superuser skips the triggers
        keys = [r[0] for r in owner.execute("SELECT %s FROM %s ORDER BY %s" % (order, table, order))]
        chosen = rng.choice(keys)
        found = owner.execute("SELECT length(%s) FROM %s WHERE %s = %%s" % (column, table, order), (chosen,))
        length = found.fetchone()[0]  # type: ignore[index]
        position, xor = rng.randrange(length), rng.randrange(1, 256)
        owner.execute(
            "UPDATE %s SET %s = set_byte(%s, %%s, get_byte(%s, %%s) # %%s) WHERE %s = %%s"
            % (table, column, column, column, order),
            (position, position, xor, chosen),
        )
    store = Store(url)
    try:
        with pytest.raises(LedgerError) as caught:
            verify_ledger(store, LEDGER_KEY.public_key, "crev.test/ledger")
    finally:
        store.close()
    assert str(caught.value).startswith(named), "%s.%s changed but the failure names: %s" % (
        table,
        column,
        caught.value,
    )
