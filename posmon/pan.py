"""PAN protection: the one place that masks card numbers and finds them inside text.

A full card number never leaves the agent. Two tools enforce that:

- `mask_pan` turns a PAN as a terminal printed it (full, or already masked) into the form
  the wire allows: at most the first 6 and the last 4 digits visible.
- `scrub` finds card-number-shaped digit runs inside any text (log lines, free-text
  fields, dead-lettered frames) and masks them. A run is card-shaped when it has 13 to 19
  digits (groups joined by up to three spaces, dashes or dots, in any mix) and passes the
  Luhn check, or has 16 to 19 digits in UnionPay's range (62...), where not every card
  carries a Luhn check digit. Letters around a run do not hide it:
  `card6222021234567890123closed` is masked too.
- `scrub_tree` does the same to every string of a JSON-like value, except the values of
  keys that name typed identifiers (`IDENTIFIER_KEYS`): a merchant id or a settlement id
  is not a card number, and masking it in one output but not another would make the two
  disagree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

MASK_CHAR = "*"
VISIBLE_HEAD = 6
VISIBLE_TAIL = 4
MIN_PAN_DIGITS = 13
MAX_PAN_DIGITS = 19

# A whole run of digit groups joined by short runs of separators, not touching other digits.
# The whole run, whatever its length: a shorter match could end inside a grouped PAN
# ("0017 4111 1111 1111 1111") and hide it from `_mask_run`. People write card numbers as
# "4111 1111", "4111-1111", "4111.1111" and "4111 - 1111"; up to three separator
# characters between groups cover all of these.
_CANDIDATE = re.compile(r"(?<![0-9])[0-9]+(?:[ .-]{1,3}[0-9]+)*(?![0-9])")
_DIGIT = re.compile(r"[0-9]")
# At least 13 digits joined as `_CANDIDATE` joins them: what any card number needs.
_ENOUGH_DIGITS = re.compile(r"[0-9](?:[ .-]{0,3}[0-9]){12}")
_SEPARATOR = re.compile(r"([ .-]{1,3})")
# Not a card number, whatever its digits: identifiers whose format the models validate.
IDENTIFIER_KEYS = frozenset(
    {
        "tid",
        "mid",
        "rrn",
        "stan",
        "batch",
        "orig_stan",
        "orig_rrn",
        "event_id",
        "settlement_id",
        "original_settlement_id",
        "alert_id",
        "case_id",
        "group_id",
        "silence_id",
        "fingerprint",
        "bank_code",
        "issuer",
        "auth_code",
        "agent_id",
        "terminal_time",
        "observed_at",
        "settled_at",
        "remittance_settlement_id",
        "transaction_id",
        "collector_id",
    }
)
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

    Spaces, dashes and dots are removed, `x`, `X` and `#` count as mask characters. Raises
    `PanError` for anything that is not a PAN (letters, wrong length).
    """
    compact = pan.replace(" ", "").replace("-", "").replace(".", "").translate(_MASK_LIKE)
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
    if not MIN_PAN_DIGITS <= len(digits) <= MAX_PAN_DIGITS:
        return False
    if len(digits) >= 16 and digits.startswith("62"):
        # China UnionPay's range: not every card issued in it carries a Luhn check digit,
        # so a 16-19 digit run starting with 62 counts as a card number whatever its sum.
        return True
    return luhn_valid(digits) and not _looks_like_timestamp(digits)


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
    if len(text) < MIN_PAN_DIGITS or _ENOUGH_DIGITS.search(text) is None:
        # Most text holds no run of 13 digits at all: one search in C, no Python per run.
        return text
    # Masking one run can leave its last 4 digits next to the rest of a real PAN that
    # overlapped it ("10710113146 3117 0001 0000 7"); pass again until nothing changes.
    # Every pass that changes the text masks digits, so this ends.
    while True:
        scrubbed = _CANDIDATE.sub(lambda match: _mask_run(match.group(0)), text)
        if scrubbed == text:
            return text
        text = scrubbed


def scrub_tree(value: Any, key: str | None = None) -> Any:
    """`value` (JSON-like: dicts, lists, strings, numbers) with every string scrubbed, keys
    included, except the values of `IDENTIFIER_KEYS`."""
    if isinstance(value, str):
        return value if key in IDENTIFIER_KEYS else scrub(value)
    if isinstance(value, Mapping):
        return {scrub(str(name)): scrub_tree(item, str(name)) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_tree(item, key) for item in value]
    return value
