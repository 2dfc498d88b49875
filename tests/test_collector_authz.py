"""What the collector checks itself, whatever the broker lets through (issue #14): a
terminal's message speaks for its topic's terminal only, a terminal no agent serves is
flagged, and a transaction's business key claimed first with other money does not make
the real transaction vanish as a repeat.

These run on a broker without an ACL, as a misconfigured one would be.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from test_collector_alerts import AlertRig, alert_rig  # noqa: F401 - the fixture
from test_collector_ingest import txn

from collector.alerts import AlertEngine, AlertStore
from collector.casestore import CaseStore
from collector.config import CollectorConfig
from collector.ingest import topic_mismatch
from collector.schema import conflicts, deadletters, transactions
from collector.store import Store
from collector.terms import SettlementTerms
from posmon.mqtt import Topics
from posmon.wire.models import PresenceEvent, PresenceState

TID = "10000001"
OTHER_TID = "10000002"
RRN = "402511000001"


def test_a_message_is_judged_against_its_topic() -> None:
    topics = Topics("posmon/v1")
    sale = txn(RRN, tid=TID)
    assert topic_mismatch(topics.terminal(TID, "txn"), topics, sale) is None
    assert topic_mismatch(topics.terminal(OTHER_TID, "txn"), topics, sale) == (
        f"payload tid {TID} is not the topic's terminal {OTHER_TID}"
    )
    presence = PresenceEvent(
        agent_id="box-1",
        state=PresenceState.ONLINE,
        tids=[TID],
        version="1",
        observed_at=datetime.now(UTC),
    )
    assert topic_mismatch(topics.presence("box-2"), topics, presence) == (
        "payload agent_id box-1 is not the topic's agent box-2"
    )
    assert topic_mismatch(topics.presence("box-1"), topics, presence) is None


def test_a_transaction_published_on_another_terminals_topic_is_a_dead_letter(
    alert_rig: AlertRig,  # noqa: F811 - the fixture
) -> None:
    rig = alert_rig
    rig.start()
    publisher = rig.rig.publisher
    # An agent serving OTHER_TID speaks for TID through its own topic.
    publisher.publish(publisher.topics.terminal(OTHER_TID, "txn"), txn(RRN, tid=TID).to_json())
    publisher.publish(publisher.topics.terminal(TID, "txn"), txn("402511000002").to_json())
    publisher.flush()
    reader = rig.rig.reader

    def letters() -> list[str]:
        with reader.engine.connect() as conn:
            return list(conn.execute(select(deadletters.c.reason)).scalars())

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not letters():
        time.sleep(0.05)
    assert letters() == [f"payload tid {TID} is not the topic's terminal {OTHER_TID}"]
    with reader.engine.connect() as conn:
        stored = list(conn.execute(select(transactions.c.rrn)).scalars())
    assert stored == ["402511000002"], "the legitimate transaction is stored, the spoof not"


def test_a_terminal_no_agent_serves_is_stored_and_counted(
    alert_rig: AlertRig,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    rig = alert_rig
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f'collectors = ["c1"]\n\n[agents.box-1]\ntids = ["{TID}"]\n')
    running = rig.start(fleet={"file": str(fleet)})
    # The rig's subscription probes come from a terminal of its own, unknown too.
    probes = running.collector.ingestor.counters["unknown_terminal"]
    rig.publish(txn(RRN, tid=TID), txn("402511000002", tid=OTHER_TID))
    reader = rig.rig.reader
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and reader.counts()["transactions"] < 2:
        time.sleep(0.05)
    assert reader.counts()["transactions"] == 2, "an unknown terminal's money is kept"
    assert running.collector.ingestor.counters["unknown_terminal"] == probes + 1


@pytest.fixture
def db_store(database_url: str) -> Store:
    store = Store(database_url, SettlementTerms(CollectorConfig()), collector_id="authz")
    store.migrate()
    return store


def test_a_business_key_claimed_first_with_other_money_keeps_the_real_one_and_alerts(
    db_store: Store,
) -> None:
    store = db_store
    alert_store = AlertStore(store.engine, "authz", ["mqtt"], reads=store.reads)
    engine = AlertEngine(
        CollectorConfig(),
        alert_store,
        lambda: datetime.now(UTC),
        cases=CaseStore(store.engine, reads=store.reads),
    )
    engine.start()
    real = txn(RRN)
    forged = real.model_copy(update={"event_id": uuid.uuid4(), "amount": 1})
    store.ingest([forged])
    store.ingest([real])
    store.ingest([real])  # the same event again: a plain repeat
    store.ingest([forged.model_copy(update={"event_id": uuid.uuid4()})])  # same facts
    engine.step()
    with store.engine.connect() as conn:
        kept = conn.execute(select(transactions.c.amount)).scalars().all()
        evidence = conn.execute(select(conflicts)).mappings().all()
    assert kept == [1], "the first claim stays in place"
    assert len(evidence) == 1
    assert evidence[0]["event_id"] == str(real.event_id)
    assert evidence[0]["first_event_id"] == str(forged.event_id)
    assert evidence[0]["differences"] == "amount 1 -> 12800"
    assert evidence[0]["payload"]["amount"] == 12_800
    (alert,) = alert_store.find(alert_type="CONFLICTING_TRANSACTION")
    assert alert.fingerprint == f"CONFLICTING_TRANSACTION:{TID}:{RRN}"
    assert alert.severity == "major" and alert.cause == "UNKNOWN"
    assert alert.amount_at_risk == 12_800
    assert (alert.details or {})["conflicting_event_id"] == str(real.event_id)
    store.close()
