"""The host-link tap's ISO 8583 codec: framing, masking, dropping, and only its own errors."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.tap.codec import Decoder, Splitter, TapDecodeError, encode
from agent.tap.spec import CUP_POS_PATH, SpecError, cup_pos, load_spec

SPEC = cup_pos()
DECODER = Decoder(SPEC)
PAN = "6222021234567890123"
TRACK2 = "6222021234567890123D49121010000000000"
PIN_BLOCK = "0123456789ABCDEF"
ICC = "9F2608AABBCCDDEEFF0011"
MAC = "0011223344556677"
TPDU, HEADER = "6000030000", "603100000000"
# What of the card data could show in any text: the PAN's hidden digits and every
# dropped field's value.
SECRETS = [PAN[6:-4], TRACK2, TRACK2.lower(), PIN_BLOCK, PIN_BLOCK.lower(), ICC, MAC]


def sale_request(**changes: str) -> bytes:
    fields = {
        "2": PAN,
        "3": "000000",
        "4": "000000012800",
        "11": "000017",
        "22": "051",
        "25": "00",
        "35": TRACK2,
        "41": "10000001",
        "42": "898100012340001",
        "49": "156",
        "52": PIN_BLOCK,
        "55": ICC,
        "60": "22000042000",
        "64": MAC,
    }
    fields.update(changes)
    return encode("0200", {k: v for k, v in fields.items() if v}, SPEC, tpdu=TPDU, header=HEADER)


def assert_no_card_data(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def test_a_sale_decodes_with_the_pan_masked_and_card_data_gone() -> None:
    message = DECODER.decode(sale_request()[2:])
    assert message.mti == "0200"
    assert message.tpdu == TPDU
    assert message.header == HEADER
    assert message.pan_masked == "622202*********0123"
    assert message.get("2") == "622202*********0123"
    assert message.get("4") == "000000012800"
    assert message.get("41") == "10000001"
    assert message.get("60") == "22000042000"
    for dropped in ("35", "36", "52", "55", "64"):
        assert message.get(dropped) is None
    assert_no_card_data(repr(message))
    assert_no_card_data(str(dict(message.fields)))


def test_a_swipe_without_field_2_takes_its_masked_pan_from_track_2() -> None:
    message = DECODER.decode(sale_request(**{"2": ""})[2:])
    assert message.pan_masked == "622202*********0123"
    assert message.get("35") is None


def test_a_field_2_that_is_not_a_card_number_fails_without_its_digits() -> None:
    with pytest.raises(TapDecodeError) as caught:
        DECODER.decode(sale_request(**{"2": "12345"})[2:])
    assert "12345" not in str(caught.value)
    assert caught.value.__context__ is None


def test_a_truncated_message_raises_the_tap_error_without_card_data() -> None:
    data = sale_request()[2:]
    for cut in range(len(data)):
        with pytest.raises(TapDecodeError) as caught:
            DECODER.decode(data[:cut])
        # Nothing leads back to pyiso8583's error, which holds the raw message.
        assert caught.value.__cause__ is None
        assert caught.value.__context__ is None
        assert_no_card_data(str(caught.value))


def test_a_field_the_spec_does_not_describe_is_a_tap_error() -> None:
    data = bytearray(sale_request()[2:])
    bitmap = 11 + 2  # after TPDU + header and the MTI
    data[bitmap] |= 0x08  # field 5: not in the CUP POS layout
    with pytest.raises(TapDecodeError, match="field 5 is not in specification cup-pos"):
        DECODER.decode(bytes(data))


# --- splitting the stream ---------------------------------------------------------------


def test_messages_split_the_same_whatever_the_reads() -> None:
    one, two = sale_request(), sale_request(**{"11": "000018"})
    stream = one + two + one
    whole = Splitter(4096).feed(stream)
    assert whole == [one[2:], two[2:], one[2:]]
    byte_by_byte = Splitter(4096)
    got = [message for i in range(len(stream)) for message in byte_by_byte.feed(stream[i : i + 1])]
    assert got == whole
    assert byte_by_byte.pending == 0


def test_an_oversized_message_is_skipped_without_buffering_and_the_stream_stays_in_step() -> None:
    splitter = Splitter(256)
    big = (5000).to_bytes(2, "big") + b"\xaa" * 5000
    good = sale_request()
    assert len(good) - 2 <= 256
    assert splitter.feed(big[:3000]) == []
    assert splitter.pending == 0  # the skipped bytes are not held
    assert splitter.feed(big[3000:] + good) == [good[2:]]
    assert splitter.oversized == 1
    assert splitter.feed(b"\x00\x00" + good) == [good[2:]]
    assert splitter.empty == 1


@given(st.lists(st.integers(min_value=0, max_value=400), max_size=20))
def test_any_chunking_gives_the_same_messages(cuts: list[int]) -> None:
    stream = sale_request() + (300).to_bytes(2, "big") + b"x" * 300 + sale_request()
    splitter = Splitter(200)
    got: list[bytes] = []
    start = 0
    for cut in [*sorted(cuts), len(stream)]:
        got += splitter.feed(stream[start:cut] if cut >= start else b"")
        start = max(start, cut)
    assert got == [sale_request()[2:], sale_request()[2:]]
    assert splitter.oversized == 1


# --- fuzzing: only TapDecodeError, never card data ------------------------------------


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.booleans(), st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_the_tap_error(framed: bool, data: bytes) -> None:
    # Half the cases start with a good TPDU, header and MTI, so the fuzzing reaches the
    # bitmap and the fields.
    head = bytes.fromhex(TPDU + HEADER + "0200") if framed else b""
    with contextlib.suppress(TapDecodeError):
        DECODER.decode(head + data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.data())
def test_damaged_sales_raise_only_the_tap_error_and_never_show_card_data(
    data: st.DataObject,
) -> None:
    message = bytearray(sale_request()[2:])
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        index = data.draw(st.integers(min_value=0, max_value=len(message) - 1))
        message[index] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(message)))
    try:
        decoded = DECODER.decode(bytes(message[:cut] if data.draw(st.booleans()) else message))
    except TapDecodeError as exc:
        assert exc.__cause__ is None
        assert exc.__context__ is None
        assert_no_card_data(str(exc))
    else:
        for dropped in ("35", "36", "52", "55", "64"):
            assert decoded.get(dropped) is None
        pan = decoded.get("2")
        assert pan is None or "*" in pan


# --- the specification is data -----------------------------------------------------------


def test_another_acquirers_variant_is_a_toml_file(tmp_path: Path) -> None:
    # A variant whose header is 5 bytes and whose terminal id is 10 characters.
    text = CUP_POS_PATH.read_text(encoding="utf-8")
    text = text.replace("header_bytes = 6", "header_bytes = 5")
    text = text.replace('max_len = 8\ndesc = "Terminal id"', 'max_len = 10\ndesc = "Terminal id"')
    path = tmp_path / "variant.toml"
    path.write_text(text, encoding="utf-8")
    variant = load_spec(path)
    data = encode(
        "0800",
        {"11": "000001", "41": "TERMINAL01", "60": "00000001003"},
        variant,
        tpdu=TPDU,
        header="6031000000",
    )
    message = Decoder(variant).decode(data[2:])
    assert message.get("41") == "TERMINAL01"
    assert message.header == "6031000000"


def test_a_bad_spec_file_names_the_file_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    text = CUP_POS_PATH.read_text(encoding="utf-8").replace("tpdu_bytes = 5", "tpdu_bytes = 99")
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError, match=r"bad\.toml: framing\.tpdu_bytes"):
        load_spec(path)
    path.write_text('name = "x"\n[fields.t]\ndata_enc = "b"\n', encoding="utf-8")
    with pytest.raises(SpecError, match=r"bad\.toml: .*fields\.p is required"):
        load_spec(path)
    with pytest.raises(SpecError, match="cannot be read"):
        load_spec(tmp_path / "missing.toml")


def test_a_spec_can_drop_more_fields_but_never_fewer(tmp_path: Path) -> None:
    path = tmp_path / "drop.toml"
    path.write_text('drop = ["63"]\n' + CUP_POS_PATH.read_text(encoding="utf-8"), encoding="utf-8")
    spec = load_spec(path)
    assert {"35", "36", "52", "55", "64", "63"} <= spec.dropped
