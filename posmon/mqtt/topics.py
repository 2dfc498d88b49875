"""The contract's topic names (docs/contract.md §2.1) under one prefix."""

from __future__ import annotations

from posmon.mqtt.settings import DEFAULT_PREFIX


class Topics:
    """The contract's topic names under one prefix."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix

    def terminal(self, tid: str, kind: str) -> str:
        """`{prefix}/terminals/{tid}/{txn|status|batch}`."""
        return f"{self.prefix}/terminals/{tid}/{kind}"

    def presence(self, agent_id: str) -> str:
        return f"{self.prefix}/agents/{agent_id}/presence"

    @property
    def settlements(self) -> str:
        return f"{self.prefix}/settlements"

    def alert(self, alert_type: str) -> str:
        return f"{self.prefix}/alerts/{alert_type}"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}/deadletter"
