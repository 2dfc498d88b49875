"""Test card numbers for simulated traffic: Luhn-valid PANs on plausible issuer BINs.

Cards are UnionPay (62..., 16 and 19 digits), Visa (4..., 16) and Mastercard (5..., 16),
each tied to the code of a Chinese issuing bank, the way a dual-branded card is. The
numbers are random and only look real; they are for simulators and tests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from posmon.pan import luhn_valid, mask_pan


@dataclass(frozen=True, slots=True)
class Bin:
    """An issuer identification number (first 6 digits), the PAN length and the issuer."""

    prefix: str
    length: int
    issuer: str
    brand: str
    weight: int


# Issuer codes are the 4-digit bank codes of the CNAPS/UnionPay member list.
BINS: tuple[Bin, ...] = (
    Bin("622202", 19, "0102", "UNIONPAY", 14),  # ICBC debit
    Bin("621226", 19, "0102", "UNIONPAY", 6),
    Bin("622848", 19, "0103", "UNIONPAY", 10),  # ABC debit
    Bin("621661", 19, "0104", "UNIONPAY", 7),  # BOC debit
    Bin("621700", 19, "0105", "UNIONPAY", 10),  # CCB debit
    Bin("622262", 19, "0301", "UNIONPAY", 5),  # BoCom debit
    Bin("621799", 19, "0403", "UNIONPAY", 5),  # PSBC debit
    Bin("622588", 16, "0308", "UNIONPAY", 6),  # CMB credit
    Bin("625807", 16, "0302", "UNIONPAY", 4),  # CITIC credit
    Bin("628288", 16, "0309", "UNIONPAY", 3),  # CIB credit
    Bin("427020", 16, "0102", "VISA", 5),
    Bin("436742", 16, "0105", "VISA", 5),
    Bin("456351", 16, "0104", "VISA", 4),
    Bin("439188", 16, "0308", "VISA", 4),
    Bin("524047", 16, "0104", "MASTERCARD", 4),
    Bin("552801", 16, "0105", "MASTERCARD", 4),
    Bin("545620", 16, "0308", "MASTERCARD", 4),
    Bin("512315", 16, "0310", "MASTERCARD", 3),
)


def luhn_digit(partial: str) -> str:
    """The check digit that makes `partial + digit` pass the Luhn check."""
    for digit in "0123456789":
        if luhn_valid(partial + digit):
            return digit
    raise ValueError("partial PAN must be digits")  # unreachable for digit strings


@dataclass(frozen=True, slots=True)
class Card:
    """One simulated card: its full PAN and the issuer it belongs to."""

    pan: str
    issuer: str
    brand: str

    def printed(self, *, masked: bool) -> str:
        """The PAN as the terminal prints it: full, or first 6 / last 4."""
        return mask_pan(self.pan) if masked else self.pan

    def __repr__(self) -> str:
        # Keep full numbers out of logs and assertion messages.
        return f"Card(pan={mask_pan(self.pan)!r}, issuer={self.issuer!r}, brand={self.brand!r})"


def new_card(rng: random.Random) -> Card:
    """A random Luhn-valid card on one of `BINS`, picked by weight."""
    bin_ = rng.choices(BINS, weights=[item.weight for item in BINS])[0]
    body = bin_.prefix + "".join(rng.choice("0123456789") for _ in range(bin_.length - 7))
    return Card(body + luhn_digit(body), bin_.issuer, bin_.brand)
