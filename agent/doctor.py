"""`posmon agent doctor`: checks an agent's installation the way a field technician needs it.

Every check returns `Check` records (name, target, OK/FAIL/SKIP, detail, hint); the CLI
only renders them. A check that fails turns the ones depending on it into SKIP: a port
that does not exist is not opened, a broker without a TCP connection gets no TLS, login
or publish attempt.

The doctor only listens on the serial ports. It never writes ACK or NAK: answering is the
agent's job, and an ACK from the doctor would tell a terminal that a frame was kept when
it was not. Device paths are opened with the same exclusive lock the agent takes, so a
port held by a running agent is reported busy instead of being read behind its back.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import math
import os
import pwd
import socket
import sqlite3
import ssl
import stat
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from agent.config import AgentConfig, PortSection
from posmon.mqtt import MqttClient, MqttError, MqttSettings, TlsSettings
from posmon.serialport import SerialPort, SerialPortError, list_ports, open_port
from posmon.wire.codec import RecordError, parse_data
from posmon.wire.frames import BadFrame, FrameDecoder, GoodFrame

if TYPE_CHECKING:
    from cryptography import x509

DEFAULT_LISTEN_S = 5.0
BROKER_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 0.05
NO_FRAMES_HINT = "is the terminal on, cable, baud rate?"
SERVICE = "posmon-agent"


class Status(StrEnum):
    OK = "OK"
    WARN = "WARN"  # works today, needs doing soon (a certificate about to expire)
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the doctor's report; `hint` says what to do about a failure."""

    name: str
    target: str
    status: Status
    detail: str
    hint: str = ""


@dataclass(frozen=True, slots=True)
class Device:
    """A serial device present on this machine, and the configured ports that point at it."""

    device: str
    description: str
    hwid: str
    usb: bool
    configured_as: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Report:
    """Everything the doctor found, in the order it is shown."""

    checks: tuple[Check, ...]
    devices: tuple[Device, ...]

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if check.status is Status.FAIL]

    @property
    def warnings(self) -> list[Check]:
        return [check for check in self.checks if check.status is Status.WARN]

    @property
    def ok(self) -> bool:
        return not self.failed


def diagnose(config: AgentConfig, listen_s: float = DEFAULT_LISTEN_S) -> Report:
    """Run every check of an agent configuration: serial ports, broker, outbox."""
    checks = [
        *check_ports(config.ports, listen_s),
        *check_certificate(config.mqtt.tls, config.agent.id),
        *check_broker(config.mqtt, config.agent.id),
        *check_outbox(config),
    ]
    return Report(tuple(checks), tuple(serial_devices(config.ports)))


# --- serial ports ---------------------------------------------------------------------------

PORT_CHECKS = ("serial exists", "serial permissions", "serial opens", "serial frames")


def serial_devices(ports: Sequence[PortSection] = ()) -> list[Device]:
    """The serial devices present now, each with the configured ports that resolve to it."""
    resolved: dict[str, list[str]] = {}
    for port in ports:
        if not _is_url(port.url):
            resolved.setdefault(os.path.realpath(port.url), []).append(port.name)
    return [
        Device(
            info.device,
            info.description,
            info.hwid,
            info.usb,
            tuple(resolved.get(os.path.realpath(info.device), ())),
        )
        for info in list_ports()
    ]


@dataclass
class _Listening:
    """A port opened for the frame check, and what was heard on it."""

    port: PortSection
    handle: SerialPort
    decoder: FrameDecoder = field(default_factory=FrameDecoder)
    types: Counter[str] = field(default_factory=Counter)
    tids: set[str] = field(default_factory=set)
    bad: Counter[str] = field(default_factory=Counter)
    error: str | None = None

    def take(self, data: bytes, now: float) -> None:
        for frame in self.decoder.feed(data, now):
            if isinstance(frame, BadFrame):
                self.bad[frame.reason.value] += 1
            else:
                self._seen(frame)

    def _seen(self, frame: GoodFrame) -> None:
        try:
            record = parse_data(frame.data)
        except RecordError:
            self.types["unparsable"] += 1
            return
        self.types[record.type[:12]] += 1
        if record.tid:
            self.tids.add(record.tid[:16])


