"""Re-remittance cases: the workflow as a state machine against a real database, one case
per transaction under concurrency (SQLite and PostgreSQL), the collector opening and moving
cases by itself, the SLA alert, and the commands with the evidence package."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from sqlalchemy import insert, select
from test_collector_alerts import BANK, TID, AlertRig, alert_rig, failed
from test_collector_ingest import MID, MID_T0, settlement, txn

from collector.caserows import StoredCase
from collector.cases import (
    TRANSITIONS,
    CaseError,
    CaseState,
    manual,
    original_arrived,
    remittance_arrived,
)
from collector.casestore import CaseStore, mask_account
from collector.config import CollectorConfig
from collector.schema import case_events, transactions
from collector.store import Store
from collector.store.rows import StoredTransaction
from collector.terms import SettlementTerms
from posmon.wire.models import SettlementKind, SettlementStatus

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
__all__ = ["alert_rig"]  # the fixture, shared with the alert tests


def stored_txn(store: Store, rrn: str = "402511000001") -> StoredTransaction:
    """A transactions row, inserted directly (the case store needs nothing else)."""
    row = {
        "event_id": f"e-{rrn}",
        "agent_id": "box-1",
        "tid": TID,
        "mid": MID,
        "kind": "SALE",
        "amount": 12_800,
        "currency": "CNY",
        "pan_masked": "622202*********0123",
        "rc": "00",
        "approved": True,
        "rrn": rrn,
        "stan": rrn[-6:],
        "batch": "000042",
        "txn_date": NOW.date(),
        "terminal_time": NOW,
        "observed_at": NOW,
        "stored_at": NOW,
        "expected_net": 12_723,
        "outcome": "FAILED",
    }
    with store.engine.begin() as conn:
        conn.execute(insert(transactions).values(row))
        found = conn.execute(select(transactions).where(transactions.c.rrn == rrn)).mappings()
        return StoredTransaction.from_row(found.one())


@pytest.fixture
def store(tmp_path: Path) -> Any:
    made = Store(f"sqlite:///{tmp_path}/posmon.db", SettlementTerms(CollectorConfig()))
    made.migrate()
    yield made
    made.close()


# --- the workflow, pure -------------------------------------------------------------------


def test_every_state_has_its_exits_and_the_ends_have_none() -> None:
    assert set(TRANSITIONS) == set(CaseState)
    assert TRANSITIONS[CaseState.CLOSED] == TRANSITIONS[CaseState.CANCELLED] == frozenset()
    with pytest.raises(CaseError, match="cannot go to REMITTED"):
        manual(CaseState.OPEN, CaseState.REMITTED)
    with pytest.raises(CaseError, match="bank's reason"):
        manual(CaseState.SUBMITTED, CaseState.REJECTED)
    assert manual(CaseState.REJECTED, CaseState.SUBMITTED).to is CaseState.SUBMITTED


def test_money_arriving_confirms_once_and_only_in_full() -> None:
    assert remittance_arrived(CaseState.BANK_PROCESSING, expected=100, credited=100) is not None
    assert remittance_arrived(CaseState.BANK_PROCESSING, expected=100, credited=90) is None
    assert remittance_arrived(CaseState.CONFIRMED, expected=100, credited=100) is None
    assert original_arrived(CaseState.SUBMITTED) is not None
    assert original_arrived(CaseState.REMITTED) is None  # the money is on its way already


def test_accounts_are_kept_masked() -> None:
    assert mask_account("6222 0212 3456 7890") == "************7890"
    with pytest.raises(CaseError):
        mask_account("1234")


# --- the workflow against a real database: hypothesis drives it --------------------------

STATES = st.sampled_from(list(CaseState))


class CaseWorkflow(RuleBasedStateMachine):
    """Random people and settlements acting on one transaction's case."""

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(f"/tmp/posmon-case-machine-{id(self)}")
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "posmon.db").unlink(missing_ok=True)
        self.store = Store(f"sqlite:///{self.folder}/posmon.db", SettlementTerms(CollectorConfig()))
        self.store.migrate()
        self.cases = CaseStore(self.store.engine)
        self.txn = stored_txn(self.store)
        opened = self.cases.open(self.txn, cause="BANK_SYSTEM", now=NOW, actor="t")
        self.case_id = opened.case.case_id
        self.state = CaseState.OPEN
        self.clock = NOW

    def teardown(self) -> None:
        self.store.close()

    def _tick(self) -> datetime:
        self.clock += timedelta(minutes=1)
        return self.clock

    @rule(to=STATES, note=st.sampled_from(["", "bank says AC01"]))
    def person_moves(self, to: CaseState, note: str) -> None:
        allowed = to in TRANSITIONS[self.state] and (
            note or to not in (CaseState.REJECTED, CaseState.CONFIRMED)
        )
        try:
            case = self.cases.advance(self.case_id, to, actor="ops", now=self._tick(), note=note)
        except CaseError:
            assert not allowed
            return
        assert allowed
        self.state = case.state

    @rule(in_full=st.booleans())
    def remittance_arrives(self, in_full: bool) -> None:
        case = self.cases.get(self.case_id)
        assert case is not None
        credited = case.amount if in_full else case.amount - 1
        move = remittance_arrived(self.state, expected=case.amount, credited=credited)
        if move is not None:
            self.state = self.cases.apply(case, move, actor="c", now=self._tick()).state

    @rule()
    def original_arrives(self) -> None:
        case = self.cases.get(self.case_id)
        assert case is not None
        move = original_arrived(self.state)
        if move is not None:
            self.state = self.cases.apply(case, move, actor="c", now=self._tick()).state

    @rule()
    def opened_again(self) -> None:
        again = self.cases.open(self.txn, cause="NETWORK", now=self._tick(), actor="t")
        assert not again.created and again.case.case_id == self.case_id

    @invariant()
    def one_case_one_confirmation_and_a_true_log(self) -> None:
        if not hasattr(self, "cases"):
            return
        assert len(self.cases.search(state=None, tid=TID)) == 1
        log = self.cases.audit_log(self.case_id)
        assert sum(entry.to_state is CaseState.CONFIRMED for entry in log) <= 1
        for before, after in itertools.pairwise(log):
            assert after.from_state == before.to_state, "the log is a chain of moves"
        case = self.cases.get(self.case_id)
        assert case is not None and case.state.value == self.state.value == log[-1].to_state.value


