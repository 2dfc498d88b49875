"""Card numbers as a reader of posmon's logs and messages sees them: first 6 / last 4 only."""

from __future__ import annotations

from typing import NamedTuple

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from posmon.pan import PanError, luhn_valid, mask_pan, scrub, scrub_tree


def with_check_digit(body: str) -> str:
    """`body` followed by its Luhn check digit: a valid card number one digit longer."""
    total = 0
    # Counting from the right with the check digit still to come, every other digit
    # starting with the rightmost one of `body` is doubled.
    for index, char in enumerate(reversed(body)):
        value = int(char) * (2 if index % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return body + str(-total % 10)


VISA = "4111111111111111"
MASTERCARD = "5500000000000004"
MASTERCARD_2 = "5555555555554444"
AMEX = "378282246310005"
UNIONPAY_16 = with_check_digit("622202123456789")
UNIONPAY_19 = with_check_digit("622202123456789012")

TEST_CARDS = {
    VISA: "411111******1111",
    MASTERCARD: "550000******0004",
    MASTERCARD_2: "555555******4444",
    AMEX: "378282*****0005",
    UNIONPAY_16: "622202******7894",
    UNIONPAY_19: "622202*********0128",
}


def test_check_digit_helper_reproduces_published_test_cards() -> None:
    assert with_check_digit(VISA[:-1]) == VISA
    assert with_check_digit(AMEX[:-1]) == AMEX
    assert with_check_digit(MASTERCARD_2[:-1]) == MASTERCARD_2


@pytest.mark.parametrize("pan", list(TEST_CARDS))
def test_test_cards_pass_luhn(pan: str) -> None:
    assert luhn_valid(pan)


@pytest.mark.parametrize("digits", ["4111111111111112", "5500000000000005", "", "4111 1111"])
def test_luhn_rejects_wrong_check_digits_and_non_digits(digits: str) -> None:
    assert not luhn_valid(digits)


# --- mask_pan ---------------------------------------------------------------------------


@pytest.mark.parametrize(("pan", "masked"), TEST_CARDS.items())
def test_mask_pan_keeps_first_6_and_last_4(pan: str, masked: str) -> None:
    assert mask_pan(pan) == masked
    assert len(mask_pan(pan)) == len(pan)


@pytest.mark.parametrize(
    ("written", "masked"),
    [
        ("4111 1111 1111 1111", "411111******1111"),
        ("4111-1111-1111-1111", "411111******1111"),
        ("3782 822463 10005", "378282*****0005"),
        ("6222 0212 3456 7890 128", "622202*********0128"),
    ],
)
def test_mask_pan_accepts_pans_written_in_groups(written: str, masked: str) -> None:
    assert mask_pan(written) == masked


@pytest.mark.parametrize(
    ("printed", "masked"),
    [
        # Already masked as the wire wants it: unchanged.
        ("622202*********0128", "622202*********0128"),
        # Terminals mask with x, X or #.
        ("622202xxxxxxxxx0128", "622202*********0128"),
        ("4111 11XX XXXX 1111", "411111******1111"),
        ("411111######1111", "411111******1111"),
        # A receipt that shows more than the wire allows is masked further.
        ("62220212345****0128", "622202*********0128"),
    ],
)
def test_mask_pan_takes_what_a_terminal_printed(printed: str, masked: str) -> None:
    assert mask_pan(printed) == masked


def test_mask_pan_shows_only_last_4_of_a_12_digit_number() -> None:
    assert mask_pan("123456789012") == "********9012"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "4111abcd11111111",
        "41111111111",
        "4" * 20,
        # Fullwidth digits, as some input methods type them.
        VISA.translate({ord(digit): ord(digit) + 0xFEE0 for digit in "0123456789"}),
    ],
)
def test_mask_pan_refuses_what_is_not_a_pan(value: str) -> None:
    with pytest.raises(PanError):
        mask_pan(value)


# --- scrub ------------------------------------------------------------------------------


