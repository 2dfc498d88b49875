"""The pure parts of alerting: cause classification, the stateful detectors, the table
follower's gap handling, and scoring against ground truth."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from collector.alerts import GAP_WAIT_S, Tail, money
from collector.classify import Facts, TerminalContext, classify
from collector.correlate import Outcome
from collector.rules import DeclineWatch, LinkWatch
from posmon.wire.models import Cause
from simulators.score import score

# --- classification -----------------------------------------------------------------------

FINE = TerminalContext(statuses=3)
DOWN = TerminalContext(statuses=3, link_down=True)
SAF = TerminalContext(statuses=3, saf_max=4)


@pytest.mark.parametrize(
    ("facts", "cause", "says"),
    [
        (Facts(Outcome.FAILED, reason_code="AC01"), Cause.ACCOUNT_INFO, "AC01"),
        (Facts(Outcome.RETURNED, reason_code=" be01 "), Cause.ACCOUNT_INFO, "BE01"),
        (Facts(Outcome.FAILED, reason_code="M102"), Cause.MERCHANT_QUALIFICATION, "M102"),
        (Facts(Outcome.FAILED, reason_code="TM01"), Cause.BANK_SYSTEM, "TM01"),
        (Facts(Outcome.FAILED, reason_code="N401"), Cause.NETWORK, "N401"),
        (Facts(Outcome.FAILED, reason_code="O301"), Cause.OPERATOR, "O301"),
        # No code, or one that names no cause: the context decides.
        (Facts(Outcome.FAILED, reason_code="MS03"), Cause.UNKNOWN, "names no cause"),
        (
            Facts(Outcome.FAILED, merchant_status="licence_expired"),
            Cause.MERCHANT_QUALIFICATION,
            "licence_expired",
        ),
        (Facts(Outcome.OVERDUE, rc="Y3", terminal=FINE), Cause.NETWORK, "offline (RC Y3)"),
        (Facts(Outcome.OVERDUE, rc="00", terminal=DOWN), Cause.NETWORK, "LINK=DOWN"),
        (Facts(Outcome.OVERDUE, rc="00", terminal=SAF), Cause.NETWORK, "4 offline"),
        (
            Facts(Outcome.OVERDUE, rc="00", terminal=FINE, batch_closed=False),
            Cause.OPERATOR,
            "never closed",
        ),
        (
            Facts(Outcome.OVERDUE, terminal=FINE, batch_closed=True, batch_result="UNBALANCED"),
            Cause.OPERATOR,
            "UNBALANCED",
        ),
        (
            Facts(Outcome.OVERDUE, terminal=FINE, batch_closed=True),
            Cause.BANK_SYSTEM,
            "late at the acquirer or bank",
        ),
        (
            Facts(Outcome.FAILED, bank_code="0102", maintenance="core upgrade"),
            Cause.BANK_SYSTEM,
            "core upgrade",
        ),
        (
            Facts(Outcome.FAILED, bank_code="0102", bank_failures=3, bank_outage_threshold=3),
            Cause.BANK_SYSTEM,
            "3 failures at bank 0102",
        ),
        (
            Facts(Outcome.FAILED, bank_code="0102", bank_failures=2, bank_outage_threshold=3),
            Cause.UNKNOWN,
            "no evidence",
        ),
        (
            Facts(Outcome.MISMATCH, expected_net=12_800, credited_net=12_000),
            Cause.OPERATOR,
            "credited 12000, expected 12800",
        ),
        (
            Facts(
                Outcome.MISMATCH,
                bank_code="0102",
                bank_failures=5,
                bank_outage_threshold=3,
                expected_net=12_800,
                credited_net=12_000,
            ),
            Cause.OPERATOR,
            "amount keyed wrong",
        ),
        (Facts(Outcome.DUPLICATE), Cause.BANK_SYSTEM, "credited twice"),
        (Facts(Outcome.REVERSED_BUT_SETTLED), Cause.OPERATOR, "voided or reversed"),
        (Facts(Outcome.ORPHAN, merchant_status="frozen"), Cause.UNKNOWN, "no transaction"),
        (Facts(Outcome.OVERDUE), Cause.UNKNOWN, "no evidence"),
    ],
)
def test_classification_names_the_cause_and_says_why(facts: Facts, cause: Cause, says: str) -> None:
    result = classify(facts)
    assert result.cause is cause
    assert any(says in line for line in result.evidence), result.evidence


def test_a_reason_code_wins_over_the_context_but_the_context_is_kept_as_evidence() -> None:
    facts = Facts(Outcome.FAILED, reason_code="AC04", bank_code="0102", maintenance="upgrade")
    result = classify(facts)
    assert result.cause is Cause.ACCOUNT_INFO
    assert any("upgrade" in line for line in result.evidence)


def test_configured_codes_come_before_the_default_table() -> None:
    overrides = {"AC04": Cause.BANK_SYSTEM, "ZZ9": Cause.OPERATOR}
    assert classify(Facts(Outcome.FAILED, reason_code="ac04"), overrides).cause is Cause.BANK_SYSTEM
    assert classify(Facts(Outcome.FAILED, reason_code="ZZ9"), overrides).cause is Cause.OPERATOR


def test_money_is_written_from_minor_units_without_floats() -> None:
    assert money(12_800, "CNY") == "128.00 CNY"
    assert money(5, "CNY") == "0.05 CNY"
    assert money(-1_001, "CNY") == "-10.01 CNY"
    assert money(None, "CNY") == "an unknown amount"


# --- detectors ---------------------------------------------------------------------------


def test_decline_spike_needs_a_baseline_fires_once_and_ends() -> None:
    watch = DeclineWatch(window=10, baseline_min=20, factor=3.0, min_rate=0.5)
    changes = [watch.feed("T", n % 10 == 0) for n in range(30)]  # 10% declines
    assert changes == [None] * 30
    spike = [watch.feed("T", n % 5 != 0) for n in range(10)]  # 80% declines
    assert [c[0] for c in spike if c] == ["start"]
    recovery = [watch.feed("T", False) for _ in range(10)]
    assert [c[0] for c in recovery if c] == ["end"]


def test_declines_without_a_baseline_are_no_spike() -> None:
    watch = DeclineWatch(window=10, baseline_min=20, factor=3.0, min_rate=0.5)
    assert [watch.feed("new terminal", True) for _ in range(25)] == [None] * 25


def test_link_watch_reports_trouble_held_long_enough_and_its_end() -> None:
    watch = LinkWatch(saf_threshold=5)
    t0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    assert watch.feed("A", link_up=False, saf=0, at=t0) is False
    assert watch.feed("B", link_up=True, saf=4, at=t0) is False  # below the threshold
    assert watch.due(t0 + timedelta(seconds=30), hold_s=60) == []
    assert watch.due(t0 + timedelta(seconds=60), hold_s=60) == [("A", t0)]
    assert watch.feed("A", link_up=True, saf=0, at=t0 + timedelta(seconds=61)) is True
    assert watch.due(t0 + timedelta(seconds=90), hold_s=60) == []


def rows(*ids: int) -> list[dict[str, Any]]:
    return [{"id": n} for n in ids]


def test_tail_does_not_skip_a_row_that_commits_after_a_later_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr("collector.alerts.time.monotonic", lambda: now[0])
    tail = Tail(position=10)
    assert [r["id"] for r in tail.take(rows(11, 13))] == [11, 13]
    assert tail.position == 11  # 12 is not committed yet: read again from there
    assert [r["id"] for r in tail.take(rows(12, 13, 14))] == [12, 14]
    assert tail.position == 14 and not tail.seen
    # A gap that never fills (a rolled-back insert) is given up after GAP_WAIT_S.
    tail.take(rows(16))
    now[0] += GAP_WAIT_S + 1
    tail.take(rows(16))
    assert tail.position == 16


# --- scoring -------------------------------------------------------------------------------

T = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def alert(alert_type: str, cause: str, *, tid: str = "10000001", rrn: str = "", **more: Any) -> Any:
    fingerprint = more.pop("fingerprint", f"{alert_type}:{tid}:{rrn}")
    return {
        "type": alert_type,
        "cause": cause,
        "tid": tid,
        "rrn": rrn or None,
        "mid": more.pop("mid", "898100012340001"),
        "bank_code": more.pop("bank_code", None),
        "fingerprint": fingerprint,
        "summary": "",
        "started_at": more.pop("started_at", T + timedelta(seconds=36)),
    }


def test_score_counts_detection_cause_false_and_related_alerts() -> None:
    truth = [
        {"kind": "FAILED", "cause": "ACCOUNT_INFO", "tid": "10000001", "rrn": "1",
         "settled_at": T.isoformat()},
        {"kind": "MISSING", "cause": "NETWORK", "tid": "10000001", "rrn": "2",
         "deadline": T.isoformat()},
        {"kind": "LATE", "cause": "BANK_SYSTEM", "tid": "10000001", "rrn": "3",
         "deadline": T.isoformat()},
        {"kind": "NORMAL", "tid": "10000001", "rrn": "4"},
        {"kind": "ORPHAN", "cause": "UNKNOWN", "settlement_ids": ["S-9"],
         "settled_at": T.isoformat()},
    ]  # fmt: skip
    terminal = [{"alert_type": "HOST_LINK_DOWN", "cause": "NETWORK", "tid": "10000002",
                 "mid": "898100012340001"}]  # fmt: skip
    alerts = [
        alert("SETTLEMENT_FAILED", "ACCOUNT_INFO", rrn="1"),
        alert("SETTLEMENT_OVERDUE", "OPERATOR", rrn="2"),  # found, wrong cause
        # rrn 3's overdue is missing; an OVERDUE before the FAILED of rrn 1 is related:
        alert("SETTLEMENT_OVERDUE", "UNKNOWN", rrn="1"),
        alert("ORPHAN_SETTLEMENT", "UNKNOWN", fingerprint="ORPHAN_SETTLEMENT:S-9"),
        alert("HOST_LINK_DOWN", "NETWORK", tid="10000002"),
        alert("HOST_LINK_DOWN", "NETWORK", tid="10000002"),  # the same condition again
        alert("SETTLEMENT_FAILED", "UNKNOWN", rrn="4"),  # nothing injected: false
    ]
    result = score(truth, terminal, alerts, scale=3600)
    assert (len(result.expected), result.detected) == (5, 4)
    assert result.recall == pytest.approx(0.8)
    assert result.cause_accuracy == pytest.approx(3 / 4)
    assert [a["rrn"] for a in result.false_alerts] == ["4"]
    assert result.related == 1
    assert result.by_type()["SETTLEMENT_OVERDUE"] == (2, 1, 0)
    assert result.delays_s["SETTLEMENT_FAILED"] == [pytest.approx(0.01)]  # 36 s / 3600
    assert not result.passed()
    report = result.as_dict()
    assert report["missed"] == [
        {"key": ["SETTLEMENT_OVERDUE", "10000001", "3"], "cause": "BANK_SYSTEM"}
    ]


def test_a_bank_outage_is_expected_only_with_enough_failures_to_see() -> None:
    outage = {"kind": "BANK_OUTAGE", "cause": "BANK_SYSTEM", "bank_code": "0102"}
    failed = {"kind": "FAILED", "cause": "BANK_SYSTEM", "scenario": "bank_outage",
              "bank_code": "0102", "tid": "10000001"}  # fmt: skip
    two = [outage, {**failed, "rrn": "1"}, {**failed, "rrn": "2"}]
    assert "BANK_OUTAGE" not in score(two, [], [], scale=1).by_type()
    three = [*two, {**failed, "rrn": "3"}]
    assert score(three, [], [], scale=1).by_type()["BANK_OUTAGE"] == (1, 0, 0)
