"""The collector's tables. Migrations (collector/migrations) create and evolve them.

Every lookup the collector makes on a hot path has an index, so with ten million
transactions stored each stays a B-tree search: by event id, by business key
(tid, rrn, kind), by the fallback settlement key (tid, batch, stan, txn_date), by open
deadline (outcome, deadline), and settlements by id and by unmatched key.

Over 400 lines only because it is declarations: one `Table` per stored thing, column by
column, and the column types that mask card numbers and keep times in UTC. One module on
purpose: the migrations and every module that runs SQL share one `MetaData`, and a newcomer
finds every table in one place (each section names the module that owns its SQL).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from posmon.pan import scrub, scrub_tree

metadata = MetaData()


class ScrubbedText(TypeDecorator[str]):
    """Free text (reasons, notes, summaries): card-number-shaped runs masked on the way in.

    The models already mask free text when they are built; this is the database's own
    guard, so that a column of free text cannot take a card number from any code path.
    """

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> Any:
        return None if value is None else scrub(value)


class ScrubbedLongText(ScrubbedText):
    """`ScrubbedText` without a length limit (TEXT)."""

    impl = Text
    cache_ok = True


class ScrubbedJSON(TypeDecorator[Any]):
    """JSON holding free text (extra keys, an alert's details): every string masked on the
    way in, except the values of typed identifiers (`posmon.pan.IDENTIFIER_KEYS`)."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else scrub_tree(value)


class UtcDateTime(TypeDecorator[datetime]):
    """An aware datetime, stored in UTC; SQLite (which keeps no offset) gets naive UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: posmon stores aware times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def aggregate_time(value: Any) -> datetime | None:
    """A min() or max() of a UtcDateTime column: SQLite hands back text without a zone."""
    if value is None:
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    assert isinstance(moment, datetime)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _id() -> Column[int]:
    # BIGINT on PostgreSQL; INTEGER PRIMARY KEY (the rowid) on SQLite.
    return Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )


transactions = Table(
    "transactions",
    metadata,
    _id(),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("agent_id", String(64), nullable=False),
    Column("tid", String(8), nullable=False),
    Column("mid", String(15), nullable=False),
    Column("kind", String(24), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("pan_masked", String(19), nullable=False),
    Column("rc", String(2), nullable=False),
    Column("approved", Boolean, nullable=False),
    Column("rrn", String(12), nullable=False),
    Column("stan", String(6), nullable=False),
    Column("batch", String(6), nullable=False),
    Column("txn_date", Date, nullable=False),  # terminal-local date
    Column("terminal_time", UtcDateTime(), nullable=False),
    Column("observed_at", UtcDateTime(), nullable=False),
    Column("stored_at", UtcDateTime(), nullable=False),
    Column("auth_code", String(6)),
    Column("issuer", String(11)),
    Column("entry_mode", String(8)),
    Column("orig_stan", String(6)),
    Column("orig_rrn", String(12)),
    Column("extra", ScrubbedJSON()),
    # The expectation: what should arrive, by when, and what did.
    Column("expected_net", BigInteger),
    Column("deadline", UtcDateTime()),
    Column("outcome", String(24), nullable=False),
    Column("outcome_at", UtcDateTime()),
    Column("settlement_id", String(64)),
    UniqueConstraint("tid", "rrn", "kind", name="uq_transactions_business_key"),
    # (tid, rrn) lookups use the business key's unique index.
    Index("ix_transactions_fallback", "tid", "batch", "stan", "txn_date"),
    Index("ix_transactions_open", "outcome", "deadline"),
    # Voids and reversals only: partial, so a sale's insert does not pay for them.
    Index(
        "ix_transactions_original",
        "tid",
        "orig_rrn",
        sqlite_where=text("orig_rrn IS NOT NULL"),
        postgresql_where=text("orig_rrn IS NOT NULL"),
    ),
    Index(
        "ix_transactions_original_stan",
        "tid",
        "batch",
        "orig_stan",
        sqlite_where=text("orig_stan IS NOT NULL"),
        postgresql_where=text("orig_stan IS NOT NULL"),
    ),
)

settlements = Table(
    "settlements",
    metadata,
    Column("settlement_id", String(64), primary_key=True),
    Column("mid", String(15), nullable=False),
    Column("tid", String(8), nullable=False),
    Column("rrn", String(12), nullable=False),
    Column("txn_date", Date, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("fee", BigInteger, nullable=False),
    Column("net_amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("status", String(12), nullable=False),
    Column("settled_at", UtcDateTime(), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("stan", String(6)),
    Column("batch", String(6)),
    Column("reason_code", String(16)),
    Column("reason_text", ScrubbedText(256)),
    Column("bank_code", String(11)),
    Column("account_masked", String(34)),
    Column("original_settlement_id", String(64)),
    Column("case_id", String(64)),
    Column("source", String(16), nullable=False),
    Column("received_at", UtcDateTime(), nullable=False),
    # What the settlement did: the transaction it matched, and the verdict.
    Column("transaction_id", BigInteger),
    Column("outcome", String(24), nullable=False),
    Index("ix_settlements_match", "outcome", "tid", "rrn"),
    Index("ix_settlements_transaction", "transaction_id"),
    # A transaction's settlements whatever their outcome (a case's evidence).
    Index("ix_settlements_key", "tid", "rrn"),
)

outcome_log = Table(
    "outcome_log",
    metadata,
    _id(),
    Column("transaction_id", BigInteger),
    Column("settlement_id", String(64)),
    Column("outcome", String(24), nullable=False),
    Column("previous", String(24)),
    Column("at", UtcDateTime(), nullable=False),
    Column("collector_id", String(64), nullable=False),
    Column("note", ScrubbedLongText()),
    Index("ix_outcome_log_transaction", "transaction_id"),
)

status_events = Table(
    "status_events",
    metadata,
    _id(),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("agent_id", String(64), nullable=False),
    Column("tid", String(8), nullable=False),
    Column("link_up", Boolean, nullable=False),
    Column("network", String(8), nullable=False),
    Column("saf_pending", Integer, nullable=False),
    Column("serial_ok", Boolean, nullable=False),
    Column("heartbeat_only", Boolean, nullable=False),
    Column("observed_at", UtcDateTime(), nullable=False),
    Column("rssi_dbm", Integer),
    Column("host_rtt_ms", Integer),
    Column("battery_pct", Integer),
    Column("paper", String(8)),
    Column("firmware", ScrubbedText(64)),
    Index("ix_status_events_tid_time", "tid", "observed_at"),
)

batches = Table(
    "batches",
    metadata,
    _id(),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("agent_id", String(64), nullable=False),
    Column("tid", String(8), nullable=False),
    Column("mid", String(15), nullable=False),
    Column("batch", String(6), nullable=False),
    Column("count", Integer, nullable=False),
    Column("total", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("result", String(12), nullable=False),
    Column("terminal_time", UtcDateTime(), nullable=False),
    Column("observed_at", UtcDateTime(), nullable=False),
    Index("ix_batches_tid_batch", "tid", "batch"),
)

presence = Table(
    "presence",
    metadata,
    Column("agent_id", String(64), primary_key=True),
    Column("state", String(8), nullable=False),
    Column("tids", JSON, nullable=False),
    Column("version", ScrubbedText(32), nullable=False),
    Column("observed_at", UtcDateTime(), nullable=False),
)

deadletters = Table(
    "deadletters",
    metadata,
    _id(),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("source", ScrubbedText(256), nullable=False),
    Column("reason", ScrubbedText(1024), nullable=False),
    Column("payload", ScrubbedLongText(), nullable=False),
    Column("topic", ScrubbedText(1024)),
    Column("observed_at", UtcDateTime(), nullable=False),
)

# A transaction whose business key (tid, rrn, kind) is held already by another event with
# other money or another card: the first one stays, this one is kept here as evidence and
# raises a CONFLICTING_TRANSACTION alert. (Dropping it as a repeat would let whoever
# publishes first decide what a merchant is owed.)
conflicts = Table(
    "conflicts",
    metadata,
    _id(),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("tid", String(8), nullable=False),
    Column("rrn", String(12), nullable=False),
    Column("kind", String(24), nullable=False),
    Column("first_event_id", String(36), nullable=False),
    Column("differences", ScrubbedText(1024), nullable=False),
    Column("payload", ScrubbedJSON(), nullable=False),
    Column("stored_at", UtcDateTime(), nullable=False),
    Index("ix_conflicts_key", "tid", "rrn"),
)

collectors = Table(
    "collectors",
    metadata,
    Column("collector_id", String(64), primary_key=True),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("seen_at", UtcDateTime(), nullable=False),
    Column("subscriptions", JSON, nullable=False),
    Column("counters", JSON, nullable=False),
)

# --- alerts (collector/alerts/store.py owns their SQL) --------------------------------------

alerts = Table(
    "alerts",
    metadata,
    Column("alert_id", String(64), primary_key=True),
    Column("fingerprint", String(256), nullable=False),
    # The fingerprint while the alert is open, NULL once resolved: its unique constraint
    # allows one open alert per condition, whoever fires it, on SQLite and PostgreSQL.
    Column("open_fingerprint", String(256), unique=True),
    Column("type", String(64), nullable=False),
    Column("severity", String(8), nullable=False),
    Column("status", String(16), nullable=False),  # firing, acknowledged, resolved
    Column("cause", String(32), nullable=False),
    Column("summary", ScrubbedText(256), nullable=False),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("resolved_at", UtcDateTime()),
    # When the fault happened by its own record (a settlement's settled_at, an overdue
    # credit's deadline), not when the collector heard of it: bank outages are measured
    # on it. NULL for conditions without such a time (a terminal offline, a spike).
    Column("occurred_at", UtcDateTime()),
    Column("tid", String(8)),
    Column("mid", String(15)),
    Column("rrn", String(12)),
    Column("bank_code", String(11)),
    Column("amount_at_risk", BigInteger),
    Column("currency", String(3)),
    Column("case_id", String(64)),
    Column("details", ScrubbedJSON()),
    Column("group_id", String(64)),  # the BANK_OUTAGE alert that gathers this one
    Column("silence_id", String(64)),  # muted by this silence or maintenance window
    Column("acked_at", UtcDateTime()),
    Column("acked_by", String(64)),
    Column("notified_at", UtcDateTime()),
    Column("collector_id", String(64), nullable=False),
    Index("ix_alerts_status", "status", "severity"),
    Index("ix_alerts_type_time", "type", "started_at"),
    Index("ix_alerts_bank_time", "bank_code", "started_at"),
    Index("ix_alerts_bank_occurred", "bank_code", "occurred_at"),
    Index("ix_alerts_fingerprint", "fingerprint"),
    Index("ix_alerts_group", "group_id"),
    # The newest alerts first (GET /alerts?state=all), and one terminal's.
    Index("ix_alerts_started", "started_at"),
    Index("ix_alerts_tid_time", "tid", "started_at"),
)

alert_history = Table(
    "alert_history",
    metadata,
    _id(),
    Column("alert_id", String(64), nullable=False),
    Column("at", UtcDateTime(), nullable=False),
    Column("event", String(16), nullable=False),  # fired, updated, acknowledged, resolved ...
    Column("actor", String(64), nullable=False),
    Column("note", ScrubbedLongText()),
    Index("ix_alert_history_alert", "alert_id"),
)

silences = Table(
    "silences",
    metadata,
    Column("silence_id", String(64), primary_key=True),
    Column("type", String(64)),
    Column("bank_code", String(11)),
    Column("mid", String(15)),
    Column("tid", String(8)),
    Column("starts_at", UtcDateTime(), nullable=False),
    Column("ends_at", UtcDateTime(), nullable=False),
    Column("maintenance", Boolean, nullable=False),  # also evidence of a BANK_SYSTEM cause
    Column("reason", ScrubbedText(256), nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Index("ix_silences_ends", "ends_at"),
)

# What each channel still has to deliver: written with the alert, in one transaction.
notifications = Table(
    "notifications",
    metadata,
    _id(),
    Column("alert_id", String(64), nullable=False),
    Column("channel", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UtcDateTime(), nullable=False),
    Column("delivered_at", UtcDateTime()),
    Column("last_error", ScrubbedText(512)),
    Column("collector_id", String(64), nullable=False),
    Index(
        "ix_notifications_due",
        "collector_id",
        "channel",
        "next_attempt_at",
        sqlite_where=text("delivered_at IS NULL"),
        postgresql_where=text("delivered_at IS NULL"),
    ),
)

# How far each collector's alert engine has read the tables it follows (outcome_log,
# status_events, batches, transactions): after a restart it carries on from there.
alert_cursors = Table(
    "alert_cursors",
    metadata,
    Column("collector_id", String(64), primary_key=True),
    Column("positions", JSON, nullable=False),  # table name -> last id read
    Column("updated_at", UtcDateTime(), nullable=False),
)

# --- re-remittance cases (collector/casestore.py owns their SQL) ----------------------------

cases = Table(
    "cases",
    metadata,
    Column("case_id", String(32), primary_key=True),
    # One case per original transaction, whoever opens it and however many at once.
    Column("transaction_id", BigInteger, nullable=False, unique=True),
    Column("tid", String(8), nullable=False),
    Column("mid", String(15), nullable=False),
    Column("rrn", String(12), nullable=False),
    Column("amount", BigInteger, nullable=False),  # what is owed: the expected net
    Column("currency", String(3), nullable=False),
    Column("cause", String(32), nullable=False),
    Column("remedy", String(24)),
    Column("alert_id", String(64)),
    Column("state", String(16), nullable=False),
    Column("state_since", UtcDateTime(), nullable=False),
    Column("opened_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("bank_code", String(11)),
    Column("account_masked", String(34)),  # corrected settlement account, masked
    Column("rejection_reason", ScrubbedText(256)),
    Column("remittance_settlement_id", String(64)),
    Column("sla_breached_state", String(16)),  # the state whose SLA alert has fired
    Index("ix_cases_state", "state", "state_since"),
    Index("ix_cases_tid", "tid"),
    Index("ix_cases_mid", "mid"),
    Index("ix_cases_opened", "opened_at"),  # the newest cases first (GET /cases?state=all)
)

# Append-only: every state change of every case, who made it and why.
case_events = Table(
    "case_events",
    metadata,
    _id(),
    Column("case_id", String(32), nullable=False),
    Column("at", UtcDateTime(), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("from_state", String(16)),
    Column("to_state", String(16), nullable=False),
    Column("note", ScrubbedLongText()),
    Index("ix_case_events_case", "case_id"),
)

# --- REST API tokens (collector/tokens.py owns their SQL) -----------------------------------

# Only the SHA-256 of a token is kept; the token itself is shown once, when it is made.
api_tokens = Table(
    "api_tokens",
    metadata,
    _id(),
    Column("name", String(64), nullable=False),  # the actor recorded for the token's actions
    Column("role", String(8), nullable=False),  # viewer, operator, admin
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("revoked_at", UtcDateTime()),
    # A name belongs to one live token; a revoked token keeps its name in the record.
    Index(
        "ix_api_tokens_live_name",
        "name",
        unique=True,
        sqlite_where=text("revoked_at IS NULL"),
        postgresql_where=text("revoked_at IS NULL"),
    ),
)


# --- row counts: collector/store/counts.py (kept by triggers, migration 0008) -----------------

# How many rows each growing table holds, and transactions per outcome, kept by the
# database's own triggers on every insert, delete and outcome change, so that /metrics and
# `collector status` read a few rows instead of counting millions. A table's count is the
# sum of its rows over `shard`: on PostgreSQL each connection adds to its own (its backend
# pid), so collectors sharing a database never wait on each other's counter row; the
# collector folds the shards of connections that have gone into shard 0. SQLite has one
# writer and one shard, 0.
row_counts = Table(
    "row_counts",
    metadata,
    Column("name", String(40), primary_key=True),  # a table, or outcome.<OUTCOME>
    Column("shard", Integer, primary_key=True),
    Column("n", BigInteger, nullable=False),
)