@pytest.mark.parametrize(("pan", "masked"), TEST_CARDS.items())
def test_scrub_masks_a_pan_inside_a_log_line(pan: str, masked: str) -> None:
    line = f"2026-11-25 10:30:15 WARNING tid=10000001 pan={pan} rc=05 declined"
    assert scrub(line) == f"2026-11-25 10:30:15 WARNING tid=10000001 pan={masked} rc=05 declined"


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        ("card 4111 1111 1111 1111 declined", "card 411111******1111 declined"),
        ("card 4111-1111-1111-1111 declined", "card 411111******1111 declined"),
        ("amex 3782 822463 10005.", "amex 378282*****0005."),
        (
            "TXN\x1cSEQ=17\x1cPAN=4111111111111111\x1cRC=00",
            "TXN\x1cSEQ=17\x1cPAN=411111******1111\x1cRC=00",
        ),
        ("from 4111111111111111 to 5555555555554444", "from 411111******1111 to 555555******4444"),
        ('{"pan": "378282246310005"}', '{"pan": "378282*****0005"}'),
    ],
)
def test_scrub_masks_pans_written_with_spaces_dashes_and_in_frames(
    text: str, scrubbed: str
) -> None:
    assert scrub(text) == scrubbed


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        ("SEQ 17 4111111111111111 AMT 12800", "SEQ 17 411111******1111 AMT 12800"),
        ("SEQ 12 4111 1111 1111 1111", "SEQ 12 411111******1111"),
        # A number of four digits or more in front must not hide a grouped PAN.
        ("txn 0017 4111-1111-1111-1111 ok", "txn 0017 411111******1111 ok"),
        ("1234 4111 1111 1111 1111", "1234 411111******1111"),
        ("4111 1111 1111 1111 0017", "411111******1111 0017"),
        ("12800 4111111111111111 20261125103015", "12800 411111******1111 20261125103015"),
    ],
)
def test_scrub_masks_a_pan_next_to_other_numbers(text: str, scrubbed: str) -> None:
    assert scrub(text) == scrubbed


@pytest.mark.parametrize(
    "text",
    [
        "RRN=402511000017 STAN=000017",
        "AMT=12800 TOTAL=1234500 fen",
        "TS=20261125103015",
        "at 20261125103014 the link went down",
        "PAN=4111111111111112",
        "order 41111111111111111111",
        "invoice 0000411111111111111111110",
        "merchant 898100012340001",
        "phone 138-0013-8000",
    ],
)
def test_scrub_leaves_numbers_that_are_not_pans_alone(text: str) -> None:
    assert scrub(text) == text


def test_scrub_leaves_a_terminal_timestamp_alone_even_when_it_passes_luhn() -> None:
    timestamp = "20261125103014"
    assert luhn_valid(timestamp)
    assert scrub(f"TS={timestamp}") == f"TS={timestamp}"


def test_scrub_of_text_without_pans_is_unchanged() -> None:
    assert scrub("") == ""
    assert scrub("link DOWN, SAF=3") == "link DOWN, SAF=3"


# --- properties -------------------------------------------------------------------------


@st.composite
def pans(draw: st.DrawFn) -> str:
    """A Luhn-valid 13..19 digit number in a card range (major industry 3, 4, 5 or 6)."""
    length = draw(st.integers(min_value=13, max_value=19))
    first = draw(st.sampled_from("3456"))
    middle = draw(st.text("0123456789", min_size=length - 2, max_size=length - 2))
    return with_check_digit(first + middle)


def written(pan: str, separator: str | list[str]) -> str:
    """The PAN in groups of four, as receipts and people write it; `separator` is one for
    every gap, or one per gap (a mix)."""
    groups = [pan[index : index + 4] for index in range(0, len(pan), 4)]
    if isinstance(separator, str):
        return separator.join(groups)
    out = groups[0]
    for gap, group in zip(separator, groups[1:], strict=False):
        out += gap + group
    return out


# Every way the scanner must see through: plain, one separator, and mixes of up to three
# spaces, dashes and dots between groups.
SEPARATORS = ["", " ", "-", ".", " - ", ". ", "  "]
separator_mix = st.lists(st.sampled_from(SEPARATORS[1:]), min_size=4, max_size=4)


