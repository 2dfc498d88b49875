"""POSMON-SL/1 messages, sans-IO: frame bytes in, contract events and ACK/NAK bytes out.

`SerialCodec` sits on a `FrameDecoder`. For every frame it decides the answer the contract
asks for and hands back what to keep:

| frame                                         | outcome      | reply | keep            |
|-----------------------------------------------|--------------|-------|-----------------|
| LRC wrong, too long, control byte, not UTF-8  | REJECTED     | NAK   | nothing         |
| intact, valid                                 | ACCEPTED     | ACK   | the event       |
| intact, same TID, SEQ and DATA as the last    | REPEAT       | ACK   | nothing         |
| intact, missing keys or bad values            | INVALID      | ACK   | a dead letter   |
| intact, TYPE the contract does not know       | UNKNOWN_TYPE | ACK   | a dead letter   |

The caller persists what it keeps and only then writes `reply`. A caller that cannot
persist (its outbox is full) calls `forget()` and writes nothing, so the resent frame is
taken as new.

No full card number survives the codec: the PAN field is masked before anything else
sees it, and dead-lettered DATA is masked and scrubbed.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from posmon.pan import PanError, mask_pan, scrub
from posmon.wire.frames import ACK, FS, NAK, BadFrame, FrameDecoder, encode_frame
from posmon.wire.models import (
    BatchEvent,
    DeadLetter,
    Network,
    StatusEvent,
    TxnEvent,
)

TERMINAL_TIME_FORMAT = "%Y%m%d%H%M%S"
SEQ_MAX = 65535
MAX_REASON_KEYS = 64
# DeadLetter.reason's limit: one frame can hold hundreds of bad fields.
MAX_REASON = 1024
# ISO 8583 field 39 codes that mean the card was charged (00 approved, 10 partial,
# 11 VIP approval; Y1 and Y3 are EMV offline approvals).
APPROVED_CODES = frozenset({"00", "10", "11", "Y1", "Y3"})
# ISO 4217 numeric to alpha for the currencies acquirers in the region settle in.
CURRENCIES = {
    "156": "CNY",
    "344": "HKD",
    "446": "MOP",
    "901": "TWD",
    "840": "USD",
    "978": "EUR",
    "826": "GBP",
    "392": "JPY",
    "410": "KRW",
    "702": "SGD",
    "458": "MYR",
    "764": "THB",
    "704": "VND",
    "360": "IDR",
    "608": "PHP",
    "356": "INR",
    "036": "AUD",
    "124": "CAD",
    "756": "CHF",
    "643": "RUB",
    "784": "AED",
}


class MessageType(StrEnum):
    TXN = "TXN"
    STS = "STS"
    BAT = "BAT"
    HBT = "HBT"


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    REPEAT = "repeat"
    INVALID = "invalid"
    UNKNOWN_TYPE = "unknown_type"
    REJECTED = "rejected"


class RecordError(ValueError):
    """DATA that arrived intact but does not make a valid message; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Record:
    """The DATA of one frame, split: TYPE, SEQ, TID and the KEY=VALUE fields (PAN masked)."""

    type: str
    fields: dict[str, str]

    @property
    def seq(self) -> int | None:
        value = self.fields.get("SEQ")
        # isdigit() alone lets '²' through, which int() refuses.
        if value is None or not (value.isascii() and value.isdigit()):
            return None
        return int(value)

    @property
    def tid(self) -> str | None:
        return self.fields.get("TID")

    def to_data(self) -> bytes:
        """The record as frame DATA."""
        parts = [self.type, *(f"{key}={value}" for key, value in self.fields.items())]
        return chr(FS).join(parts).encode()


# Keys whose values must not be scrubbed, per frame type: a merchant id is 15 characters,
# often all digits, and one in ten of those passes Luhn; scrubbing would mask it and make
# every frame of that merchant invalid. Only TXN and BAT define a MID (CONTRACT §1); on
# any other frame a MID key is an unknown key, carried in `extra` and scrubbed like any
# other text. The model checks the MID's shape; dead letters still scrub it.
_NOT_CARD_NUMBERS: dict[str, frozenset[str]] = {
    "TXN": frozenset({"MID"}),
    "BAT": frozenset({"MID"}),
}


