"""posmon's PKI against a real mosquitto running the listener `posmon pki broker-conf` writes.

Who gets in over mutual TLS and as whom: a certificate of posmon's CA does; an expired,
not yet valid, revoked or foreign one, or none, does not; and the certificate's
commonName is the login the ACL sees. `refusal()` speaks TLS and MQTT itself to read the
broker's TLS alert, which says why; the MQTT client's own view (never connected) is
checked beside it.
"""

from __future__ import annotations

import signal
import socket
import ssl
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import Broker, wait_until
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from test_collector_alerts import failed
from test_collector_ingest import MID, Running, txn
from typer.testing import CliRunner

from collector.config import CollectorConfig, MerchantRule
from collector.store import Store
from collector.terms import SettlementTerms
from posmon.broker.fleet import Fleet, Role
from posmon.broker.pki import (
    CLIENT_DAYS,
    CertificateAuthority,
    Issued,
    PkiError,
    check_identity,
    render_broker_conf,
)
from posmon.broker.pki_cli import app
from posmon.broker.provision import provision
from posmon.mqtt import Message, MqttClient, MqttSettings, Topics
from posmon.wire.models import AlertEvent
from simulators.broker import free_port

# MQTT 3.1.1 CONNECT (clean session, keep-alive 30, client id "probe") and the CONNACK
# that accepts it.
CONNECT = b"\x10\x11\x00\x04MQTT\x04\x02\x00\x1e\x00\x05probe"
ACCEPTED = b"\x20\x02\x00\x00"
SERVER = "localhost"


@dataclass
class Pki:
    """A CA with the broker's certificate, and the folder `posmon pki broker-conf` wrote."""

    ca: CertificateAuthority
    broker_files: Path

    def issue(
        self, name: str, *, not_before: datetime | None = None, days: int = CLIENT_DAYS
    ) -> Issued:
        return self.ca.issue_client(name, Role.AGENT, not_before=not_before, days=days)

    def publish_crl(self) -> None:
        """Copy the CA's current CRL to the broker's folder, as an operator would."""
        (self.broker_files / "crl.pem").write_bytes(self.ca.crl_path.read_bytes())


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def make_pki(folder: Path) -> Pki:
    cli("init", "--dir", str(folder / "ca"))
    cli("issue-server", SERVER, "--san", "127.0.0.1", "--dir", str(folder / "ca"))
    files = folder / "broker-files"
    cli(
        "broker-conf",
        "--server",
        SERVER,
        "--dir",
        str(folder / "ca"),
        "--out",
        str(files),
        "--path",
        str(files),
    )
    return Pki(CertificateAuthority(folder / "ca"), files)


def tls_broker(pki: Pki, workdir: Path, *extra: str) -> Broker:
    """A broker whose one listener is posmon-tls.conf's (on its own port), plus `extra`."""
    lines = (pki.broker_files / "posmon-tls.conf").read_text().splitlines()
    options = [line for line in lines if not line.startswith(("#", "listener "))]
    instance = Broker(workdir, [*options, *extra])
    instance.start()
    return instance


ACL = """\
# Each identity may use its own subtree, and every one shared/; under acl/ only agent-1
# writes and watcher reads.
pattern readwrite pki/%u/#
pattern readwrite shared/#
user agent-1
topic write acl/#
user watcher
topic read acl/#
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def mtls(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One mutual-TLS broker with the ACL above, for the tests that do not restart it."""
    acl = pki.broker_files / "acl"
    acl.write_text(ACL)
    instance = tls_broker(pki, tmp_path_factory.mktemp("tls-broker"), f"acl_file {acl}")
    yield instance
    instance.stop()


def refusal(broker: Broker, ca_file: Path, issued: Issued | None = None) -> str:
    """What the broker answers a TLS client: "" for an accepting CONNACK, else the reason
    of its TLS alert (e.g. SSLV3_ALERT_CERTIFICATE_REVOKED).

    Over TLS 1.2, where the broker's verdict on the client's certificate comes within the
    handshake. In TLS 1.3 it comes after the client's side is done: the client's first
    write can reach a broker that has already closed, whose reset then loses the alert.
    The MQTT client (TLS 1.3) is checked beside it in each test.
    """
    context = ssl.create_default_context(cafile=str(ca_file))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    if issued is not None:
        context.load_cert_chain(str(issued.cert_path), str(issued.key_path))
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(CONNECT)
                answer = tls.recv(4)
        except ssl.SSLError as exc:
            return str(exc.reason or type(exc).__name__)
    return "" if answer == ACCEPTED else f"unexpected answer {answer!r}"


