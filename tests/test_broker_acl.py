"""Broker identities and ACLs (issue #14) on a real mosquitto running what `posmon broker
provision` writes, read through `include_dir` as deploy/mosquitto/posmon.conf reads it.

Every attack runs twice. On the provisioned broker it must fail: nothing of it reaches a
legitimate subscriber, and the legitimate flow next to it still works. On the same broker
with the logins only (no ACL, no use_username_as_clientid: posmon before issue #14) it
must succeed, which shows that the test can see the attack at all.

Ordering without sleeps: a QoS 1 PUBACK means the broker has routed (or dropped) that
message, and a subscriber's own QoS 1 publish (`barrier`) comes back after everything the
broker sent it before. With MQTT 3.1.1 mosquitto acknowledges a publish its ACL refuses
like any other, so a barrier works for every login.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from socket import SHUT_RDWR
from typing import Any

import paho.mqtt.client as paho
import pytest
from conftest import Broker, wait_until
from paho.mqtt.enums import CallbackAPIVersion
from test_broker_pki import make_pki
from test_collector_alerts import failed
from test_collector_ingest import MID, Running, settlement, txn

from collector.config import CollectorConfig, MerchantRule
from collector.store import Store
from collector.terms import SettlementTerms
from posmon.broker import acl, passwd
from posmon.broker import fleet as registry
from posmon.broker.fleet import AgentEntry, Fleet, FleetEditError, Role
from posmon.broker.pki import CertificateAuthority, render_broker_conf
from posmon.broker.provision import AUTH_CONF, Listener, provision, render_auth_conf
from posmon.config import ConfigError
from posmon.mqtt import DEFAULT_PREFIX, Message, MqttClient, MqttSettings, Protocol, Topics
from posmon.wire.models import AlertEvent, PresenceEvent, PresenceState
from simulators.broker import free_port

POSMON = str(Path(sys.executable).parent / "posmon")
A1_TID, A1_TID2, A2_TID, A3_TID = "10000001", "10000002", "20000001", "30000001"


def fleet_for(prefix: str) -> Fleet:
    """Three agents, a collector, an acquirer feed, a viewer and an admin."""
    return Fleet.model_validate(
        {
            "topic_prefix": prefix,
            "agents": {
                "a1": {"tids": [A1_TID, A1_TID2]},
                "a2": {"tids": [A2_TID]},
                "a3": {"tids": [A3_TID]},
            },
            "collectors": ["c1"],
            "acquirers": {"acq": {"feeds": ["0102"]}},
            "viewers": ["view"],
            "admins": ["ops"],
        }
    )


# --- the broker and its clients -----------------------------------------------------------


@dataclass
class Box:
    """A mosquitto running the provisioned files, and the fleet they were made from."""

    broker: Broker
    fleet: Fleet
    out: Path
    port: int  # the provisioned listener (the private broker's own one is not used)
    guarded: bool
    # Over mutual TLS: the CA that issued each login its certificate (CN = the login),
    # and the listener is TLS-only; otherwise each login has its password.
    ca: CertificateAuthority | None = None
    peers: list[Peer | RawPeer] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return self.fleet.topic_prefix

    @property
    def topics(self) -> Topics:
        return Topics(self.prefix)

    def secret(self, login: str) -> str:
        return (self.out / "credentials" / f"{login}.secret").read_text().strip()

    def settings(
        self, login: str | None, *, password: str | None = None, protocol: Protocol = Protocol.V311
    ) -> MqttSettings:
        values: dict[str, Any] = {
            "port": self.port,
            "topic_prefix": self.prefix,
            "protocol": protocol.value,
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.2,
        }
        if self.ca is not None:
            values["tls"] = {"enabled": True, "ca_file": self.ca.ca_cert_path}
            if login is not None:
                values["tls"] |= self.certificate(login)
        elif login is not None:
            values["username"] = login
            values["password"] = password if password is not None else self.secret(login)
        return MqttSettings.model_validate(values)

    def certificate(self, login: str) -> dict[str, Path]:
        """A login's certificate and key, as [mqtt.tls] takes them (mutual TLS only)."""
        assert self.ca is not None
        return {
            "cert_file": self.ca.clients / f"{login}.crt",
            "key_file": self.ca.clients / f"{login}.key",
        }

    def notify(self, login: str) -> dict[str, Any]:
        """The collector's [notify] login for its alert channel."""
        if self.ca is not None:
            files = self.certificate(login)
            return {"tls_certfile": files["cert_file"], "tls_keyfile": files["key_file"]}
        return {"mqtt_username": login, "mqtt_password": self.secret(login)}

    def peer(self, login: str | None, **options: Any) -> Peer:
        """A logged-in peer; subscribed too, when it subscribes."""
        peer = Peer(self, login, **options)
        assert peer.connect(), f"{login} could not log in: {peer.client.last_error}"
        if options.get("subscribe"):
            peer.barrier()
        return peer

    def log(self) -> str:
        return (self.broker.workdir / "mosquitto.log").read_text(errors="replace")

    def stop(self) -> None:
        for peer in self.peers:
            peer.close()
        self.broker.stop()


