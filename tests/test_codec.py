"""The serial codec as a terminal and the MQTT side see it: frames in, ACK/NAK and events out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from posmon.wire.codec import EventBuilder, Outcome, Received, SerialCodec, encode_record
from posmon.wire.frames import ACK, ETX, NAK, STX, encode_frame, lrc
from posmon.wire.models import (
    BatchEvent,
    BatchResult,
    DeadLetter,
    EntryMode,
    Network,
    StatusEvent,
    TxnEvent,
    TxnKind,
    parse_message,
)

# The example frame of CONTRACT §1, with FS shown as `|`.
CONTRACT_TXN = (
    "TXN|SEQ=17|TID=10000001|MID=898100012340001|KIND=SALE|AMT=12800|CUR=156"
    "|PAN=6222021234567890123|RC=00|RRN=402511000017|STAN=000017|BATCH=000042"
    "|TS=20261125103015|AUTH=A1B2C3|ISS=0102|ENTRY=CHIP"
)
FULL_PAN = "6222021234567890123"
MASKED_PAN = "622202*********0123"
NOW = datetime(2026, 11, 25, 2, 30, 16, tzinfo=UTC)
LONDON = ZoneInfo("Europe/London")


def data(text: str) -> bytes:
    """Frame DATA written with `|` for FS, as the contract shows it."""
    return text.replace("|", "\x1c").encode()


def frame(text: str) -> bytes:
    return encode_frame(data(text))


def raw_frame(payload: bytes) -> bytes:
    """A frame with a right LRC around any bytes, even ones `encode_frame` refuses."""
    return bytes((STX,)) + payload + bytes((ETX, lrc(payload)))


def txn_text(**changes: str | None) -> str:
    """The contract's TXN with some keys changed, added, or (given `None`) removed."""
    type_, *pairs = CONTRACT_TXN.split("|")
    fields = dict(pair.split("=", 1) for pair in pairs)
    for key, value in changes.items():
        if value is None:
            del fields[key]
        else:
            fields[key] = value
    return "|".join([type_, *(f"{key}={value}" for key, value in fields.items())])


def new_codec(builder: EventBuilder | None = None) -> SerialCodec:
    return SerialCodec(builder or EventBuilder(agent_id="box-1"), source="test")


def feed_one(codec: SerialCodec, wire: bytes, now: datetime = NOW) -> Received:
    results = codec.feed(wire, now)
    assert len(results) == 1
    return results[0]


def accepted_txn(text: str, builder: EventBuilder | None = None) -> TxnEvent:
    received = feed_one(new_codec(builder), frame(text))
    assert received.outcome is Outcome.ACCEPTED
    assert isinstance(received.message, TxnEvent)
    return received.message


# --- a good transaction -----------------------------------------------------------------


def test_contract_example_is_acked_and_becomes_a_txn_event() -> None:
    codec = new_codec()

    received = feed_one(codec, frame(CONTRACT_TXN))

    assert received.outcome is Outcome.ACCEPTED
    assert received.reply == ACK
    event = received.message
    assert isinstance(event, TxnEvent)
    assert event.agent_id == "box-1"
    assert event.tid == "10000001"
    assert event.mid == "898100012340001"
    assert event.kind is TxnKind.SALE
    assert event.amount == 12800
    assert event.currency == "CNY"
    assert event.pan_masked == MASKED_PAN
    assert event.rc == "00"
    assert event.approved is True
    assert event.rrn == "402511000017"
    assert event.stan == "000017"
    assert event.batch == "000042"
    assert event.auth_code == "A1B2C3"
    assert event.issuer == "0102"
    assert event.entry_mode is EntryMode.CHIP
    assert event.observed_at == NOW
    assert event.extra is None
    assert codec.counters.accepted == 1


def test_full_pan_never_reaches_the_published_json() -> None:
    event = accepted_txn(CONTRACT_TXN)

    payload = event.to_json()

    assert FULL_PAN.encode() not in payload
    assert parse_message(payload) == event


@pytest.mark.parametrize(
    ("rc", "approved"),
    [("00", True), ("10", True), ("Y1", True), ("05", False), ("51", False), ("Z3", False)],
)
def test_approved_follows_the_response_code(rc: str, approved: bool) -> None:
    assert accepted_txn(txn_text(RC=rc)).approved is approved


def test_terminal_time_is_read_in_shanghai_time_by_default() -> None:
    event = accepted_txn(CONTRACT_TXN)

    assert event.terminal_time == datetime(
        2026, 11, 25, 10, 30, 15, tzinfo=ZoneInfo("Asia/Shanghai")
    )
    assert event.terminal_time.utcoffset() == timedelta(hours=8)
    assert '"terminal_time":"2026-11-25T10:30:15+08:00"' in event.to_json().decode()