def settings(broker: Broker, pki: Pki, issued: Issued | None, **mqtt: object) -> MqttSettings:
    tls: dict[str, object] = {"enabled": True, "ca_file": pki.ca.ca_cert_path}
    if issued is not None:
        tls |= {"cert_file": issued.cert_path, "key_file": issued.key_path}
    return broker.settings("pki/x", tls=tls, **mqtt)


def connected(client: MqttClient, timeout: float = 3.0) -> bool:
    """Connect and wait for the CONNACK; False if the broker closes the connection first."""
    try:
        client.connect()
    except OSError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not client.connected:
        if not client.loop(0.05):
            return False
    return client.connected


def round_trip(client: MqttClient, topic: str, received: list[Message]) -> bool:
    """Publish one message to `topic` and wait for it to come back (subscribed before)."""
    payload = uuid.uuid4().bytes
    client.publish(topic, payload)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        client.loop(0.05)
        if any(m.payload == payload for m in received):
            return True
    return False


def subscribed(client: MqttClient, topic: str) -> list[Message]:
    received: list[Message] = []
    client.on_message = received.append
    client.subscribe([topic])
    for _ in range(10):
        client.loop(0.02)  # the SUBACK
    return received


# --- who gets in --------------------------------------------------------------------------


def test_an_issued_certificate_connects_publishes_and_receives(mtls: Broker, pki: Pki) -> None:
    issued = pki.issue("agent-ok")
    client = MqttClient(settings(mtls, pki, issued), "agent-ok")
    try:
        assert connected(client), client.last_error
        received = subscribed(client, "pki/agent-ok/#")
        assert round_trip(client, "pki/agent-ok/t", received)
    finally:
        client.disconnect()
    assert refusal(mtls, pki.ca.ca_cert_path, issued) == ""


@pytest.mark.parametrize(
    ("starts", "days", "alert"),
    [(-30, 1, "SSLV3_ALERT_CERTIFICATE_EXPIRED"), (2, 397, "SSLV3_ALERT_BAD_CERTIFICATE")],
    ids=["expired", "not-yet-valid"],
)
def test_a_certificate_outside_its_validity_is_refused(
    mtls: Broker, pki: Pki, starts: int, days: int, alert: str
) -> None:
    """`starts`: days from now the certificate's validity begins."""
    name = f"agent-from-{starts}"
    issued = pki.issue(name, not_before=datetime.now(UTC) + timedelta(days=starts), days=days)

    assert refusal(mtls, pki.ca.ca_cert_path, issued) == alert
    client = MqttClient(settings(mtls, pki, issued), name)
    try:
        assert not connected(client)
    finally:
        client.disconnect()


def test_a_certificate_of_another_ca_is_refused(mtls: Broker, pki: Pki, tmp_path: Path) -> None:
    foreign = CertificateAuthority.init(tmp_path / "foreign")
    # The same name as a real identity: only the issuer differs.
    issued = foreign.issue_client("agent-ok", Role.AGENT)

    assert refusal(mtls, pki.ca.ca_cert_path, issued) == "TLSV1_ALERT_UNKNOWN_CA"
    client = MqttClient(settings(mtls, pki, issued), "agent-ok-foreign")
    try:
        assert not connected(client)
    finally:
        client.disconnect()


def test_no_certificate_is_refused_even_with_a_login(mtls: Broker, pki: Pki) -> None:
    assert refusal(mtls, pki.ca.ca_cert_path) == "SSLV3_ALERT_HANDSHAKE_FAILURE"
    client = MqttClient(
        settings(mtls, pki, None, username="agent-1", password="anything"), "no-cert"
    )
    try:
        assert not connected(client)
    finally:
        client.disconnect()


def test_the_common_name_is_the_username_the_acl_sees(mtls: Broker, pki: Pki) -> None:
    """Only `user agent-1` may write acl/#: agent-1's certificate does; agent-2's does
    not, even when its CONNECT claims to be agent-1."""
    watcher = MqttClient(settings(mtls, pki, pki.issue("watcher")), "watcher")
    writer = MqttClient(settings(mtls, pki, pki.issue("agent-1")), "agent-1")
    impostor = MqttClient(
        settings(mtls, pki, pki.issue("agent-2"), username="agent-1", password="x"),
        "agent-1-impostor",
    )
    clients = (watcher, writer, impostor)
    try:
        assert all(connected(client) for client in clients)
        received = subscribed(watcher, "acl/#")
        acked: list[int] = []
        impostor.on_published = acked.append
        forged = impostor.publish("acl/forged", b"from agent-2")
        wait_until(lambda: impostor.loop(0.02) and forged in acked, 5, "PUBACK of the forgery")
        # The broker answered the forgery (and dropped it) before agent-1 publishes.
        writer.publish("acl/real", b"from agent-1")
        wait_until(
            lambda: writer.loop(0.01) and watcher.loop(0.02) and len(received) >= 1,
            5,
            "agent-1's message at the watcher",
        )
        for _ in range(10):
            watcher.loop(0.02)
    finally:
        for client in clients:
            client.disconnect()

    assert [(m.topic, m.payload) for m in received] == [("acl/real", b"from agent-1")]
    log = (mtls.workdir / "mosquitto.log").read_text()
    assert "u'agent-2'" in log  # the impostor's login is its certificate's name
    assert "u'agent-1'" in log


