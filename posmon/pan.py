"""PAN protection: the one place that masks card numbers and finds them inside text.

A full card number never leaves the agent. Two tools enforce that:

- `mask_pan` turns a PAN as a terminal printed it (full, or already masked) into the form
  the wire allows: at most the first 6 and the last 4 digits visible.
- `scrub` finds card-number-shaped digit runs inside any text (log lines, free-text
  fields, dead-lettered frames) and masks them. A run is card-shaped when it has 13 to 19
  digits (single spaces or dashes between groups allowed) and passes the Luhn check.
"""

from __future__ import annotations

import re
from datetime import datetime

MASK_CHAR = "*"
VISIBLE_HEAD = 6
VISIBLE_TAIL = 4
MIN_PAN_DIGITS = 13
MAX_PAN_DIGITS = 19

# A whole run of digit groups joined by single spaces or dashes, not touching other digits.
# The whole run, whatever its length: a shorter match could end inside a grouped PAN
# ("0017 4111 1111 1111 1111") and hide it from `_mask_run`.
_CANDIDATE = re.compile(r"(?<![0-9])[0-9]+(?:[ -][0-9]+)*(?![0-9])")
_DIGIT = re.compile(r"[0-9]")
_SEPARATOR = re.compile(r"([ -])")
_MASKED_FORM = re.compile(r"^[0-9*]+$")
# Characters terminals and acquirers use for masked digits; normalised to MASK_CHAR.
_MASK_LIKE = str.maketrans({"x": MASK_CHAR, "X": MASK_CHAR, "#": MASK_CHAR})


class PanError(ValueError):
    """A value that cannot be turned into a safely masked PAN."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn (mod 10) check."""
    if not digits.isdigit() or not digits.isascii():
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def mask_pan(pan: str) -> str:
    """Mask a PAN to first 6 / last 4 digits (last 4 only below 13 digits).

    Spaces and dashes are removed, `x`, `X` and `#` count as mask characters. Raises
    `PanError` for anything that is not a PAN (letters, wrong length).
    """
    compact = pan.replace(" ", "").replace("-", "").translate(_MASK_LIKE)
    if not compact or not _MASKED_FORM.match(compact) or not compact.isascii():
        raise PanError("PAN must be digits, optionally masked with '*'")
    if not MIN_PAN_DIGITS - 1 <= len(compact) <= MAX_PAN_DIGITS:
        raise PanError(f"PAN must be 12 to 19 characters, got {len(compact)}")
    head = VISIBLE_HEAD if len(compact) >= MIN_PAN_DIGITS else 0
    return (
        compact[:head] + MASK_CHAR * (len(compact) - head - VISIBLE_TAIL) + compact[-VISIBLE_TAIL:]
    )


def visible_digits_ok(value: str) -> bool:
    """Whether a masked number shows no digit outside the first 6 and the last 4.

    Numbers shorter than 13 characters (account numbers, short PANs) may show only their
    last 4 digits: a head of 6 plus a tail of 4 would reveal nearly all of them.
    """
    head = VISIBLE_HEAD if len(value) >= MIN_PAN_DIGITS else 0
    tail_start = max(head, len(value) - VISIBLE_TAIL)
    return _DIGIT.search(value, head, tail_start) is None


def _looks_like_timestamp(digits: str) -> bool:
    # Terminal timestamps (YYYYMMDDhhmmss) are 14 digits and pass Luhn one time in ten;
    # masking them would only garble logs. No 14-digit card range starts with 19 or 20.
    if len(digits) != 14 or digits[:2] not in ("19", "20"):
        return False
    try:
        datetime.strptime(digits, "%Y%m%d%H%M%S")  # noqa: DTZ007 - shape check only
    except ValueError:
        return False
    return True


def _is_pan(digits: str) -> bool:
    return (
        MIN_PAN_DIGITS <= len(digits) <= MAX_PAN_DIGITS
        and luhn_valid(digits)
        and not _looks_like_timestamp(digits)
    )


def _mask_run(run: str) -> str:
    # A run of digit groups may hold a PAN next to other numbers ("SEQ 12 4111 1111 ...").
    # PANs start and end on group boundaries, so try every span of whole groups, leftmost
    # then longest first, and go on to the right of a masked one.
    parts = _SEPARATOR.split(run)
    groups, seps = parts[0::2], parts[1::2]
    out: list[str] = []
    start = 0
    while start < len(groups):
        end = _pan_end(groups, start)
        if end is None:
            out.append(groups[start])
            end = start + 1
        else:
            out.append(mask_pan("".join(groups[start:end])))
        if end < len(groups):
            out.append(seps[end - 1])
        start = end
    return "".join(out)


def _pan_end(groups: list[str], start: int) -> int | None:
    """Where the longest PAN made of whole groups from `groups[start]` on ends, if any."""
    ends = []
    digits = 0
    for end in range(start + 1, len(groups) + 1):
        digits += len(groups[end - 1])
        if digits > MAX_PAN_DIGITS:
            break
        if digits >= MIN_PAN_DIGITS:
            ends.append(end)
    for end in reversed(ends):
        if _is_pan("".join(groups[start:end])):
            return end
    return None


def scrub(text: str) -> str:
    """Return `text` with every Luhn-valid 13-19 digit run masked to first 6 / last 4."""
    if len(text) < MIN_PAN_DIGITS:
        return text
    # Masking one run can leave its last 4 digits next to the rest of a real PAN that
    # overlapped it ("10710113146 3117 0001 0000 7"); pass again until nothing changes.
    # Every pass that changes the text masks digits, so this ends.
    while True:
        scrubbed = _CANDIDATE.sub(lambda match: _mask_run(match.group(0)), text)
        if scrubbed == text:
            return text
        text = scrubbed
