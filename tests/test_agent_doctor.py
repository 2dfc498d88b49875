"""`posmon agent doctor` against real parts: a pseudo-terminal as the port, real mosquittos.

The pty's test side plays the terminal: it writes real POSMON-SL/1 frames into the master
and checks afterwards that nothing came back, since the doctor must never answer.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import threading
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Broker, wait_until
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner, Result

from agent.cli import app
from agent.config import AgentConfig, PortSection
from agent.doctor import (
    NO_FRAMES_HINT,
    Check,
    Status,
    check_broker,
    check_certificate,
    check_outbox,
    check_ports,
    permission_advice,
)
from agent.outbox import Outbox, Priority
from posmon.broker.fleet import Role
from posmon.broker.pki import CertificateAuthority, Issued
from posmon.mqtt import MqttSettings, TlsSettings
from posmon.serialport import open_port
from posmon.wire.codec import encode_record
from simulators.broker import free_port

TID = "10000001"
AGENT = "shop-test"


@dataclass
class Pty:
    """Both ends of a pseudo-terminal; `path` is the side the doctor opens."""

    master: int
    slave: int
    path: str

    def replies(self) -> bytes:
        """Whatever the port wrote back towards the terminal, without waiting for more."""
        data = b""
        while select.select([self.master], [], [], 0.05)[0]:
            data += os.read(self.master, 1024)
        return data


@pytest.fixture
def pty() -> Iterator[Pty]:
    master, slave = os.openpty()
    tty.setraw(slave)
    yield Pty(master, slave, os.ttyname(slave))
    os.close(master)
    os.close(slave)


@contextmanager
def sending(pty: Pty, frame: Callable[[int], bytes]) -> Iterator[Pty]:
    """Write `frame(n)` into the pty every 50 ms, as a terminal would, until the test ends.

    The port is opened after the writer starts and pyserial flushes its input on open, so
    a steady stream is what makes sure the doctor hears something.
    """
    stop = threading.Event()

    def run() -> None:
        count = 0
        while not stop.wait(0.05):
            count += 1
            os.write(pty.master, frame(count))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield pty
    stop.set()
    thread.join(timeout=5)


def heartbeat(seq: int) -> bytes:
    return encode_record("HBT", {"SEQ": str(seq), "TID": TID, "TS": "20261125103015"})


@pytest.fixture
def terminal(pty: Pty) -> Iterator[Pty]:
    """The pty with a terminal behind it sending heartbeats."""
    with sending(pty, heartbeat):
        yield pty


def write_config(
    tmp_path: Path, *, url: str, mqtt_port: int, prefix: str = "posmon/v1", extra: str = ""
) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[agent]\nid = "{AGENT}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[[ports]]\nname = "counter-1"\nurl = "{url}"\ntids = ["{TID}"]\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {mqtt_port}\ntopic_prefix = "{prefix}"\n'
        f"{extra}"
    )
    return path


def doctor(config: Path, listen_s: float = 0.5) -> Result:
    # Wide enough that no detail is wrapped inside the table.
    runner = CliRunner(env={"COLUMNS": "250"})
    return runner.invoke(
        app, ["doctor", "--config", str(config), "--listen-seconds", str(listen_s)]
    )


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def port(url: str, baudrate: int = 115200) -> PortSection:
    return PortSection(name="counter-1", url=url, baudrate=baudrate)


# --- the whole command ----------------------------------------------------------------------


def test_all_checks_pass_and_the_terminal_gets_no_answer(
    terminal: Pty,
    broker: Broker,
    prefix: str,
    tmp_path: Path,
    listener_factory: Callable[[Broker, str], Any],
) -> None:
    listener = listener_factory(broker, prefix)
    config = write_config(tmp_path, url=terminal.path, mqtt_port=broker.port, prefix=prefix)

    result = doctor(config)

    assert result.exit_code == 0, result.output
    assert "OK: all 10 checks passed" in result.stdout
    assert "FAIL" not in result.stdout
    assert "seen HBT" in result.stdout and f"from TID {TID}" in result.stdout
    assert f"CONNACK accepted for posmon-doctor-{AGENT}" in result.stdout
    topic = f"{prefix}/agents/{AGENT}/doctor"
    wait_until(lambda: listener.on("/doctor"), 5, "the doctor's test message")
    assert [m.topic for m in listener.on("/doctor")] == [topic]
    assert terminal.replies() == b"", "the doctor answered the terminal"


def test_broker_down_fails_tcp_and_skips_login_and_publish(terminal: Pty, tmp_path: Path) -> None:
    dead = free_port()
    config = write_config(tmp_path, url=terminal.path, mqtt_port=dead)

    result = doctor(config, listen_s=0.3)

    assert result.exit_code == 1, result.output
    assert f"FAIL: 1 of 10 checks failed: broker tcp 127.0.0.1:{dead}" in result.stdout
    checks = by_name(check_broker(MqttSettings(host="127.0.0.1", port=dead), AGENT))
    assert checks["broker name"].status is Status.OK
    assert checks["broker tcp"].status is Status.FAIL
    assert "refused" in checks["broker tcp"].detail
    assert "is the broker running" in checks["broker tcp"].hint
    assert checks["broker login"] == Check(
        "broker login", f"127.0.0.1:{dead}", Status.SKIP, "skipped: broker tcp failed"
    )
    assert checks["broker publish"].status is Status.SKIP


def test_missing_device_says_so_and_skips_the_rest(
    broker: Broker, prefix: str, tmp_path: Path
) -> None:
    missing = tmp_path / "ttyUSB9"
    config = write_config(tmp_path, url=str(missing), mqtt_port=broker.port, prefix=prefix)

    result = doctor(config)

    assert result.exit_code == 1, result.output
    assert f"{missing} does not exist" in result.stdout
    checks = check_ports([port(str(missing))], 0.1)
    assert [(check.name, check.status) for check in checks] == [
        ("serial exists", Status.FAIL),
        ("serial permissions", Status.SKIP),
        ("serial opens", Status.SKIP),
        ("serial frames", Status.SKIP),
    ]


def test_bad_config_key_exits_2_naming_the_key_and_the_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, url="/dev/ttyUSB0", mqtt_port=1883, extra="hots = 'x'\n")

    result = doctor(config)

    assert result.exit_code == 2
    assert f"{config}: mqtt.hots: unknown key" in result.stderr
    assert "Checks" not in result.stdout


# --- serial ports ---------------------------------------------------------------------------


def test_silent_terminal_fails_with_the_hint(pty: Pty) -> None:
    (exists, permissions, opens, frames) = check_ports([port(pty.path)], 1.0)

    assert (exists.status, permissions.status, opens.status) == (Status.OK,) * 3
    assert frames.status is Status.FAIL
    assert frames.detail == "0 good frames, 0 bad frames, 0 noise bytes in 1 s"
    assert NO_FRAMES_HINT in frames.hint


def test_garbled_bytes_are_counted_and_point_at_the_baud_rate(pty: Pty) -> None:
    good = heartbeat(1)
    garbled = good[:-1] + bytes([good[-1] ^ 0xFF]) + b"\xff\xfe\x80"

    with sending(pty, lambda seq: garbled):
        (*_, frames) = check_ports([port(pty.path, baudrate=9600)], 0.5)

    assert frames.status is Status.FAIL
    assert frames.detail.startswith("0 good frames, ")
    bad = int(frames.detail.split(", ")[1].split()[0])
    noise = int(frames.detail.split(", ")[2].split()[0])
    # The last chunk may be cut by the end of listening: counts, not exact ratios.
    assert bad >= 1 and noise >= 3
    assert "check the baud rate (configured 9600)" in frames.hint
    assert NO_FRAMES_HINT in frames.hint
    assert pty.replies() == b"", "the doctor NAKed a bad frame"


def test_port_locked_by_a_running_agent_is_busy(terminal: Pty) -> None:
    agent = open_port(terminal.path)
    try:
        (*_, opens, frames) = check_ports([port(terminal.path)], 0.2)
    finally:
        agent.close()

    assert opens.status is Status.FAIL
    assert opens.detail.startswith("busy")
    assert "systemctl stop posmon-agent" in opens.hint
    assert frames == Check(
        "serial frames", f"counter-1 ({terminal.path})", Status.SKIP, "skipped: not opened"
    )


def test_pyserial_url_skips_the_device_checks() -> None:
    checks = check_ports([port("loop://")], 0.2)

    assert [(check.name, check.status) for check in checks] == [
        ("serial exists", Status.SKIP),
        ("serial permissions", Status.SKIP),
        ("serial opens", Status.OK),
        ("serial frames", Status.FAIL),
    ]
    assert checks[0].detail.startswith("n/a")


def test_no_port_configured_is_a_failure() -> None:
    (only,) = check_ports([], 0.1)

    assert only.status is Status.FAIL
    assert "no [[ports]]" in only.detail


@pytest.mark.parametrize(
    ("mode", "group", "process", "listed", "expected"),
    [
        (0o20660, "dialout", {"tech"}, set(), "sudo usermod -aG dialout tech"),
        (0o20660, "dialout", {"tech"}, {"dialout"}, "log out and in again"),
        (0o20600, "dialout", {"tech"}, set(), 'GROUP="dialout", MODE="0660"'),
        (0o20660, "root", {"tech"}, set(), "install the udev rule"),
    ],
)
def test_permission_advice_names_the_group_to_join(
    mode: int, group: str, process: set[str], listed: set[str], expected: str
) -> None:
    assert expected in permission_advice(mode, group, "tech", process, listed)


# --- outbox ---------------------------------------------------------------------------------


def test_outbox_reports_waiting_events_and_a_full_outbox(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "state" / "outbox.sqlite3", max_events=100, fsync="normal")
    for index in range(100):
        outbox.put(f"t/{index}", b"{}", Priority.KEEP)
    outbox.close()

    roomy = AgentConfig(agent={"state_dir": tmp_path / "state"}, outbox={"max_events": 1000})
    folder, waiting = check_outbox(roomy)
    assert folder.status is Status.OK
    assert waiting.status is Status.OK
    assert waiting.detail.startswith("100 events waiting, the oldest for ")

    full = AgentConfig(agent={"state_dir": tmp_path / "state"}, outbox={"max_events": 100})
    (_, verdict) = check_outbox(full)
    assert verdict.status is Status.FAIL
    assert verdict.detail.startswith("full: 100 events waiting")


def test_missing_state_dir_is_reported_not_created(tmp_path: Path) -> None:
    state = tmp_path / "var" / "posmon-agent"
    folder, outbox = check_outbox(AgentConfig(agent={"state_dir": state}))

    assert folder.detail == f"missing; the agent creates it in {tmp_path}"
    assert outbox.detail == "not created yet: the agent creates it at start"
    assert not state.exists()


# --- TLS ------------------------------------------------------------------------------------


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Path, Path]]:
    """A mosquitto with only a TLS listener; yields it, its CA and an unrelated CA."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make test certificates (./scripts/test installs it)")
    folder = tmp_path_factory.mktemp("tls")
    ca_key, ca = make_ca(folder, "posmon-test-ca")
    _, other_ca = make_ca(folder, "someone-else")
    key, csr, cert = folder / "server.key", folder / "server.csr", folder / "server.crt"
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    subprocess.run(
        ["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=broker.test"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
         "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(folder / "san.ext")],
        check=True, capture_output=True,
    )  # fmt: skip
    instance = Broker(folder / "broker")
    listener = f"listener {instance.port} 127.0.0.1"
    instance.conf.write_text(
        instance.conf.read_text().replace(
            listener, f"{listener}\ncafile {ca}\ncertfile {cert}\nkeyfile {key}"
        )
    )
    instance.start()
    yield instance, ca, other_ca
    instance.stop()


def test_tls_handshake_login_and_publish(tls_broker: tuple[Broker, Path, Path]) -> None:
    broker, ca, _ = tls_broker
    settings = broker.settings("test/tls", tls={"enabled": True, "ca_file": ca})

    checks = check_broker(settings, AGENT)

    assert [(check.name, check.status) for check in checks] == [
        ("broker name", Status.OK),
        ("broker tcp", Status.OK),
        ("broker tls", Status.OK),
        ("broker login", Status.OK),
        ("broker publish", Status.OK),
    ]
    assert "certificate of broker.test verified" in checks[2].detail


def test_tls_with_the_wrong_ca_stops_before_login(tls_broker: tuple[Broker, Path, Path]) -> None:
    broker, _, other_ca = tls_broker
    settings = broker.settings("test/tls", tls={"enabled": True, "ca_file": other_ca})

    checks = by_name(check_broker(settings, AGENT))

    assert checks["broker tls"].status is Status.FAIL
    assert "certificate not accepted" in checks["broker tls"].detail
    assert checks["broker login"].detail == "skipped: broker tls failed"
    assert checks["broker publish"].status is Status.SKIP


def test_plain_mqtt_to_a_tls_port_fails_login(tls_broker: tuple[Broker, Path, Path]) -> None:
    broker, _, _ = tls_broker

    checks = by_name(check_broker(broker.settings("test/tls"), AGENT))

    assert checks["broker tcp"].status is Status.OK
    assert checks["broker login"].status is Status.FAIL
    assert "TLS" in checks["broker login"].hint
    assert checks["broker publish"].status is Status.SKIP


def test_refused_login_shows_the_brokers_reason(tmp_path: Path) -> None:
    instance = Broker(tmp_path / "broker")
    instance.conf.write_text(
        instance.conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
    )
    instance.start()
    try:
        checks = by_name(check_broker(instance.settings("test/refused"), AGENT))
    finally:
        instance.stop()

    assert checks["broker login"].status is Status.FAIL
    assert checks["broker login"].detail == "broker refused the connection: Not authorized"
    assert checks["broker publish"].status is Status.SKIP


# --- the client certificate (mutual TLS) ----------------------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path_factory.mktemp("pki") / "ca")


def client_tls(issued: Issued, *, key: Path | None = None) -> TlsSettings:
    return TlsSettings(
        enabled=True,
        ca_file=issued.cert_path.parent.parent / "ca.crt" if issued.cert_path else None,
        cert_file=issued.cert_path,
        key_file=key or issued.key_path,
    )


def certificate_check(tls: TlsSettings, **options: Any) -> Check:
    (check,) = check_certificate(tls, AGENT, **options)
    assert check.name == "tls certificate" and check.target == str(tls.cert_file)
    return check


def test_certificate_valid_for_long_is_ok(ca: CertificateAuthority) -> None:
    check = certificate_check(client_tls(ca.issue_client(AGENT, Role.AGENT, replace=True)))

    assert check.status is Status.OK
    assert check.detail.startswith(f"{AGENT}, valid until ")
    assert check.detail.endswith(" left), key matches")


@pytest.mark.parametrize(
    ("now", "status", "detail", "hint"),
    [
        (timedelta(days=360), Status.OK, "37 days left", ""),
        (timedelta(days=390), Status.WARN, "7 days left", "posmon pki issue-agent"),
        (timedelta(days=398), Status.FAIL, "expired", "posmon pki issue-agent"),
        (timedelta(days=-1), Status.FAIL, "not valid before", "clock"),
    ],
)
def test_certificate_dates_warn_within_30_days_and_fail_outside(
    ca: CertificateAuthority, now: timedelta, status: Status, detail: str, hint: str
) -> None:
    issued = ca.issue_client(AGENT, Role.AGENT, replace=True)
    # `now` counts from the start of its validity; a 397-day certificate.
    check = certificate_check(client_tls(issued), now=issued.not_before + now, warn_days=30)

    assert check.status is status, check
    assert detail in check.detail
    assert hint in check.hint


def test_certificate_with_another_key_fails(ca: CertificateAuthority) -> None:
    mine = ca.issue_client(AGENT, Role.AGENT, replace=True)
    other = ca.issue_client("shop-other", Role.AGENT, replace=True)

    check = certificate_check(client_tls(mine, key=other.key_path))

    assert check.status is Status.FAIL
    assert check.detail == f"the key {other.key_path} is not this certificate's key"


def test_certificate_of_another_agent_warns(ca: CertificateAuthority) -> None:
    check = certificate_check(client_tls(ca.issue_client("shop-999", Role.AGENT, replace=True)))

    assert check.status is Status.WARN
    assert f"issued to shop-999, not to this agent ({AGENT})" in check.detail


def test_certificate_files_unreadable_or_wrong_fail(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    issued = ca.issue_client(AGENT, Role.AGENT, replace=True)
    assert issued.cert_path is not None and issued.key_path is not None
    missing = tmp_path / "missing.crt"
    not_pem = tmp_path / "garbage.crt"
    not_pem.write_text("hello\n")
    encrypted = tmp_path / "encrypted.key"
    key = serialization.load_pem_private_key(issued.key_path.read_bytes(), None)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    cases = {
        "cannot read it: No such file or directory": (missing, issued.key_path),
        "not a PEM certificate": (not_pem, issued.key_path),
        f"the key {encrypted} is encrypted": (issued.cert_path, encrypted),
        f"{not_pem} is not a PEM private key": (issued.cert_path, not_pem),
    }
    for expected, (cert_file, key_file) in cases.items():
        tls = TlsSettings(enabled=True, cert_file=cert_file, key_file=key_file)
        check = certificate_check(tls)
        assert check.status is Status.FAIL and expected in check.detail, check


def test_no_client_certificate_no_line() -> None:
    assert check_certificate(TlsSettings(), AGENT) == []
    assert check_certificate(TlsSettings(enabled=True), AGENT) == []


def test_doctor_shows_an_expiring_certificate_as_a_warning(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    """WARN does not fail the doctor (exit 0), and the verdict line names it."""
    issued = ca.issue_client(
        AGENT, Role.AGENT, replace=True, not_before=datetime.now(UTC) - timedelta(days=390)
    )
    config = write_config(
        tmp_path,
        url="loop://",
        mqtt_port=free_port(),
        extra=f'[mqtt.tls]\nenabled = true\ncert_file = "{issued.cert_path}"\n'
        f'key_file = "{issued.key_path}"\n',
    )
    result = doctor(config, listen_s=0.1)

    row = next(line for line in result.stdout.splitlines() if "tls certificate" in line)
    assert "WARN" in row and f"{AGENT}, valid until" in row
    assert "WARN: tls certificate" in result.stdout
    assert "PRIVATE KEY" not in result.stdout
