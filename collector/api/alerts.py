"""/alerts and /silences: list and read alerts, acknowledge them, silence them."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.exceptions import RequestValidationError

from collector.alerts import AlertError
from collector.api.auth import requires
from collector.api.context import Services
from collector.api.errors import BAD_BODY, CONFLICT, NOT_FOUND, invalid
from collector.api.models import (
    BANK_PATTERN,
    ID_PATTERN,
    MAX_SILENCE,
    SILENCE_HORIZON,
    TID_PATTERN,
    Acknowledge,
    Alert,
    AlertDetail,
    AlertHistoryItem,
    Silence,
    SilenceRequest,
)
from collector.rules import AlertType
from collector.tokens import Caller, Role

AlertId = Annotated[str, Path(pattern=ID_PATTERN, description="e.g. A-3f9c2e71d4a0b865.")]
StateFilter = Literal["open", "firing", "acknowledged", "resolved", "all"]


def routes(services: Services) -> APIRouter:
    router = APIRouter(tags=["alerts"])
    viewer = Depends(requires(services, Role.VIEWER))
    operator = Depends(requires(services, Role.OPERATOR))

    @router.get("/alerts", dependencies=[viewer])
    def list_alerts(
        *,
        state: Annotated[
            StateFilter | None,
            Query(description="open (the default): firing or acknowledged."),
        ] = None,
        status: Annotated[
            StateFilter | None,
            Query(deprecated=True, description="Deprecated since API 1.1: use `state`."),
        ] = None,
        alert_type: Annotated[AlertType | None, Query(alias="type")] = None,
        tid: Annotated[str | None, Query(pattern=TID_PATTERN)] = None,
        bank: Annotated[str | None, Query(pattern=BANK_PATTERN, description="Bank code.")] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> list[Alert]:
        """Alerts, newest first."""
        if state is not None and status is not None and state != status:
            raise RequestValidationError(
                [
                    {
                        "type": "value_error",
                        "loc": ("query", "status"),
                        "msg": "state and status (its old name) ask for different alerts",
                    }
                ]
            )
        wanted = state or status or "open"
        rows = services.alerts.find(
            status=None if wanted == "all" else wanted,
            alert_type=alert_type.value if alert_type else None,
            tid=tid,
            bank_code=bank,
            limit=limit,
        )
        return [Alert.of(row) for row in rows]

    @router.get("/alerts/{alert_id}", dependencies=[viewer], responses=NOT_FOUND)
    def get_alert(alert_id: AlertId) -> AlertDetail:
        """One alert, its evidence (`details`) and its history."""
        return _detail(services, alert_id)

    @router.post(
        "/alerts/{alert_id}/ack",
        responses={**NOT_FOUND, **CONFLICT, **BAD_BODY},
    )
    def acknowledge(
        alert_id: AlertId, caller: Caller = operator, body: Acknowledge | None = None
    ) -> AlertDetail:
        """Acknowledge a firing alert: someone is on it, so it is not notified again.

        The token's name is recorded as who acknowledged it."""
        _detail(services, alert_id)  # 404 first
        note = body.note if body is not None else ""
        try:
            services.alerts.acknowledge(alert_id, caller.name, services.now(), note)
        except AlertError as exc:
            raise HTTPException(409, exc.reason) from exc
        return _detail(services, alert_id)

    @router.get("/silences", dependencies=[viewer])
    def list_silences(
        include_over: Annotated[
            bool, Query(alias="all", description="Include those that are over.")
        ] = False,
    ) -> list[Silence]:
        """Silences and maintenance windows not yet over (or all)."""
        rows = services.alerts.silences(None if include_over else services.now())
        return [Silence.of(row) for row in rows]

    @router.post("/silences", status_code=201, responses=BAD_BODY)
    def add_silence(body: SilenceRequest, caller: Caller = operator) -> Silence:
        """Mute notification of matching alerts for a while; they are still recorded."""
        now = services.now()
        starts_at = body.starts_at or now
        ends_at = body.ends_at or starts_at + timedelta(seconds=body.duration_s or 0)
        # Bounded, so no silence reaches the edge of the datetime range.
        if ends_at - starts_at > MAX_SILENCE:
            raise invalid(f"a silence may last at most {MAX_SILENCE.days} days", "ends_at")
        if ends_at > now + SILENCE_HORIZON:
            raise invalid("a silence must end within 10 years from now", "ends_at")
        try:
            silence_id = services.alerts.add_silence(
                starts_at=starts_at,
                ends_at=ends_at,
                reason=body.reason,
                created_by=caller.name,
                now=now,
                alert_type=body.type.value if body.type else None,
                bank_code=body.bank_code,
                mid=body.mid,
                tid=body.tid,
                maintenance=body.maintenance,
            )
        except AlertError as exc:
            raise invalid(exc.reason, "ends_at") from exc
        stored = services.alerts.silence(silence_id)
        assert stored is not None
        return Silence.of(stored)

    return router


def _detail(services: Services, alert_id: str) -> AlertDetail:
    row = services.alerts.get(alert_id)
    if row is None:
        raise HTTPException(404, f"no alert {alert_id}")
    history = [AlertHistoryItem.of(item) for item in services.alerts.history(alert_id)]
    return AlertDetail.of(row, history=history)
