"""Grouping: failures at one bank gathered under one BANK_OUTAGE, as Alertmanager groups.

An outage is "this many failures within this window", measured on when each failure
happened (`alerts.occurred_at`), not on when the collector heard of it: `densest_window`
finds the cluster. A failure that may be the bank's doing (its cause BANK_SYSTEM) counts;
one about the merchant or its account says nothing about the bank. The members keep
their own alerts but are not notified one by one once their group is open, and the
group resolves when no failure has happened at the bank for a window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from collector.alertconfig import AlertsSection
from collector.alerts.rows import BankFailure
from collector.alerts.store import AlertStore
from collector.rules import BANK_FAILURES, AlertType, Candidate, densest_window
from posmon.money import money
from posmon.wire.models import Cause

# Causes that a cluster of failures at one bank can stand for.
BANK_CAUSES = frozenset({Cause.BANK_SYSTEM.value})
_FAILURE_TYPES = sorted(alert_type.value for alert_type in BANK_FAILURES)


def outage_fingerprint(bank_code: str) -> str:
    return f"{AlertType.BANK_OUTAGE.value}:{bank_code}"


@dataclass(frozen=True, slots=True)
class Outage:
    """A BANK_OUTAGE to fire, and the failures it gathers."""

    candidate: Candidate
    members: tuple[str, ...]  # their alert ids


class BankOutages:
    """Clusters of failures at each bank: counting them, gathering them, resolving them."""

    def __init__(self, store: AlertStore, settings: AlertsSection) -> None:
        self.store = store
        self.settings = settings
        self.window = timedelta(minutes=settings.bank_outage_window_min)

    @staticmethod
    def counts(candidate: Candidate) -> bool:
        """Whether a failure may be the bank's doing (and so counts towards an outage)."""
        return (
            candidate.bank_code is not None
            and candidate.type in BANK_FAILURES
            and candidate.cause in BANK_CAUSES
        )

    def open_group(self, bank_code: str) -> str | None:
        """The alert id of the bank's open BANK_OUTAGE, if there is one."""
        group = self.store.open_alert(outage_fingerprint(bank_code))
        return group.alert_id if group else None

    def cluster(self, bank_code: str, at: datetime) -> list[BankFailure]:
        """The most unresolved failures at one bank that happened within one outage
        window holding `at` (`densest_window`)."""
        failures = self.store.bank_failures(
            _FAILURE_TYPES, sorted(BANK_CAUSES), bank_code, at - self.window, at + self.window
        )
        return densest_window(((failure.at, failure) for failure in failures), at, self.window)

    def before(self, bank_code: str, at: datetime, fingerprint: str) -> int:
        """How many other unresolved failures at one bank happened within the outage
        window before `at` (classify rule 4: is the bank down without this one?). Only
        what came before: a failure is classified when it comes, and the score counts the
        same way (`simulators.score`)."""
        failures = self.store.bank_failures(
            _FAILURE_TYPES, sorted(BANK_CAUSES), bank_code, at - self.window, at
        )
        return sum(
            1
            for failure in failures
            if failure.fingerprint != fingerprint and failure.at > at - self.window
        )

    def outage(self, failure: Candidate, now: datetime) -> Outage | None:
        """The BANK_OUTAGE a failure completes: enough failures within one window, by
        when each happened; None while there are too few."""
        bank_code = failure.bank_code
        assert bank_code is not None
        members = self.cluster(bank_code, failure.occurred_at or now)
        if len(members) < self.settings.bank_outage_failures:
            return None
        at_risk = sum(member.amount_at_risk or 0 for member in members)
        currency = next((member.currency for member in members if member.currency), None)
        window = self.settings.bank_outage_window_min
        ids = tuple(member.alert_id for member in members)
        candidate = Candidate(
            type=AlertType.BANK_OUTAGE,
            fingerprint=outage_fingerprint(bank_code),
            cause=Cause.BANK_SYSTEM,
            summary=f"Bank {bank_code}: {len(members)} settlement failures within "
            f"{window:g} min, {money(at_risk, currency)} not credited",
            bank_code=bank_code,
            amount_at_risk=at_risk if currency else None,
            currency=currency,
            details={
                "evidence": [f"{len(members)} failures at bank {bank_code} within {window:g} min"],
                "failures": len(members),
                "members": list(ids),
            },
        )
        return Outage(candidate, ids)

    def join(self, group_id: str, outage: Outage, now: datetime) -> None:
        self.store.join_group(group_id, outage.members, now)

    def over(self, now: datetime) -> list[tuple[str, str]]:
        """The open outages with no failure at their bank for a window: (fingerprint, note)."""
        ended = []
        for group in self.store.open_of_type(AlertType.BANK_OUTAGE.value):
            bank_code = str(group.bank_code)
            recent = self.store.recent(_FAILURE_TYPES, bank_code, now - self.window)
            if not any(alert.cause in BANK_CAUSES for alert in recent):
                minutes = self.window.total_seconds() / 60
                note = f"no failure at bank {bank_code} for {minutes:g} min"
                ended.append((group.fingerprint, note))
        return ended
