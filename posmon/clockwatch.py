"""Steps of this machine's wall clock, seen against its monotonic clock.

A process measures how long something lasted (a terminal silent, a link down) on the
monotonic clock, which only moves forward at a steady rate. The wall clock can be stepped:
by NTP after a long drift, by an operator, by a virtual machine resumed after a pause. A
`ClockWatch` keeps the offset between the two; when it moves by more than `threshold_s`
between two checks, the wall clock was stepped by that much. The step is logged and
counted (the collector reports it in `posmon collector status`); nothing else follows from
it. Slow changes of the offset (NTP slewing, a few milliseconds a second) stay under the
threshold and are taken in at each check, so they never add up to a step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

# Two checks of a collector are a sweep apart (a second or so); NTP's slewing moves the
# offset by at most 0.5 ms a second. A step this size or more is a step.
STEP_THRESHOLD_S = 2.0

logger = logging.getLogger(__name__)


def _wall() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ClockStep:
    """One step of the wall clock: by how much (positive: forward), and when (new time)."""

    seconds: float
    at: datetime


class ClockWatch:
    """Notices steps of the wall clock (see the module)."""

    def __init__(
        self,
        threshold_s: float = STEP_THRESHOLD_S,
        *,
        wall: Callable[[], datetime] = _wall,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold_s = threshold_s
        self._wall = wall
        self._monotonic = monotonic
        self._offset = self._now_offset()
        self.steps = 0
        self.last: ClockStep | None = None

    def _now_offset(self) -> float:
        return self._wall().timestamp() - self._monotonic()

    def check(self) -> ClockStep | None:
        """The step since the last check, if the wall clock was stepped; logged."""
        offset = self._now_offset()
        moved, self._offset = offset - self._offset, offset
        if abs(moved) < self.threshold_s:
            return None
        step = ClockStep(moved, self._wall())
        self.steps += 1
        self.last = step
        logger.warning(
            "this machine's clock was stepped %+.0f s (now %s): durations are measured on "
            "the monotonic clock and are not affected; deadlines are judged by the new time",
            moved,
            step.at.isoformat(timespec="seconds"),
        )
        return step
