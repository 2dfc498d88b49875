"""Reconnect delays: exponential backoff with equal jitter."""

from __future__ import annotations

import random


class Backoff:
    """Exponential backoff with equal jitter: half the delay fixed, half random."""

    def __init__(self, minimum: float, maximum: float, rng: random.Random | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.attempts = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    def next_delay(self) -> float:
        """The delay before the next attempt; grows until `maximum`."""
        ceiling = min(self.maximum, self.minimum * (2**self.attempts))
        self.attempts = min(self.attempts + 1, 32)
        return float(ceiling / 2 + self._rng.uniform(0, ceiling / 2))

    def reset(self) -> None:
        """Start again from the minimum, after a success."""
        self.attempts = 0