def test_a_backlog_over_tls_arrives_whole_and_in_order(mtls: Broker, pki: Pki) -> None:
    """Thousands of queued messages read over TLS, where the MQTT client fills its read
    buffer with every TLS record that has arrived (one per message, as mosquitto sends
    them), and packets span records and buffer fills."""
    count = 3000
    subscriber_settings = settings(mtls, pki, pki.issue("agent-backlog"))
    subscriber = MqttClient(subscriber_settings, "agent-backlog", manual_ack=True)
    try:
        assert connected(subscriber)
        subscribed(subscriber, "shared/backlog/#")
    finally:
        subscriber.disconnect()
    publisher = MqttClient(settings(mtls, pki, pki.issue("agent-backlog-pub")), "pub")
    acked: list[int] = []
    publisher.on_published = acked.append
    try:
        assert connected(publisher)
        for index in range(count):
            # Sizes that cut packets across TLS records and the 64 KiB buffer differently.
            publisher.publish("shared/backlog/t", f"{index:05d}".encode() * (1 + index % 97))
            publisher.loop(0)
        wait_until(lambda: publisher.loop(0.02) and len(acked) == count, 30, "every PUBACK")
    finally:
        publisher.disconnect()

    subscriber = MqttClient(subscriber_settings, "agent-backlog", manual_ack=True)
    received: list[Message] = []
    subscriber.on_message = received.append
    try:
        assert connected(subscriber)
        wait_until(
            lambda: (
                subscriber.loop(0.02)
                and subscriber.ack_all(received[-500:]) is None
                and len(received) >= count
            ),
            30,
            "the backlog",
        )
    finally:
        subscriber.disconnect()
    payloads = [m.payload for m in received]
    assert payloads == [f"{i:05d}".encode() * (1 + i % 97) for i in range(count)]


# --- the collector's two connections --------------------------------------------------------


