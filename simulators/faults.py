"""Faults a simulated terminal can inject, each a knob that is off by default.

Line faults damage bytes (noise between frames, a wrong LRC on a frame's first send, a
frame written in pieces); content faults send intact frames that make no sense (a missing
key or a bad value, an unknown TYPE); `unplug_every` pulls the cable now and then. The
functions here are pure: they take the random generator to draw from.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from posmon.wire.frames import STX
from simulators.messages import Message

# Vendor message types a real terminal fleet sends that POSMON-SL/1 does not know.
UNKNOWN_TYPES = ("DIAG", "KEYCHG", "PRNLOG", "EVT")

# (key, bad value) per type; None removes the key. Each leaves the frame intact.
_BREAKAGES: dict[str, tuple[tuple[str, str | None], ...]] = {
    "TXN": (
        ("AMT", "12.80"),
        ("AMT", None),
        ("CUR", "999"),
        ("RRN", None),
        ("TS", "20261399250000"),
        ("KIND", "REFUNDED"),
        ("STAN", "17"),
    ),
    "STS": (("LINK", "up"), ("SAF", "-3"), ("NET", None), ("BATT", "140")),
    "BAT": (("COUNT", None), ("TOTAL", "1,280"), ("RESULT", "DONE")),
    "HBT": (("TS", None), ("TS", "yesterday")),
}


@dataclass(frozen=True, slots=True)
class Faults:
    """Which faults to inject and how often; probabilities are per frame, 0 (off) to 1."""

    noise: float = 0.0
    noise_max: int = 8
    corrupt_lrc: float = 0.0
    split: float = 0.0
    split_gap: float = 0.005
    invalid: float = 0.0
    unknown_type: float = 0.0
    unplug_every: int = 0
    unplug_for: float = 1.0

    def __post_init__(self) -> None:
        for name in ("noise", "corrupt_lrc", "split", "invalid", "unknown_type"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in 0..1")
        if self.noise_max < 1 or self.unplug_every < 0:
            raise ValueError("noise_max must be >= 1 and unplug_every >= 0")
        # A piece must arrive well inside the agent's 2 s frame timeout.
        if not 0.0 <= self.split_gap <= 0.5 or self.unplug_for < 0:
            raise ValueError("split_gap must be in 0..0.5 s and unplug_for >= 0")


def noise_burst(rng: random.Random, max_len: int) -> bytes:
    """1..`max_len` random bytes of line noise, never STX (that would open a frame)."""
    values = [value for value in range(256) if value != STX]
    return bytes(rng.choice(values) for _ in range(rng.randint(1, max_len)))


def corrupt_lrc(frame: bytes) -> bytes:
    """The frame with a wrong LRC byte, as a line hit would leave it."""
    return frame[:-1] + bytes((frame[-1] ^ 0x5A,))


def split_frame(frame: bytes, rng: random.Random) -> list[bytes]:
    """The frame cut at random places into 2..4 pieces (fewer for tiny frames)."""
    pieces = min(rng.randint(2, 4), len(frame))
    cuts = sorted(rng.sample(range(1, len(frame)), pieces - 1))
    return [frame[start:end] for start, end in zip([0, *cuts], [*cuts, len(frame)], strict=True)]


def make_invalid(message: Message, rng: random.Random) -> Message:
    """The message with one required key missing or one value the contract forbids."""
    choices = _BREAKAGES.get(message.type, (("TID", None),))
    key, value = rng.choice(choices)
    return message.replace(**{key: value})


def unknown_message(tid: str, rng: random.Random, now: str) -> Message:
    """A vendor message of a TYPE the contract does not know, at terminal time `now`."""
    kind = rng.choice(UNKNOWN_TYPES)
    return Message(kind, {"TID": tid, "TS": now, "CODE": f"{rng.randint(0, 999):03d}"})
