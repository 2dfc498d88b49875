"""Scripted traffic: a fixed list of messages, e.g. read from a JSON lines file.

Each line of a script file is one object: `{"type": "TXN", "fields": {"TID": "10000001",
...}}`. Numbers may be given as JSON numbers; a field whose value is `"@now"` gets the
terminal's local time at sending (`YYYYMMDDhhmmss`). SEQ is normally left out: the
terminal numbers messages as it sends them. A message that gives SEQ keeps it (to script
a wrap or a restarted counter). Blank lines and lines starting with `#` are skipped.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from datetime import datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

from simulators.messages import Message, terminal_time

NOW = "@now"


class ScriptError(ValueError):
    """A script line that is not a message; `line` is its 1-based number."""

    def __init__(self, reason: str, line: int) -> None:
        super().__init__(f"line {line}: {reason}")
        self.reason = reason
        self.line = line


def parse_line(text: str, line: int = 1) -> Message:
    """One script line as a `Message`; raises `ScriptError`."""
    try:
        item = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScriptError(f"not JSON: {exc.msg}", line) from exc
    if not isinstance(item, dict) or not isinstance(item.get("type"), str):
        raise ScriptError('expected {"type": "...", "fields": {...}}', line)
    fields = item.get("fields", {})
    if not isinstance(fields, dict):
        raise ScriptError('"fields" must be an object', line)
    values: dict[str, str] = {}
    for key, value in fields.items():
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ScriptError(f"{key}: value must be a string or an integer", line)
        values[key] = str(value)
    return Message(item["type"], values)


def load_script(path: Path) -> list[Message]:
    """Every message of a JSON lines script file, in order; raises `ScriptError`."""
    messages = []
    with path.open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, start=1):
            if text.strip() and not text.lstrip().startswith("#"):
                messages.append(parse_line(text, number))
    return messages


class ScriptedStream:
    """A message source that plays a fixed list of messages once, in order."""

    def __init__(self, messages: Iterable[Message], *, tz: tzinfo | None = None) -> None:
        self._messages = deque(messages)
        self.tz = tz or ZoneInfo("Asia/Shanghai")

    def next_message(self, now: datetime) -> Message | None:
        """The next scripted message, `@now` values filled in; None at the end."""
        if not self._messages:
            return None
        message = self._messages.popleft()
        stamp = terminal_time(now, self.tz)
        changes = {key: stamp for key, value in message.fields.items() if value == NOW}
        return message.replace(**changes) if changes else message

    def close_batch(self, now: datetime) -> Message | None:
        """Nothing: a script closes its batches with its own BAT lines."""
        return None
