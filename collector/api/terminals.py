"""/terminals: each terminal's last status, its agent's presence, recent transactions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query

from collector.api.auth import requires
from collector.api.context import Services
from collector.api.errors import NOT_FOUND
from collector.api.models import (
    TID_PATTERN,
    Agent,
    Terminal,
    TerminalDetail,
    TerminalStatus,
    Transaction,
)
from collector.terminals import AgentPresence, TerminalStatusRow
from collector.tokens import Role


def routes(services: Services) -> APIRouter:
    router = APIRouter(tags=["terminals"], dependencies=[Depends(requires(services, Role.VIEWER))])

    @router.get("/terminals")
    def list_terminals() -> list[Terminal]:
        """Every terminal known from its status messages or an agent's presence, by tid."""
        statuses = services.terminals.latest_statuses()
        agents = _agents_by_tid(services.terminals.agents())
        return [
            _terminal(tid, statuses.get(tid), agents.get(tid))
            for tid in sorted({*statuses, *agents})
        ]

    @router.get("/terminals/{tid}", responses=NOT_FOUND)
    def get_terminal(
        tid: Annotated[str, Path(pattern=TID_PATTERN, description="Terminal id, 8 characters.")],
        limit: Annotated[
            int, Query(ge=1, le=1000, description="How many recent transactions.")
        ] = 20,
    ) -> TerminalDetail:
        """One terminal: last status, its agent's presence, its recent transactions."""
        status = services.terminals.latest_statuses(tid).get(tid)
        agent = _agents_by_tid(services.terminals.agents()).get(tid)
        rows = services.terminals.recent_transactions(tid, limit)
        if status is None and agent is None and not rows:
            raise HTTPException(404, f"no terminal {tid}")
        terminal = _terminal(tid, status, agent)
        return TerminalDetail.of(
            terminal.model_dump(), transactions=[Transaction.of(row) for row in rows]
        )

    return router


def _agents_by_tid(agents: list[AgentPresence]) -> dict[str, AgentPresence]:
    """tid -> the agent that last said it serves the terminal."""
    found: dict[str, AgentPresence] = {}
    for agent in sorted(agents, key=lambda row: row.observed_at):
        for tid in agent.tids:
            found[tid] = agent
    return found


def _terminal(tid: str, status: TerminalStatusRow | None, agent: AgentPresence | None) -> Terminal:
    return Terminal(
        tid=tid,
        last_status=TerminalStatus.of(status) if status is not None else None,
        agent=Agent.of(agent) if agent is not None else None,
    )