def check_ports(
    ports: Sequence[PortSection],
    listen_s: float = DEFAULT_LISTEN_S,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> list[Check]:
    """Check each port (exists, permissions, opens), then listen to all of them at once."""
    if not ports:
        return [
            Check(
                "serial ports",
                "configuration",
                Status.FAIL,
                "no [[ports]] configured",
                "add a [[ports]] section whose url is one of the serial devices listed below",
            )
        ]
    found: dict[str, list[Check]] = {}
    listening: list[_Listening] = []
    try:
        for port in ports:
            found[port.name], handle = _open(port)
            if handle is not None:
                listening.append(_Listening(port, handle))
        _listen(listening, listen_s, clock)
    finally:
        for item in listening:
            item.handle.close()
    for item in listening:
        found[item.port.name].append(_frames_check(item, listen_s))
    return [check for port in ports for check in found[port.name]]


def _target(port: PortSection) -> str:
    return f"{port.name} ({port.url})"


def _is_url(url: str) -> bool:
    return "://" in url


def _skipped(names: Sequence[str], target: str, because: str) -> list[Check]:
    return [Check(name, target, Status.SKIP, f"skipped: {because}") for name in names]


def _open(port: PortSection) -> tuple[list[Check], SerialPort | None]:
    target = _target(port)
    checks: list[Check] = []
    if _is_url(port.url):
        checks += [
            Check("serial exists", target, Status.SKIP, "n/a: a pyserial URL, not a device"),
            Check("serial permissions", target, Status.SKIP, "n/a: a pyserial URL, not a device"),
        ]
    else:
        exists = _exists(port.url, target)
        checks.append(exists)
        if exists.status is Status.FAIL:
            return checks + _skipped(PORT_CHECKS[1:], target, "no device"), None
        permissions = _permissions(port.url, target)
        checks.append(permissions)
        if permissions.status is Status.FAIL:
            return checks + _skipped(PORT_CHECKS[2:], target, "no access"), None
    try:
        handle = open_port(port.url, port.baudrate, timeout=READ_TIMEOUT_S)
    except SerialPortError as exc:
        detail, hint = _open_failure(exc)
        checks.append(Check("serial opens", target, Status.FAIL, detail, hint))
        return checks + _skipped(PORT_CHECKS[3:], target, "not opened"), None
    how = "" if _is_url(port.url) else ", locked for this process"
    checks.append(Check("serial opens", target, Status.OK, f"{port.baudrate} baud 8N1{how}"))
    return checks, handle


def _exists(path: str, target: str) -> Check:
    if not os.path.exists(path):
        detail = f"{path} does not exist"
        if os.path.islink(path):
            detail += f" (a link to {os.readlink(path)}, which is gone)"
        return Check(
            "serial exists",
            target,
            Status.FAIL,
            detail,
            "plugged in and powered? Compare with the serial devices listed below; "
            "/dev/serial/by-id/... or a udev SYMLINK keep their name across reboots",
        )
    mode = os.stat(path).st_mode
    if not stat.S_ISCHR(mode):
        return Check(
            "serial exists",
            target,
            Status.FAIL,
            f"{path} is not a character device",
            "ports.url must name the serial device, e.g. /dev/ttyUSB0",
        )
    real = os.path.realpath(path)
    detail = "present" if real == path else f"present: {real}"
    return Check("serial exists", target, Status.OK, detail)


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _permissions(path: str, target: str) -> Check:
    user = _user()
    if os.access(path, os.R_OK | os.W_OK):
        return Check("serial permissions", target, Status.OK, f"read/write for {user}")
    info = os.stat(path)
    group = _group(info.st_gid)
    process_groups = {_group(gid) for gid in {os.getegid(), *os.getgroups()}}
    listed_groups = {entry.gr_name for entry in grp.getgrall() if user in entry.gr_mem}
    with contextlib.suppress(KeyError):
        listed_groups.add(_group(pwd.getpwnam(user).pw_gid))
    return Check(
        "serial permissions",
        target,
        Status.FAIL,
        f"{user} cannot read and write it "
        f"({stat.filemode(info.st_mode)} {_owner(info.st_uid)}:{group})",
        permission_advice(info.st_mode, group, user, process_groups, listed_groups),
    )


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def permission_advice(
    mode: int, group: str, user: str, process_groups: set[str], listed_groups: set[str]
) -> str:
    """What to do when `user` may not read and write a device of `mode` owned by `group`."""
    if mode & 0o060 != 0o060 or group == "root":
        return (
            f"the device's group ({group}) has no read/write on it: install the udev rule "
            '(deploy/udev/99-posmon-serial.rules: GROUP="dialout", MODE="0660") and replug'
        )
    if group in listed_groups and group not in process_groups:
        return (
            f"{user} is in group {group}, but this login started before that: "
            "log out and in again (or run `newgrp " + group + "`)"
        )
    return (
        f"join the device's group: sudo usermod -aG {group} {user}, then log in again "
        f"(the service gets it from SupplementaryGroups={group})"
    )


def _open_failure(exc: SerialPortError) -> tuple[str, str]:
    code = getattr(exc.__cause__, "errno", None)
    if code in (errno.EAGAIN, errno.EBUSY) or "exclusively lock" in exc.reason:
        return (
            "busy: another process has it locked (a running posmon agent?)",
            f"stop the agent while the doctor runs: sudo systemctl stop {SERVICE}",
        )
    if code in (errno.EACCES, errno.EPERM):
        return (f"permission denied: {exc.reason}", "see the permissions check")
    if code == errno.ENOENT:
        return (f"gone: {exc.reason}", "unplugged while the doctor ran?")
    return (f"cannot open: {exc.reason}", "")


def _listen(items: list[_Listening], listen_s: float, clock: Callable[[], float]) -> None:
    """Read every open port for `listen_s` seconds, answering nothing."""
    deadline = clock() + listen_s
    while clock() < deadline and any(item.error is None for item in items):
        for item in items:
            if item.error is not None:
                continue
            try:
                data = item.handle.read(max(1, item.handle.in_waiting))
            except SerialPortError as exc:
                item.error = exc.reason
                continue
            if data:
                item.take(data, clock())


def _frames_check(item: _Listening, listen_s: float) -> Check:
    counters = item.decoder.counters
    counts = (
        f"{counters.frames} good frames, {counters.bad_frames} bad frames, "
        f"{counters.noise_bytes} noise bytes in {listen_s:g} s"
    )
    target = _target(item.port)
    if item.error is not None:
        return Check(
            "serial frames",
            target,
            Status.FAIL,
            f"read failed: {item.error}; {counts}",
            "unplugged, or a USB adapter reset? Check the cable and `dmesg`",
        )
    if counters.frames == 0:
        hint = NO_FRAMES_HINT
        if counters.bad_frames or counters.noise_bytes:
            hint = (
                "bytes arrive but make no good frame: check the baud rate "
                f"(configured {item.port.baudrate}) against the terminal's setting; " + hint
            )
        else:
            hint += " A quiet terminal may only send now and then: try --listen-seconds 60"
        return Check("serial frames", target, Status.FAIL, counts, hint)
    seen = ", ".join(f"{kind} {count}" for kind, count in sorted(item.types.items()))
    detail = f"{counts}; seen {seen}"
    if item.tids:
        detail += f" from TID {', '.join(sorted(item.tids))}"
    hints = []
    if counters.bad_frames:
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(item.bad.items()))
        hints.append(f"some frames were bad ({reasons}): a noisy line or a loose connector?")
    unheard = sorted(set(item.port.tids) - item.tids)
    if unheard:
        hints.append(f"not heard from TID {', '.join(unheard)} (yet: it may just be quiet)")
    return Check("serial frames", target, Status.OK, detail, "; ".join(hints))