def parse_data(data: bytes) -> Record:
    """Split frame DATA into a `Record`; the PAN field comes out masked (or blanked)."""
    text = data.decode("utf-8")
    type_, *pairs = text.split(chr(FS))
    fields: dict[str, str] = {}
    problems: list[str] = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            problems.append(f"field {scrub(pair)[:40]!r} is not KEY=VALUE")
        elif key in fields:
            problems.append(f"{key}: given twice")
        else:
            fields[key] = value
    if "PAN" in fields:
        try:
            fields["PAN"] = mask_pan(fields["PAN"])
        except PanError as exc:
            fields["PAN"] = "*" * len(fields["PAN"])
            problems.append(f"PAN: {exc.reason}")
    exempt = _NOT_CARD_NUMBERS.get(type_, frozenset())
    record = Record(
        scrub(type_),
        {scrub(key): value if key in exempt else scrub(value) for key, value in fields.items()},
    )
    if problems:
        raise _RecordParseError("; ".join(problems), record)
    return record


class _RecordParseError(RecordError):
    def __init__(self, reason: str, record: Record) -> None:
        super().__init__(reason)
        self.record = record


def encode_record(type_: str, fields: dict[str, str]) -> bytes:
    """A whole frame for a message: what a terminal (or a simulator) writes."""
    return encode_frame(Record(type_, fields).to_data())


# --- conversion to contract events ------------------------------------------------------

# Frame key -> model field, per message type; what is not named here goes to `extra`.
_TXN_KEYS = {
    "TID": "tid",
    "MID": "mid",
    "KIND": "kind",
    "AMT": "amount",
    "CUR": "currency",
    "PAN": "pan_masked",
    "RC": "rc",
    "RRN": "rrn",
    "STAN": "stan",
    "BATCH": "batch",
    "TS": "terminal_time",
    "AUTH": "auth_code",
    "ISS": "issuer",
    "ENTRY": "entry_mode",
    "ORIG_STAN": "orig_stan",
    "ORIG_RRN": "orig_rrn",
}
_STS_KEYS = {
    "TID": "tid",
    "LINK": "link_up",
    "NET": "network",
    "SAF": "saf_pending",
    "RSSI": "rssi_dbm",
    "RTT": "host_rtt_ms",
    "BATT": "battery_pct",
    "PAPER": "paper",
    "FW": "firmware",
}
_BAT_KEYS = {
    "TID": "tid",
    "MID": "mid",
    "BATCH": "batch",
    "COUNT": "count",
    "TOTAL": "total",
    "RESULT": "result",
    "TS": "terminal_time",
}
_HBT_KEYS = {"TID": "tid", "TS": "terminal_time"}
_REQUIRED = {
    MessageType.TXN: (
        "SEQ",
        "TID",
        "MID",
        "KIND",
        "AMT",
        "CUR",
        "PAN",
        "RC",
        "RRN",
        "STAN",
        "BATCH",
        "TS",
    ),
    MessageType.STS: ("SEQ", "TID", "LINK", "NET", "SAF"),
    MessageType.BAT: ("SEQ", "TID", "MID", "BATCH", "COUNT", "TOTAL", "RESULT", "TS"),
    MessageType.HBT: ("SEQ", "TID", "TS"),
}
_KEYS = {
    MessageType.TXN: _TXN_KEYS,
    MessageType.STS: _STS_KEYS,
    MessageType.BAT: _BAT_KEYS,
    MessageType.HBT: _HBT_KEYS,
}
_INT_FIELDS = {"amount", "saf_pending", "rssi_dbm", "host_rtt_ms", "battery_pct", "count", "total"}


def _parse_int(key: str, value: str) -> int:
    digits = value[1:] if value.startswith("-") else value
    if not digits.isdigit() or not digits.isascii():
        raise RecordError(f"{key}: {value!r} is not an integer")
    return int(value)


def _terminal_time(value: str, tz: tzinfo) -> datetime:
    try:
        naive = datetime.strptime(value, TERMINAL_TIME_FORMAT)  # noqa: DTZ007 - tz below
    except ValueError as exc:
        raise RecordError(f"TS: {value!r} is not YYYYMMDDhhmmss") from exc
    return naive.replace(tzinfo=tz)


@dataclass(slots=True)
class _LastStatus:
    link_up: bool = True
    network: Network = Network.NONE
    saf_pending: int = 0


