"""Row counts kept by triggers (row_counts), and the indexes the slow reads lacked.

`/metrics` and `collector status` counted every growing table at each call: 3.2 s per
scrape at 10 million transactions (benchmarks/growth.py). The database now keeps the
counts itself: a trigger on every insert and delete of the growing tables, and on every
outcome change of a transaction, adds to `row_counts`. On PostgreSQL inserts and deletes
are counted once per statement (with its transition tables, so a COPY of a million rows
costs one upsert per count), an outcome change per row that changes it, and each
connection adds to its own shard (its backend pid): collectors sharing the database never
queue on one counter row. On SQLite the triggers run per row, on shard 0.
The counts of the rows already stored are taken in this migration, under the triggers'
table locks, so none is missed or counted twice.

Indexes, each for a plan the growth benchmark showed as a whole-table scan at 10 M:
settlements (tid, rrn) for a case's evidence; alerts (started_at) and (tid, started_at)
and cases (opened_at) for the lists that show the newest first.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 21:20:00
"""

# ruff: noqa: S608 - the statements are built from this module's constants (table, trigger
# and function names), never from input.

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# The tables whose rows are counted (transactions also per outcome).
COUNTED = ("transactions", "settlements", "status_events", "batches", "deadletters", "outcome_log")

_INDEXES = (
    ("settlements", "ix_settlements_key", ["tid", "rrn"]),
    ("alerts", "ix_alerts_started", ["started_at"]),
    ("alerts", "ix_alerts_tid_time", ["tid", "started_at"]),
    ("cases", "ix_cases_opened", ["opened_at"]),
)

_ADD = "ON CONFLICT (name, shard) DO UPDATE SET n = row_counts.n + EXCLUDED.n"

# PostgreSQL: a function per shape of change. The statement-level ones upsert in
# name order; a connection only ever locks its own shard rows.
_POSTGRESQL_FUNCTIONS = {
    "posmon_count_insert": f"""
        INSERT INTO row_counts (name, shard, n)
        SELECT TG_TABLE_NAME, pg_backend_pid(), count(*) FROM new_rows HAVING count(*) > 0
        {_ADD};""",
    "posmon_count_delete": f"""
        INSERT INTO row_counts (name, shard, n)
        SELECT TG_TABLE_NAME, pg_backend_pid(), -count(*) FROM old_rows HAVING count(*) > 0
        {_ADD};""",
    "posmon_count_transactions_insert": f"""
        INSERT INTO row_counts (name, shard, n)
        SELECT name, pg_backend_pid(), count(*) FROM (
            SELECT 'transactions' AS name FROM new_rows
            UNION ALL SELECT 'outcome.' || outcome FROM new_rows
        ) AS added GROUP BY name ORDER BY name
        {_ADD};""",
    # Per changed row (a trigger for each row, and only when the outcome changes): the
    # matcher updates one row per statement, most of them without an outcome change.
    "posmon_count_outcome_change": f"""
        INSERT INTO row_counts (name, shard, n) VALUES
            ('outcome.' || OLD.outcome, pg_backend_pid(), -1),
            ('outcome.' || NEW.outcome, pg_backend_pid(), 1)
        {_ADD};""",
    "posmon_count_transactions_delete": f"""
        INSERT INTO row_counts (name, shard, n)
        SELECT name, pg_backend_pid(), -count(*) FROM (
            SELECT 'transactions' AS name FROM old_rows
            UNION ALL SELECT 'outcome.' || outcome FROM old_rows
        ) AS removed GROUP BY name ORDER BY name
        {_ADD};""",
}


def _postgresql_triggers() -> list[tuple[str, str, str, str]]:
    """(trigger, table, event, function) of each PostgreSQL trigger."""
    found = [
        ("count_transactions_insert", "transactions", "INSERT", "posmon_count_transactions_insert"),
        ("count_transactions_update", "transactions", "UPDATE", "posmon_count_outcome_change"),
        ("count_transactions_delete", "transactions", "DELETE", "posmon_count_transactions_delete"),
    ]
    for table in COUNTED[1:]:
        found.append((f"count_{table}_insert", table, "INSERT", "posmon_count_insert"))
        found.append((f"count_{table}_delete", table, "DELETE", "posmon_count_delete"))
    return found