# --- broker ---------------------------------------------------------------------------------


def doctor_topic(settings: MqttSettings, agent_id: str) -> str:
    """Where the doctor's test message goes: next to the agent's presence."""
    return f"{settings.topic_prefix}/agents/{agent_id}/doctor"


def check_broker(
    settings: MqttSettings, agent_id: str, *, timeout: float = BROKER_TIMEOUT_S
) -> list[Check]:
    """Name, TCP, TLS (when enabled), MQTT login and a QoS 1 publish, each gating the next."""
    target = f"{settings.host}:{settings.port}"
    names = [
        "broker name",
        "broker tcp",
        *(["broker tls"] if settings.tls.enabled else []),
        "broker login",
        "broker publish",
    ]
    checks: list[Check] = []

    def failed(check: Check) -> list[Check]:
        rest = names[len(checks) + 1 :]
        return [*checks, check, *_skipped(rest, target, f"{check.name} failed")]

    name = _resolve(settings, target)
    if name.status is Status.FAIL:
        return failed(name)
    checks.append(name)
    tcp = _tcp(settings, target, timeout)
    if tcp.status is Status.FAIL:
        return failed(tcp)
    checks.append(tcp)
    if settings.tls.enabled:
        tls = _tls(settings, target, timeout)
        if tls.status is Status.FAIL:
            return failed(tls)
        checks.append(tls)
    for check in _login_and_publish(settings, agent_id, target, timeout):
        if check.status is Status.FAIL:
            return failed(check)
        checks.append(check)
    return checks


