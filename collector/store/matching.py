"""Which stored rows belong together: the set-based lookups of matching.

A batch's transactions look for the approved cancels (VOID, REVERSAL) naming them and for
the orphan settlements waiting for them; a void looks for its original; a batch's
settlements look for their transactions (by RRN; failing that, by batch, STAN and a date
within the clock skew). Each lookup is one statement for a whole run of keys
(`Matcher.keyed`), built once per store. Nothing here writes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlalchemy import Connection, RowMapping, String, and_, bindparam, func, or_, select
from sqlalchemy.dialects import postgresql

from collector.correlate import CANCELS, EXPECTS_MONEY, Outcome
from collector.schema import settlements, transactions
from collector.store.inserts import SettlementInsert
from collector.store.rows import OrphanSettlement, TxnOutcome
from collector.store.writes import slices
from posmon.wire.models import TxnEvent

MONEY_KINDS = [kind.value for kind in EXPECTS_MONEY]
_CANCEL_KINDS = [kind.value for kind in CANCELS]
# Keys per matching query: bounds the size of one statement's parameters and results.
_KEYS_PER_QUERY = 1000


@dataclass(frozen=True, slots=True)
class StoredCancel:
    """An approved VOID or REVERSAL as stored: the keys by which it names its original."""

    tid: str
    batch: str
    orig_rrn: str | None
    orig_stan: str | None
    event_id: str


class Matcher:
    """The matching lookups of one store (its dialect, its clock skew, its statements)."""

    def __init__(self, *, is_postgres: bool, skew: timedelta) -> None:
        self._is_postgres = is_postgres
        self._skew = skew
        self._statements: dict[str, Any] = {}

    def cancels_of(
        self, conn: Connection, txns: Sequence[TxnEvent], new_ids: set[str]
    ) -> list[StoredCancel]:
        """Approved cancels stored before this run that name one of `txns` as original.

        By (tid, orig_rrn), an index search; and by (tid, batch, orig_stan), a search of the
        (tid, batch) prefix of the fallback index (a terminal's batch: hundreds of rows).
        Cancels new in the run (event ids in `new_ids`) are left to `original_of`, in order.
        """
        if not txns:
            return []
        key = transactions.c
        found: list[StoredCancel] = []
        columns = (key.tid, key.batch, key.orig_rrn, key.orig_stan, key.event_id)
        cancel = and_(key.kind.in_(_CANCEL_KINDS), key.approved.is_(True))
        pairs = sorted({(txn.tid, txn.rrn) for txn in txns})
        found.extend(
            StoredCancel(**row)
            for row in self.keyed(
                conn,
                "cancels_by_rrn",
                ("tid", "rrn"),
                pairs,
                lambda keys: (
                    select(*columns)
                    .join(keys, and_(key.tid == keys.c.tid, key.orig_rrn == keys.c.rrn))
                    .where(cancel)
                ),
            )
        )
        triples = sorted({(txn.tid, txn.batch, txn.stan) for txn in txns})
        found.extend(
            StoredCancel(**row)
            for row in self.keyed(
                conn,
                "cancels_by_stan",
                ("tid", "batch", "stan"),
                triples,
                lambda keys: (
                    select(*columns)
                    .join(
                        keys,
                        and_(
                            key.tid == keys.c.tid,
                            key.batch == keys.c.batch,
                            key.orig_stan == keys.c.stan,
                        ),
                    )
                    .where(cancel)
                ),
            )
        )
        return [cancel for cancel in found if cancel.event_id not in new_ids]

    def orphans_of(self, conn: Connection, txns: Sequence[TxnEvent]) -> list[OrphanSettlement]:
        """Orphan settlements of the terminals of `txns`, oldest first (few: each an alert)."""
        if not txns:
            return []
        key = settlements.c
        orphans = self.keyed(
            conn,
            "orphans",
            ("tid",),
            sorted({(txn.tid,) for txn in txns}),
            lambda keys: (
                select(settlements)
                .join(keys, key.tid == keys.c.tid)
                .where(key.outcome == Outcome.ORPHAN.value)
            ),
        )
        found = [OrphanSettlement.from_row(row) for row in orphans]
        return sorted(found, key=lambda row: (row.settled_at, row.settlement_id))

    def original_of(self, conn: Connection, void: TxnEvent) -> TxnOutcome | None:
        key = transactions.c
        conditions = []
        if void.orig_rrn is not None:
            conditions.append(key.rrn == void.orig_rrn)
        if void.orig_stan is not None:
            conditions.append(and_(key.batch == void.batch, key.stan == void.orig_stan))
        if not conditions:
            return None
        found = (
            conn.execute(
                select(transactions)
                .where(key.tid == void.tid, key.kind.in_(MONEY_KINDS), or_(*conditions))
                .order_by(key.id)
                .limit(1)
            )
            .mappings()
            .first()
        )
        return TxnOutcome.from_row(found) if found is not None else None

    def match_all(
        self, conn: Connection, rows: Sequence[SettlementInsert]
    ) -> dict[str, TxnOutcome]:
        """Settlement id -> the transaction it belongs to, for those that have one.

        `rows`: the settlements' insert values (`collector.store.settlements`). The first
        money transaction (by id) of the terminal with the settlement's RRN; failing that,
        with its batch and STAN and a date within the clock skew.
        """
        key = transactions.c

        by_rrn: dict[tuple[str, str], TxnOutcome] = {}
        pairs = sorted({(row["tid"], row["rrn"]) for row in rows})
        money = key.kind.in_(MONEY_KINDS)
        for hit in self.keyed(
            conn,
            "match_by_rrn",
            ("tid", "rrn"),
            pairs,
            lambda keys: (
                select(transactions)
                .join(keys, and_(key.tid == keys.c.tid, key.rrn == keys.c.rrn))
                .where(money)
                .order_by(key.id)
            ),
        ):
            if (hit["tid"], hit["rrn"]) not in by_rrn:
                by_rrn[hit["tid"], hit["rrn"]] = TxnOutcome.from_row(hit)
        # A transaction found by batch and STAN, with its date: it matches within the skew.
        # Looked up with a settlement's batch and STAN, None when the file had none (a miss).
        by_stan: dict[tuple[str, str | None, str | None], list[tuple[date, TxnOutcome]]] = {}
        triples = sorted(
            {
                (row["tid"], row["batch"], row["stan"])
                for row in rows
                if (row["tid"], row["rrn"]) not in by_rrn
                and row["batch"] is not None
                and row["stan"] is not None
            }
        )
        for hit in self.keyed(
            conn,
            "match_by_stan",
            ("tid", "batch", "stan"),
            triples,
            lambda keys: (
                select(transactions)
                .join(
                    keys,
                    and_(key.tid == keys.c.tid, key.batch == keys.c.batch, key.stan == keys.c.stan),
                )
                .where(money)
                .order_by(key.id)
            ),
        ):
            by_stan.setdefault((hit["tid"], hit["batch"], hit["stan"]), []).append(
                (hit["txn_date"], TxnOutcome.from_row(hit))
            )
        matches: dict[str, TxnOutcome] = {}
        if not by_rrn and not by_stan:
            return matches  # all orphans, as in a file imported before its transactions
        for row in rows:
            txn = by_rrn.get((row["tid"], row["rrn"]))
            candidates = (
                by_stan.get((row["tid"], row["batch"], row["stan"])) if txn is None else None
            )
            if candidates:
                low, high = row["txn_date"] - self._skew, row["txn_date"] + self._skew
                txn = next((c for day, c in candidates if low <= day <= high), None)
            if txn is not None:
                matches[row["settlement_id"]] = txn
        return matches

    def keyed(
        self,
        conn: Connection,
        name: str,
        names: tuple[str, ...],
        keys: Sequence[tuple[str, ...]],
        query: Callable[[Any], Any],
    ) -> list[RowMapping]:
        """The rows of `query(keys table)` for these keys, `_KEYS_PER_QUERY` at a time.

        The keys table has columns `names` and is joined on an index. The keys travel as
        one parameter per column (PostgreSQL arrays) or one JSON text (SQLite), so the
        statement stays the same whatever their number and is built once per store under
        `name` (SQLAlchemy's building and cache key cost a millisecond a batch otherwise).
        (A row-value IN list would make SQLite scan the table.)
        """
        statement = self._statements.get(name)
        if statement is None:
            statement = self._statements[name] = query(self._key_rows(names))
        found: list[RowMapping] = []
        for part in slices(keys, _KEYS_PER_QUERY):
            params: dict[str, list[str] | str] = (
                {f"keys_{n}": [key[i] for key in part] for i, n in enumerate(names)}
                if self._is_postgres
                else {"keys": json.dumps(part)}
            )
            found.extend(conn.execute(statement, params).mappings())
        return found

    def _key_rows(self, names: tuple[str, ...]) -> Any:
        """The keys table of `keyed`: its parameters named after `names`."""
        if self._is_postgres:
            arrays = [bindparam(f"keys_{name}", type_=postgresql.ARRAY(String)) for name in names]
            return func.unnest(*arrays).table_valued(*names).render_derived(name="keys")
        each = func.json_each(bindparam("keys", type_=String)).table_valued("value")
        return (
            select(
                *(func.json_extract(each.c.value, f"$[{i}]").label(n) for i, n in enumerate(names))
            )
            .select_from(each)
            .subquery("keys")
        )


def is_cancel_of(cancel: StoredCancel, txn: TxnEvent) -> bool:
    """Whether a stored cancel names `txn` as its original (by RRN, or batch and STAN)."""
    return cancel.tid == txn.tid and (
        cancel.orig_rrn == txn.rrn or (cancel.batch == txn.batch and cancel.orig_stan == txn.stan)
    )


def is_orphan_of(
    orphan: OrphanSettlement, txn: TxnEvent, local_date: date, skew: timedelta
) -> bool:
    """Whether an orphan settlement belongs to `txn`: its RRN, or batch, STAN and date."""
    return orphan.tid == txn.tid and (
        orphan.rrn == txn.rrn
        or (
            orphan.batch == txn.batch
            and orphan.stan == txn.stan
            and local_date - skew <= orphan.txn_date <= local_date + skew
        )
    )