def _sqlite_triggers() -> dict[str, str]:
    """Trigger name to its SQLite statement (row-level, shard 0)."""
    add = "ON CONFLICT (name, shard) DO UPDATE SET n = n + excluded.n"
    found = {
        "count_transactions_insert": f"""
            CREATE TRIGGER count_transactions_insert AFTER INSERT ON transactions BEGIN
                INSERT INTO row_counts (name, shard, n)
                VALUES ('transactions', 0, 1), ('outcome.' || NEW.outcome, 0, 1) {add};
            END""",
        "count_transactions_update": f"""
            CREATE TRIGGER count_transactions_update AFTER UPDATE OF outcome ON transactions
            WHEN NEW.outcome <> OLD.outcome BEGIN
                INSERT INTO row_counts (name, shard, n)
                VALUES ('outcome.' || OLD.outcome, 0, -1), ('outcome.' || NEW.outcome, 0, 1)
                {add};
            END""",
        "count_transactions_delete": f"""
            CREATE TRIGGER count_transactions_delete AFTER DELETE ON transactions BEGIN
                INSERT INTO row_counts (name, shard, n)
                VALUES ('transactions', 0, -1), ('outcome.' || OLD.outcome, 0, -1) {add};
            END""",
    }
    for table in COUNTED[1:]:
        for event, sign in (("INSERT", 1), ("DELETE", -1)):
            name = f"count_{table}_{event.lower()}"
            found[name] = f"""
                CREATE TRIGGER {name} AFTER {event} ON {table} BEGIN
                    INSERT INTO row_counts (name, shard, n) VALUES ('{table}', 0, {sign}) {add};
                END"""
    return found


def upgrade() -> None:
    op.create_table(
        "row_counts",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", "shard"),
    )
    # Plain CREATE INDEX, not a batch operation: on SQLite a batch that rebuilds a table
    # would drop its triggers with it (a later migration that must rebuild a counted table
    # has to create its triggers again).
    for table, name, columns in _INDEXES:
        op.create_index(name, table, columns, unique=False)
    if op.get_bind().dialect.name == "postgresql":
        for function, body in _POSTGRESQL_FUNCTIONS.items():
            op.execute(
                f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
                f"BEGIN{body}\n    RETURN NULL;\nEND $$"
            )
        for trigger, table, event, function in _postgresql_triggers():
            if event == "UPDATE":
                when = "FOR EACH ROW WHEN (OLD.outcome IS DISTINCT FROM NEW.outcome)"
                op.execute(
                    f"CREATE TRIGGER {trigger} AFTER UPDATE OF outcome ON {table} {when} "
                    f"EXECUTE FUNCTION {function}()"
                )
                continue
            rows = "NEW TABLE AS new_rows" if event == "INSERT" else "OLD TABLE AS old_rows"
            op.execute(
                f"CREATE TRIGGER {trigger} AFTER {event} ON {table} REFERENCING {rows} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
            )
    else:
        for statement in _sqlite_triggers().values():
            op.execute(statement)
    # The rows already there. On PostgreSQL the triggers above hold each table's lock
    # until this migration commits, so a row is either counted here or by a trigger.
    for table in COUNTED:
        op.execute(
            f"INSERT INTO row_counts (name, shard, n) SELECT '{table}', 0, count(*) FROM {table}"
        )
    op.execute(
        "INSERT INTO row_counts (name, shard, n) "
        "SELECT 'outcome.' || outcome, 0, count(*) FROM transactions GROUP BY outcome"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for trigger, table, _event, _function in _postgresql_triggers():
            op.execute(f"DROP TRIGGER {trigger} ON {table}")
        for function in _POSTGRESQL_FUNCTIONS:
            op.execute(f"DROP FUNCTION {function}()")
    else:
        for trigger in _sqlite_triggers():
            op.execute(f"DROP TRIGGER {trigger}")
    for table, name, _columns in reversed(_INDEXES):
        op.drop_index(name, table_name=table)
    op.drop_table("row_counts")
