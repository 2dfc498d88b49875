"""The MQTT wire models of contract v1 (CONTRACT §2), one pydantic model per schema.

Every model is strict about what crosses the wire: unknown keys are rejected, money is an
integer in minor units with an ISO 4217 alpha currency, timestamps carry an offset, and a
card number can only appear masked. Each model reads and writes JSON bytes.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Self
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from posmon.pan import scrub, scrub_tree, visible_digits_ok

# --- field types ------------------------------------------------------------------------

Tid = Annotated[str, Field(pattern=r"^[0-9A-Za-z]{8}$", description="Terminal id, 8 characters.")]
Mid = Annotated[str, Field(pattern=r"^[0-9A-Za-z]{15}$", description="Merchant id, 15 characters.")]
Rrn = Annotated[
    str, Field(pattern=r"^[0-9A-Za-z]{12}$", description="Retrieval reference number, 12.")
]
SixDigits = Annotated[str, Field(pattern=r"^[0-9]{6}$")]
_ISO_DATE_TIME = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}")


def _iso_only(value: object) -> object:
    # Pydantic would read 1795648676 or "1795648676" as epoch seconds; the contract says
    # ISO 8601 text (or, in code, a datetime).
    if isinstance(value, str) and _ISO_DATE_TIME.match(value):
        return value
    if isinstance(value, datetime):
        return value
    raise ValueError("not an ISO 8601 date and time")


def _in_utc_range(value: datetime) -> datetime:
    # 0001-01-01T00:00:00+23:59 is a valid time that has no UTC form: every store and
    # comparison converts to UTC, so it is refused here, at the door, naming the field.
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range once converted to UTC") from None
    return value


# ISO 8601 text with an offset on the wire (no epoch numbers), aware datetimes in code.
Timestamp = Annotated[AwareDatetime, BeforeValidator(_iso_only), AfterValidator(_in_utc_range)]
_ISO_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


def _iso_date_only(value: object) -> object:
    # As for times: pydantic would read 0 or "0" as 1970-01-01; the contract says YYYY-MM-DD.
    if isinstance(value, date) or (isinstance(value, str) and _ISO_DATE.match(value)):
        return value
    raise ValueError("not an ISO 8601 date (YYYY-MM-DD)")


IsoDate = Annotated[date, BeforeValidator(_iso_date_only)]
Currency = Annotated[
    str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 alpha-3 currency, e.g. CNY.")
]
# Money fits a 64-bit integer column: larger values are refused at the door.
_MONEY_MAX = 2**63 - 1
MinorUnits = Annotated[
    StrictInt,
    Field(ge=0, le=_MONEY_MAX, description="Money in minor units (fen for CNY); never a float."),
]
SignedMinorUnits = Annotated[
    StrictInt,
    Field(ge=-_MONEY_MAX, le=_MONEY_MAX, description="Money in minor units, may be < 0."),
]
Count = Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]
# Used inside MQTT topics, so no '/', '+' or '#'.
AgentId = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
# Free text: anything a person, a terminal or an acquirer wrote. Every card-number-shaped
# digit run in it is masked when a model is built, so no output made from a model (MQTT,
# database, API, evidence) can carry one. Typed identifiers (tid, mid, rrn, stan, ids) are
# not free text: their patterns say what they are, and they are left alone.
FreeText = Annotated[str, AfterValidator(scrub)]
ShortText = Annotated[FreeText, Field(min_length=1, max_length=256)]
Extra = Annotated[
    dict[
        # A key is free text too: '*' is allowed so that a masked card number stays valid.
        Annotated[FreeText, Field(pattern=r"^[A-Za-z0-9_.*-]{1,32}$")],
        Annotated[FreeText, Field(max_length=256)],
    ],
    Field(max_length=64, description="Frame keys the contract does not name, carried through."),
]


def _check_masked(value: str) -> str:
    if not visible_digits_ok(value):
        raise ValueError("shows more than the first 6 and last 4 digits")
    return value


PanMasked = Annotated[
    str,
    Field(pattern=r"^[0-9*]{12,19}$", description="Card number, first 6 / last 4 visible."),
    AfterValidator(_check_masked),
]
AccountMasked = Annotated[
    str,
    Field(pattern=r"^[0-9A-Za-z*]{4,34}$", description="Account number, masked like a PAN."),
    AfterValidator(_check_masked),
]


# --- enumerations -----------------------------------------------------------------------


class TxnKind(StrEnum):
    SALE = "SALE"
    VOID = "VOID"
    REFUND = "REFUND"
    REVERSAL = "REVERSAL"
    PREAUTH_COMPLETION = "PREAUTH_COMPLETION"


class EntryMode(StrEnum):
    CHIP = "CHIP"
    SWIPE = "SWIPE"
    CTLS = "CTLS"
    QR = "QR"
    MANUAL = "MANUAL"


class Network(StrEnum):
    ETH = "ETH"
    WIFI = "WIFI"
    G4 = "4G"
    GPRS = "GPRS"
    NONE = "NONE"


class Paper(StrEnum):
    OK = "OK"
    LOW = "LOW"
    OUT = "OUT"


class BatchResult(StrEnum):
    OK = "OK"
    UNBALANCED = "UNBALANCED"
    FAIL = "FAIL"


class PresenceState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class SettlementStatus(StrEnum):
    CREDITED = "CREDITED"
    FAILED = "FAILED"
    RETURNED = "RETURNED"
    PENDING = "PENDING"


class SettlementKind(StrEnum):
    ORIGINAL = "ORIGINAL"
    REREMITTANCE = "REREMITTANCE"


class Severity(StrEnum):
    CRITICAL = "critical"
    MAJOR = "major"
    MINOR = "minor"
    INFO = "info"


class AlertState(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


class Cause(StrEnum):
    """Why a settlement failed (CONTRACT §3)."""

    NETWORK = "NETWORK"
    MERCHANT_QUALIFICATION = "MERCHANT_QUALIFICATION"
    ACCOUNT_INFO = "ACCOUNT_INFO"
    BANK_SYSTEM = "BANK_SYSTEM"
    OPERATOR = "OPERATOR"
    UNKNOWN = "UNKNOWN"


# --- models -----------------------------------------------------------------------------


class WireModel(BaseModel):
    """Base of every wire message: strict, immutable, JSON bytes in and out."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        # Validators are built on first use, so a process pays only for what it handles.
        defer_build=True,
    )

    SCHEMA: ClassVar[str]

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> Any:
        schema = handler(core_schema)
        if "schema" in schema.get("properties", {}):
            # Required on the wire; the default only spares code from spelling it out.
            schema["required"] = ["schema", *schema.get("required", [])]
        return schema

    def to_json(self) -> bytes:
        """The message as compact UTF-8 JSON; absent optional fields are left out."""
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Self:
        """Parse and validate one message, `schema` field included; raises `MessageError`."""
        payload = data.encode() if isinstance(data, str) else data
        message = parse_message(payload, expected=cls)  # type: ignore[arg-type]
        assert isinstance(message, cls)
        return message


