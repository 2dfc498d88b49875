"""The agent as a user runs it: `posmon agent run`, a simulated terminal on a real pty, a real
mosquitto. What reaches the broker, what reaches the disk, and what survives outages."""

from __future__ import annotations

import ast
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import AgentProcess, Broker, Listener, wait_until

from posmon.pan import mask_pan
from simulators.cards import new_card
from simulators.faults import Faults
from simulators.messages import Message
from simulators.pty import PtyLink
from simulators.script import ScriptedStream
from simulators.sender import Settled
from simulators.stream import TrafficGenerator, TrafficProfile
from simulators.terminal import Delivery, SimulatedTerminal, TerminalConfig

TID = "10000001"
MID = "898100012340001"


def txn_burst(count: int, seed: int = 7) -> tuple[list[Message], list[str]]:
    """`count` approved sales with full, Luhn-valid PANs; returns them and their PANs."""
    rng = random.Random(seed)
    messages, pans = [], []
    for index in range(count):
        card = new_card(rng)
        pans.append(card.pan)
        messages.append(
            Message(
                "TXN",
                {
                    "TID": TID,
                    "MID": MID,
                    "KIND": "SALE",
                    "AMT": str(100 + index),
                    "CUR": "156",
                    "PAN": card.pan,
                    "RC": "00",
                    "RRN": f"{index:012d}",
                    "STAN": f"{index % 1000000:06d}",
                    "BATCH": "000001",
                    "TS": "@now",
                },
            )
        )
    return messages, pans


def events(listener: Listener, kind: str) -> list[dict[str, object]]:
    return [json.loads(message.payload) for message in listener.on(f"/{kind}")]


def agent_stats(agent: AgentProcess) -> dict[str, object]:
    """The counters the agent logs when it stops (`agent ... stopped; stats {...}`)."""
    line = next(line for line in agent.log_text().splitlines() if "stopped; stats" in line)
    return ast.literal_eval(line.split("stats ", 1)[1])  # type: ignore[no-any-return]


@pytest.fixture
def pty(tmp_path: Path) -> PtyLink:
    link = PtyLink(tmp_path / "ttyPOS0")
    yield link
    link.close()


@pytest.fixture
def agent_on_pty(
    broker: Broker,
    prefix: str,
    pty: PtyLink,
    listener_factory: Callable[..., Listener],
    agent_factory: Callable[..., AgentProcess],
) -> tuple[Listener, AgentProcess]:
    """A listener on the test's prefix, and `posmon agent run` reading `pty`, started."""
    listener = listener_factory(broker, prefix)
    agent = agent_factory(broker, prefix, {"counter-1": str(pty.path)})
    agent.start()
    return listener, agent


def terminal(
    link: PtyLink,
    messages: list[Message],
    *,
    faults: Faults | None = None,
    deliveries: list[Delivery] | None = None,
) -> SimulatedTerminal:
    config = TerminalConfig(
        tid=TID, rate=0, heartbeat_interval=0, faults=faults or Faults(), seed=3
    )
    return SimulatedTerminal(
        link,
        ScriptedStream(messages),
        config,
        on_delivery=deliveries.append if deliveries is not None else None,
    )


def test_frames_become_events_on_the_broker_once_per_event_id(
    broker: Broker,
    prefix: str,
    pty: PtyLink,
    listener_factory: Callable[..., Listener],
    agent_factory: Callable[..., AgentProcess],
) -> None:
    listener = listener_factory(broker, prefix)
    agent = agent_factory(broker, prefix, {"counter-1": str(pty.path)}, agent_id="shop-7")
    agent.start()
    generator = TrafficGenerator(TID, TrafficProfile(mid=MID, batch_size=20), seed=11)
    sim = SimulatedTerminal(
        pty, generator, TerminalConfig(tid=TID, rate=0, heartbeat_interval=0, seed=1)
    )
    counters = sim.run(count=60, close_batch=True)
    assert counters.acked == counters.sent == 61  # 60 messages and the closing BAT

    wait_until(
        lambda: sum(len(events(listener, kind)) for kind in ("txn", "status", "batch")) >= 61,
        15,
        "61 events on the broker",
    )
    time.sleep(0.3)  # anything extra (a repeat) would arrive now
    received = [*events(listener, "txn"), *events(listener, "status"), *events(listener, "batch")]
    ids = [event["event_id"] for event in received]
    assert len(ids) == 61
    assert len(set(ids)) == 61
    assert {event["agent_id"] for event in received} == {"shop-7"}
    batches = events(listener, "batch")
    assert sum(int(str(batch["count"])) for batch in batches) == sum(
        1 for event in events(listener, "txn") if event["kind"] == "SALE" and event["approved"]
    )
    presence = [json.loads(m.payload) for m in listener.on("/agents/shop-7/presence")]
    assert presence[-1]["state"] == "online"
    assert presence[-1]["tids"] == [TID]

    assert agent.stop() == 0
    wait_until(
        lambda: json.loads(listener.on("/presence")[-1].payload)["state"] == "offline",
        5,
        "offline presence on a clean stop",
    )


