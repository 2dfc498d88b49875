"""What a simulated terminal sends, before framing: a TYPE and its KEY=VALUE fields.

Message sources (the traffic generator, a script) make `Message` values without SEQ; the
terminal numbers them as it sends them, so SEQ runs per terminal in sending order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from types import MappingProxyType
from typing import Protocol

from posmon.pan import scrub
from posmon.wire.codec import TERMINAL_TIME_FORMAT, Record, encode_record


@dataclass(frozen=True, slots=True, eq=True)
class Message:
    """One message a terminal sends: TYPE (`TXN`, `STS`, `BAT`, `HBT`, ...) and fields."""

    type: str
    fields: Mapping[str, str]

    def __post_init__(self) -> None:
        # Read-only, so a message handed to an observer cannot be changed under the sender.
        object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))

    @property
    def seq(self) -> int | None:
        """The SEQ the message carries, if it has a numeric one."""
        return Record(self.type, dict(self.fields)).seq

    def with_seq(self, seq: int) -> Message:
        """The message numbered `seq`, SEQ first after TYPE as terminals print it."""
        others = {key: value for key, value in self.fields.items() if key != "SEQ"}
        return Message(self.type, {"SEQ": str(seq), **others})

    def replace(self, **changes: str | None) -> Message:
        """A copy with fields set (a value) or removed (None)."""
        fields = dict(self.fields)
        for key, value in changes.items():
            if value is None:
                fields.pop(key, None)
            else:
                fields[key] = value
        return Message(self.type, fields)

    def to_data(self) -> bytes:
        """The frame DATA: `TYPE FS KEY=VALUE ...`."""
        return Record(self.type, dict(self.fields)).to_data()

    def to_frame(self) -> bytes:
        """The whole frame, `STX DATA ETX LRC`; raises `FrameError` for unframeable DATA."""
        return encode_record(self.type, dict(self.fields))

    def __repr__(self) -> str:
        # A generated PAN may be full: never let one reach a log or a test report.
        return scrub(f"Message({self.type!r}, {dict(self.fields)!r})")


class MessageSource(Protocol):
    """Where a terminal's messages come from: generated traffic or a script."""

    def next_message(self, now: datetime) -> Message | None:
        """The next message to send at `now` (aware), or None when there are no more."""
        ...

    def close_batch(self, now: datetime) -> Message | None:
        """The BAT that closes the open batch, or None when there is nothing to close."""
        ...


def terminal_time(now: datetime, tz: tzinfo) -> str:
    """`now` (aware) as the terminal prints it: local `YYYYMMDDhhmmss`."""
    return now.astimezone(tz).strftime(TERMINAL_TIME_FORMAT)


def heartbeat(tid: str, now: datetime, tz: tzinfo) -> Message:
    """A heartbeat (`HBT`) for terminal `tid` at `now`."""
    return Message("HBT", {"TID": tid, "TS": terminal_time(now, tz)})
