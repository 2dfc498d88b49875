"""Money as text: ISO 4217 minor units, no float on the way."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.evidence import pdf
from posmon.money import MINOR_UNITS, format_money, minor_units, money
from posmon.wire.codec import CURRENCIES


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        (12_800, "CNY", "128.00 CNY"),  # as alert summaries and the case list always wrote
        (5, "CNY", "0.05 CNY"),
        (-1_001, "CNY", "-10.01 CNY"),
        (0, "USD", "0.00 USD"),
        (1_234, "JPY", "1234 JPY"),  # yen have no minor unit
        (-1_234, "JPY", "-1234 JPY"),
        (50_000, "KRW", "50000 KRW"),
        (250_000, "VND", "250000 VND"),
        (1_234, "KWD", "1.234 KWD"),  # three decimals
        (7, "BHD", "0.007 BHD"),
        (12_345, "CLF", "1.2345 CLF"),
        (12_345, "XYZ", "123.45 XYZ"),  # an unknown code: two decimals
        (12_345, None, "123.45"),  # no currency: no code either
        (10**20 + 1, "CNY", "1000000000000000000.01 CNY"),  # exact beyond a float's digits
    ],
)
def test_format_money(amount: int, currency: str | None, text: str) -> None:
    assert format_money(amount, currency) == text


def test_an_unknown_amount_says_so() -> None:
    assert money(None, "CNY") == "an unknown amount"
    assert money(12_800, "CNY") == "128.00 CNY"


def test_every_currency_the_codec_accepts_has_its_minor_unit_listed() -> None:
    assert set(CURRENCIES.values()) <= set(MINOR_UNITS)
    assert {c for c in CURRENCIES.values() if minor_units(c) == 0} == {"JPY", "KRW", "VND"}


@given(st.integers(), st.sampled_from([*MINOR_UNITS, "XYZ"]))
def test_the_text_reads_back_as_the_same_minor_units(amount: int, currency: str) -> None:
    number, code = format_money(amount, currency).split(" ")
    assert code == currency
    whole, _, fraction = number.partition(".")
    assert len(fraction) == minor_units(currency)
    assert int(whole + fraction) == amount


def test_the_evidence_pdf_writes_yen_without_decimals(tmp_path: Path) -> None:
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext is not installed (Debian: poppler-utils)")
    data = {
        "case": {"case_id": "C-1", "amount": 1_234, "currency": "JPY"},
        "generated_at": "2026-11-26T10:00:00+08:00",
        "cause": {"cause": "BANK_SYSTEM", "evidence": []},
        "transaction": {"amount": 1_234, "currency": "JPY"},
        "settlements": [{"amount": 1_234, "fee": 7, "net_amount": 1_227, "currency": "JPY"}],
        "terminal_status": [],
        "timeline": [],
    }
    path = tmp_path / "evidence.pdf"
    path.write_bytes(pdf(data))
    text = subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], capture_output=True, check=True, text=True
    ).stdout
    assert "1234 JPY (1234 minor units)" in text
    assert "1227 JPY (1227 minor units)" in text
    assert "12.34" not in text
