"""Properties of the serial codec over any byte stream a line can deliver."""

from __future__ import annotations

import operator
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from posmon.pan import mask_pan
from posmon.wire.codec import CURRENCIES, EventBuilder, Outcome, SerialCodec, encode_record
from posmon.wire.frames import (
    ACK,
    ETX,
    MAX_DATA,
    NAK,
    STX,
    FrameDecoder,
    GoodFrame,
    encode_frame,
    lrc,
)
from posmon.wire.models import (
    BatchEvent,
    DeadLetter,
    StatusEvent,
    TxnEvent,
    TxnKind,
    parse_message,
)

START = datetime(2026, 11, 25, 2, 30, tzinfo=UTC)
DIGITS = "0123456789"
ALNUM = DIGITS + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Every C0 control character but FS, and DEL: the bytes DATA must not hold.
FORBIDDEN_IN_DATA = [chr(code) for code in range(0x20) if code != 0x1C] + ["\x7f"]


def chunked(stream: bytes, cuts: list[int]) -> list[bytes]:
    """`stream` cut at the given offsets (any order, repeats allowed)."""
    bounds = [0, *sorted(cut % (len(stream) + 1) for cut in cuts), len(stream)]
    return [stream[start:end] for start, end in pairwise(bounds)]


def with_check_digit(body: str) -> str:
    """`body` followed by its Luhn check digit."""
    total = 0
    for index, char in enumerate(reversed(body)):
        value = int(char) * (2 if index % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return body + str(-total % 10)


def within_max_data(text: str) -> bytes:
    """The text as UTF-8, cut to MAX_DATA bytes on a character boundary."""
    return text.encode()[:MAX_DATA].decode("utf-8", errors="ignore").encode()


# --- 1. framing: frames among noise, in any chunks ---------------------------------------

data_text = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters=FORBIDDEN_IN_DATA), min_size=1
)
frame_data = st.one_of(
    data_text.map(within_max_data),
    # Random text stays short; repeating it reaches the 1024-byte limit often.
    st.builds(operator.mul, data_text, st.integers(min_value=2, max_value=MAX_DATA)).map(
        within_max_data
    ),
)
# Anything but STX between frames: an STX would (rightly) open a frame of its own.
noise = st.binary(max_size=64).map(lambda chunk: chunk.replace(bytes((STX,)), b""))


@settings(max_examples=1000, deadline=None)
@given(
    frames=st.lists(st.tuples(noise, frame_data), max_size=8),
    trailing_noise=noise,
    cuts=st.lists(st.integers(min_value=0), max_size=16),
)
def test_frames_among_noise_decode_exactly_whatever_the_chunking(
    frames: list[tuple[bytes, bytes]], trailing_noise: bytes, cuts: list[int]
) -> None:
    stream = b"".join(gap + encode_frame(data) for gap, data in frames) + trailing_noise
    decoder = FrameDecoder()

    decoded = [item for chunk in chunked(stream, cuts) for item in decoder.feed(chunk, 0.0)]

    assert decoded == [GoodFrame(data) for _, data in frames]
    assert decoder.counters.noise_bytes == sum(len(gap) for gap, _ in frames) + len(trailing_noise)
    assert decoder.in_frame is False


# --- valid transactions ------------------------------------------------------------------


def fixed(alphabet: str, size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet, min_size=size, max_size=size)


@st.composite
def pans(draw: st.DrawFn) -> str:
    """A Luhn-valid 13..19 digit card number."""
    length = draw(st.integers(min_value=13, max_value=19))
    return with_check_digit(draw(fixed(DIGITS, length - 1)))


txn_fields = st.fixed_dictionaries(
    {
        "SEQ": st.integers(min_value=0, max_value=65535).map(str),
        "TID": fixed(ALNUM, 8),
        "MID": fixed(ALNUM, 15),
        "KIND": st.sampled_from([kind.value for kind in TxnKind]),
        # Up to a billion yuan in fen: never 13 digits, so never a PAN's digits.
        "AMT": st.integers(min_value=0, max_value=10**11).map(str),
        "CUR": st.sampled_from(sorted(CURRENCIES)),
        "PAN": pans(),
        "RC": fixed(DIGITS + "ABCDEFGHIJKLMNOPQRSTUVWXYZ", 2),
        "RRN": fixed(ALNUM, 12),
        "STAN": fixed(DIGITS, 6),
        "BATCH": fixed(DIGITS, 6),
        "TS": st.builds(
            datetime.combine, st.dates(date(2000, 1, 1), date(2099, 12, 31)), st.times()
        ).map(lambda moment: moment.strftime("%Y%m%d%H%M%S")),
    },
    optional={
        "AUTH": fixed(ALNUM, 6),
        "ISS": fixed(DIGITS, 4),
        "ENTRY": st.sampled_from(["CHIP", "SWIPE", "CTLS", "QR", "MANUAL"]),
        "ORIG_STAN": fixed(DIGITS, 6),
    },
)


