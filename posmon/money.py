"""Money as people read it: integer minor units and an ISO 4217 code to "128.00 CNY".

Money is never a float in posmon (docs/contract.md): an amount is an integer count of
the currency's minor units, so 128.00 CNY is 12800 and 1280 JPY is 1280. How many
decimals that count has is the currency's ISO 4217 minor unit, looked up here, once, for
alert summaries, the case list and the evidence PDF alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

DEFAULT_MINOR_UNITS = 2

# ISO 4217 minor units (decimals). Every currency the serial codec accepts
# (posmon.wire.codec.CURRENCIES) is listed, then the other current codes whose minor unit
# is not 2; any other code (MQTT and settlement files accept any alpha-3) has 2.
MINOR_UNITS: Mapping[str, int] = MappingProxyType(
    {
        # The serial codec's currencies.
        "AED": 2,
        "AUD": 2,
        "CAD": 2,
        "CHF": 2,
        "CNY": 2,
        "EUR": 2,
        "GBP": 2,
        "HKD": 2,
        "IDR": 2,
        "INR": 2,
        "JPY": 0,
        "KRW": 0,
        "MOP": 2,
        "MYR": 2,
        "PHP": 2,
        "RUB": 2,
        "SGD": 2,
        "THB": 2,
        "TWD": 2,
        "USD": 2,
        "VND": 0,
        # Other currencies without minor units.
        "BIF": 0,
        "CLP": 0,
        "DJF": 0,
        "GNF": 0,
        "ISK": 0,
        "KMF": 0,
        "PYG": 0,
        "RWF": 0,
        "UGX": 0,
        "UYI": 0,
        "VUV": 0,
        "XAF": 0,
        "XOF": 0,
        "XPF": 0,
        # Three decimals.
        "BHD": 3,
        "IQD": 3,
        "JOD": 3,
        "KWD": 3,
        "LYD": 3,
        "OMR": 3,
        "TND": 3,
        # Four.
        "CLF": 4,
        "UYW": 4,
    }
)


def minor_units(currency: str | None) -> int:
    """Decimals of `currency`'s minor unit (ISO 4217); 2 for an unknown or missing code."""
    if currency is None:
        return DEFAULT_MINOR_UNITS
    return MINOR_UNITS.get(currency, DEFAULT_MINOR_UNITS)


def format_money(amount: int, currency: str | None) -> str:
    """Minor units as text, without a float on the way: (12800, "CNY") -> "128.00 CNY",
    (1280, "JPY") -> "1280 JPY", (-1001, "CNY") -> "-10.01 CNY"; no currency, no code."""
    decimals = minor_units(currency)
    sign = "-" if amount < 0 else ""
    whole, fraction = divmod(abs(amount), 10**decimals)
    number = f"{sign}{whole}.{fraction:0{decimals}d}" if decimals else f"{sign}{whole}"
    return f"{number} {currency}" if currency else number


def money(amount: int | None, currency: str | None) -> str:
    """`format_money`, or "an unknown amount" for None (an alert whose amount is unknown)."""
    return "an unknown amount" if amount is None else format_money(amount, currency)