ascii_text = st.text(st.characters(codec="ascii"), max_size=40)
non_digit = st.characters(codec="ascii", exclude_characters="0123456789")
# Spaces, dashes and dots join digit groups: in "7 4111 1111 1111 1111" the PAN may well be a
# 17-digit one. The first property keeps other digits out of the PAN's run; the examples
# above cover numbers right next to a PAN.
text_without_joiners = st.text(st.characters(codec="ascii", exclude_characters=" -."), max_size=40)
non_joining_separator = st.characters(codec="ascii", exclude_characters="0123456789 -.")


class PanInText(NamedTuple):
    pan: str
    written: str
    before: str
    after: str

    @property
    def text(self) -> str:
        return self.before + self.written + self.after


@st.composite
def pan_in_text(
    draw: st.DrawFn, around: st.SearchStrategy[str], separator: st.SearchStrategy[str]
) -> PanInText:
    """A PAN, written plain or in groups, inside text and set off from it by non-digits."""
    pan = draw(pans())
    as_written = written(pan, draw(st.sampled_from(SEPARATORS) | separator_mix))
    before = draw(around) + draw(separator)
    after = draw(separator) + draw(around)
    assume(pan not in before and pan not in after)
    return PanInText(pan, as_written, before, after)


@settings(max_examples=1000, deadline=None)
@given(pan_in_text(text_without_joiners, non_joining_separator))
def test_scrub_masks_any_pan_inside_any_text(case: PanInText) -> None:
    scrubbed = scrub(case.text)

    assert case.pan not in scrubbed
    assert case.written not in scrubbed
    # The PAN is masked in place; the text around it is scrubbed as if it were alone.
    assert scrubbed == scrub(case.before) + mask_pan(case.pan) + scrub(case.after)
    assert scrub(scrubbed) == scrubbed


@settings(max_examples=1000, deadline=None)
@given(pan_in_text(ascii_text, non_digit))
def test_no_full_pan_survives_scrub_whatever_surrounds_it(case: PanInText) -> None:
    scrubbed = scrub(case.text)

    assert case.pan not in scrubbed
    assert case.written not in scrubbed


# --- the forms an attacker tried (issue #15) --------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("4111.1111.1111.1111", "411111******1111"),
        ("4111 - 1111.1111-1111", "411111******1111"),
        ("card 4111.1111.1111.1111 closed", "card 411111******1111 closed"),
        ("REF4111111111111111X", "REF411111******1111X"),
        ("card6222021234567890123closed", "card622202*********0123closed"),
        # UnionPay's range without a Luhn check digit (the contract's own example PAN).
        ("card 6222021234567890123 closed", "card 622202*********0123 closed"),
    ],
)
def test_scrub_sees_dots_mixed_separators_letters_around_and_unionpay(
    text: str, shown: str
) -> None:
    assert scrub(text) == shown


@pytest.mark.parametrize(
    "text",
    [
        "20261125103015",  # a terminal timestamp that passes Luhn is not masked
        "v10.2.3 build 7",
        "net 12.50 fee 0.08",
        "6222021234",  # too short for a card
        "411111111111111",  # 15 digits, fails Luhn
    ],
)
def test_scrub_leaves_numbers_that_are_not_card_numbers(text: str) -> None:
    assert scrub(text) == text


def test_scrub_tree_masks_free_text_and_keys_but_not_typed_identifiers() -> None:
    luhn_mid = with_check_digit("89810001234000")
    assert len(luhn_mid) == 15 and luhn_valid(luhn_mid)
    tree = {
        "mid": luhn_mid,
        "settlement_id": VISA,
        "reason_text": f"card {VISA} closed",
        VISA: "key",
        "evidence": [f"slip shows {VISA}", 12, None],
    }
    assert scrub_tree(tree) == {
        "mid": luhn_mid,
        "settlement_id": VISA,
        "reason_text": "card 411111******1111 closed",
        "411111******1111": "key",
        "evidence": ["slip shows 411111******1111", 12, None],
    }
