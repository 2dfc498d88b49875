"""Clocks for posmon: real time, or accelerated virtual time so a T+1 day passes in seconds.

Simulators and the collector take a clock instead of calling `datetime.now()`, so a demo
can run a week of settlement days in minutes and a test can set the time outright. Every
clock has the same small surface (`Clock`): `now()`, `real_seconds()` and
`sleep_until()`.

A `SimClock` maps real time onto virtual time linearly:

    virtual = origin + (real_now - anchor) * scale

Processes that are given the same origin, anchor and scale agree on the virtual time, so
an acquirer simulator and a collector started a few seconds apart still share one
timeline. `scale=1` with `origin == anchor` is plain real time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Protocol

# Longest single wait in `sleep_until`: the time left is recomputed after it, so a wall
# clock that is stepped (NTP) or a stop request is noticed within this many real seconds.
MAX_WAIT_S = 1.0


class Waiter(Protocol):
    """Something to wait on that can end the wait early: `threading.Event` fits."""

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds; True when the wait ended because of a stop."""
        ...


class Clock(Protocol):
    """What posmon code needs of a clock: the time, and a way to wait for a moment."""

    def now(self) -> datetime:
        """The current (possibly virtual) time, timezone-aware."""
        ...

    def real_seconds(self, span: timedelta) -> float:
        """How many real seconds the (virtual) `span` lasts."""
        ...

    def sleep_until(self, moment: datetime, stop: Waiter | None = None) -> bool:
        """Block until `moment`; False when `stop` ended the wait first."""
        ...


def _utc_now() -> datetime:
    return datetime.now(UTC)


class _Sleeper:
    """Waits on a `Waiter` or, without one, with `time.sleep`."""

    @staticmethod
    def wait(seconds: float, stop: Waiter | None) -> bool:
        if stop is not None:
            return stop.wait(seconds)
        time.sleep(seconds)
        return False


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {value.isoformat()}")


class SystemClock:
    """Real time, behind the `Clock` interface; `tz` picks the zone `now()` is given in."""

    def __init__(
        self,
        tz: tzinfo | None = None,
        *,
        real_now: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.tz = tz or UTC
        self._real_now = real_now

    def now(self) -> datetime:
        """The wall-clock time, timezone-aware."""
        return self._real_now().astimezone(self.tz)

    def real_seconds(self, span: timedelta) -> float:
        """A span of real time lasts exactly as long."""
        return span.total_seconds()

    def sleep_until(self, moment: datetime, stop: Waiter | None = None) -> bool:
        """Block until `moment` (aware); False when `stop` was set first."""
        _require_aware("moment", moment)
        while (left := (moment - self.now()).total_seconds()) > 0:
            if _Sleeper.wait(min(left, MAX_WAIT_S), stop):
                return False
        return True


class SimClock:
    """Accelerated virtual time: `origin + (real_now - anchor) * scale` (see the module).

    `origin` is the virtual time at the real instant `anchor` (default: the moment the
    clock is made). `real_now` is the source of real time, injectable for tests.
    """

    def __init__(
        self,
        origin: datetime,
        scale: float = 1.0,
        anchor: datetime | None = None,
        *,
        real_now: Callable[[], datetime] = _utc_now,
    ) -> None:
        _require_aware("origin", origin)
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self._real_now = real_now
        anchor = real_now() if anchor is None else anchor
        _require_aware("anchor", anchor)
        self.origin = origin
        self.scale = float(scale)
        self.anchor = anchor

    def now(self) -> datetime:
        """The virtual time now, in the origin's time zone."""
        return self.to_virtual(self._real_now())

    def to_virtual(self, real: datetime) -> datetime:
        """The virtual time at the real instant `real` (aware)."""
        _require_aware("real", real)
        return self.origin + (real - self.anchor) * self.scale

    def to_real(self, virtual: datetime) -> datetime:
        """The real instant at which the virtual time is `virtual` (aware)."""
        _require_aware("virtual", virtual)
        return self.anchor + (virtual - self.origin) / self.scale

    def real_seconds(self, span: timedelta) -> float:
        """How many real seconds the virtual `span` lasts: `span / scale`."""
        return span.total_seconds() / self.scale

    def sleep_until(self, moment: datetime, stop: Waiter | None = None) -> bool:
        """Block until the virtual time is `moment`; False when `stop` was set first."""
        _require_aware("moment", moment)
        while (left := self.real_seconds(moment - self.now())) > 0:
            if _Sleeper.wait(min(left, MAX_WAIT_S), stop):
                return False
        return True

    def __repr__(self) -> str:
        return (
            f"SimClock(origin={self.origin.isoformat()}, scale={self.scale:g}, "
            f"anchor={self.anchor.isoformat()})"
        )