@pytest.mark.parametrize(
    ("ts", "terminal_time", "offset"),
    [
        ("20261125103015", datetime(2026, 11, 25, 10, 30, 15, tzinfo=LONDON), timedelta(0)),
        ("20260715103015", datetime(2026, 7, 15, 10, 30, 15, tzinfo=LONDON), timedelta(hours=1)),
    ],
    ids=["winter", "summer"],
)
def test_terminal_time_follows_the_configured_zone(
    ts: str, terminal_time: datetime, offset: timedelta
) -> None:
    builder = EventBuilder(agent_id="box-1", tz=LONDON)

    event = accepted_txn(txn_text(TS=ts), builder)

    assert event.terminal_time == terminal_time
    assert event.terminal_time.utcoffset() == offset


@pytest.mark.parametrize(("cur", "currency"), [("156", "CNY"), ("344", "HKD"), ("840", "USD")])
def test_numeric_currency_becomes_alpha(cur: str, currency: str) -> None:
    assert accepted_txn(txn_text(CUR=cur)).currency == currency


def test_merchant_id_that_happens_to_pass_luhn_is_kept_as_it_is() -> None:
    # One numeric 15-digit MID in ten passes the Luhn check, like an Amex card number.
    event = accepted_txn(txn_text(MID="898100012340009"))

    assert event.mid == "898100012340009"


def test_unknown_keys_are_carried_in_extra() -> None:
    event = accepted_txn(txn_text(OPER="01", SHIFT="2"))

    assert event.extra == {"OPER": "01", "SHIFT": "2"}


def test_each_accepted_frame_gets_its_own_event_id() -> None:
    codec = new_codec()

    first = feed_one(codec, frame(txn_text(SEQ="17")))
    second = feed_one(codec, frame(txn_text(SEQ="18", STAN="000018")))

    assert isinstance(first.message, TxnEvent)
    assert isinstance(second.message, TxnEvent)
    assert first.message.event_id != second.message.event_id


# --- status, heartbeat, batch -----------------------------------------------------------


def test_heartbeat_repeats_the_last_status_of_its_terminal() -> None:
    codec = new_codec()
    status = feed_one(codec, frame("STS|SEQ=1|TID=10000001|LINK=DOWN|NET=4G|SAF=3|RSSI=-91"))
    assert isinstance(status.message, StatusEvent)
    assert status.message.heartbeat_only is None

    heartbeat = feed_one(codec, frame("HBT|SEQ=2|TID=10000001|TS=20261125103100"))

    assert heartbeat.outcome is Outcome.ACCEPTED
    assert heartbeat.reply == ACK
    event = heartbeat.message
    assert isinstance(event, StatusEvent)
    assert event.heartbeat_only is True
    assert event.link_up is False
    assert event.network is Network.G4
    assert event.saf_pending == 3
    assert event.serial_ok is True
    assert event.rssi_dbm is None


def test_heartbeat_before_any_status_reports_link_up_and_nothing_pending() -> None:
    received = feed_one(new_codec(), frame("HBT|SEQ=1|TID=10000001|TS=20261125103100"))

    event = received.message
    assert isinstance(event, StatusEvent)
    assert event.heartbeat_only is True
    assert event.link_up is True
    assert event.network is Network.NONE
    assert event.saf_pending == 0


def test_batch_close_becomes_a_batch_event_in_the_agents_currency() -> None:
    received = feed_one(
        new_codec(),
        frame(
            "BAT|SEQ=9|TID=10000001|MID=898100012340001|BATCH=000042|COUNT=37"
            "|TOTAL=1234500|RESULT=UNBALANCED|TS=20261125230005"
        ),
    )

    event = received.message
    assert isinstance(event, BatchEvent)
    assert event.result is BatchResult.UNBALANCED
    assert event.count == 37
    assert event.total == 1234500
    assert event.currency == "CNY"


# --- frames the link layer refuses: NAK -------------------------------------------------


def test_wrong_lrc_is_naked_and_counted() -> None:
    codec = new_codec()
    good = frame(CONTRACT_TXN)

    received = feed_one(codec, good[:-1] + bytes((good[-1] ^ 0x01,)))

    assert received.outcome is Outcome.REJECTED
    assert received.reply == NAK
    assert received.message is None
    assert received.reason == "lrc"
    assert codec.counters.rejected == 1
    assert codec.counters.by_reason == {"rejected:lrc": 1}
    assert codec.decoder.counters.bad_frames == 1


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (data(txn_text(NOTE="line1\nline2")), "control_byte"),
        (data(txn_text(NOTE="del\x7f")), "control_byte"),
        (b"x" * 1025, "too_long"),
        (b"", "empty"),
        (b"TXN\x1cSEQ=1\x1cNOTE=\xff\xfe", "not_utf8"),
        (b"TXN\x1cNOTE=\xe4\xb8", "not_utf8"),
    ],
    ids=["newline", "delete", "1025 bytes", "empty", "latin-1 bytes", "cut-off character"],
)
def test_frame_with_bad_data_is_naked(payload: bytes, reason: str) -> None:
    codec = new_codec()

    received = feed_one(codec, raw_frame(payload))

    assert received.outcome is Outcome.REJECTED
    assert received.reply == NAK
    assert received.reason == reason
    assert codec.counters.by_reason == {f"rejected:{reason}": 1}