CERTIFICATE = "tls certificate"
CERT_WARN_DAYS = 30
RENEW_HINT = (
    "renew it: on the CA's machine `posmon pki issue-agent {name} --replace`, then copy "
    "the new .crt and .key here and restart the agent (docs/security.md)"
)


def check_certificate(
    tls: TlsSettings,
    agent_id: str,
    *,
    now: datetime | None = None,
    warn_days: int = CERT_WARN_DAYS,
) -> list[Check]:
    """The client certificate of mutual TLS: readable, valid now and for `warn_days`
    more, its key the one it certifies, and issued to this agent's id.

    No line without a client certificate configured. The dates come from the file, so a
    certificate about to expire is found before the broker starts refusing it.
    """
    if not tls.enabled or tls.cert_file is None or tls.key_file is None:
        return []
    target = str(tls.cert_file)
    try:
        cert = _certificate_pair(tls.cert_file, tls.key_file)
    except _Unusable as exc:
        return [Check(CERTIFICATE, target, exc.status, exc.detail, exc.hint)]
    return [_validity(target, cert, agent_id, now=now or datetime.now(UTC), warn_days=warn_days)]


class _Unusable(Exception):
    """The certificate or its key cannot be used; says why as a Check would."""

    def __init__(self, detail: str, hint: str = "", status: Status = Status.FAIL) -> None:
        super().__init__(detail)
        self.detail = detail
        self.hint = hint
        self.status = status


_KEY_HINT = "mqtt.tls.key_file must be the .key file issued with the certificate, readable"


def _certificate_pair(cert_file: Path, key_file: Path) -> x509.Certificate:
    """The certificate in `cert_file`, once `key_file` is shown to hold its key."""
    try:
        # Only the doctor reads certificates: `posmon agent run` never imports this
        # (8 MB of RSS). The stdlib cannot parse a certificate file without a private
        # function, and `openssl x509` may not be on the box; cryptography comes with
        # the agent's extra, as wheels.
        from cryptography import x509  # noqa: PLC0415
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    except ImportError as exc:
        raise _Unusable(
            "cannot read it: the cryptography package is not installed",
            "install the agent's extras: pip install 'posmon[agent]'",
            Status.SKIP,
        ) from exc
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except OSError as exc:
        raise _Unusable(f"cannot read it: {exc.strerror}") from exc
    except ValueError as exc:
        raise _Unusable(
            "not a PEM certificate", "mqtt.tls.cert_file must be the .crt file posmon pki wrote"
        ) from exc
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except OSError as exc:
        raise _Unusable(f"cannot read the key {key_file}: {exc.strerror}", _KEY_HINT) from exc
    except TypeError as exc:
        raise _Unusable(
            f"the key {key_file} is encrypted: the agent cannot type its passphrase"
        ) from exc
    except ValueError as exc:
        raise _Unusable(f"{key_file} is not a PEM private key", _KEY_HINT) from exc
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise _Unusable(
            f"the key {key_file} is not this certificate's key",
            "cert_file and key_file must be the pair issued together (NAME.crt, NAME.key)",
        )
    return cert