def test_broker_stopped_during_a_burst_of_1000_then_started_all_arrive_in_order(
    own_broker: Broker,
    prefix: str,
    pty: PtyLink,
    listener_factory: Callable[..., Listener],
    agent_factory: Callable[..., AgentProcess],
) -> None:
    listener = listener_factory(own_broker, prefix)
    agent = agent_factory(own_broker, prefix, {"counter-1": str(pty.path)})
    agent.start()
    messages, _ = txn_burst(1000)
    sim = terminal(pty, messages)
    thread = sim.start()

    wait_until(lambda: len(listener.on("/txn")) >= 150, 30, "the first events")
    own_broker.stop()
    stopped_at = sim.counters.acked
    time.sleep(1.5)  # the terminal keeps going: the agent ACKs into its outbox
    assert sim.counters.acked > stopped_at, "the agent must keep accepting frames"
    own_broker.start()

    thread.join(timeout=120)
    assert sim.counters.acked == 1000
    assert sim.counters.given_up == 0
    wait_until(
        lambda: len({e["rrn"] for e in events(listener, "txn")}) == 1000, 60, "all 1000 events"
    )
    first_seen: list[str] = []
    for event in events(listener, "txn"):
        if event["rrn"] not in first_seen:
            first_seen.append(str(event["rrn"]))
    assert first_seen == [f"{index:012d}" for index in range(1000)]


@pytest.mark.slow
def test_agent_killed_mid_burst_and_restarted_loses_nothing(
    pty: PtyLink, agent_on_pty: tuple[Listener, AgentProcess]
) -> None:
    listener, agent = agent_on_pty
    messages, _ = txn_burst(1000, seed=8)
    deliveries: list[Delivery] = []
    sim = terminal(pty, messages, deliveries=deliveries)
    thread = sim.start()

    for kill_after in (250, 600):
        wait_until(lambda n=kill_after: sim.counters.acked >= n, 60, f"{kill_after} ACKs")
        agent.kill()
        agent.start()  # the terminal resends for 3 s: a quick restart loses nothing

    thread.join(timeout=120)
    acked = [d.message.fields["RRN"] for d in deliveries if d.settled is Settled.ACKED]
    assert len(acked) == 1000
    wait_until(
        lambda: {e["rrn"] for e in events(listener, "txn")} >= set(acked),
        60,
        "every ACKed transaction on the broker",
    )


def test_noise_and_corrupted_frames_are_nakd_counted_and_never_published(
    pty: PtyLink, agent_on_pty: tuple[Listener, AgentProcess]
) -> None:
    listener, agent = agent_on_pty
    messages, _ = txn_burst(100, seed=9)
    sim = terminal(pty, messages, faults=Faults(noise=0.5, corrupt_lrc=0.3, split=0.2))
    counters = sim.run()
    assert counters.acked == 100
    assert counters.corrupted > 0
    assert counters.noise_bytes > 0

    wait_until(lambda: len(listener.on("/txn")) >= 100, 15, "100 events")
    time.sleep(0.3)
    assert sorted(e["rrn"] for e in events(listener, "txn")) == [f"{i:012d}" for i in range(100)]
    assert listener.on("/deadletter") == []

    assert agent.stop() == 0
    stats = agent_stats(agent)["ports"]["counter-1"]  # type: ignore[index]
    assert stats["nak"] == counters.naks == counters.corrupted
    assert stats["noise_bytes"] == counters.noise_bytes
    assert stats["accepted"] == 100


def test_intact_frames_with_bad_content_go_to_the_dead_letter_topic(
    pty: PtyLink, agent_on_pty: tuple[Listener, AgentProcess]
) -> None:
    listener, _agent = agent_on_pty
    good, pans = txn_burst(3, seed=10)
    script = [
        good[0],
        good[1].replace(AMT=None),  # missing a required key
        good[2].replace(AMT="12.80"),  # money must be integer minor units
        Message("RFD", {"TID": TID, "NOTE": "vendor extension"}),  # unknown TYPE
    ]
    counters = terminal(pty, script).run()
    assert counters.acked == 4
    assert counters.naks == 0  # intact frames are ACKed: a resend would carry the same

    wait_until(lambda: len(listener.on("/deadletter")) >= 3, 15, "3 dead letters")
    letters = [json.loads(m.payload) for m in listener.on("/deadletter")]
    reasons = [letter["reason"] for letter in letters]
    assert reasons[0] == "missing AMT"
    assert reasons[1].startswith("AMT: '12.80' is not an integer")
    assert reasons[2] == "unknown TYPE 'RFD'"
    assert {letter["source"] for letter in letters} == {"agent:agent-1:counter-1"}
    assert all(pans[1] not in letter["payload"] for letter in letters)
    assert mask_pan(pans[1]) in letters[0]["payload"]
    assert [e["rrn"] for e in events(listener, "txn")] == [good[0].fields["RRN"]]


