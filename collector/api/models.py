"""What the REST API takes and gives: request bodies and resources, as pydantic models.

Times are ISO 8601 with their offset (UTC, `Z`); money is an integer in minor units with
its ISO 4217 currency beside it; card numbers appear only masked. Request bodies forbid
unknown fields, and text in them may not hold control characters (a NUL byte is refused
here rather than by the database). Free text written by people or systems (notes,
reasons, summaries, evidence) is `FreeText`: a card number in it is masked when a model is
made, going in (what is stored) and coming out (whatever the database holds).

Over 400 lines only because it is declarations: one model per resource and request body,
field by field, with the patterns and validators they share at the top. One module on
purpose: the OpenAPI document (docs/openapi.json) is generated from these models, and the
REST API's whole contract reads in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from pydantic.config import JsonDict

from collector.cases import CaseState
from collector.rules import AlertType
from collector.tokens import NAME_PATTERN, Role
from posmon.pan import scrub_tree
from posmon.wire.models import Cause, FreeText, Severity

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

ID_PATTERN = r"^[0-9A-Za-z._:-]{1,64}$"
TID_PATTERN = r"^[0-9A-Za-z]{8}$"
MID_PATTERN = r"^[0-9A-Za-z]{15}$"
BANK_PATTERN = r"^[0-9A-Za-z]{1,11}$"
_TEXT_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
# Pydantic checks a pattern given after FreeText's masking but leaves it out of the JSON
# Schema; the document states it again.
_NO_CONTROL: JsonDict = {"pattern": _TEXT_PATTERN}
MAX_SILENCE = timedelta(days=366)  # the longest silence: a year, leap day included
# How far ahead a silence may end: far enough to plan any maintenance window, near enough
# that no time at the edge of the datetime range is stored (and shown in a local zone).
SILENCE_HORIZON = timedelta(days=3653)
OUT_OF_RANGE = "out of range: in UTC it falls outside the years 1 to 9999"


def in_utc_range(value: datetime) -> bool:
    """Whether `value` can be written in UTC, as times are compared and stored; one at the
    edge of the range with an extreme offset (0001-01-01T00:00:00+23:59) cannot."""
    try:
        value.astimezone(UTC)
    except OverflowError:
        return False
    return True


def _utc_representable(value: datetime) -> datetime:
    if not in_utc_range(value):
        raise ValueError(OUT_OF_RANGE)
    return value


Timestamp = Annotated[
    AwareDatetime,
    AfterValidator(_utc_representable),
    Field(description="ISO 8601 with its offset, within the years 1 to 9999 in UTC."),
]
Note = Annotated[
    FreeText,
    Field(
        max_length=512,
        pattern=_TEXT_PATTERN,
        json_schema_extra=_NO_CONTROL,
        description="Free text, kept with it.",
    ),
]
Minor = Annotated[int, Field(description="Money in minor units (fen for CNY).")]
# JSON evidence as stored: every string but typed identifiers is free text, masked likewise.
Details = Annotated[dict[str, Any], AfterValidator(scrub_tree)]


class ApiModel(BaseModel):
    """Base of the API's models: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def of(cls, row: Mapping[str, Any] | DataclassInstance, **values: Any) -> Self:
        """The model of a stored row, a mapping or a typed row (its own fields picked out),
        with `values` on top."""
        if isinstance(row, Mapping):
            picked = {name: row[name] for name in cls.model_fields if name in row}
        else:
            picked = {name: getattr(row, name) for name in cls.model_fields if hasattr(row, name)}
        return cls.model_validate({**picked, **values})


class Problem(ApiModel):
    """Why a request was refused."""

    detail: FreeText


# --- alerts -----------------------------------------------------------------------------


AlertStateName = Literal["firing", "acknowledged", "resolved"]