def _validity(
    target: str, cert: x509.Certificate, agent_id: str, *, now: datetime, warn_days: int
) -> Check:
    from cryptography.x509.oid import NameOID  # noqa: PLC0415 - see _certificate_pair

    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value) if names else "?"
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    until = f"{not_after:%Y-%m-%d %H:%M} UTC"
    if now < not_before:
        return Check(
            CERTIFICATE,
            target,
            Status.FAIL,
            f"{name}: not valid before {not_before:%Y-%m-%d %H:%M} UTC "
            f"(this box says it is {now:%Y-%m-%d %H:%M} UTC)",
            "is this box's clock right? (timedatectl; NTP)",
        )
    if now >= not_after:
        return Check(
            CERTIFICATE,
            target,
            Status.FAIL,
            f"{name}: expired {until}, {_duration((now - not_after).total_seconds())} ago: "
            "the broker refuses it",
            RENEW_HINT.format(name=name),
        )
    left = not_after - now
    detail = f"{name}, valid until {until} ({_duration(left.total_seconds())} left), key matches"
    if left < timedelta(days=warn_days):
        return Check(CERTIFICATE, target, Status.WARN, detail, RENEW_HINT.format(name=name))
    if name != agent_id:
        return Check(
            CERTIFICATE,
            target,
            Status.WARN,
            f"{detail}; issued to {name}, not to this agent ({agent_id})",
            f"the broker knows this box by the certificate's name, {name}, and the ACL "
            f"grants {agent_id}'s topics to {agent_id}: issue one for {agent_id}",
        )
    return Check(CERTIFICATE, target, Status.OK, detail)


def _resolve(settings: MqttSettings, target: str) -> Check:
    try:
        infos = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        return Check(
            "broker name",
            target,
            Status.FAIL,
            f"{settings.host} does not resolve: {getattr(exc, 'strerror', None) or exc}",
            "check mqtt.host, and this box's DNS (/etc/resolv.conf, /etc/hosts)",
        )
    addresses = sorted({str(info[4][0]) for info in infos})
    return Check("broker name", target, Status.OK, f"{settings.host} is {', '.join(addresses)}")


def _tcp(settings: MqttSettings, target: str, timeout: float) -> Check:
    started = time.monotonic()
    try:
        with socket.create_connection((settings.host, settings.port), timeout=timeout):
            pass
    except TimeoutError:
        return Check(
            "broker tcp",
            target,
            Status.FAIL,
            f"no answer within {timeout:g} s",
            "a firewall drops the connection, or the address is wrong",
        )
    except OSError as exc:
        hint = "no network route to the broker: check this box's network"
        if isinstance(exc, ConnectionRefusedError):
            hint = (
                "nothing listens there: is the broker running, is mqtt.port right "
                "(1883 plain, 8883 TLS)?"
            )
        return Check(
            "broker tcp", target, Status.FAIL, f"cannot connect: {exc.strerror or exc}", hint
        )
    elapsed = (time.monotonic() - started) * 1000
    detail = f"connected in {elapsed:.0f} ms"
    if not settings.tls.enabled:
        detail += " (no TLS: mqtt.tls.enabled is false)"
    return Check("broker tcp", target, Status.OK, detail)


def _tls_context(tls: TlsSettings) -> ssl.SSLContext:
    """The same verification the agent's client does: CA (or the system's), client cert."""
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.insecure:
        context.check_hostname = False
    return context