class TxnEvent(WireModel):
    """A transaction result seen on a terminal (`posmon.txn/1`)."""

    SCHEMA: ClassVar[str] = "posmon.txn/1"
    schema_: Literal["posmon.txn/1"] = Field("posmon.txn/1", alias="schema")
    event_id: UUID = Field(description="Assigned once when the agent accepts the frame.")
    agent_id: AgentId
    tid: Tid
    mid: Mid
    kind: TxnKind
    amount: MinorUnits
    currency: Currency
    pan_masked: PanMasked
    rc: str = Field(pattern=r"^[0-9A-Z]{2}$", description="ISO 8583 field 39 response code.")
    approved: StrictBool
    rrn: Rrn
    stan: SixDigits
    batch: SixDigits
    terminal_time: Timestamp
    observed_at: Timestamp
    auth_code: str | None = Field(None, pattern=r"^[0-9A-Za-z ]{1,6}$")
    issuer: str | None = Field(None, pattern=r"^[0-9A-Za-z]{1,11}$")
    entry_mode: EntryMode | None = None
    orig_stan: SixDigits | None = None
    orig_rrn: Rrn | None = None
    extra: Extra | None = None


class StatusEvent(WireModel):
    """A terminal's status or heartbeat (`posmon.status/1`)."""

    SCHEMA: ClassVar[str] = "posmon.status/1"
    schema_: Literal["posmon.status/1"] = Field("posmon.status/1", alias="schema")
    event_id: UUID
    agent_id: AgentId
    tid: Tid
    link_up: StrictBool = Field(description="The terminal's link to the acquirer host.")
    network: Network
    saf_pending: Count = Field(description="Offline transactions not yet uploaded.")
    serial_ok: StrictBool = Field(description="The agent's own view of the serial port.")
    observed_at: Timestamp
    rssi_dbm: StrictInt | None = Field(None, ge=-150, le=0)
    host_rtt_ms: Count | None = None
    battery_pct: StrictInt | None = Field(None, ge=0, le=100)
    paper: Paper | None = None
    firmware: FreeText | None = Field(None, min_length=1, max_length=64)
    heartbeat_only: StrictBool | None = Field(
        None, description="True for a heartbeat: link, network and SAF are the last known."
    )
    extra: Extra | None = None


