"""What the fleet registry says about the terminals the collector hears from.

The broker's ACL (generated from the same registry, `posmon broker provision`) is the first
guard: an agent can publish only its own terminals' topics. The collector checks again,
so that a misconfigured broker does not make it trust what it is told:
- a terminal message whose payload names another terminal than its topic is a dead
  letter (`topic_mismatch`, in collector/ingest.py);
- a terminal that no agent in the registry serves is stored (its transactions may be
  money owed to a merchant), but counted as an unknown terminal, and logged once per
  terminal. `posmon collector status` shows the count.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from pathlib import Path

from posmon.broker.fleet import Fleet, load
from posmon.config import ConfigError
from posmon.wire.models import BatchEvent, StatusEvent, TxnEvent, WireMessage

logger = logging.getLogger(__name__)


class Registry:
    """The registry's terminals, read again when its file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._owner: dict[str, str] = {}  # tid -> agent id
        self._reported: set[str] = set()
        self.refresh()

    def refresh(self) -> None:
        """Read the file again if it changed; a bad file keeps the last good registry."""
        try:
            mtime = self.path.stat().st_mtime
        except OSError as exc:
            if self._mtime is None:
                raise ConfigError(f"{self.path}: fleet registry: {exc.strerror}") from exc
            return
        if mtime == self._mtime:
            return
        try:
            fleet = load(self.path)
        except ConfigError:
            if self._mtime is None:
                raise
            logger.exception("fleet registry %s changed but cannot be read: kept", self.path)
            return
        with self._lock:
            self._owner = _owners(fleet)
            self._mtime = mtime
            self._reported.clear()
        logger.info("fleet registry %s: %d terminals", self.path, len(self._owner))

    def unknown(self, messages: list[WireMessage]) -> Counter[str]:
        """Count (by kind) the terminal messages from terminals no agent serves."""
        found: Counter[str] = Counter()
        with self._lock:
            owner = self._owner
        for message in messages:
            if not isinstance(message, TxnEvent | StatusEvent | BatchEvent):
                continue
            if message.tid in owner:
                continue
            found[message.tid] += 1
        for tid in found.keys() - self._reported:
            self._reported.add(tid)
            logger.warning(
                "terminal %s is in no agent's list in the fleet registry %s (stored anyway)",
                tid,
                self.path,
            )
        return found


def _owners(fleet: Fleet) -> dict[str, str]:
    return {tid: agent_id for agent_id, agent in fleet.agents.items() for tid in agent.tids}