@dataclass(slots=True)
class EventBuilder:
    """Turns records into contract events for one agent and one terminal time zone.

    Heartbeats become status events marked `heartbeat_only`, carrying the terminal's last
    reported link, network and SAF (link up, no network, SAF 0 until a STS is seen).
    """

    agent_id: str
    tz: tzinfo = field(default_factory=lambda: ZoneInfo("Asia/Shanghai"))
    currency: str = "CNY"
    new_id: Callable[[], uuid.UUID] = uuid.uuid4
    _last_status: dict[str, _LastStatus] = field(default_factory=dict)

    def build(self, record: Record, observed_at: datetime) -> TxnEvent | StatusEvent | BatchEvent:
        """Validate a record and make its event; raises `RecordError` naming the bad keys."""
        kind = MessageType(record.type)
        missing = [key for key in _REQUIRED[kind] if key not in record.fields]
        if missing:
            raise RecordError("missing " + ", ".join(missing))
        seq = _parse_int("SEQ", record.fields["SEQ"])
        if not 0 <= seq <= SEQ_MAX:
            raise RecordError(f"SEQ: {seq} is outside 0..65535")
        keys = _KEYS[kind]
        values: dict[str, Any] = {}
        extra: dict[str, str] = {}
        for key, value in record.fields.items():
            name = keys.get(key)
            if name is None:
                if key != "SEQ":
                    extra[key] = value
            else:
                values[name] = self._convert(key, name, value)
        if extra:
            values["extra"] = extra
        common = {"event_id": self.new_id(), "agent_id": self.agent_id, "observed_at": observed_at}
        try:
            if kind is MessageType.TXN:
                values["approved"] = values["rc"] in APPROVED_CODES
                return TxnEvent(**common, **values)
            if kind is MessageType.BAT:
                return BatchEvent(**common, currency=self.currency, **values)
            return self._status(kind, common, values)
        except ValidationError as exc:
            raise RecordError(_frame_reason(exc, keys)) from exc

    def _status(
        self, kind: MessageType, common: dict[str, Any], values: dict[str, Any]
    ) -> StatusEvent:
        tid = values["tid"]
        if kind is MessageType.HBT:
            del values["terminal_time"]
            last = self._last_status.get(tid, _LastStatus())
            return StatusEvent(
                **common,
                **values,
                link_up=last.link_up,
                network=last.network,
                saf_pending=last.saf_pending,
                serial_ok=True,
                heartbeat_only=True,
            )
        event = StatusEvent(**common, **values, serial_ok=True)
        self._last_status[tid] = _LastStatus(event.link_up, event.network, event.saf_pending)
        return event

    def serial_down(self, tid: str, observed_at: datetime) -> StatusEvent:
        """A status event saying the agent lost the terminal's serial port."""
        last = self._last_status.get(tid, _LastStatus())
        return StatusEvent(
            event_id=self.new_id(),
            agent_id=self.agent_id,
            tid=tid,
            link_up=last.link_up,
            network=last.network,
            saf_pending=last.saf_pending,
            serial_ok=False,
            observed_at=observed_at,
        )

    def _convert(self, key: str, name: str, value: str) -> Any:
        if name in _INT_FIELDS:
            return _parse_int(key, value)
        if name == "terminal_time":
            return _terminal_time(value, self.tz)
        if name == "currency":
            if value not in CURRENCIES:
                raise RecordError(f"CUR: {value!r} is not a known ISO 4217 numeric code")
            return CURRENCIES[value]
        if name == "link_up":
            if value not in ("UP", "DOWN"):
                raise RecordError(f"LINK: {value!r} is not UP or DOWN")
            return value == "UP"
        return value


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _frame_reason(exc: ValidationError, keys: dict[str, str]) -> str:
    by_field = {name: key for key, name in keys.items()}
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        name = str(error["loc"][0]) if error["loc"] else ""
        parts.append(f"{by_field.get(name, name or 'frame')}: {error['msg']}")
    return "; ".join(parts)


# --- the codec --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Received:
    """One frame's fate: what to keep (`message`) and what to answer (`reply`)."""

    outcome: Outcome
    reply: bytes
    message: TxnEvent | StatusEvent | BatchEvent | DeadLetter | None = None
    reason: str | None = None
    tid: str | None = None
    seq: int | None = None
    # Digest of the frame DATA: how a resend is recognised, also after a restart.
    fingerprint: bytes = b""


@dataclass(slots=True)
class CodecCounters:
    """Counts by outcome, plus the framing counters of the decoder underneath."""

    accepted: int = 0
    repeats: int = 0
    invalid: int = 0
    unknown_type: int = 0
    rejected: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