def test_the_collectors_alerts_reach_a_viewer_over_mutual_tls(tmp_path: Path) -> None:
    """A broker provisioned with the mutual-TLS listener only (ACL, one connection per
    login) and every client on a certificate: the collector's ingest (c1) and its alert
    channel (c1-alerts, [notify] tls_certfile) stay connected side by side, its alert
    reaches a viewer, and an agent's certificate cannot publish on the alert topic."""
    pki = make_pki(tmp_path)
    folder = str(pki.ca.folder)
    assert "c1-alerts.crt" in cli("issue-collector", "c1", "--dir", folder)
    for command, name in (("issue-agent", "shop-1"), ("issue-acquirer", "acq")):
        cli(command, name, "--dir", folder)
    cli("issue-viewer", "view", "--dir", folder)
    prefix = f"test/{uuid.uuid4().hex[:12]}"
    fleet = Fleet.model_validate(
        {
            "topic_prefix": prefix,
            "agents": {"shop-1": {"tids": ["10000001"]}},
            "collectors": ["c1"],
            "acquirers": {"acq": {}},
            "viewers": ["view"],
        }
    )
    port = free_port()
    out = tmp_path / "posmon.d"
    listener = render_broker_conf(str(pki.broker_files), port=port, bind="127.0.0.1")
    provision(fleet, out, listeners=[], tls_listener=listener)
    broker = Broker(tmp_path / "broker")
    with broker.conf.open("a") as conf:  # last, as in posmon.conf
        conf.write(f"include_dir {out}\n")
    broker.start()
    clients = pki.ca.clients

    def over_tls(login: str) -> MqttSettings:
        return MqttSettings.model_validate(
            {
                "port": port,
                "topic_prefix": prefix,
                "reconnect_min_s": 0.05,
                "reconnect_max_s": 0.2,
                "tls": {
                    "enabled": True,
                    "ca_file": pki.ca.ca_cert_path,
                    "cert_file": clients / f"{login}.crt",
                    "key_file": clients / f"{login}.key",
                },
            }
        )

    database = f"sqlite:///{tmp_path}/posmon.db"
    reader = Store(database, SettlementTerms(CollectorConfig()))
    reader.migrate()
    config = CollectorConfig(
        collector={"id": "c1"},
        database={"url": database},
        mqtt=over_tls("c1"),
        http={"enabled": False},
        merchants=[MerchantRule(mid=MID, fee_bp=0)],
        alerts={"sweep_s": 0.1},
        notify={
            "tls_certfile": clients / "c1-alerts.crt",
            "tls_keyfile": clients / "c1-alerts.key",
        },
    )
    topics = Topics(prefix)
    peers = {login: MqttClient(over_tls(login), login) for login in ("view", "shop-1", "acq")}
    running = Running(config)
    try:
        assert all(connected(peer) for peer in peers.values())
        viewer, agent, acquirer = peers["view"], peers["shop-1"], peers["acq"]
        received = subscribed(viewer, f"{prefix}/alerts/#")
        acked: list[int] = []
        agent.on_published = acked.append
        forged = agent.publish(topics.alert("SETTLEMENT_FAILED"), b'{"forged": true}')
        wait_until(lambda: agent.loop(0.02) and forged in acked, 5, "PUBACK of the forgery")
        # The broker has dropped the forgery before the real flow starts.
        rrn = "402511000001"
        agent.publish(topics.terminal("10000001", "txn"), txn(rrn).to_json())
        wait_until(
            lambda: agent.loop(0.02) and reader.counts()["transactions"] == 1,
            15,
            "the transaction stored",
        )
        acquirer.publish(topics.settlements, failed(rrn, "S-1", "AC04").to_json())
        wait_until(
            lambda: acquirer.loop(0.01) and viewer.loop(0.02) and len(received) >= 1,
            15,
            "the collector's alert at the viewer",
        )
        for _ in range(10):
            viewer.loop(0.02)
        assert running.collector.ingestor.client.connected
    finally:
        running.stop()
        for peer in peers.values():
            peer.disconnect()
        reader.close()
        broker.stop()
    assert [m.topic for m in received] == [topics.alert("SETTLEMENT_FAILED")]
    alert = AlertEvent.from_json(received[0].payload)
    assert (alert.tid, alert.rrn, alert.cause.value) == ("10000001", rrn, "ACCOUNT_INFO")
    log = (broker.workdir / "mosquitto.log").read_text()
    assert "u'c1-alerts'" in log and "u'c1'" in log  # each certificate its own login
    assert "already connected, closing old connection" not in log


# --- revocation and the CRL -----------------------------------------------------------------


@pytest.fixture
def own_pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def own_mtls(own_pki: Pki, tmp_path: Path) -> Iterator[Broker]:
    """A mutual-TLS broker for one test, which it may reload and restart."""
    instance = tls_broker(own_pki, tmp_path / "broker")
    yield instance
    instance.stop()


def reload(broker: Broker) -> None:
    """SIGHUP, as `systemctl reload mosquitto` sends, and time to act on it."""
    assert broker.process is not None
    log = broker.workdir / "mosquitto.log"
    reloads = log.read_text().count("Reloading config")
    broker.process.send_signal(signal.SIGHUP)
    wait_until(lambda: log.read_text().count("Reloading config") > reloads, 5, "the reload")


def test_a_revoked_certificate_is_refused_after_a_reload(own_mtls: Broker, own_pki: Pki) -> None:
    """mosquitto 2 reads the CRL at start and on SIGHUP only. After the reload a revoked
    certificate gets no new connection, but a connection made before stays up until the
    broker restarts: docs/security.md tells operators both."""
    broker, pki, ca_file = own_mtls, own_pki, own_pki.ca.ca_cert_path
    revoked, kept = pki.issue("agent-gone"), pki.issue("agent-stays")
    output = cli("revoke", "agent-gone", "--dir", str(pki.ca.folder))
    assert "revoked the agent certificate of agent-gone" in output
    pki.publish_crl()

    # The CRL on disk has changed; the broker has not read it.
    held = MqttClient(settings(broker, pki, revoked), "agent-gone")
    try:
        assert connected(held), "mosquitto read the CRL without a reload"
        received = subscribed(held, "pki/agent-gone/#")

        reload(broker)
        assert refusal(broker, ca_file, revoked) == "SSLV3_ALERT_CERTIFICATE_REVOKED"
        assert refusal(broker, ca_file, kept) == ""
        assert held.connected and round_trip(held, "pki/agent-gone/t", received), (
            "the connection made before the reload was cut"
        )

        broker.stop()
        wait_until(lambda: not held.loop(0.02), 10, "the client to see the broker go")
        broker.start()
        assert not connected(held)
    finally:
        held.disconnect()
    assert refusal(broker, ca_file, revoked) == "SSLV3_ALERT_CERTIFICATE_REVOKED"
    assert refusal(broker, ca_file, kept) == ""