def test_a_full_pan_is_masked_on_the_broker_in_the_log_and_in_the_outbox_file(
    pty: PtyLink, agent_on_pty: tuple[Listener, AgentProcess]
) -> None:
    listener, agent = agent_on_pty
    messages, pans = txn_burst(20, seed=12)
    # Full PANs in every field a terminal could put one: the PAN key, an unknown key, a
    # frame that is invalid, a frame of an unknown type.
    messages[3] = messages[3].replace(NOTE=f"card {pans[3]} signed")
    messages[4] = messages[4].replace(RC=None)
    messages.append(Message("XYZ", {"TID": TID, "SEQ": "9", "CARD": pans[5]}))
    counters = terminal(pty, messages).run()
    assert counters.acked == 21
    wait_until(lambda: len(listener.on("/txn")) >= 19, 15, "19 events")
    wait_until(lambda: len(listener.on("/deadletter")) >= 2, 15, "2 dead letters")
    assert agent.stop() == 0

    on_the_broker = b"\n".join(m.payload for m in listener.messages)
    in_the_log = agent.log.read_bytes()
    on_disk = b"".join(path.read_bytes() for path in agent.outbox.parent.glob("outbox*"))
    assert len(on_disk) > 0
    for pan in pans:
        for where, data in (("broker", on_the_broker), ("log", in_the_log), ("disk", on_disk)):
            assert pan.encode() not in data, f"a full PAN reached the {where}"
    assert mask_pan(pans[3]).encode() in on_the_broker


def test_two_ports_one_unplugged_reports_serial_down_and_resumes_after_replug(
    broker: Broker,
    prefix: str,
    tmp_path: Path,
    listener_factory: Callable[..., Listener],
    agent_factory: Callable[..., AgentProcess],
) -> None:
    listener = listener_factory(broker, prefix)
    with PtyLink(tmp_path / "ttyA") as link_a, PtyLink(tmp_path / "ttyB") as link_b:
        agent = agent_factory(broker, prefix, {"a": str(link_a.path), "b": str(link_b.path)})
        agent.start()
        first, _ = txn_burst(10, seed=21)
        second = [m.replace(TID="10000002", RRN=f"9{i:011d}") for i, m in enumerate(first)]
        assert terminal(link_a, first[:5]).run().acked == 5
        config_b = TerminalConfig(tid="10000002", rate=0, heartbeat_interval=0, seed=4)
        assert SimulatedTerminal(link_b, ScriptedStream(second[:5]), config_b).run().acked == 5
        wait_until(lambda: len(listener.on("/txn")) >= 10, 15, "events from both ports")

        link_a.unplug()
        wait_until(
            lambda: any(
                json.loads(m.payload)["serial_ok"] is False
                for m in listener.on(f"/terminals/{TID}/status")
            ),
            15,
            "serial_ok false for the terminal behind the unplugged port",
        )
        assert "port a:" in agent.log_text()
        # The other port carries on while the first is away.
        config_b2 = TerminalConfig(
            tid="10000002", rate=0, heartbeat_interval=0, seed=5, first_seq=5
        )
        assert SimulatedTerminal(link_b, ScriptedStream(second[5:]), config_b2).run().acked == 5
        link_a.replug()
        config_a2 = TerminalConfig(tid=TID, rate=0, heartbeat_interval=0, seed=6, first_seq=5)
        assert SimulatedTerminal(link_a, ScriptedStream(first[5:]), config_a2).run().acked == 5
        wait_until(lambda: len(listener.on("/txn")) >= 20, 15, "all 20 transactions")
        assert len({e["rrn"] for e in events(listener, "txn")}) == 20
        presence = json.loads(listener.on("/presence")[-1].payload)
        assert presence["tids"] == [TID, "10000002"]
        agent.stop()


def test_mqtt5_session_and_will_on_sigkill(
    broker: Broker,
    prefix: str,
    pty: PtyLink,
    listener_factory: Callable[..., Listener],
    agent_factory: Callable[..., AgentProcess],
) -> None:
    listener = listener_factory(broker, prefix)
    agent = agent_factory(
        broker,
        prefix,
        {"counter-1": str(pty.path)},
        agent_id="v5-box",
        extra='protocol = "5"\nsession_expiry_s = 3600\n',
    )
    agent.start()
    messages, _ = txn_burst(5, seed=31)
    assert terminal(pty, messages).run().acked == 5
    wait_until(lambda: len(listener.on("/txn")) >= 5, 15, "5 events over MQTT 5")
    assert "MQTT connected" in agent.log_text()
    agent.kill()
    wait_until(
        lambda: (
            json.loads(listener.on("/agents/v5-box/presence")[-1].payload)["state"] == "offline"
        ),
        10,
        "the broker publishing the agent's will",
    )
    will = listener.on("/agents/v5-box/presence")[-1]
    assert json.loads(will.payload)["tids"] == []  # the will is set before any TID is seen