def _tls(settings: MqttSettings, target: str, timeout: float) -> Check:
    try:
        context = _tls_context(settings.tls)
    except (OSError, ssl.SSLError) as exc:
        return Check(
            "broker tls",
            target,
            Status.FAIL,
            f"cannot load the CA or client certificate: {exc}",
            "check mqtt.tls.ca_file, cert_file and key_file (paths, PEM format, readable)",
        )
    try:
        with (
            socket.create_connection((settings.host, settings.port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=settings.host) as sock,
        ):
            version = sock.version()
            peer = sock.getpeercert() or {}
    except ssl.SSLCertVerificationError as exc:
        return Check(
            "broker tls",
            target,
            Status.FAIL,
            f"broker certificate not accepted: {exc.verify_message}",
            "is mqtt.tls.ca_file the CA that signed the broker's certificate, "
            "and is mqtt.host a name in it?",
        )
    except (OSError, ssl.SSLError) as exc:
        return Check(
            "broker tls",
            target,
            Status.FAIL,
            f"handshake failed: {getattr(exc, 'reason', None) or exc}",
            "is this port a TLS listener (usually 8883), and does the broker accept "
            "this client certificate?",
        )
    name = _common_name(peer.get("subject"))
    until = peer.get("notAfter", "?")
    detail = f"{version}, certificate of {name} verified, valid until {until}"
    if settings.tls.insecure:
        detail += " (host name not checked: tls.insecure)"
    return Check("broker tls", target, Status.OK, detail)


def _common_name(subject: object) -> str:
    """The commonName of a certificate subject in `getpeercert()`'s nested tuples."""
    for rdn in subject if isinstance(subject, tuple) else ():
        for pair in rdn:
            if isinstance(pair, tuple) and len(pair) == 2 and pair[0] == "commonName":
                return str(pair[1])
    return "?"


def _login_and_publish(
    settings: MqttSettings, agent_id: str, target: str, timeout: float
) -> list[Check]:
    # Its own client id, so the running agent's session is left alone; the keep-alive
    # equals the timeout, so paho itself drops a peer that never sends CONNACK.
    keepalive = max(5, math.ceil(timeout))
    own = settings.model_copy(
        update={"client_id": "", "keepalive_s": keepalive, "session_expiry_s": 0}
    )
    client = MqttClient(own, f"posmon-doctor-{agent_id}")
    acked: set[int] = set()
    client.on_published = acked.add
    try:
        login = _login(client, target, keepalive + 1.0)
        if login.status is Status.FAIL:
            return [login]
        topic = doctor_topic(settings, agent_id)
        return [login, _publish(client, target, topic, agent_id, acked=acked, timeout=timeout)]
    finally:
        client.disconnect()


def _login(client: MqttClient, target: str, timeout: float) -> Check:
    started = time.monotonic()
    try:
        client.connect()
    except MqttError as exc:
        return Check("broker login", target, Status.FAIL, exc.reason)
    closed = False
    while not client.connected and client.last_error is None:
        if time.monotonic() - started >= timeout or not client.loop(0.05):
            closed = True
            break
    if client.connected:
        who = f" as user {client.settings.username}" if client.settings.username else ""
        return Check(
            "broker login", target, Status.OK, f"CONNACK accepted for {client.client_id}{who}"
        )
    if client.last_error is not None:
        return Check(
            "broker login",
            target,
            Status.FAIL,
            client.last_error,
            "check mqtt.username and mqtt.password against the broker's password file",
        )
    if closed and time.monotonic() - started < client.settings.keepalive_s:
        return Check(
            "broker login",
            target,
            Status.FAIL,
            "the broker closed the connection before CONNACK",
            "a TLS port without mqtt.tls.enabled, or a broker that bans this client?",
        )
    return Check(
        "broker login",
        target,
        Status.FAIL,
        f"no CONNACK within {client.settings.keepalive_s} s",
        "something answers on this port but does not speak MQTT: wrong port?",
    )


def _publish(
    client: MqttClient, target: str, topic: str, agent_id: str, *, acked: set[int], timeout: float
) -> Check:
    payload = json.dumps(
        {
            "schema": "posmon.doctor/1",
            "agent_id": agent_id,
            "observed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    ).encode()
    started = time.monotonic()
    try:
        mid = client.publish(topic, payload, qos=1)
    except MqttError as exc:
        return Check("broker publish", target, Status.FAIL, f"{topic}: {exc.reason}")
    while mid not in acked and client.connected and time.monotonic() - started < timeout:
        client.loop(0.05)
    if mid in acked:
        elapsed = (time.monotonic() - started) * 1000
        return Check("broker publish", target, Status.OK, f"PUBACK for {topic} in {elapsed:.0f} ms")
    if not client.connected:
        return Check(
            "broker publish",
            target,
            Status.FAIL,
            f"{topic}: {client.last_error or 'connection lost'}",
            "the broker dropped us on publish: does its ACL allow this user the topic?",
        )
    return Check(
        "broker publish",
        target,
        Status.FAIL,
        f"no PUBACK for {topic} within {timeout:g} s",
        "the broker is overloaded or stuck: look at its log",
    )


# --- outbox ---------------------------------------------------------------------------------


def check_outbox(config: AgentConfig) -> list[Check]:
    """The outbox folder is usable and, when the outbox exists, what waits in it."""
    path = config.outbox_path
    folder = _folder(path.parent)
    if folder.status is Status.FAIL:
        return [folder, *_skipped(["outbox"], str(path), "outbox folder failed")]
    return [folder, _outbox(path, config.outbox.max_events)]


def _folder(folder: Path) -> Check:
    user = _user()
    target = str(folder)
    if folder.is_dir():
        if os.access(folder, os.W_OK | os.X_OK):
            return Check("outbox folder", target, Status.OK, f"writable by {user}")
        info = folder.stat()
        return Check(
            "outbox folder",
            target,
            Status.FAIL,
            f"not writable by {user} "
            f"({stat.filemode(info.st_mode)} {_owner(info.st_uid)}:{_group(info.st_gid)})",
            f"run the doctor as the agent's user: sudo -u {SERVICE} posmon agent doctor ...",
        )
    if folder.exists():
        return Check("outbox folder", target, Status.FAIL, "exists but is not a folder")
    parent = folder.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if os.access(parent, os.W_OK | os.X_OK):
        return Check(
            "outbox folder", target, Status.OK, f"missing; the agent creates it in {parent}"
        )
    return Check(
        "outbox folder",
        target,
        Status.FAIL,
        f"missing, and {user} cannot create it in {parent}",
        f"the service creates it at start (StateDirectory={SERVICE}); to run the doctor "
        f"first: sudo install -d -o {SERVICE} -g {SERVICE} -m 0750 {folder}",
    )


def _outbox(path: Path, max_events: int) -> Check:
    target = str(path)
    if not path.exists():
        return Check("outbox", target, Status.OK, "not created yet: the agent creates it at start")
    if not os.access(path, os.R_OK | os.W_OK):
        return Check(
            "outbox",
            target,
            Status.FAIL,
            f"not readable and writable by {_user()}",
            f"run the doctor as the agent's user: sudo -u {SERVICE} posmon agent doctor ...",
        )
    # Read-only, so the doctor never takes a write lock the running agent would wait on.
    uri = path.resolve().as_uri() + "?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            waiting, oldest = db.execute("SELECT count(*), min(created) FROM events").fetchone()
            counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
    except sqlite3.Error as exc:
        return Check(
            "outbox",
            target,
            Status.FAIL,
            f"cannot read it: {exc}",
            "is outbox.path the agent's outbox? Do not delete it: it may hold transactions",
        )
    detail = f"{waiting} events waiting"
    if oldest is not None:
        age = max(0.0, time.time() - float(oldest))
        detail += f", the oldest for {_duration(age)}"
    dropped = {name: value for name, value in counters.items() if value}
    if dropped:
        detail += "; since created: " + ", ".join(
            f"{name.replace('_', ' ')} {value}" for name, value in sorted(dropped.items())
        )
    if waiting >= max_events:
        return Check(
            "outbox",
            target,
            Status.FAIL,
            f"full: {detail}",
            "nothing has reached the broker for a long time: fix the broker checks; with "
            "only transactions and batches left the agent stops ACKing",
        )
    return Check("outbox", target, Status.OK, detail)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"
