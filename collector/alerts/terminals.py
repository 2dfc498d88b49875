"""The terminals' own conditions: TERMINAL_OFFLINE and HOST_LINK_DOWN.

Liveness is measured on this process's monotonic clock, from when each terminal's latest
status was taken here: no wall clock is compared with another machine's, and a step of
this machine's wall clock changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from collector.alertconfig import AlertsSection
from collector.alerts.lifecycle import Lifecycle
from collector.alerts.rows import OfflineAgent, StatusRow, TerminalState
from collector.rules import AlertType, Candidate, LinkWatch
from posmon.wire.models import Cause


def offline_fingerprint(tid: str) -> str:
    return f"{AlertType.TERMINAL_OFFLINE.value}:{tid}"


def link_fingerprint(tid: str) -> str:
    return f"{AlertType.HOST_LINK_DOWN.value}:{tid}"


class TerminalWatch:
    """When each terminal was last heard, and whether its host link is in trouble."""

    def __init__(
        self, settings: AlertsSection, lifecycle: Lifecycle, monotonic: Callable[[], float]
    ) -> None:
        self.settings = settings
        self.lifecycle = lifecycle
        self.monotonic = monotonic
        self.links = LinkWatch(settings.saf_threshold)
        self.last_seen: dict[str, datetime] = {}  # tid -> latest status (agent's wall clock)
        self.heard: dict[str, float] = {}  # tid -> monotonic time its latest status came

    def start(self, latest: Iterable[TerminalState]) -> None:
        """Terminals known before this start count as heard now: one silent since before
        the start is offline one heartbeat timeout after it (their statuses' times are the
        agents' clocks, not comparable with this one's)."""
        started = self.monotonic()
        for row in latest:
            self.last_seen[row.tid] = row.observed_at
            self.heard[row.tid] = started
            self.links.feed(row.tid, row.link_up, row.saf_pending, row.observed_at, started)

    def status(self, row: StatusRow, now: datetime) -> None:
        """A status or heartbeat: the terminal is back, and its link may be too."""
        tid, at = row.tid, row.observed_at
        if tid not in self.last_seen or at >= self.last_seen[tid]:
            self.last_seen[tid] = at
        heard = self.heard[tid] = self.monotonic()
        self.lifecycle.resolve(offline_fingerprint(tid), now, "the terminal reports again")
        if self.links.feed(tid, row.link_up, row.saf_pending, at, heard):
            self.lifecycle.resolve(link_fingerprint(tid), now, f"LINK=UP, SAF {row.saf_pending}")

    def offline(self, now: datetime, elapsed: float, agents: list[OfflineAgent]) -> None:
        """TERMINAL_OFFLINE: silent past the heartbeat timeout (on the monotonic clock, see
        `heard`), or its agent's MQTT will said so."""
        timeout = self.settings.heartbeat_timeout_s
        quiet = {tid: elapsed - heard for tid, heard in self.heard.items()}
        silent = {tid: self.last_seen[tid] for tid, for_s in quiet.items() if for_s > timeout}
        for agent in agents:
            for tid in agent.tids:
                silent.setdefault(tid, agent.observed_at)
        for tid, seen in silent.items():
            by_will = next((a for a in agents if tid in a.tids), None)
            evidence = (
                [f"agent {by_will.agent_id} went offline (its MQTT will)"]
                if by_will
                else [f"no status or heartbeat for {int(quiet[tid])} s"]
            )
            self.lifecycle.fire(
                Candidate(
                    type=AlertType.TERMINAL_OFFLINE,
                    fingerprint=offline_fingerprint(tid),
                    cause=Cause.NETWORK,
                    summary=f"TID {tid} offline: last heard {seen.isoformat(timespec='seconds')}",
                    tid=tid,
                    details={"evidence": evidence, "last_seen": seen.isoformat()},
                ),
                now,
            )

    def links_down(self, now: datetime, elapsed: float) -> None:
        """HOST_LINK_DOWN: LINK=DOWN or a SAF backlog for `link_down_s`."""
        for tid, since in self.links.due(elapsed, self.settings.link_down_s):
            link_up, saf = self.links.last.get(tid, (True, 0))
            trouble = "LINK=DOWN" if not link_up else f"SAF backlog {saf}"
            self.lifecycle.fire(
                Candidate(
                    type=AlertType.HOST_LINK_DOWN,
                    fingerprint=link_fingerprint(tid),
                    cause=Cause.NETWORK,
                    summary=f"TID {tid}: {trouble} since {since.isoformat(timespec='seconds')}",
                    tid=tid,
                    details={
                        "evidence": [f"the terminal reports {trouble}"],
                        "since": since.isoformat(),
                        "saf_pending": saf,
                        "link_up": link_up,
                    },
                ),
                now,
            )