class Alert(ApiModel):
    """An alert as stored: the `posmon.alert/1` fields, with who acknowledged it and what
    silences or groups it.

    `state` is named as in `posmon.alert/1`, where an acknowledged alert is still `firing`
    (acknowledging stops its notifications, not the condition). Before API 1.1 the field
    was called `status`; that name stays, deprecated, with the same value, until API 2.
    """

    alert_id: str
    fingerprint: str
    type: str = Field(description="An alert type, e.g. SETTLEMENT_FAILED.")
    severity: Severity
    state: AlertStateName = Field(
        description="firing, acknowledged (still firing in posmon.alert/1) or resolved."
    )
    status: AlertStateName = Field(
        deprecated=True,
        description="Deprecated since API 1.1: the same as `state`; removed in API 2.",
    )
    cause: Cause
    summary: FreeText
    started_at: AwareDatetime
    updated_at: AwareDatetime
    resolved_at: AwareDatetime | None
    tid: str | None
    mid: str | None
    rrn: str | None
    bank_code: str | None
    amount_at_risk: Minor | None
    currency: str | None
    case_id: str | None
    group_id: str | None = Field(description="The BANK_OUTAGE alert that gathers this one.")
    silence_id: str | None = Field(description="The silence that mutes its notification.")
    acked_by: FreeText | None
    acked_at: AwareDatetime | None
    details: Details | None = Field(description="Evidence and context.")

    @classmethod
    def of(cls, row: Mapping[str, Any] | DataclassInstance, **values: Any) -> Self:
        """The alert of a stored row: its `status` column is the alert's `state`."""
        status = row["status"] if isinstance(row, Mapping) else getattr(row, "status")  # noqa: B009
        return super().of(row, state=status, **values)


class AlertHistoryItem(ApiModel):
    """One step of an alert's life: fired, acknowledged, grouped, resolved ..."""

    at: AwareDatetime
    event: str
    actor: FreeText
    note: FreeText | None


class AlertDetail(Alert):
    """An alert and its history, oldest first."""

    history: list[AlertHistoryItem]


class Acknowledge(ApiModel):
    """Someone is on it: notification stops."""

    note: Note = ""


class SilenceRequest(ApiModel):
    """Mute notification of matching alerts for a while (they are still recorded).

    Each matcher given must match; at least one is needed. Give `ends_at` or
    `duration_s`.
    """

    reason: Annotated[
        FreeText,
        Field(min_length=1, max_length=256, pattern=_TEXT_PATTERN, json_schema_extra=_NO_CONTROL),
    ]
    starts_at: Timestamp | None = Field(None, description="Default: now.")
    ends_at: Timestamp | None = Field(
        None, description="After starts_at by at most 366 days, and within 10 years from now."
    )
    duration_s: int | None = Field(None, ge=1, le=int(MAX_SILENCE.total_seconds()))
    type: AlertType | None = None
    bank_code: Annotated[str, Field(pattern=BANK_PATTERN)] | None = None
    mid: Annotated[str, Field(pattern=MID_PATTERN)] | None = None
    tid: Annotated[str, Field(pattern=TID_PATTERN)] | None = None
    maintenance: bool = Field(
        False, description="A declared maintenance window: also evidence of BANK_SYSTEM."
    )

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if (self.ends_at is None) == (self.duration_s is None):
            raise ValueError("give either ends_at or duration_s")
        if not any((self.type, self.bank_code, self.mid, self.tid)):
            raise ValueError("a silence needs a type, bank_code, mid or tid to match")
        if self.starts_at is not None:
            try:
                ends_at = self.ends_at or self.starts_at + timedelta(seconds=self.duration_s or 0)
            except OverflowError as exc:
                raise ValueError("the silence would end after the year 9999") from exc
            if ends_at <= self.starts_at:
                raise ValueError("a silence must end after it starts")
        return self


class Silence(ApiModel):
    """A silence or maintenance window."""

    silence_id: str
    type: str | None
    bank_code: str | None
    mid: str | None
    tid: str | None
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    maintenance: bool
    reason: FreeText
    created_by: FreeText
    created_at: AwareDatetime


# --- cases ------------------------------------------------------------------------------