def start_box(workdir: Path, fleet: Fleet, *, guarded: bool = True, mtls: bool = False) -> Box:
    """`mtls`: the provisioned listener is `posmon pki broker-conf`'s (a certificate of
    posmon's CA required, its commonName the login), and every login gets a certificate."""
    out = workdir / "posmon.d"
    port = free_port()
    ca = None
    if mtls:
        pki = make_pki(workdir / "pki")
        ca = pki.ca
        for login in fleet.logins():
            ca.issue_client(login.name, login.role)
        listener = render_broker_conf(str(pki.broker_files), port=port, bind="127.0.0.1")
        provision(fleet, out, listeners=[], tls_listener=listener)
    else:
        provision(fleet, out, listeners=[Listener(port, "127.0.0.1")])
    if not guarded:
        # The same logins, nothing else: the broker as it was before issue #14.
        (out / AUTH_CONF).write_text(
            f"allow_anonymous false\npassword_file {out / 'passwd'}\nlistener {port} 127.0.0.1\n"
        )
    broker = Broker(workdir / "broker")
    with broker.conf.open("a") as conf:  # last, as in posmon.conf
        conf.write(f"include_dir {out}\n")
    broker.start()
    return Box(broker, fleet, out, port, guarded, ca)


@pytest.fixture(params=[True, False], ids=["provisioned", "logins-only"])
def box(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Box]:
    """The attack's broker: provisioned (the attack fails) or logins only (it succeeds)."""
    made = start_box(tmp_path, fleet_for(f"test/{uuid.uuid4().hex[:12]}"), guarded=request.param)
    yield made
    made.stop()


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Box]:
    """A provisioned broker only."""
    made = start_box(tmp_path, fleet_for(f"test/{uuid.uuid4().hex[:12]}"))
    yield made
    made.stop()


@pytest.fixture(params=[False, True], ids=["passwords", "mutual-tls"])
def secured_either(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Box]:
    """A provisioned broker whose logins are passwords, or certificates over mutual TLS."""
    made = start_box(tmp_path, fleet_for(f"test/{uuid.uuid4().hex[:12]}"), mtls=request.param)
    yield made
    made.stop()


class Peer:
    """One login's posmon MqttClient, driven by the test's own loop (`pump`)."""

    def __init__(
        self,
        box: Box,
        login: str | None,
        *,
        client_id: str | None = None,
        password: str | None = None,
        subscribe: Sequence[str] = (),
        will: tuple[str, bytes] | None = None,
        protocol: Protocol = Protocol.V311,
    ) -> None:
        self.box = box
        self.login = login
        settings = box.settings(login, password=password, protocol=protocol)
        self.client = MqttClient(
            settings, client_id or f"test-{login}-{uuid.uuid4().hex[:6]}", will=will
        )
        self.messages: list[Message] = []
        self.acked: set[int] = set()
        self.lost = 0
        self.client.on_message = self.messages.append
        self.client.on_published = self.acked.add
        self.client.on_disconnected = self._lost
        if subscribe:
            self.client.on_connected = lambda present: self.client.subscribe(list(subscribe))
        box.peers.append(self)

    def _lost(self, reason: str) -> None:
        self.lost += 1

    def connect(self, timeout: float = 5.0) -> bool:
        """Log in; whether the broker accepted (False as soon as it refuses)."""
        self.client.connect()
        deadline = time.monotonic() + timeout
        while not self.client.connected and time.monotonic() < deadline:
            if not self.client.loop(0.01):
                break
        return self.client.connected

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish QoS 1 and wait for the PUBACK: the broker has routed or dropped it."""
        mid = self.client.publish(topic, payload, retain=retain)
        pump([self], lambda: mid in self.acked or not self.client.connected, f"PUBACK {topic}")

    def barrier(self) -> None:
        """Until everything the broker sent this client before now has been read."""
        self.publish(f"{self.box.prefix}/barrier", b"{}")

    def got(self, topic: str) -> list[bytes]:
        return [m.payload for m in self.messages if m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()


def pump(peers: Sequence[Peer], until: Callable[[], bool], what: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        for peer in peers:
            peer.client.loop(0.005)


def drop(peer: Peer) -> None:
    """Cut the connection without a DISCONNECT: the broker sends the will."""
    socket = peer.client._client.socket()
    assert socket is not None
    socket.shutdown(SHUT_RDWR)


def collector_filters(topics: Topics) -> list[str]:
    """What the collector's ingest subscribes to (collector/ingest.py)."""
    kinds = [topics.terminal("+", kind) for kind in ("txn", "status", "batch")]
    return [*kinds, topics.presence("+"), topics.settlements, topics.deadletter]


def presence(agent_id: str, tids: list[str], state: PresenceState) -> bytes:
    now = datetime.now(UTC)
    event = PresenceEvent(
        agent_id=agent_id, state=state, tids=tids, version="test", observed_at=now
    )
    return event.to_json()


