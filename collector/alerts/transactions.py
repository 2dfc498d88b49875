"""Conditions of the transactions themselves: DECLINE_SPIKE and CONFLICTING_TRANSACTION."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from collector.alertconfig import AlertsSection
from collector.alerts.lifecycle import Lifecycle
from collector.alerts.rows import ConflictRow, TxnRow
from collector.rules import AlertType, Candidate, DeclineWatch, txn_fingerprint
from posmon.wire.models import Cause


class TransactionWatch:
    """Decline rates per terminal and merchant; conflicting claims of one transaction."""

    def __init__(
        self, settings: AlertsSection, lifecycle: Lifecycle, clock: Callable[[], datetime]
    ) -> None:
        self.settings = settings
        self.lifecycle = lifecycle
        self.clock = clock
        self.declines = DeclineWatch(
            settings.decline_window,
            settings.decline_baseline_min,
            settings.decline_factor,
            settings.decline_min_rate,
        )

    def txn(self, row: TxnRow) -> None:
        """A transaction counts towards its terminal's and its merchant's decline rate."""
        declined = not row.approved
        for key, label in ((row.tid, "TID"), (row.mid, "MID")):
            change = self.declines.feed(f"{label}:{key}", declined)
            if change is None:
                continue
            state, rate, baseline = change
            fingerprint = f"{AlertType.DECLINE_SPIKE.value}:{label}:{key}"
            now = self.clock()
            if state == "end":
                self.lifecycle.resolve(fingerprint, now, f"decline rate back to {rate:.0%}")
                continue
            window = self.settings.decline_window
            self.lifecycle.fire(
                Candidate(
                    type=AlertType.DECLINE_SPIKE,
                    fingerprint=fingerprint,
                    cause=Cause.UNKNOWN,
                    summary=f"{label} {key}: {rate:.0%} of the last {window} transactions "
                    f"declined (baseline {baseline:.0%})",
                    tid=row.tid if label == "TID" else None,
                    mid=row.mid,
                    details={
                        "evidence": [
                            f"decline rate {rate:.0%} over the last {window} transactions, "
                            f"against {baseline:.0%} before"
                        ],
                        "rate": round(rate, 4),
                        "baseline": round(baseline, 4),
                        "last_rc": row.rc,
                    },
                ),
                now,
            )

    def conflict(self, row: ConflictRow) -> None:
        """A transaction's key claimed again with other money or card: the first is kept,
        the other is evidence; a person decides which the terminal really made."""
        payload = row.payload
        amount = payload.get("amount")
        currency = payload.get("currency")
        self.lifecycle.fire(
            Candidate(
                type=AlertType.CONFLICTING_TRANSACTION,
                fingerprint=txn_fingerprint(AlertType.CONFLICTING_TRANSACTION, row.tid, row.rrn),
                cause=Cause.UNKNOWN,
                summary=(
                    f"TID {row.tid} RRN {row.rrn}: a second {row.kind} claims the "
                    f"same transaction with {row.differences}"
                )[:256],
                tid=row.tid,
                mid=payload.get("mid"),
                rrn=row.rrn,
                amount_at_risk=amount if isinstance(amount, int) and currency else None,
                currency=currency if isinstance(amount, int) and currency else None,
                details={
                    "first_event_id": row.first_event_id,
                    "conflicting_event_id": row.event_id,
                    "differences": row.differences,
                    "conflicting": dict(payload),
                },
            ),
            self.clock(),
        )
