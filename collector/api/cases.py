"""/cases: list and read re-remittance cases, move them on, their evidence for the bank."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response

from collector.api.auth import requires
from collector.api.context import Services
from collector.api.errors import BAD_BODY, CONFLICT, NOT_FOUND
from collector.api.models import (
    ID_PATTERN,
    MID_PATTERN,
    TID_PATTERN,
    Case,
    CaseDetail,
    CaseEvent,
    Evidence,
    Transition,
)
from collector.cases import TRANSITIONS, CaseError, CaseState
from collector.evidence import gather, pdf
from collector.tokens import Caller, Role
from posmon.wire.models import Cause

CaseId = Annotated[str, Path(pattern=ID_PATTERN, description="e.g. C-4f1a9b2c3d4e.")]
_STATES = "|".join(state.value for state in CaseState)


def routes(services: Services) -> APIRouter:
    router = APIRouter(tags=["cases"])
    viewer = Depends(requires(services, Role.VIEWER))
    operator = Depends(requires(services, Role.OPERATOR))

    @router.get("/cases", dependencies=[viewer])
    def list_cases(
        state: Annotated[
            str,
            Query(
                pattern=f"^(open|all|{_STATES})$",
                description="open (still being worked), all, or one state such as SUBMITTED.",
            ),
        ] = "open",
        tid: Annotated[str | None, Query(pattern=TID_PATTERN)] = None,
        mid: Annotated[str | None, Query(pattern=MID_PATTERN)] = None,
        cause: Cause | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> list[Case]:
        """Cases, newest first."""
        rows = services.cases.search(
            state=None if state == "all" else state,
            tid=tid,
            mid=mid,
            cause=cause.value if cause else None,
            limit=limit,
        )
        return [Case.of(row) for row in rows]

    @router.get("/cases/{case_id}", dependencies=[viewer], responses=NOT_FOUND)
    def get_case(case_id: CaseId) -> CaseDetail:
        """One case, the states it may go to next, and its audit log."""
        return _detail(services, case_id)

    @router.post(
        "/cases/{case_id}/transitions",
        responses={**NOT_FOUND, **CONFLICT, **BAD_BODY},
    )
    def move_case(case_id: CaseId, body: Transition, caller: Caller = operator) -> CaseDetail:
        """Move a case to its next state. A move the workflow does not allow, or a case
        moved by someone else meanwhile, is refused with 409 and the reason.

        The token's name is recorded in the audit log."""
        _detail(services, case_id)  # 404 first
        try:
            services.cases.advance(
                case_id,
                body.to,
                actor=caller.name,
                now=services.now(),
                note=body.note,
                account=body.account,
            )
        except CaseError as exc:
            raise HTTPException(409, exc.reason) from exc
        return _detail(services, case_id)

    @router.get("/cases/{case_id}/evidence", dependencies=[viewer], responses=NOT_FOUND)
    def evidence(case_id: CaseId) -> Evidence:
        """The case's evidence package as JSON (the PDF: `/cases/{case_id}/evidence.pdf`)."""
        return Evidence.model_validate(_evidence(services, case_id))

    @router.get(
        "/cases/{case_id}/evidence.pdf",
        dependencies=[viewer],
        response_class=Response,
        responses={
            200: {"content": {"application/pdf": {}}, "description": "The PDF for the bank."},
            **NOT_FOUND,
        },
    )
    def evidence_pdf(case_id: CaseId) -> Response:
        """The case's evidence package as a PDF for the bank."""
        document = pdf(_evidence(services, case_id))
        disposition = f'attachment; filename="{case_id}.pdf"'
        return Response(
            document,
            media_type="application/pdf",
            headers={"Content-Disposition": disposition},
        )

    return router


def _evidence(services: Services, case_id: str) -> dict[str, object]:
    case = services.cases.get(case_id)
    if case is None:
        raise HTTPException(404, f"no case {case_id}")
    return gather(services.cases, services.alerts, case, services.now())


def _detail(services: Services, case_id: str) -> CaseDetail:
    case = services.cases.get(case_id)
    if case is None:
        raise HTTPException(404, f"no case {case_id}")
    events = [CaseEvent.of(item) for item in services.cases.audit_log(case_id)]
    allowed = sorted(TRANSITIONS[case.state])
    return CaseDetail.of(case, next_states=allowed, audit_log=events)
