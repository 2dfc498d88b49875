"""What the REST API takes and gives: request bodies and resources, as pydantic models.

Times are ISO 8601 with their offset (UTC, `Z`); money is an integer in minor units with
its ISO 4217 currency beside it; card numbers appear only masked. Request bodies forbid
unknown fields, and text in them may not hold control characters (a NUL byte is refused
here rather than by the database).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, Any, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from collector.cases import CaseState
from collector.rules import AlertType
from collector.tokens import NAME_PATTERN, Role
from posmon.wire.models import Cause, Severity

ID_PATTERN = r"^[0-9A-Za-z._:-]{1,64}$"
TID_PATTERN = r"^[0-9A-Za-z]{8}$"
MID_PATTERN = r"^[0-9A-Za-z]{15}$"
BANK_PATTERN = r"^[0-9A-Za-z]{1,11}$"
_TEXT_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
MAX_SILENCE = timedelta(days=366)

Note = Annotated[
    str, Field(max_length=512, pattern=_TEXT_PATTERN, description="Free text, kept with it.")
]
Minor = Annotated[int, Field(description="Money in minor units (fen for CNY).")]


class ApiModel(BaseModel):
    """Base of the API's models: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def of(cls, row: Mapping[str, Any], **values: Any) -> Self:
        """The model of a stored row (its own fields picked out), with `values` on top."""
        picked = {name: row[name] for name in cls.model_fields if name in row}
        return cls.model_validate({**picked, **values})


class Problem(ApiModel):
    """Why a request was refused."""

    detail: str


# --- alerts -----------------------------------------------------------------------------


class Alert(ApiModel):
    """An alert as stored: the `posmon.alert/1` fields, with who acknowledged it and what
    silences or groups it."""

    alert_id: str
    fingerprint: str
    type: str = Field(description="An alert type, e.g. SETTLEMENT_FAILED.")
    severity: Severity
    status: Literal["firing", "acknowledged", "resolved"]
    cause: Cause
    summary: str
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
    acked_by: str | None
    acked_at: AwareDatetime | None
    details: dict[str, Any] | None = Field(description="Evidence and context.")


class AlertHistoryItem(ApiModel):
    """One step of an alert's life: fired, acknowledged, grouped, resolved ..."""

    at: AwareDatetime
    event: str
    actor: str
    note: str | None


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

    reason: Annotated[str, Field(min_length=1, max_length=256, pattern=_TEXT_PATTERN)]
    starts_at: AwareDatetime | None = Field(None, description="Default: now.")
    ends_at: AwareDatetime | None = None
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
    reason: str
    created_by: str
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
    rejection_reason: str | None
    alert_id: str | None
    remittance_settlement_id: str | None
    opened_at: AwareDatetime
    updated_at: AwareDatetime


class CaseEvent(ApiModel):
    """One line of a case's append-only audit log."""

    at: AwareDatetime
    actor: str
    from_state: CaseState | None
    to_state: CaseState
    note: str | None


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
    what: str


class Evidence(ApiModel):
    """A case's evidence package for the bank (card and account numbers masked)."""

    case: dict[str, Any]
    cause: dict[str, Any]
    transaction: dict[str, Any] = Field(description="The slip data, as the terminal printed.")
    settlements: list[dict[str, Any]]
    terminal_status: list[dict[str, Any]]
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
    firmware: str | None


class Agent(ApiModel):
    """The presence of the agent that serves a terminal."""

    agent_id: str
    state: Literal["online", "offline"]
    version: str
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

    name: str
    role: Role
    created_at: AwareDatetime
    created_by: str
    revoked_at: AwareDatetime | None


class NewToken(ApiModel):
    """A token just made: `token` is shown this once and stored only as its hash."""

    name: str
    role: Role
    token: str


class Health(ApiModel):
    status: Literal["ok"]
    version: str