class BatchEvent(WireModel):
    """A batch close on a terminal (`posmon.batch/1`)."""

    SCHEMA: ClassVar[str] = "posmon.batch/1"
    schema_: Literal["posmon.batch/1"] = Field("posmon.batch/1", alias="schema")
    event_id: UUID
    agent_id: AgentId
    tid: Tid
    mid: Mid
    batch: SixDigits
    count: Count
    total: MinorUnits
    currency: Currency
    result: BatchResult
    terminal_time: Timestamp
    observed_at: Timestamp
    extra: Extra | None = None


class PresenceEvent(WireModel):
    """Whether an agent is online, and which terminals it serves (`posmon.presence/1`)."""

    SCHEMA: ClassVar[str] = "posmon.presence/1"
    schema_: Literal["posmon.presence/1"] = Field("posmon.presence/1", alias="schema")
    agent_id: AgentId
    state: PresenceState
    tids: list[Tid] = Field(max_length=256)
    version: FreeText = Field(min_length=1, max_length=32)
    observed_at: Timestamp


class SettlementEvent(WireModel):
    """One settlement result from the acquirer (`posmon.settlement/1`)."""

    SCHEMA: ClassVar[str] = "posmon.settlement/1"
    schema_: Literal["posmon.settlement/1"] = Field("posmon.settlement/1", alias="schema")
    settlement_id: str = Field(pattern=r"^[0-9A-Za-z._:-]{1,64}$")
    mid: Mid
    tid: Tid
    rrn: Rrn
    txn_date: IsoDate
    amount: SignedMinorUnits = Field(description="Gross amount.")
    fee: SignedMinorUnits
    net_amount: SignedMinorUnits = Field(description="amount - fee.")
    currency: Currency
    status: SettlementStatus
    settled_at: Timestamp
    kind: SettlementKind
    stan: SixDigits | None = None
    batch: SixDigits | None = None
    reason_code: str | None = Field(None, pattern=r"^[0-9A-Za-z_.-]{1,16}$")
    reason_text: ShortText | None = None
    bank_code: str | None = Field(None, pattern=r"^[0-9A-Za-z]{1,11}$")
    account_masked: AccountMasked | None = None
    original_settlement_id: str | None = Field(None, pattern=r"^[0-9A-Za-z._:-]{1,64}$")
    case_id: str | None = Field(None, pattern=r"^[0-9A-Za-z._:-]{1,64}$")

    @model_validator(mode="after")
    def _net_is_gross_less_fee(self) -> Self:
        if self.net_amount != self.amount - self.fee:
            raise ValueError(
                f"net_amount {self.net_amount} != amount {self.amount} - fee {self.fee}"
            )
        return self