def alert_payload(summary: str) -> bytes:
    now = datetime.now(UTC).isoformat()
    return json.dumps(
        {
            "schema": "posmon.alert/1",
            "alert_id": f"A-{uuid.uuid4().hex[:16]}",
            "fingerprint": f"SETTLEMENT_FAILED:{A1_TID}:402511000001",
            "type": "SETTLEMENT_FAILED",
            "severity": "critical",
            "state": "firing",
            "cause": "ACCOUNT_INFO",
            "summary": summary,
            "started_at": now,
            "updated_at": now,
        }
    ).encode()


# --- the attacks ----------------------------------------------------------------------------


def test_an_agent_cannot_publish_on_another_agents_terminal(box: Box) -> None:
    topics = box.topics
    collector = box.peer("c1", subscribe=collector_filters(topics))
    collector.barrier()
    a1, a2 = box.peer("a1"), box.peer("a2")

    a1.publish(topics.terminal(A2_TID, "txn"), txn("402511000666", tid=A2_TID).to_json())
    a2.publish(topics.terminal(A2_TID, "txn"), txn("402511000001", tid=A2_TID).to_json())
    a1.publish(topics.terminal(A1_TID, "txn"), txn("402511000002", tid=A1_TID).to_json())
    collector.barrier()

    rrns = [json.loads(p)["rrn"] for p in collector.got(topics.terminal(A2_TID, "txn"))]
    if box.guarded:
        assert rrns == ["402511000001"]
    else:
        assert rrns == ["402511000666", "402511000001"]
    assert len(collector.got(topics.terminal(A1_TID, "txn"))) == 1  # a1's own terminal


def test_an_agent_cannot_publish_a_settlement(box: Box) -> None:
    topics = box.topics
    collector = box.peer("c1", subscribe=collector_filters(topics))
    collector.barrier()
    agent, acquirer = box.peer("a1"), box.peer("acq")

    agent.publish(topics.settlements, settlement("402511000001", "FORGED-1").to_json())
    acquirer.publish(topics.settlements, settlement("402511000001", "S-1").to_json())
    collector.barrier()

    ids = [json.loads(p)["settlement_id"] for p in collector.got(topics.settlements)]
    assert ids == (["S-1"] if box.guarded else ["FORGED-1", "S-1"])


def test_an_agent_or_a_viewer_cannot_publish_an_alert(box: Box) -> None:
    topics = box.topics
    topic = topics.alert("SETTLEMENT_FAILED")
    viewer = box.peer("view", subscribe=[f"{box.prefix}/alerts/#"])
    viewer.barrier()
    agent, alerts = box.peer("a1"), box.peer("c1-alerts")

    agent.publish(topic, alert_payload("forged by an agent"))
    viewer.publish(topic, alert_payload("forged by a viewer"))
    # The collector's ingest login is not its alert login either.
    box.peer("c1").publish(topic, alert_payload("from the ingest login"))
    alerts.publish(topic, alert_payload("the collector's"))
    viewer.barrier()

    summaries = [AlertEvent.from_json(p).summary for p in viewer.got(topic)]
    if box.guarded:
        assert summaries == ["the collector's"]
    else:
        assert summaries == [
            "forged by an agent",
            "forged by a viewer",
            "from the ingest login",
            "the collector's",
        ]


def test_an_agent_cannot_overwrite_another_agents_retained_presence(box: Box) -> None:
    topic = box.topics.presence("a2")
    a2 = box.peer("a2")
    a2.publish(topic, presence("a2", [A2_TID], PresenceState.ONLINE), retain=True)
    forged = presence("a2", [A2_TID], PresenceState.OFFLINE)
    box.peer("a1").publish(topic, forged, retain=True)

    viewer = box.peer("view", subscribe=[box.topics.presence("+")])
    viewer.barrier()  # retained messages come with the subscription, before this
    states = [json.loads(p)["state"] for p in viewer.got(topic)]
    assert states == (["online"] if box.guarded else ["offline"])


def test_an_agents_will_cannot_overwrite_another_agents_presence(box: Box) -> None:
    topic = box.topics.presence("a2")
    box.peer("a2").publish(topic, presence("a2", [A2_TID], PresenceState.ONLINE), retain=True)
    # a1 logs in with a will on a2's presence, then drops without DISCONNECT.
    forged = presence("a2", [A2_TID], PresenceState.OFFLINE)
    attacker = box.peer("a1", client_id="a1-will", will=(topic, forged))
    drop(attacker)
    named = "a1" if box.guarded else "a1-will"
    wait_until(lambda: f"Client {named} closed its connection" in box.log(), 5, "the drop")

    viewer = box.peer("view", subscribe=[box.topics.presence("+")])
    viewer.barrier()
    states = [json.loads(p)["state"] for p in viewer.got(topic)]
    assert states == (["online"] if box.guarded else ["offline"])


