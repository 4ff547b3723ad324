"""Append-only ledger tables on PostgreSQL: triggers, and the grants a DBA gives.

Two locks, each enough on its own. The application role that ingest, the
registry and the market connect as gets SELECT and INSERT on the ledger's
tables and nothing more, so PostgreSQL refuses its UPDATE, DELETE and
TRUNCATE; and triggers refuse those statements from anyone, the owner
included, until the owner deliberately disables them. A change made that
way is then caught by ``crev audit ledger``, which recomputes every row from
the signed leaves and names the first that differs.
"""

from crev_ingest.database import Database

# Rows that mirror signed leaves, or are evidence (quarantine): only ever inserted.
APPEND_ONLY_TABLES = (
    "leaves",
    "tiles",
    "blocks",
    "key_events",
    "readings",
    "series",
    "quarantine",
    "account_events",
    "site_events",
    "site_devices",
    "issuances",
    "lots",
    "lot_moves",
    "retirements",
    "releases",
    "orders",
    "trades",
    "cosignatures",
)
# Bookkeeping that changes in place, all of it recomputable or operational.
BOOKKEEPING_TABLES = (
    "tile_edge",
    "pending",
    "chain_heads",
    "schema_version",
    "gaps",
    "alarms",
    "stats",
    "devices",
    "daily",
    "issue_cursors",
    "issued_ahead",
    "order_inbox",
    "witness_state",
    "reconciliation",
)

REFUSE_FUNCTION = """
CREATE OR REPLACE FUNCTION crev_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    RAISE EXCEPTION 'crev: % on % refused: ledger rows are only ever inserted', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$body$
"""


def install_triggers(db: Database) -> None:
    """Create the refusing triggers on every append-only table there is (PostgreSQL; the owner runs it)."""
    db.execute(REFUSE_FUNCTION)
    for table in APPEND_ONLY_TABLES:
        if not db.has_table(table):
            continue
        db.execute(
            "CREATE OR REPLACE TRIGGER crev_append_only BEFORE UPDATE OR DELETE ON %s "
            "FOR EACH ROW EXECUTE FUNCTION crev_refuse_change()" % table
        )
        db.execute(
            "CREATE OR REPLACE TRIGGER crev_no_truncate BEFORE TRUNCATE ON %s "
            "FOR EACH STATEMENT EXECUTE FUNCTION crev_refuse_change()" % table
        )


def grants_sql(database: str, role: str) -> str:
    """The SQL a DBA runs, as the owner of the schema `crev ingest init` created, for the application role."""
    return "\n".join(
        [
            "-- crev: the application role for ingest, the registry and the market on database %s." % database,
            "-- Run as the owner of the tables that `crev ingest init` created, then give the role a password",
            "-- (ALTER ROLE %s PASSWORD '...') and put it in [storage] url or password_file." % role,
            "CREATE ROLE %s LOGIN;" % role,
            "GRANT CONNECT ON DATABASE %s TO %s;" % (database, role),
            "GRANT USAGE ON SCHEMA public TO %s;" % role,
            "-- Ledger rows: read and append, never change (triggers refuse it from anyone as well).",
            "GRANT SELECT, INSERT ON %s TO %s;" % (", ".join(APPEND_ONLY_TABLES), role),
            "-- Bookkeeping: changes in place.",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO %s;" % (", ".join(BOOKKEEPING_TABLES), role),
            "-- The ids of quarantine, gaps, alarms and the order inbox.",
            "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO %s;" % role,
            "",
        ]
    )