def test_frame_of_exactly_1024_bytes_is_taken() -> None:
    # An extra value holds at most 256 characters: spread the padding over four keys.
    keys = ["NOTE1", "NOTE2", "NOTE3", "NOTE4"]
    room = 1024 - len(data(txn_text(**dict.fromkeys(keys, ""))))
    text = txn_text(**{key: "x" * (room // 4 + (n < room % 4)) for n, key in enumerate(keys)})
    assert len(data(text)) == 1024

    received = feed_one(new_codec(), frame(text))

    assert received.outcome is Outcome.ACCEPTED


def test_too_long_frame_does_not_swallow_the_next_one() -> None:
    codec = new_codec()
    too_long = raw_frame(b"x" * 2000)

    results = codec.feed(too_long + frame(CONTRACT_TXN), NOW)

    assert [r.outcome for r in results] == [Outcome.REJECTED, Outcome.ACCEPTED]
    assert results[0].reason == "too_long"


# --- line noise, resynchronisation, timeouts --------------------------------------------


def test_noise_outside_frames_is_discarded_and_counted() -> None:
    codec = new_codec()
    noise_before, noise_after = b"\x00\xff+++ATZ\r\n", b"\x03\x06\x15"

    results = codec.feed(noise_before + frame(CONTRACT_TXN) + noise_after, NOW)

    assert [r.outcome for r in results] == [Outcome.ACCEPTED]
    assert codec.decoder.counters.noise_bytes == len(noise_before) + len(noise_after)


def test_stx_inside_a_frame_starts_a_new_one() -> None:
    codec = new_codec()
    cut_short = frame(CONTRACT_TXN)[:40]

    results = codec.feed(cut_short + frame(CONTRACT_TXN), NOW)

    assert [r.outcome for r in results] == [Outcome.ACCEPTED]
    assert results[0].reply == ACK
    assert codec.decoder.counters.resyncs == 1


def test_frame_split_across_reads_within_2_s_is_decoded() -> None:
    codec = new_codec()
    whole = frame(CONTRACT_TXN)

    assert codec.feed(whole[:40], NOW) == []
    results = codec.feed(whole[40:], NOW + timedelta(seconds=1.5))

    assert [r.outcome for r in results] == [Outcome.ACCEPTED]


def test_frame_unfinished_after_2_s_is_dropped_and_the_next_one_decodes() -> None:
    codec = new_codec()
    whole = frame(CONTRACT_TXN)
    codec.feed(whole[:40], NOW)

    # The rest of the stale frame is noise now; the terminal resends it whole.
    results = codec.feed(whole[40:] + whole, NOW + timedelta(seconds=3))

    assert [r.outcome for r in results] == [Outcome.ACCEPTED]
    assert codec.decoder.counters.timeouts == 1
    assert codec.decoder.counters.bad_frames == 0


def test_expire_drops_a_stale_frame_on_a_quiet_line() -> None:
    codec = new_codec()
    codec.feed(frame(CONTRACT_TXN)[:40], NOW)

    assert codec.expire(NOW + timedelta(seconds=1)) is False
    assert codec.expire(NOW + timedelta(seconds=3)) is True
    assert codec.decoder.in_frame is False


# --- repeats ----------------------------------------------------------------------------


def test_resent_frame_is_acked_again_but_not_published_twice() -> None:
    codec = new_codec()
    codec.feed(frame(CONTRACT_TXN), NOW)

    again = feed_one(codec, frame(CONTRACT_TXN), NOW + timedelta(seconds=1))

    assert again.outcome is Outcome.REPEAT
    assert again.reply == ACK
    assert again.message is None
    assert (again.tid, again.seq) == ("10000001", 17)
    assert codec.counters.accepted == 1
    assert codec.counters.repeats == 1


def test_same_seq_with_other_data_is_a_new_frame() -> None:
    codec = new_codec()
    codec.feed(frame(CONTRACT_TXN), NOW)

    # SEQ wraps at 65535, so a later transaction can reuse it.
    received = feed_one(codec, frame(txn_text(STAN="000018", RRN="402511000018")))

    assert received.outcome is Outcome.ACCEPTED


def test_same_frame_from_another_terminal_is_not_a_repeat() -> None:
    codec = new_codec()
    codec.feed(frame(CONTRACT_TXN), NOW)

    received = feed_one(codec, frame(txn_text(TID="10000002")))

    assert received.outcome is Outcome.ACCEPTED


def test_forget_makes_the_resent_frame_count_as_new() -> None:
    codec = new_codec()
    first = feed_one(codec, frame(CONTRACT_TXN))

    codec.forget(first)  # the caller could not keep it, so it did not ACK
    resent = feed_one(codec, frame(CONTRACT_TXN), NOW + timedelta(seconds=1))

    assert resent.outcome is Outcome.ACCEPTED
    assert isinstance(resent.message, TxnEvent)
    assert resent.message.pan_masked == MASKED_PAN
    assert codec.counters.repeats == 0


# --- intact frames with bad content: ACK and dead letter --------------------------------


def test_missing_required_keys_are_acked_and_dead_lettered() -> None:
    codec = new_codec()

    received = feed_one(codec, frame(txn_text(MID=None, RRN=None)))

    assert received.outcome is Outcome.INVALID
    assert received.reply == ACK
    letter = received.message
    assert isinstance(letter, DeadLetter)
    assert "MID" in letter.reason
    assert "RRN" in letter.reason
    assert letter.source == "test"
    assert letter.agent_id == "box-1"
    assert letter.tid == "10000001"
    assert letter.observed_at == NOW
    assert MASKED_PAN in letter.payload
    assert FULL_PAN not in letter.payload
    assert FULL_PAN.encode() not in letter.to_json()
    assert codec.counters.invalid == 1


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("AMT", "128.00"),
        ("AMT", "-100"),
        ("CUR", "999"),
        ("TID", "1000001"),
        ("MID", "89810001234000"),
        ("RRN", "40251100001"),
        ("STAN", "17"),
        ("KIND", "PURCHASE"),
        ("TS", "20261125"),
        ("TS", "20261131103015"),
        ("ENTRY", "NFC"),
        ("SEQ", "65536"),
        ("SEQ", "x17"),
        ("PAN", "6222-02AB-CDEF"),
    ],
)
def test_bad_value_is_acked_and_dead_lettered_naming_the_key(key: str, value: str) -> None:
    received = feed_one(new_codec(), frame(txn_text(**{key: value})))

    assert received.outcome is Outcome.INVALID
    assert received.reply == ACK
    assert isinstance(received.message, DeadLetter)
    assert key in received.message.reason


def test_luhn_valid_pan_in_an_unknown_key_of_a_dead_letter_is_masked() -> None:
    received = feed_one(new_codec(), frame(txn_text(MID=None, NOTE="4111111111111111")))

    assert isinstance(received.message, DeadLetter)
    assert "NOTE=411111******1111" in received.message.payload
    assert b"4111111111111111" not in received.message.to_json()


def test_unknown_type_is_acked_counted_and_dead_lettered() -> None:
    codec = new_codec()

    received = feed_one(codec, frame("RFD|SEQ=5|TID=10000001|AMT=100"))

    assert received.outcome is Outcome.UNKNOWN_TYPE
    assert received.reply == ACK
    letter = received.message
    assert isinstance(letter, DeadLetter)
    assert "RFD" in letter.reason
    assert letter.payload == "RFD\x1cSEQ=5\x1cTID=10000001\x1cAMT=100"
    assert codec.counters.unknown_type == 1


@pytest.mark.parametrize(
    "payload",
    [
        b"A" * 1024,
        b"TXN" + b"\x1c" * 1021,
        b"TXN" + b"\x1cA=" * 340,
        data("HBT|SEQ=1|TID=终端终端终端终端|TS=20261125103015"),
        data("HBT|SEQ=²|TID=10000001|TS=20261125103015"),
    ],
    ids=[
        "1024-byte type",
        "1021 empty fields",
        "340 repeated keys",
        "non-ASCII TID",
        "superscript SEQ",
    ],
)
def test_garbled_but_intact_frame_makes_a_publishable_dead_letter(payload: bytes) -> None:
    received = feed_one(new_codec(), encode_frame(payload))

    assert received.outcome in (Outcome.INVALID, Outcome.UNKNOWN_TYPE)
    assert received.reply == ACK
    letter = received.message
    assert isinstance(letter, DeadLetter)
    assert parse_message(letter.to_json()) == letter


def test_frames_are_encoded_the_way_the_codec_reads_them() -> None:
    wire = encode_record("HBT", {"SEQ": "3", "TID": "10000001", "TS": "20261125103100"})

    assert wire[:-1] == b"\x02HBT\x1cSEQ=3\x1cTID=10000001\x1cTS=20261125103100\x03"
    assert wire[-1] == lrc(wire[1:-2])
    assert feed_one(new_codec(), wire).outcome is Outcome.ACCEPTED