class SerialCodec:
    """One serial link's protocol state: framing, duplicate SEQs and event building."""

    def __init__(
        self,
        builder: EventBuilder,
        *,
        source: str,
        decoder: FrameDecoder | None = None,
    ) -> None:
        self.builder = builder
        self.source = source
        self.decoder = decoder or FrameDecoder()
        self.counters = CodecCounters()
        # Last accepted frame per terminal: (SEQ, digest of the masked DATA).
        self._last: dict[str, tuple[int, bytes]] = {}

    def feed(self, data: bytes, now: datetime) -> list[Received]:
        """Consume bytes read at `now` (timezone-aware); return each completed frame's fate."""
        results = []
        for item in self.decoder.feed(data, now.timestamp()):
            if isinstance(item, BadFrame):
                self._count(Outcome.REJECTED, item.reason)
                results.append(Received(Outcome.REJECTED, NAK, reason=str(item.reason)))
            else:
                results.append(self._frame(item.data, now))
        return results

    def expire(self, now: datetime) -> bool:
        """Drop a frame left unfinished past the timeout; call when the line is quiet."""
        return self.decoder.expire(now.timestamp())

    def forget(self, received: Received) -> None:
        """Undo the duplicate memory of a frame that the caller could not keep."""
        if received.tid is not None and self._last.get(received.tid, (None, b""))[1] == (
            received.fingerprint
        ):
            del self._last[received.tid]

    def prime(self, tid: str, seq: int, fingerprint: bytes) -> None:
        """Restore the last accepted frame of a terminal (e.g. from the outbox at start-up)."""
        self._last[tid] = (seq, fingerprint)

    def _frame(self, data: bytes, now: datetime) -> Received:
        try:
            record = parse_data(data)
        except _RecordParseError as exc:
            return self._dead(Outcome.INVALID, exc.reason, exc.record, now)
        # Digest of the masked DATA: a digest of the raw frame could be brute-forced back
        # to the 6 hidden PAN digits, and the outbox keeps it on disk.
        fingerprint = hashlib.blake2b(record.to_data(), digest_size=16).digest()
        tid, seq = record.tid, record.seq
        if tid is not None and seq is not None and self._last.get(tid) == (seq, fingerprint):
            self._count(Outcome.REPEAT)
            return Received(Outcome.REPEAT, ACK, tid=tid, seq=seq)
        if record.type not in MessageType.__members__:
            return self._dead(Outcome.UNKNOWN_TYPE, f"unknown TYPE {record.type!r}", record, now)
        try:
            event = self.builder.build(record, now)
        except RecordError as exc:
            return self._dead(Outcome.INVALID, exc.reason, record, now)
        if seq is not None:
            self._last[event.tid] = (seq, fingerprint)
        self._count(Outcome.ACCEPTED)
        return Received(
            Outcome.ACCEPTED, ACK, event, tid=event.tid, seq=seq, fingerprint=fingerprint
        )

    def _dead(self, outcome: Outcome, reason: str, record: Record, now: datetime) -> Received:
        self._count(outcome, reason.split(":", 1)[0])
        tid = record.tid
        # isalnum() alone accepts any script's letters; the topic-safe TID is ASCII.
        valid_tid = tid is not None and len(tid) == 8 and tid.isascii() and tid.isalnum()
        letter = DeadLetter(
            event_id=self.builder.new_id(),
            source=self.source,
            reason=_clip(scrub(reason), MAX_REASON),
            payload=record.to_data().decode(),
            observed_at=now,
            agent_id=self.builder.agent_id,
            tid=tid if valid_tid else None,
        )
        return Received(outcome, ACK, letter, reason=reason, tid=tid, seq=record.seq)

    def _count(self, outcome: Outcome, reason: str | None = None) -> None:
        counters = self.counters
        if outcome is Outcome.ACCEPTED:
            counters.accepted += 1
        elif outcome is Outcome.REPEAT:
            counters.repeats += 1
        elif outcome is Outcome.INVALID:
            counters.invalid += 1
        elif outcome is Outcome.UNKNOWN_TYPE:
            counters.unknown_type += 1
        else:
            counters.rejected += 1
        if reason is not None:
            key = f"{outcome}:{reason}"
            if key not in counters.by_reason and len(counters.by_reason) >= MAX_REASON_KEYS:
                key = f"{outcome}:other"  # garbage frames must not grow memory without bound
            counters.by_reason[key] = counters.by_reason.get(key, 0) + 1
