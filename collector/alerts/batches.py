"""The terminals' batches: BATCH_NOT_CLOSED by the cut-off, BATCH_UNBALANCED at the close."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from collector.alerts.lifecycle import Lifecycle
from collector.alerts.rows import BatchRow, TxnRow, UnclosedBatch
from collector.config import CollectorConfig
from collector.correlate import EXPECTS_MONEY
from collector.rules import AlertType, Candidate
from posmon.money import money
from posmon.wire.models import Cause

# Closed batches remembered (see BatchWatch.closed): far more than close within one
# round of the engine, however large the fleet.
CLOSED_BATCHES_KEPT = 50_000


@dataclass(slots=True)
class OpenBatch:
    """A terminal's batch with approved sales and no BAT yet."""

    mid: str
    currency: str
    first_time: datetime
    count: int
    total: int

    def add(self, amount: int, at: datetime) -> None:
        self.count += 1
        self.total += amount
        self.first_time = min(self.first_time, at)


class BatchWatch:
    """What each terminal's open batch adds up to, until its BAT arrives."""

    def __init__(self, config: CollectorConfig, lifecycle: Lifecycle) -> None:
        self.config = config
        self.lifecycle = lifecycle
        self.zone = ZoneInfo(config.settlement.timezone)
        self.merchants = {rule.mid: rule for rule in config.merchants}
        # (tid, batch) -> what its approved sales add up to, until its BAT arrives.
        self.open: dict[tuple[str, str], OpenBatch] = {}
        self.seeded_upto = 0  # transactions up to this id are in `open` already
        # Batches closed lately. The engine reads the batches table before the transactions
        # table in each round, so a batch's last sale can be handled after its BAT: it must
        # not open the batch again (a BATCH_NOT_CLOSED nobody caused).
        self.closed: OrderedDict[tuple[str, str], None] = OrderedDict()

    def start(self, unclosed: Iterable[UnclosedBatch], seeded_upto: int) -> None:
        self.seeded_upto = seeded_upto
        for row in unclosed:
            self.open[(row.tid, row.batch)] = OpenBatch(
                row.mid, row.currency, row.first_time, row.count, row.total
            )

    def sale(self, row: TxnRow) -> None:
        """An approved sale adds to its open batch (one closed already stays closed)."""
        key = (row.tid, row.batch)
        if (
            row.approved
            and row.kind in EXPECTS_MONEY
            and row.id > self.seeded_upto
            and key not in self.closed
        ):
            batch = self.open.get(key)
            if batch is None:
                batch = self.open[key] = OpenBatch(row.mid, row.currency, row.terminal_time, 0, 0)
            batch.add(row.amount, row.terminal_time)

    def close(self, row: BatchRow, now: datetime) -> None:
        """A BAT: the batch is closed, balanced or not."""
        tid, batch = row.tid, row.batch
        self.open.pop((tid, batch), None)
        self.closed[(tid, batch)] = None
        while len(self.closed) > CLOSED_BATCHES_KEPT:
            self.closed.popitem(last=False)
        self.lifecycle.resolve(
            f"{AlertType.BATCH_NOT_CLOSED.value}:{tid}:{batch}", now, "the batch was closed"
        )
        fingerprint = f"{AlertType.BATCH_UNBALANCED.value}:{tid}:{batch}"
        if row.result == "OK":
            self.lifecycle.resolve(fingerprint, now, "the batch closed balanced")
            return
        self.lifecycle.fire(
            Candidate(
                type=AlertType.BATCH_UNBALANCED,
                fingerprint=fingerprint,
                cause=Cause.OPERATOR,
                summary=f"Batch {batch} of TID {tid} closed {row.result}: "
                f"{row.count} transactions, {money(row.total, row.currency)}",
                tid=tid,
                mid=row.mid,
                amount_at_risk=row.total,
                currency=row.currency,
                details={
                    "evidence": [f"BAT RESULT={row.result} from the terminal"],
                    "batch": batch,
                    "count": row.count,
                    "total": row.total,
                },
            ),
            now,
        )

    def unclosed(self, now: datetime) -> None:
        """BATCH_NOT_CLOSED: approved sales with no BAT by the cut-off after the first."""
        for (tid, batch_no), batch in self.open.items():
            fingerprint = f"{AlertType.BATCH_NOT_CLOSED.value}:{tid}:{batch_no}"
            if fingerprint in self.lifecycle.open:
                continue
            cutoff = self.cutoff_after(batch.mid, batch.first_time)
            if now < cutoff:
                continue
            self.lifecycle.fire(
                Candidate(
                    type=AlertType.BATCH_NOT_CLOSED,
                    fingerprint=fingerprint,
                    cause=Cause.OPERATOR,
                    summary=f"Batch {batch_no} of TID {tid} not closed by "
                    f"{cutoff.isoformat(timespec='minutes')}: {batch.count} approved "
                    f"sales, {money(batch.total, batch.currency)} waiting",
                    tid=tid,
                    mid=batch.mid,
                    amount_at_risk=batch.total,
                    currency=batch.currency,
                    details={
                        "evidence": ["no BAT from the terminal for this batch by the cut-off"],
                        "batch": batch_no,
                        "count": batch.count,
                        "cutoff": cutoff.isoformat(),
                    },
                ),
                now,
            )

    def cutoff_after(self, mid: str, moment: datetime) -> datetime:
        """The merchant's first cut-off after `moment` (local time of the settlement zone)."""
        rule = self.merchants.get(mid)
        cutoff_time = (rule.cutoff if rule and rule.cutoff else None) or (
            self.config.settlement.cutoff
        )
        local = moment.astimezone(self.zone)
        cutoff = datetime.combine(local.date(), cutoff_time, self.zone)
        return cutoff if cutoff > local else cutoff + timedelta(days=1)