class AlertEvent(WireModel):
    """An alert firing or resolving (`posmon.alert/1`)."""

    SCHEMA: ClassVar[str] = "posmon.alert/1"
    schema_: Literal["posmon.alert/1"] = Field("posmon.alert/1", alias="schema")
    alert_id: str = Field(pattern=r"^[0-9A-Za-z._:-]{1,64}$")
    fingerprint: str = Field(min_length=1, max_length=256)
    # Used as a topic segment: upper snake case only.
    type: str = Field(pattern=r"^[A-Z][A-Z0-9_]{0,63}$")
    severity: Severity
    state: AlertState
    cause: Cause
    summary: ShortText
    started_at: Timestamp
    updated_at: Timestamp
    resolved_at: Timestamp | None = None
    tid: Tid | None = None
    mid: Mid | None = None
    rrn: Rrn | None = None
    bank_code: str | None = Field(None, pattern=r"^[0-9A-Za-z]{1,11}$")
    amount_at_risk: MinorUnits | None = None
    currency: Currency | None = None
    case_id: str | None = Field(None, pattern=r"^[0-9A-Za-z._:-]{1,64}$")
    details: Annotated[dict[str, Any], AfterValidator(scrub_tree)] | None = Field(
        None, description="Evidence and context; free text in it shows card numbers masked."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.amount_at_risk is not None and self.currency is None:
            raise ValueError("amount_at_risk needs a currency")
        if (self.state is AlertState.RESOLVED) != (self.resolved_at is not None):
            raise ValueError("resolved_at is set exactly when state is resolved")
        return self


class DeadLetter(WireModel):
    """Something that could not be accepted, kept with the reason (`posmon.deadletter/1`).

    `payload` is the frame DATA as parsed (fields in order, PAN field masked) or the
    message text, with every card-number-shaped digit run masked; bytes that were not UTF-8
    appear as backslash escapes.
    """

    SCHEMA: ClassVar[str] = "posmon.deadletter/1"
    schema_: Literal["posmon.deadletter/1"] = Field("posmon.deadletter/1", alias="schema")
    event_id: UUID
    source: FreeText = Field(
        min_length=1, max_length=256, description="Who rejected it: agent port or collector."
    )
    # Dead letters are published and stored: whatever produced one, no card number leaves
    # in it.
    reason: FreeText = Field(min_length=1, max_length=1024)
    payload: FreeText = Field(max_length=65536)
    observed_at: Timestamp
    agent_id: AgentId | None = None
    tid: Tid | None = None
    topic: FreeText | None = Field(None, max_length=1024)


WireMessage = (
    TxnEvent | StatusEvent | BatchEvent | PresenceEvent | SettlementEvent | AlertEvent | DeadLetter
)

MESSAGE_TYPES: dict[str, type[WireMessage]] = {
    model.SCHEMA: model
    for model in (
        TxnEvent,
        StatusEvent,
        BatchEvent,
        PresenceEvent,
        SettlementEvent,
        AlertEvent,
        DeadLetter,
    )
}


class MessageError(ValueError):
    """A payload that is not a valid contract message; `reason` says why."""

    def __init__(self, reason: str, payload: bytes) -> None:
        super().__init__(reason)
        self.reason = reason
        self.payload = payload


@functools.cache
def _any_message() -> TypeAdapter[WireMessage]:
    # Built on first use: an agent never parses messages, and the schemas cost memory.
    return TypeAdapter(Annotated[WireMessage, Field(discriminator="schema_")])


def parse_message(payload: bytes, expected: type[WireMessage] | None = None) -> WireMessage:
    """Parse a payload by its `schema` field, optionally insisting on one model."""
    try:
        message = _any_message().validate_json(payload)
    except ValidationError as exc:
        raise MessageError(_describe(exc), payload) from exc
    if expected is not None and not isinstance(message, expected):
        raise MessageError(f"schema {message.SCHEMA} where {expected.SCHEMA} was expected", payload)
    # A NUL character in a text field cannot be stored (PostgreSQL refuses it), so a batch
    # holding one would fail again at every retry. Only a payload that spells one out is
    # looked at closely.
    if b"\\u0000" in payload and _holds_nul(message.model_dump()):
        raise MessageError("a text field holds a NUL character (\\u0000)", payload)
    return message


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(key) or _holds_nul(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return any(_holds_nul(item) for item in value)
    return False


def _describe(exc: ValidationError) -> str:
    """A one-line reason naming each bad field, without echoing values (they may hold PANs)."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "message"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