class RawPeer:
    """A bare paho client, for what posmon's client does not show: SUBACK codes."""

    def __init__(self, box: Box, login: str, protocol: int) -> None:
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"raw-{uuid.uuid4().hex[:6]}",
            protocol=protocol,
        )
        self.client.username_pw_set(login, box.secret(login))
        self.granted: list[list[str]] = []
        self.messages: list[str] = []
        self.connected = False
        self.client.on_connect = self._connected
        self.client.on_subscribe = lambda c, u, mid, codes, props: self.granted.append(
            [str(code) for code in codes]
        )
        self.client.on_message = lambda c, u, message: self.messages.append(message.topic)
        self.client.connect("127.0.0.1", box.port)
        box.peers.append(self)
        self.wait(lambda: self.connected, "CONNACK")

    def _connected(self, *args: Any) -> None:
        self.connected = True

    def wait(self, until: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 5
        while not until():
            assert time.monotonic() < deadline, f"no {what}"
            self.client.loop(0.01)

    def close(self) -> None:
        self.client.disconnect()
        self.client._reset_sockets()  # not left to paho's __del__ (a ResourceWarning)


@pytest.mark.parametrize("protocol", [paho.MQTTv311, paho.MQTTv5], ids=["3.1.1", "5"])
def test_an_agent_subscribing_to_everything_receives_nothing_of_others(
    box: Box, protocol: int
) -> None:
    topics = box.topics
    snoop = RawPeer(box, "a1", protocol)
    for pattern in ("#", f"{box.prefix}/#", topics.terminal(A2_TID, "txn")):
        snoop.client.subscribe(pattern, qos=1)
    snoop.wait(lambda: len(snoop.granted) == 3, "SUBACKs")
    # mosquitto 2.0 grants these subscriptions whatever the ACL says ...
    assert snoop.granted == [["Granted QoS 1"]] * 3

    collector = box.peer("c1", subscribe=collector_filters(topics))
    collector.barrier()
    box.peer("a2").publish(
        topics.presence("a2"), presence("a2", [A2_TID], PresenceState.ONLINE), retain=True
    )
    box.peer("a2").publish(
        topics.terminal(A2_TID, "txn"), txn("402511000001", tid=A2_TID).to_json()
    )
    box.peer("acq").publish(topics.settlements, settlement("402511000001", "S-1").to_json())
    box.peer("c1-alerts").publish(topics.alert("SETTLEMENT_FAILED"), alert_payload("x"))
    collector.barrier()
    assert len(collector.got(topics.terminal(A2_TID, "txn"))) == 1  # the legitimate flow
    assert len(collector.got(topics.settlements)) == 1

    mid = snoop.client.publish(f"{box.prefix}/barrier", b"{}", qos=1).mid
    acked: list[int] = []
    snoop.client.on_publish = lambda c, u, m, code, props: acked.append(m)
    snoop.wait(lambda: mid in acked, "PUBACK")
    others = [t for t in snoop.messages if "/barrier" not in t]
    # ... and delivers only what the login may read: for an agent, nothing.
    if box.guarded:
        assert others == []
    else:
        assert set(others) >= {
            topics.presence("a2"),
            topics.terminal(A2_TID, "txn"),
            topics.settlements,
            topics.alert("SETTLEMENT_FAILED"),
        }


def test_another_login_cannot_knock_the_collector_off_with_its_client_id(box: Box) -> None:
    topics = box.topics
    collector = box.peer("c1", client_id="posmon-collector-c1", subscribe=collector_filters(topics))
    collector.barrier()
    box.peer("a1", client_id="posmon-collector-c1")

    # The collector's own round trip: answered if it is still connected.
    mid = collector.client.publish(topics.deadletter, b"{}")
    pump([collector], lambda: mid in collector.acked or collector.lost > 0, "PUBACK or drop")
    if not box.guarded:
        assert collector.lost == 1 and not collector.client.connected
        return
    assert collector.lost == 0 and collector.client.connected
    box.peer("a2").publish(
        topics.terminal(A2_TID, "txn"), txn("402511000001", tid=A2_TID).to_json()
    )
    collector.barrier()
    assert len(collector.got(topics.terminal(A2_TID, "txn"))) == 1


def test_another_login_cannot_take_the_collectors_queued_messages(box: Box) -> None:
    topics = box.topics
    topic = topics.terminal(A2_TID, "txn")
    collector = box.peer("c1", client_id="posmon-collector-c1", subscribe=collector_filters(topics))
    collector.barrier()
    collector.close()  # away; its persistent session queues for it
    box.peer("a2").publish(topic, txn("402511000001", tid=A2_TID).to_json())

    thief = box.peer("a1", client_id="posmon-collector-c1")  # persistent session too
    thief.barrier()
    assert len(thief.got(topic)) == (0 if box.guarded else 1)

    if box.guarded:
        back = box.peer("c1", client_id="posmon-collector-c1")
        back.barrier()
        assert len(back.got(topic)) == 1  # its session kept the message for it


# --- logins --------------------------------------------------------------------------------


def test_wrong_password_unknown_login_and_anonymous_are_refused(secured: Box) -> None:
    wrong = Peer(secured, "a1", password=passwd.new_secret())
    assert not wrong.connect()
    assert "Not authorized" in (wrong.client.last_error or "")
    others = secured.secret("a2")
    assert not Peer(secured, "a1", password=others).connect()  # another login's password
    assert not Peer(secured, "nobody", password=others).connect()
    assert not Peer(secured, None).connect()
    assert Peer(secured, "a1").connect()


def test_a_provisioned_fleet_works_end_to_end(secured_either: Box, tmp_path: Path) -> None:
    """Three agents, the real collector (its two logins), an acquirer, a viewer, an admin:
    each does what its role allows, an agent's forged settlement goes nowhere, and the
    collector's connections keep their sessions; with passwords, and over mutual TLS with
    a certificate per login (the collector's alert channel on its -alerts certificate)."""
    box, topics = secured_either, secured_either.topics
    database = f"sqlite:///{tmp_path}/posmon.db"
    reader = Store(database, SettlementTerms(CollectorConfig()))
    reader.migrate()
    viewer = box.peer("view", subscribe=[f"{box.prefix}/alerts/#", topics.presence("+")])
    admin = box.peer("ops", subscribe=[f"{box.prefix}/#"])
    config = CollectorConfig(
        collector={"id": "c1"},
        database={"url": database},
        mqtt=box.settings("c1"),
        http={"enabled": False},
        merchants=[MerchantRule(mid=MID, fee_bp=0)],
        alerts={"sweep_s": 0.1},
        notify=box.notify("c1-alerts"),
    )
    running = Running(config)
    try:
        agents = {}
        for agent_id, tids in (("a1", [A1_TID, A1_TID2]), ("a2", [A2_TID]), ("a3", [A3_TID])):
            offline = presence(agent_id, tids, PresenceState.OFFLINE)
            agent = box.peer(
                agent_id,
                client_id=f"posmon-agent-{agent_id}",
                will=(topics.presence(agent_id), offline),
            )
            online = presence(agent_id, tids, PresenceState.ONLINE)
            agent.publish(topics.presence(agent_id), online, retain=True)
            agents[agent_id] = agent
        wait_until(lambda: reader.counts()["presence"] == 3, 15, "the collector subscribed")
        rrns = {A1_TID: "402511000001", A1_TID2: "402511000002", A2_TID: "402511000003"}
        rrns[A3_TID] = "402511000004"
        owner = {A1_TID: "a1", A1_TID2: "a1", A2_TID: "a2", A3_TID: "a3"}
        for tid, rrn in rrns.items():
            agents[owner[tid]].publish(topics.terminal(tid, "txn"), txn(rrn, tid=tid).to_json())
        wait_until(lambda: reader.counts()["transactions"] == 4, 15, "4 transactions stored")

        # a3 says a3's own sale was credited; the broker drops it before the acquirer's.
        forged = settlement(rrns[A3_TID], "FORGED-1", tid=A3_TID)
        agents["a3"].publish(topics.settlements, forged.to_json())
        acquirer = box.peer("acq")
        acquirer.publish(topics.settlements, failed(rrns[A1_TID], "S-1", "AC04").to_json())
        acquirer.publish(topics.settlements, settlement(rrns[A2_TID], "S-2", tid=A2_TID).to_json())
        alert_topic = topics.alert("SETTLEMENT_FAILED")
        pump([viewer], lambda: bool(viewer.got(alert_topic)), "the alert at the viewer", 15)
        alert = AlertEvent.from_json(viewer.got(alert_topic)[0])
        assert (alert.tid, alert.rrn, alert.cause.value) == (A1_TID, rrns[A1_TID], "ACCOUNT_INFO")
        viewer.barrier()
        seen = {m.topic for m in viewer.messages}
        assert {topics.presence(a) for a in agents} <= seen
        assert not any("/terminals/" in t or t.endswith("/settlements") for t in seen)
        wait_until(lambda: reader.settlement("S-2") is not None, 15, "S-2 stored")
        assert reader.settlement("FORGED-1") is None
        sales = {tid: reader.transaction(tid, rrn) for tid, rrn in rrns.items()}
        outcomes = {tid: row.outcome if row else None for tid, row in sales.items()}
        assert outcomes[A2_TID] == "SETTLED"
        assert outcomes[A3_TID] == "PENDING"  # the money it claims never arrived

        drop(agents["a2"])  # its will says offline
        wait_until(lambda: "Client a2 closed its connection" in box.log(), 5, "a2's drop")
        admin.barrier()
        assert {m.topic for m in admin.messages} >= {
            topics.terminal(A3_TID, "txn"),
            topics.settlements,
            alert_topic,
            topics.presence("a1"),
        }
        assert json.loads(admin.got(topics.presence("a2"))[-1])["state"] == "offline"
        ids = [json.loads(p)["settlement_id"] for p in admin.got(topics.settlements)]
        assert ids == ["S-1", "S-2"]  # the forgery reached no one
        log = box.log()
        for login in box.fleet.logins():  # over TLS, the certificate's name is the login
            assert f"u'{login.name}'" in log, login.name
        # Each connection was let in once and never taken over by another.
        assert "already connected, closing old connection" not in log
        assert running.collector.ingestor.client.connected
    finally:
        running.stop()
        reader.close()


def test_the_agent_doctor_gets_through_with_an_agents_login(secured: Box) -> None:
    from agent.doctor import Status, check_broker

    doctor_topic = f"{secured.prefix}/agents/a1/doctor"
    admin = secured.peer("ops", subscribe=[doctor_topic])
    checks = check_broker(secured.settings("a1"), "a1", timeout=5)
    assert [check.status for check in checks] == [Status.OK] * len(checks), checks
    admin.barrier()
    assert len(admin.got(doctor_topic)) == 1  # delivered, not only acknowledged


def test_reload_lets_a_new_agent_in_and_cuts_a_removed_one_off(secured: Box) -> None:
    box, topics = secured, secured.topics
    fleet_file = box.out.parent / "fleet.toml"
    registry.save(box.fleet, fleet_file)
    collector = box.peer("c1", subscribe=collector_filters(topics))
    collector.barrier()
    a3 = box.peer("a3")

    subprocess.run(
        [POSMON, "fleet", "add-agent", "a4", "--tid", "40000001", "--fleet", str(fleet_file)],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [POSMON, "fleet", "remove-agent", "a3", "--fleet", str(fleet_file)],
        check=True,
        capture_output=True,
    )
    provisioned = subprocess.run(
        [
            POSMON,
            "broker",
            "provision",
            "--fleet",
            str(fleet_file),
            "--out",
            str(box.out),
            "--listener",
            f"127.0.0.1:{box.port}",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    assert "a4" in provisioned.stdout and box.secret("a4") not in provisioned.stdout
    assert not Peer(box, "a4").connect()  # written, but the broker has not read it yet

    assert box.broker.process is not None
    subprocess.run(
        [
            POSMON,
            "broker",
            "provision",
            "--fleet",
            str(fleet_file),
            "--out",
            str(box.out),
            "--listener",
            f"127.0.0.1:{box.port}",
            "--reload",
            "--pid",
            str(box.broker.process.pid),
        ],
        check=True,
        capture_output=True,
    )
    a4 = Peer(box, "a4")
    pump([], lambda: a4.connect(timeout=0.5), "a4 let in after the reload")
    a4.publish(topics.terminal("40000001", "txn"), txn("402511000004", tid="40000001").to_json())
    a3.publish(topics.terminal(A3_TID, "txn"), txn("402511000003", tid=A3_TID).to_json())
    collector.barrier()
    assert len(collector.got(topics.terminal("40000001", "txn"))) == 1
    assert collector.got(topics.terminal(A3_TID, "txn")) == []  # still connected, cut off
    assert not Peer(box, "a3", password=passwd.new_secret()).connect()
    assert not (box.out / "credentials" / "a3.secret").exists()


# --- the files -----------------------------------------------------------------------------


def test_reprovisioning_keeps_existing_passwords_and_adds_only_new_ones(tmp_path: Path) -> None:
    fleet = fleet_for(DEFAULT_PREFIX)
    out = tmp_path / "posmon.d"
    first = provision(fleet, out)
    assert set(first.new) == {login.name for login in fleet.logins()}
    assert "c1-alerts" in first.new
    secrets_before = {p.name: p.read_text() for p in (out / "credentials").iterdir()}
    lines_before = passwd.parse((out / "passwd").read_text())
    for name, secret in secrets_before.items():
        assert passwd.verify(secret.strip(), lines_before[name.removesuffix(".secret")])

    grown = fleet.with_agent("a4", ["40000001"]).without_agent("a3")
    second = provision(grown, out)
    assert second.new == ["a4"] and second.removed == ["a3"] and "a3" not in second.kept
    lines_after = passwd.parse((out / "passwd").read_text())
    for name in second.kept:
        assert lines_after[name] == lines_before[name]
        assert (out / "credentials" / f"{name}.secret").read_text() == secrets_before[
            f"{name}.secret"
        ]
    assert "a3" not in lines_after and not (out / "credentials" / "a3.secret").exists()

    # A lost password file: the secrets on disk are hashed again, none is replaced.
    (out / "passwd").unlink()
    third = provision(grown, out)
    assert third.new == []
    for name, hashed in passwd.parse((out / "passwd").read_text()).items():
        assert passwd.verify(box_secret(out, name), hashed), name

    for path in (out / "passwd", *(out / "credentials").iterdir()):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((out / "credentials").stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "acl").stat().st_mode) == 0o640


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_passwd_and_acl_go_to_the_brokers_user_and_stay_with_it(tmp_path: Path) -> None:
    """mosquitto reads them as its own user, at start and on SIGHUP; the secrets stay root's."""
    fleet, out, broker_user = fleet_for(DEFAULT_PREFIX), tmp_path / "posmon.d", (12345, 12346)
    provision(fleet, out, owner=broker_user)
    provision(fleet.with_agent("a4", ["40000001"]), out)  # a later run, without --owner
    for name in ("passwd", "acl"):
        found = (out / name).stat()
        assert (found.st_uid, found.st_gid) == broker_user, name
    assert (out / "credentials" / "a4.secret").stat().st_uid == 0


def box_secret(out: Path, login: str) -> str:
    return (out / "credentials" / f"{login}.secret").read_text().strip()


def test_password_lines_are_mosquitto_passwds_format(tmp_path: Path) -> None:
    tool = "/usr/bin/mosquitto_passwd"
    assert os.path.exists(tool), "mosquitto_passwd is needed (Debian: apt-get install mosquitto)"
    secret = passwd.new_secret()
    target = tmp_path / "theirs"
    subprocess.run([tool, "-c", "-b", str(target), "a1", secret], check=True)
    theirs = target.read_text()
    hashed = passwd.parse(theirs)["a1"]
    assert passwd.verify(secret, hashed) and not passwd.verify(secret + "x", hashed)
    _, kind, iterations, salt, _ = hashed.split("$")
    ours = passwd.render({"a1": passwd.hash_secret(secret, salt=base64.b64decode(salt))})
    assert (kind, int(iterations)) == ("7", passwd.ITERATIONS)
    assert ours == theirs  # byte for byte, newline included
    assert re.fullmatch(r"a1:\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==\n", ours)
    assert len(secret) == 43


def test_acl_text_grants_each_role_its_topics_only() -> None:
    fleet = Fleet.model_validate(
        {
            "topic_prefix": "p/v1",
            "agents": {"shop-1": {"tids": ["10000001"]}},
            "collectors": ["c1"],
            "acquirers": {"up": {"feeds": ["0102"]}},
            "viewers": ["view"],
            "admins": ["ops"],
        }
    )
    blocks = acl.render(fleet).split("\n\n")[1:]
    assert [block.splitlines()[1:] for block in blocks] == [
        [
            "user shop-1",
            "topic write p/v1/terminals/10000001/txn",
            "topic write p/v1/terminals/10000001/status",
            "topic write p/v1/terminals/10000001/batch",
            "topic write p/v1/agents/shop-1/presence",
            "topic write p/v1/agents/shop-1/doctor",
            "topic write p/v1/deadletter",
        ],
        [
            "user c1",
            "topic read p/v1/terminals/+/txn",
            "topic read p/v1/terminals/+/status",
            "topic read p/v1/terminals/+/batch",
            "topic read p/v1/agents/+/presence",
            "topic read p/v1/settlements",
            "topic readwrite p/v1/deadletter",
        ],
        ["user c1-alerts", "topic write p/v1/alerts/+"],
        ["user up", "topic write p/v1/settlements"],
        ["user view", "topic read p/v1/alerts/+", "topic read p/v1/agents/+/presence"],
        ["user ops", "topic readwrite p/v1/#"],
    ]


def test_acl_topics_are_the_contracts() -> None:
    """acl.py names the topics itself (it does without paho): the same as posmon.mqtt."""
    topics = Topics("p/v1")
    agent = next(fleet_for("p/v1").logins())
    written = {rule.topic for rule in acl.rules(agent, "p/v1")}
    assert {topics.terminal(A1_TID, kind) for kind in ("txn", "status", "batch")} <= written
    assert {topics.presence("a1"), topics.deadletter} <= written
    collector = [login for login in fleet_for("p/v1").logins() if login.role is Role.COLLECTOR]
    assert {rule.topic for rule in acl.rules(collector[0], "p/v1")} == set(
        collector_filters(topics)
    )
    assert registry.DEFAULT_PREFIX == DEFAULT_PREFIX


def test_the_auth_conf_follows_every_listener_with_use_username_as_clientid() -> None:
    tls = "listener 8883\ncafile /etc/posmon/pki/ca.crt\nrequire_certificate true\n"
    text = render_auth_conf(
        Path("/etc/mosquitto/posmon.d/passwd"),
        Path("/etc/mosquitto/posmon.d/acl"),
        [Listener(1883), Listener.parse("10.0.0.5:1884")],
        tls_listener=tls,
    )
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines == [
        "per_listener_settings false",
        "allow_anonymous false",
        "password_file /etc/mosquitto/posmon.d/passwd",
        "acl_file /etc/mosquitto/posmon.d/acl",
        "listener 1883",
        "use_username_as_clientid true",
        "listener 1884 10.0.0.5",
        "use_username_as_clientid true",
        "listener 8883",
        "cafile /etc/posmon/pki/ca.crt",
        "require_certificate true",
        "use_username_as_clientid true",
    ]


# --- the registry --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("agents = [", "not valid TOML"),
        ('[agents.a1]\ntids = ["1000000"]\n', "agents.a1.tids.0: String should match"),
        ('[agents.a1]\ntids = ["10000001"]\nport = 3\n', "agents.a1.port: unknown key"),
        (
            '[agents.a1]\ntids = ["10000001"]\n[agents.a2]\ntids = ["10000001"]\n',
            "agents.a2.tids: terminal 10000001 already belongs to agent a1",
        ),
        ('[agents.a1]\ntids = ["10000001", "10000001"]\n', "terminal 10000001 listed twice"),
        ('collectors = ["a1"]\n[agents.a1]\ntids = ["10000001"]\n', "login 'a1' is already"),
        ('collectors = ["c1"]\nviewers = ["c1-alerts"]\n', "login 'c1-alerts' is already"),
        ('viewers = ["bad/name"]\n', "viewers.0: String should match"),
        ('topic_prefix = "posmon/#"\n', "topic_prefix: String should match"),
    ],
)
def test_a_bad_registry_names_the_file_and_the_key(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        registry.load(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert problem in str(caught.value)


def test_the_registry_round_trips_and_edits_keep_its_rules(tmp_path: Path) -> None:
    fleet = fleet_for("p/v1").with_agent("shop.9", ["90000001"])
    path = tmp_path / "fleet.toml"
    registry.save(fleet, path)
    assert registry.load(path) == fleet
    assert '[agents."shop.9"]' in path.read_text()
    with pytest.raises(FleetEditError, match="already belongs to agent a2"):
        fleet.with_agent("a9", [A2_TID])
    with pytest.raises(FleetEditError, match="--replace"):
        fleet.with_agent("a1", ["11111111"])
    assert fleet.with_agent("a1", ["11111111"], replace=True).agents["a1"] == AgentEntry(
        tids=["11111111"]
    )
    with pytest.raises(FleetEditError, match="no viewer ghost"):
        fleet.without_member(Role.VIEWER, "ghost")


def test_fleet_and_provision_commands(tmp_path: Path) -> None:
    fleet_file, out = tmp_path / "fleet.toml", tmp_path / "out"

    def posmon(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [POSMON, *args], capture_output=True, text=True, check=False, cwd=tmp_path
        )

    added = posmon("fleet", "add-agent", "shop-1", "--tid", "10000001", "--tid", "10000002")
    assert added.returncode == 0, added.stderr
    taken = posmon("fleet", "add-agent", "shop-2", "--tid", "10000002")
    assert taken.returncode == 1
    assert "terminal 10000002 already belongs to agent shop-1" in taken.stderr
    for command, name in (
        ("add-collector", "c1"),
        ("add-acquirer", "up"),
        ("add-viewer", "grafana"),
        ("add-admin", "ops"),
    ):
        assert posmon("fleet", command, name).returncode == 0
    listed = posmon("fleet", "list")
    assert listed.returncode == 0
    for row in ("shop-1", "10000001, 10000002", "c1-alerts", "collector-alerts", "grafana"):
        assert row in listed.stdout

    quiet = posmon("broker", "provision", "--fleet", str(fleet_file), "--out", str(out))
    assert quiet.returncode == 0, quiet.stderr
    secrets = {p.stem: p.read_text().strip() for p in (out / "credentials").iterdir()}
    assert set(secrets) == {"shop-1", "c1", "c1-alerts", "up", "grafana", "ops"}
    assert not any(secret in quiet.stdout + quiet.stderr for secret in secrets.values())

    assert posmon("fleet", "add-viewer", "wall").returncode == 0
    shown = posmon("broker", "provision", "--out", str(out), "--show-secrets")
    assert f"wall: {box_secret(out, 'wall')}" in shown.stdout  # the new one, once
    assert not any(secret in shown.stdout for secret in secrets.values())

    alone = posmon("broker", "provision", "--out", str(out), "--tls-only")
    assert alone.returncode == 2 and "needs --tls-dir" in alone.stderr
    tls_dir = "/etc/mosquitto/posmon-tls"
    tls_only = posmon("broker", "provision", "--out", str(out), "--tls-only", "--tls-dir", tls_dir)
    assert tls_only.returncode == 0, tls_only.stderr
    listeners = re.findall(r"^listener .*$", (out / AUTH_CONF).read_text(), re.MULTILINE)
    assert listeners == ["listener 8883"]  # no plain listener

    missing = posmon("broker", "provision", "--out", str(out), "--reload")
    assert missing.returncode == 2 and "--pid" in missing.stderr
    dead = posmon("broker", "provision", "--out", str(out), "--reload", "--pid", "999999999")
    assert dead.returncode == 1 and "no process 999999999" in dead.stderr
    bad = posmon("fleet", "list", "--fleet", str(tmp_path / "nowhere.toml"))
    assert bad.returncode == 2 and "nowhere.toml: no such file" in bad.stderr


def test_the_broker_commands_need_neither_paho_nor_the_collector() -> None:
    code = (
        "import sys\n"
        "for name in ('paho', 'collector', 'sqlalchemy', 'cryptography'):\n"
        "    sys.modules[name] = None\n"
        "import posmon.broker.cli\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