# --- 2. robustness: any bytes at all -----------------------------------------------------


def frame_around(payload: bytes) -> bytes:
    """A frame with a right LRC around any bytes, so fuzzing gets past the LRC check."""
    return bytes((STX,)) + payload + bytes((ETX, lrc(payload)))


field_text = st.text(max_size=24)
record_like = st.builds(
    lambda type_, pairs: "\x1c".join([type_, *(f"{key}={value}" for key, value in pairs)]),
    st.sampled_from(["TXN", "STS", "BAT", "HBT", "RFD", ""]) | field_text,
    st.lists(
        st.tuples(
            st.sampled_from(["SEQ", "TID", "MID", "PAN", "AMT", "TS", "LINK", "SAF"]) | field_text,
            field_text,
        ),
        max_size=16,
    ),
)
# What each outcome hands the caller to keep.
KEPT = {
    Outcome.ACCEPTED: (TxnEvent, StatusEvent, BatchEvent),
    Outcome.INVALID: DeadLetter,
    Outcome.UNKNOWN_TYPE: DeadLetter,
    Outcome.REPEAT: type(None),
    Outcome.REJECTED: type(None),
}
HEARTBEAT = encode_record("HBT", {"SEQ": "1", "TID": "10000001", "TS": "20261125103015"})
line_bytes = st.one_of(
    st.binary(max_size=1200),
    st.binary(min_size=1, max_size=200).map(frame_around),
    record_like.map(lambda text: frame_around(text.encode())),
    txn_fields.map(lambda fields: encode_record("TXN", fields)),
    st.just(HEARTBEAT),  # drawn twice, a resend
)


@settings(max_examples=1000, deadline=None)
@given(
    reads=st.lists(
        st.tuples(line_bytes, st.floats(min_value=0, max_value=3)),
        max_size=4,
    )
)
def test_any_bytes_are_answered_and_never_break_the_codec(
    reads: list[tuple[bytes, float]],
) -> None:
    codec = SerialCodec(EventBuilder(agent_id="box-1"), source="test")
    now = START

    for chunk, pause in reads:
        now += timedelta(seconds=pause)
        for received in codec.feed(chunk, now):
            assert received.reply == (NAK if received.outcome is Outcome.REJECTED else ACK)
            assert isinstance(received.message, KEPT[received.outcome])
            if received.message is not None:
                # Whatever the codec keeps can be published as it is.
                message = received.message
                assert type(parse_message(message.to_json())) is type(message)
        assert len(codec.decoder._buffer) <= MAX_DATA


# --- 3. transactions: any valid TXN, in any chunks ----------------------------------------


@settings(max_examples=1000, deadline=None)
@given(fields=txn_fields, cuts=st.lists(st.integers(min_value=0), max_size=16))
def test_any_valid_txn_is_accepted_once_with_its_pan_masked(
    fields: dict[str, str], cuts: list[int]
) -> None:
    pan = fields["PAN"]
    assume(pan not in fields["MID"])  # the only other field long enough to hold it
    codec = SerialCodec(EventBuilder(agent_id="box-1"), source="test")

    results = [
        received
        for chunk in chunked(encode_record("TXN", fields), cuts)
        for received in codec.feed(chunk, START)
    ]

    assert [received.outcome for received in results] == [Outcome.ACCEPTED]
    event = results[0].message
    assert isinstance(event, TxnEvent)
    assert event.pan_masked == mask_pan(pan)
    assert (event.tid, event.mid, event.rrn) == (fields["TID"], fields["MID"], fields["RRN"])
    assert event.amount == int(fields["AMT"])
    assert event.currency == CURRENCIES[fields["CUR"]]
    assert pan.encode() not in event.to_json()
