"""The `[alerts]` and `[notify]` sections of the collector's configuration."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, field_validator, model_validator

from posmon.config import Section
from posmon.wire.models import Cause


class MaintenanceWindow(Section):
    """A declared maintenance window: mutes matching alerts and is evidence of BANK_SYSTEM."""

    bank_code: str | None = Field(None, description="Bank under maintenance.")
    mid: str | None = Field(None, description="Merchant under maintenance.")
    tid: str | None = Field(None, description="Terminal under maintenance.")
    start: datetime = Field(description="Start, with its UTC offset.")
    end: datetime = Field(description="End, with its UTC offset.")
    reason: str = Field("declared maintenance", description="Shown with muted alerts.")

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("start and end need a UTC offset")
        if self.end <= self.start:
            raise ValueError("end must come after start")
        if self.bank_code is None and self.mid is None and self.tid is None:
            raise ValueError("name a bank_code, a mid or a tid")
        return self


class AlertsSection(Section):
    """When a condition becomes an alert, and how long it may stay unacknowledged."""

    heartbeat_timeout_s: float = Field(
        120.0, gt=0, description="TERMINAL_OFFLINE when a terminal sends nothing this long."
    )
    link_down_s: float = Field(
        60.0, ge=0, description="HOST_LINK_DOWN when LINK=DOWN or SAF is high this long."
    )
    saf_threshold: int = Field(
        10, ge=1, description="SAF backlog (offline transactions) that counts as link trouble."
    )
    context_window_s: float = Field(
        120.0, gt=0, description="Terminal status this close to a transaction is its context."
    )
    bank_outage_failures: int = Field(
        3, ge=2, description="BANK_OUTAGE when this many failures hit one bank ..."
    )
    bank_outage_window_min: float = Field(
        60.0, gt=0, description="... within this many minutes (collector clock)."
    )
    decline_window: int = Field(
        20, ge=5, description="DECLINE_SPIKE: the recent transactions compared to the baseline."
    )
    decline_baseline_min: int = Field(
        40, ge=10, description="Transactions a baseline needs before a spike can be called."
    )
    decline_factor: float = Field(
        3.0, gt=1, description="Spike: recent decline rate at least this times the baseline ..."
    )
    decline_min_rate: float = Field(0.5, gt=0, le=1, description="... and at least this rate.")
    renotify_min: float = Field(
        30.0, gt=0, description="A critical alert left unacknowledged is notified again."
    )
    sweep_s: float = Field(
        1.0, gt=0, le=60, description="How often time-based conditions are checked."
    )
    reason_codes: dict[str, Cause] = Field(
        default_factory=dict,
        description="Reason code -> cause, on top of the default table (acquirer codes).",
    )
    maintenance: list[MaintenanceWindow] = Field(
        default_factory=list, description="Declared maintenance windows."
    )


class WebhookChannel(Section):
    """An HTTP endpoint that receives each alert as JSON, signed with HMAC-SHA256."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$", description="Channel name.")
    url: str = Field(pattern=r"^https?://", description="Where to POST.")
    secret: SecretStr | None = Field(None, description="HMAC key for X-Posmon-Signature.")
    timeout_s: float = Field(5.0, gt=0, le=60, description="Per attempt.")


class AppriseChannel(Section):
    """A chat or e-mail channel through apprise (dingtalk://, wecom://, mailto:// ...)."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$", description="Channel name.")
    url: SecretStr = Field(description="apprise URL (it holds tokens: kept secret).")


class NotifySection(Section):
    """Where alerts go. The MQTT alert topics always get every alert."""

    webhooks: list[WebhookChannel] = Field(default_factory=list, description="Webhooks.")
    apprise: list[AppriseChannel] = Field(default_factory=list, description="apprise URLs.")
    retry_min_s: float = Field(1.0, gt=0, description="First retry delay of a failed delivery.")
    retry_max_s: float = Field(300.0, gt=0, description="Longest retry delay.")
    mqtt_username: str | None = Field(
        None,
        description="Login of the MQTT alert channel's own connection; empty: [mqtt]'s. A "
        "broker set up by `posmon broker provision` lets one connection per login in, so "
        "there it is `<collector id>-alerts` (docs/security.md).",
    )
    mqtt_password: SecretStr | None = Field(None, description="That login's password.")
    tls_certfile: Path | None = Field(
        None,
        description="Client certificate of the MQTT alert channel's own connection, needed "
        "when [mqtt.tls] has a cert_file: over mutual TLS the certificate's name is the "
        "login, so it is issued to `<collector id>-alerts` (`posmon pki issue-collector` "
        "issues both). The CA is [mqtt.tls] ca_file.",
    )
    tls_keyfile: Path | None = Field(None, description="That certificate's private key.")

    @model_validator(mode="after")
    def _unique(self) -> Self:
        names = ["mqtt"] + [c.name for c in self.webhooks] + [c.name for c in self.apprise]
        if len(set(names)) != len(names):
            raise ValueError("channel names must be unique (and not 'mqtt')")
        if self.mqtt_password is not None and self.mqtt_username is None:
            raise ValueError("mqtt_password needs mqtt_username")
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("tls_certfile and tls_keyfile go together")
        return self

    @field_validator("tls_certfile", "tls_keyfile")
    @classmethod
    def _a_file(cls, path: Path | None) -> Path | None:
        # Checked when the configuration loads, not at the first alert an hour later.
        if path is not None and not path.is_file():
            raise ValueError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
        return path


def _default_sla() -> dict[str, float]:
    return {
        "OPEN": 4.0,
        "VERIFYING": 24.0,
        "SUBMITTED": 24.0,
        "BANK_PROCESSING": 72.0,
        "REMITTED": 48.0,
        "REJECTED": 24.0,
    }


class CasesSection(Section):
    """Re-remittance (补划款) cases: which causes open one, how long each state may last."""

    open_for: list[Cause] = Field(
        default_factory=lambda: list(Cause),
        description="Causes whose failed, returned or overdue sales get a case.",
    )
    sla_hours: dict[str, float] = Field(
        default_factory=_default_sla,
        description="Hours a case may stay in a state before CASE_SLA_BREACHED.",
    )

    @model_validator(mode="after")
    def _states(self) -> Self:
        from collector.cases import CaseState  # noqa: PLC0415 - no cycle at import

        known = {state.value for state in CaseState}
        unknown = set(self.sla_hours) - known
        if unknown:
            raise ValueError(f"sla_hours: unknown state {', '.join(sorted(unknown))}")
        return self