CaseWorkflow.TestCase.settings = settings(
    max_examples=60, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
test_case_workflow_state_machine = CaseWorkflow.TestCase


# --- concurrency ------------------------------------------------------------------------------


def test_fifty_concurrent_openings_give_one_case(database_url: str) -> None:
    store = Store(database_url, SettlementTerms(CollectorConfig()))
    store.migrate()
    try:
        row = stored_txn(store)
        cases = CaseStore(store.engine, reads=store.reads)
        results: list[Any] = []
        start = threading.Barrier(50)

        def open_one(n: int) -> None:
            start.wait()
            results.append(cases.open(row, cause="ACCOUNT_INFO", now=NOW, actor=f"worker-{n}"))

        threads = [threading.Thread(target=open_one, args=(n,)) for n in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(results) == 50
        assert sum(result.created for result in results) == 1
        assert len({result.case.case_id for result in results}) == 1
        with store.engine.connect() as conn:
            opened = conn.execute(select(case_events).where(case_events.c.to_state == "OPEN"))
            assert len(opened.all()) == 1
    finally:
        store.close()


# --- the collector opens and moves cases by itself ----------------------------------------


def reremittance(rrn: str, settlement_id: str, net: int, case_id: str | None = None) -> Any:
    return settlement(rrn, settlement_id, net=net).model_copy(
        update={"kind": SettlementKind.REREMITTANCE, "case_id": case_id}
    )


def wait_case(rig: AlertRig, rrn: str, state: str, timeout: float = 10) -> StoredCase:
    cases = CaseStore(rig.rig.reader.engine)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [c for c in cases.search(state=None) if c.rrn == rrn]
        if found and found[0].state == state:
            return found[0]
        time.sleep(0.05)
    pytest.fail(f"case of {rrn} not {state} within {timeout} s: {found}")


def test_a_failure_opens_a_case_and_the_full_reremittance_confirms_it(
    alert_rig: AlertRig,
) -> None:
    rig = alert_rig
    rig.start()
    rig.publish(txn("402511000201"), failed("402511000201", "S-201", "AC01"))
    alert = rig.wait_alert("SETTLEMENT_FAILED")
    case = wait_case(rig, "402511000201", "OPEN")
    assert alert.case_id == case.case_id
    assert (case.cause, case.remedy, case.amount) == (
        "ACCOUNT_INFO",
        "FIX_ACCOUNT",
        12_800,
    )
    # Short: not confirmed, and the amount is an alert.
    rig.publish(reremittance("402511000201", "R-201a", 12_000, case.case_id))
    rig.wait_alert("AMOUNT_MISMATCH", where=lambda a: a.rrn == "402511000201")
    stored = CaseStore(rig.rig.reader.engine).get(case.case_id)
    assert stored is not None and stored.state is CaseState.OPEN


def test_reremittance_in_full_confirms_and_resolves_the_failure(alert_rig: AlertRig) -> None:
    rig = alert_rig
    rig.start()
    rig.publish(txn("402511000202"), failed("402511000202", "S-202", "B202"))
    rig.wait_alert("SETTLEMENT_FAILED")
    case = wait_case(rig, "402511000202", "OPEN")
    rig.publish(reremittance("402511000202", "R-202", 12_800, case.case_id))
    confirmed = wait_case(rig, "402511000202", "CONFIRMED")
    assert confirmed.remittance_settlement_id == "R-202"
    rig.wait_alert("SETTLEMENT_FAILED", "resolved")
    log = CaseStore(rig.rig.reader.engine).audit_log(case.case_id)
    assert [(e.from_state, e.to_state) for e in log] == [
        (None, CaseState.OPEN),
        (CaseState.OPEN, CaseState.CONFIRMED),
    ]


def test_a_late_original_credit_cancels_the_overdue_case(alert_rig: AlertRig) -> None:
    rig = alert_rig
    rig.start()
    rig.publish(txn("402511000203", mid=MID_T0))
    rig.wait_alert("SETTLEMENT_OVERDUE")
    case = wait_case(rig, "402511000203", "OPEN")
    late = settlement("402511000203", "S-203").model_copy(update={"mid": MID_T0})
    rig.publish(late)
    cancelled = wait_case(rig, "402511000203", "CANCELLED")
    assert cancelled.case_id == case.case_id


def test_a_case_held_too_long_in_a_state_raises_an_sla_alert_until_it_moves(
    alert_rig: AlertRig,
) -> None:
    rig = alert_rig
    rig.start(cases={"sla_hours": {"OPEN": 0.0001}})  # 0.36 s
    rig.publish(txn("402511000204"), failed("402511000204", "S-204", "AC01"))
    case = wait_case(rig, "402511000204", "OPEN")
    breached = rig.wait_alert("CASE_SLA_BREACHED")
    assert breached.rrn == "402511000204" and (breached.details or {})["case_id"] == case.case_id
    CaseStore(rig.rig.reader.engine).advance(
        case.case_id, CaseState.VERIFYING, actor="ops-li", now=datetime.now(UTC)
    )
    rig.wait_alert("CASE_SLA_BREACHED", "resolved")


def test_causes_not_configured_open_no_case(alert_rig: AlertRig) -> None:
    rig = alert_rig
    rig.start(cases={"open_for": ["BANK_SYSTEM"]})
    rig.publish(txn("402511000205"), failed("402511000205", "S-205", "AC01"))
    alert = rig.wait_alert("SETTLEMENT_FAILED")
    time.sleep(0.3)
    assert alert.case_id is None and CaseStore(rig.rig.reader.engine).search(state=None) == []


# --- the commands ---------------------------------------------------------------------------


def posmon(*args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "posmon"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_cases_commands_and_the_evidence_package(alert_rig: AlertRig, tmp_path: Path) -> None:
    rig = alert_rig
    running = rig.start()
    full_pan = "6222021234567890123"
    sale = txn("402511000206").model_copy(update={"pan_masked": "622202*********0123"})
    rig.publish(sale, failed("402511000206", "S-206", "AC04", bank=BANK))
    case = wait_case(rig, "402511000206", "OPEN")
    running.stop()
    config = tmp_path / "collector.toml"
    config.write_text(f'[database]\nurl = "{rig.rig.database_url}"\n')
    case_id = case.case_id

    listed = posmon("cases", "list", "-c", str(config))
    assert listed.returncode == 0 and case_id in listed.stdout and "ACCOUNT_INFO" in listed.stdout
    refused = posmon(
        "cases", "advance", case_id, "--to", "REMITTED", "--by", "ops", "-c", str(config)
    )
    assert refused.returncode == 1 and "cannot go to REMITTED" in refused.stderr
    for to in ("VERIFYING", "SUBMITTED"):
        moved = posmon(
            "cases", "advance", case_id, "--to", to, "--by", "ops-li",
            "--account", "6222 0212 3456 7890", "-c", str(config),
        )  # fmt: skip
        assert moved.returncode == 0, moved.stderr
    shown = posmon("cases", "show", case_id, "-c", str(config))
    assert "SUBMITTED" in shown.stdout and "************7890" in shown.stdout
    assert "6222021234567890" not in shown.stdout
    assert "OPEN -> VERIFYING by ops-li" in shown.stdout

    out = tmp_path / "evidence"
    written = posmon("cases", "evidence", case_id, "--out", str(out), "-c", str(config))
    assert written.returncode == 0, written.stderr
    data = json.loads((out / f"{case_id}.json").read_text())
    assert data["case"]["state"] == "SUBMITTED" and data["cause"]["cause"] == "ACCOUNT_INFO"
    assert any("AC04" in line for line in data["cause"]["evidence"])
    assert data["transaction"]["pan_masked"] == "622202*********0123"
    assert [s["settlement_id"] for s in data["settlements"]] == ["S-206"]
    assert any("case OPEN -> VERIFYING" in e["what"] for e in data["timeline"])
    pdf = (out / f"{case_id}.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and len(pdf) > 1000
    for blob in (pdf, (out / f"{case_id}.json").read_bytes()):
        assert full_pan.encode() not in blob


def test_a_reremittance_under_its_own_rrn_naming_its_case_confirms_it(alert_rig: AlertRig) -> None:
    rig = alert_rig
    rig.start()
    rig.publish(txn("402511000207"), failed("402511000207", "S-207", "AC01"))
    alert = rig.wait_alert("SETTLEMENT_FAILED")
    case = wait_case(rig, "402511000207", "OPEN")
    # The bank re-sends under a new reference, naming the case (or the original credit).
    by_case = reremittance("402511999207", "R-207", 12_800, case.case_id)
    rig.publish(by_case)
    confirmed = wait_case(rig, "402511000207", "CONFIRMED")
    assert confirmed.remittance_settlement_id == "R-207"
    resolved = rig.wait_alert("SETTLEMENT_FAILED", "resolved")
    assert resolved.alert_id == alert.alert_id
    time.sleep(0.3)
    assert rig.alerts("ORPHAN_SETTLEMENT") == [], "a re-remittance by reference is no orphan"


def test_the_bank_refusing_the_reremittance_rejects_the_case_with_its_reason(
    alert_rig: AlertRig,
) -> None:
    rig = alert_rig
    rig.start()
    rig.publish(txn("402511000208"), failed("402511000208", "S-208", "AC01"))
    case = wait_case(rig, "402511000208", "OPEN")
    cases = CaseStore(rig.rig.reader.engine)
    for to in (CaseState.VERIFYING, CaseState.SUBMITTED):
        cases.advance(case.case_id, to, actor="ops-li", now=datetime.now(UTC))
    refused = failed("402511999208", "R-208", "AC04", status_=SettlementStatus.FAILED).model_copy(
        update={
            "kind": SettlementKind.REREMITTANCE,
            "original_settlement_id": "S-208",
            "reason_text": "account closed",
        }
    )
    rig.publish(refused)
    rejected = wait_case(rig, "402511000208", "REJECTED")
    assert rejected.rejection_reason == "bank: FAILED AC04 account closed"
    assert cases.audit_log(case.case_id)[-1].to_state is CaseState.REJECTED
