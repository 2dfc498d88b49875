"""Sans-IO ISO 8583 decoding for the host-link tap: bytes in, masked messages out.

`Splitter` cuts a TCP byte stream (as it arrives: partial messages, several in one read)
into whole messages by their length prefix. `decode` turns one message into a `Message`
with the card number masked and the card data the tap must never keep already gone. Neither
touches a socket or a clock; the relay feeds them copies of what it forwarded.

Card data rules, enforced here where the bytes become values:
- field 2 (PAN) is masked to first 6 / last 4 (`posmon.pan.mask_pan`) before the message
  exists; a field 2 that is not a card number fails the decode, without its digits;
- fields 35, 36 (tracks), 52 (PIN block), 55 (chip data) and 64 (MAC) are deleted from
  pyiso8583's result at once, and its error (which holds the raw message and the fields
  decoded so far) is neither chained to ours nor kept as its context.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import iso8583

from agent.tap.spec import Spec
from posmon.pan import PanError, mask_pan

# Track 2 separates the PAN from the rest with '=', which BCD carries as the nibble D.
_TRACK2_SEPARATORS = ("D", "=")


class TapDecodeError(ValueError):
    """A message that does not decode with the specification; the reason holds no card data."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded ISO 8583 message, card data masked or dropped."""

    mti: str
    tpdu: str = field(repr=False)
    header: str = field(repr=False)
    # Field number -> decoded text (BCD and binary fields as hex digits). Field 2, when
    # present, is already masked; the dropped fields are absent.
    fields: MappingProxyType[str, str]
    pan_masked: str | None = None

    def get(self, number: str) -> str | None:
        """A field's text, or None when the message does not carry it."""
        return self.fields.get(number)


class Decoder:
    """Decodes messages of one specification."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self._library_spec = spec.pyiso8583()

    def decode(self, data: bytes) -> Message:
        """Decode one message (without its length prefix); raises only `TapDecodeError`."""
        return _decode(data, self.spec, self._library_spec)


def encode(mti: str, fields: dict[str, str], spec: Spec, *, tpdu: str, header: str) -> bytes:
    """One message with its length prefix, as a terminal or host would send it.

    For simulators and tests: `fields` are pyiso8583 values (hex digits for BCD and binary
    fields), `tpdu` and `header` hex. Raises `TapDecodeError` for values the spec refuses.
    """
    document = {"h": tpdu + header, "t": mti, **fields}
    try:
        body, _encoded = iso8583.encode(document, spec.pyiso8583())
    except iso8583.EncodeError as exc:
        raise TapDecodeError(f"cannot encode: {exc}") from None
    return len(body).to_bytes(spec.framing.length_bytes, "big") + bytes(body)


def _decode(data: bytes, spec: Spec, library_spec: dict[str, dict[str, Any]]) -> Message:
    decoded, reason = _library_decode(data, spec, library_spec)
    if decoded is None:
        # Raised outside any `except`: no __context__ leads back to the library's error.
        raise TapDecodeError(reason)
    track2 = decoded.get("35")
    for number in spec.dropped:
        decoded.pop(number, None)
    pan_masked = _pan(decoded.pop("2", None), track2)
    del track2
    head = decoded.pop("h", "")
    split = spec.framing.tpdu_bytes * 2
    mti = decoded.pop("t", "")
    decoded.pop("p", None)
    decoded.pop("1", None)
    fields = dict(decoded)
    if pan_masked is not None:
        fields["2"] = pan_masked
    return Message(
        mti=mti,
        tpdu=head[:split],
        header=head[split:],
        fields=MappingProxyType(fields),
        pan_masked=pan_masked,
    )


def _library_decode(
    data: bytes, spec: Spec, library_spec: dict[str, dict[str, Any]]
) -> tuple[dict[str, str] | None, str]:
    """pyiso8583's decoded fields, or None and why not.

    pyiso8583's DecodeError holds the raw message and the fields decoded so far (track
    data included). It is turned into a reason here and goes no further: neither chained
    nor kept as the context of the tap's own error, so no traceback can show it.
    """
    try:
        decoded, _encoded = iso8583.decode(data, library_spec)
    except iso8583.DecodeError as exc:
        return None, f"{exc.msg} (field {exc.field}, byte {exc.pos})"
    except KeyError as exc:
        return None, f"field {exc.args[0]} is not in specification {spec.name}"
    except (ValueError, TypeError, IndexError, OverflowError):
        # pyiso8583 checks its input well, but a hostile message must never crash the tap.
        return None, "the message does not decode"
    return decoded, ""


def _pan(field2: str | None, track2: str | None) -> str | None:
    """The masked PAN from field 2, or from track 2 when a swipe sent only the track."""
    if field2 is not None:
        with contextlib.suppress(PanError):
            return mask_pan(field2)
        raise TapDecodeError("field 2 is not a card number")
    if track2 is None:
        return None
    head = track2.upper()
    for separator in _TRACK2_SEPARATORS:
        head = head.split(separator, 1)[0]
    try:
        return mask_pan(head)
    except PanError:
        # A track the layout does not describe: no PAN, and nothing of it kept.
        return None


class Splitter:
    """Cuts a byte stream into messages by their 2-byte big-endian length prefix.

    A message longer than `max_message` is skipped, not buffered: its bytes are counted
    and dropped as they arrive, so a hostile or broken peer cannot grow memory, and the
    stream stays in step because the prefix still says where the next message starts.
    A zero length (some hosts' keep-alive) is counted and skipped.
    """

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._buffer = bytearray()
        self._skip = 0
        self.oversized = 0
        self.empty = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Every message completed by `data`, in order (without their length prefixes)."""
        messages: list[bytes] = []
        view = memoryview(data)
        if self._skip:
            skipped = min(self._skip, len(view))
            self._skip -= skipped
            view = view[skipped:]
        self._buffer += view
        while len(self._buffer) >= 2:
            length = int.from_bytes(self._buffer[:2], "big")
            if length == 0:
                self.empty += 1
                del self._buffer[:2]
                continue
            if length > self.max_message:
                self.oversized += 1
                available = len(self._buffer) - 2
                skipped = min(length, available)
                del self._buffer[: 2 + skipped]
                self._skip = length - skipped
                if self._skip:
                    return messages
                continue
            if len(self._buffer) < 2 + length:
                break
            messages.append(bytes(self._buffer[2 : 2 + length]))
            del self._buffer[: 2 + length]
        return messages

    @property
    def pending(self) -> int:
        """Bytes held for a message not complete yet."""
        return len(self._buffer)