class Case(ApiModel):
    """A re-remittance (补划款) case: one per original transaction."""

    case_id: str
    state: CaseState
    state_since: AwareDatetime
    cause: Cause
    remedy: str | None
    tid: str
    mid: str
    rrn: str
    amount: Minor = Field(description="What is owed: the transaction's expected net.")
    currency: str
    bank_code: str | None
    account_masked: str | None = Field(description="The corrected account, masked.")
    rejection_reason: FreeText | None
    alert_id: str | None
    remittance_settlement_id: str | None
    opened_at: AwareDatetime
    updated_at: AwareDatetime


class CaseEvent(ApiModel):
    """One line of a case's append-only audit log."""

    at: AwareDatetime
    actor: FreeText
    from_state: CaseState | None
    to_state: CaseState
    note: FreeText | None


class CaseDetail(Case):
    """A case, the states it may go to next, and its audit log (oldest first)."""

    next_states: list[CaseState]
    audit_log: list[CaseEvent]


class Transition(ApiModel):
    """Move a case on; the workflow refuses a move it does not allow (409)."""

    to: CaseState
    note: Note = Field(
        "", description="Why; required for REJECTED (the bank's reason) and CONFIRMED."
    )
    account: str | None = Field(
        None,
        pattern=r"^[0-9A-Za-z]{8,34}$",
        description="The corrected settlement account; only its last 4 characters are kept.",
    )


class TimelineEntry(ApiModel):
    at: str
    what: FreeText


class Evidence(ApiModel):
    """A case's evidence package for the bank (card and account numbers masked)."""

    case: Details
    cause: Details
    transaction: Details = Field(description="The slip data, as the terminal printed.")
    settlements: list[Details]
    terminal_status: list[Details]
    timeline: list[TimelineEntry]
    generated_at: str


# --- terminals --------------------------------------------------------------------------


class TerminalStatus(ApiModel):
    """A terminal's latest status message."""

    agent_id: str
    observed_at: AwareDatetime
    link_up: bool
    network: str
    saf_pending: int
    serial_ok: bool
    heartbeat_only: bool
    rssi_dbm: int | None
    host_rtt_ms: int | None
    battery_pct: int | None
    paper: str | None
    firmware: FreeText | None


class Agent(ApiModel):
    """The presence of the agent that serves a terminal."""

    agent_id: str
    state: Literal["online", "offline"]
    version: FreeText
    observed_at: AwareDatetime


class Terminal(ApiModel):
    """A terminal: its last status and its agent's presence (either may be unknown)."""

    tid: str
    last_status: TerminalStatus | None
    agent: Agent | None


class Transaction(ApiModel):
    """A transaction as the terminal reported it, with what its settlement did."""

    tid: str
    mid: str
    kind: str
    amount: Minor
    currency: str
    pan_masked: str = Field(description="At most the first 6 and last 4 digits visible.")
    rc: str
    approved: bool
    rrn: str
    stan: str
    batch: str
    terminal_time: AwareDatetime
    observed_at: AwareDatetime
    auth_code: str | None
    entry_mode: str | None
    issuer: str | None
    expected_net: Minor | None
    deadline: AwareDatetime | None
    outcome: str
    settlement_id: str | None


class TerminalDetail(Terminal):
    """A terminal with its recent transactions, newest first."""

    transactions: list[Transaction]


# --- settlements and tokens -------------------------------------------------------------


class Stored(ApiModel):
    """What a settlement POST did."""

    stored: int = Field(description="Results new to the collector.")
    repeats: int = Field(description="Results it already had (same settlement_id).")


class TokenRequest(ApiModel):
    """A new token: its name is the actor recorded for what it does."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    role: Role


class Token(ApiModel):
    """A token as listed (never the token itself)."""

    name: FreeText
    role: Role | None = Field(
        description="null: the stored role is not one this version knows (written by an "
        "older one, or by hand); the token is refused until revoked and made again."
    )
    created_at: AwareDatetime
    created_by: FreeText
    revoked_at: AwareDatetime | None


class NewToken(ApiModel):
    """A token just made: `token` is shown this once and stored only as its hash."""

    name: FreeText
    role: Role
    token: str


class Health(ApiModel):
    status: Literal["ok"]
    version: FreeText