def test_a_lapsed_crl_locks_everyone_out_until_it_is_re_signed(
    own_mtls: Broker, own_pki: Pki
) -> None:
    broker, pki, ca_file = own_mtls, own_pki, own_pki.ca.ca_cert_path
    issued = pki.issue("agent-ok")
    pki.ca.refresh_crl(now=datetime.now(UTC) - timedelta(days=400))
    pki.publish_crl()
    reload(broker)
    assert refusal(broker, ca_file, issued) != ""

    assert "CRL number" in cli("crl", "--dir", str(pki.ca.folder))
    pki.publish_crl()
    reload(broker)
    assert refusal(broker, ca_file, issued) == ""


# --- the CA's files and commands ------------------------------------------------------------


def test_files_modes_and_certificate_contents(pki: Pki) -> None:
    ca = pki.ca
    issued = ca.issue_client("collector-9", Role.COLLECTOR)

    assert stat.S_IMODE(ca.folder.stat().st_mode) == 0o700
    for key in (ca.ca_key_path, issued.key_path, pki.broker_files / "server.key"):
        assert key is not None and stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert issued.cert_path is not None
    client = x509.load_pem_x509_certificate(issued.cert_path.read_bytes())
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "collector-9"
    assert client.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == (
        "collector"
    )
    usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not client.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = client.not_valid_after_utc - client.not_valid_before_utc
    assert lifetime == timedelta(days=397)
    client.verify_directly_issued_by(ca.certificate)

    server = x509.load_pem_x509_certificate((pki.broker_files / "server.crt").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [SERVER]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    authority = ca.certificate
    assert authority.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ca_lifetime = authority.not_valid_after_utc - authority.not_valid_before_utc
    assert timedelta(days=3652) <= ca_lifetime <= timedelta(days=3653)


def test_commands_never_print_a_key_and_refuse_what_they_must(tmp_path: Path) -> None:
    folder = str(tmp_path / "ca")
    runner = CliRunner()
    outputs = [cli("init", "--dir", folder), cli("issue-collector", "collector-1", "-d", folder)]
    outputs.append(cli("issue", "shop-042", "--role", "agent", "-d", folder))

    again = runner.invoke(app, ["issue-agent", "shop-042", "-d", folder])
    assert again.exit_code == 1 and "--replace" in again.output
    outputs.append(cli("issue-agent", "shop-042", "--replace", "-d", folder))
    outputs.append(cli("revoke", "shop-042", "-d", folder))
    listing = cli("list", "-d", folder)
    outputs.append(listing)
    # Both of shop-042's certificates (the first and its replacement) were revoked.
    assert listing.count("│ revoked") == 2 and "replaced" in listing
    for bad in (["issue-agent", "shop/042"], ["init"], ["revoke", "nobody"]):
        result = runner.invoke(app, [*bad, "-d", folder])
        assert result.exit_code == 1, bad
        outputs.append(result.output)
    keys = [path.read_text() for path in (tmp_path / "ca").rglob("*.key")]
    assert keys
    for output in outputs:
        assert "PRIVATE KEY" not in output
        assert not any(key.splitlines()[1] in output for key in keys)


def test_identities_are_logins() -> None:
    assert check_identity("shop-042.a_b") == "shop-042.a_b"
    for bad in ("", ".hidden", "a/b", "a+b", "a#", "x" * 65, "a b"):
        with pytest.raises(PkiError):
            check_identity(bad)


def test_broker_conf_lines() -> None:
    lines = render_broker_conf("/etc/mosquitto/posmon-tls", port=8884, bind="10.0.0.5")
    assert [line for line in lines.splitlines() if not line.startswith("#")] == [
        "listener 8884 10.0.0.5",
        "cafile /etc/mosquitto/posmon-tls/ca.crt",
        "certfile /etc/mosquitto/posmon-tls/server.crt",
        "keyfile /etc/mosquitto/posmon-tls/server.key",
        "crlfile /etc/mosquitto/posmon-tls/crl.pem",
        "require_certificate true",
        "use_identity_as_username true",
        "tls_version tlsv1.2",
    ]
