"""The ISO 8583 layout a tap decodes, as data: framing, pyiso8583 field specs, meanings.

A specification is a TOML file (the China UnionPay POS layout ships as `cup_pos.toml`
beside this module). Another acquirer's variant is a copy of that file with its changes,
so no code is needed for it. The fields the tap must never keep (track data, PIN block,
chip data, MAC) are not part of the file: `DROPPED_FIELDS` holds them, and a file can only
add to them.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# Track 2, track 3, PIN block, chip data, MAC: never kept in any decoded object, log or
# error text, whatever a specification file says.
DROPPED_FIELDS = frozenset({"35", "36", "52", "55", "64"})
CUP_POS_PATH = Path(__file__).with_name("cup_pos.toml")
# Above this a length prefix is refused by the specification itself: 65535 is what two
# bytes can say, and a message that large is not a POS message.
MAX_MESSAGE_LIMIT = 65535


class SpecError(ValueError):
    """A specification file that cannot be used, naming the file and the key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Framing(_Strict):
    """What wraps each message on the TCP stream."""

    length_bytes: Literal[2] = Field(2, description="Big-endian length prefix, in bytes.")
    tpdu_bytes: int = Field(5, ge=0, le=16, description="Transport PDU after the length.")
    header_bytes: int = Field(6, ge=0, le=32, description="Application header after the TPDU.")
    max_message: int = Field(
        4096,
        ge=64,
        le=MAX_MESSAGE_LIMIT,
        description="Largest message decoded, in bytes after the length; larger are skipped.",
    )


class Slice(_Strict):
    """Digits `start:end` of a field's decoded text."""

    field: str = Field(pattern=r"^[0-9]{1,3}$", description="Field number.")
    start: int = Field(ge=0, description="First digit, counted from 0.")
    end: int = Field(gt=0, description="One past the last digit.")

    def take(self, fields: Mapping[str, str]) -> str | None:
        """The slice of the field, or None when the field is absent or too short."""
        value = fields.get(self.field)
        if value is None or len(value) < self.end:
            return None
        return value[self.start : self.end]


Span = Annotated[tuple[int, int], Field(description="[start, end) of the field's digits.")]


class Totals(_Strict):
    """Where a batch settlement (0500/0510) carries its totals and the host's verdict."""

    field: str = Field("48", pattern=r"^[0-9]{1,3}$")
    debit_count: Span = (0, 3)
    debit_total: Span = (3, 15)
    credit_count: Span = (15, 18)
    credit_total: Span = (18, 30)
    result: Span = (30, 31)
    balanced: list[str] = Field(default_factory=lambda: ["1"])
    unbalanced: list[str] = Field(default_factory=lambda: ["2"])


class Meaning(_Strict):
    """Where values the events need sit inside private fields."""

    batch: Slice | None = Field(None, description="The batch number, if the layout has one.")
    message_code: Slice | None = Field(
        None, description="The layout's own transaction type code (CUP 60.1)."
    )
    totals: Totals = Field(default_factory=Totals)


class Spec(_Strict):
    """One ISO 8583 layout: framing, field specifications and where meanings live."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    framing: Framing = Field(default_factory=Framing)
    meaning: Meaning = Field(default_factory=Meaning)
    drop: list[str] = Field(
        default_factory=list, description="Fields dropped at decode besides DROPPED_FIELDS."
    )
    fields: dict[str, dict[str, Any]] = Field(
        description="pyiso8583 field specifications by field number, plus t (type), p (bitmap)."
    )

    @model_validator(mode="after")
    def _usable(self) -> Spec:
        for key in ("t", "p"):
            if key not in self.fields:
                raise ValueError(f"fields.{key} is required")
        for key, field in self.fields.items():
            if key not in ("t", "p") and not (key.isdigit() and 1 <= int(key) <= 128):
                raise ValueError(f"fields.{key}: not t, p or a field number 1..128")
            missing = {"data_enc", "len_enc", "len_type", "max_len"} - field.keys()
            if missing:
                raise ValueError(f"fields.{key}: missing {', '.join(sorted(missing))}")
        return self

    @property
    def dropped(self) -> frozenset[str]:
        """Every field removed at decode."""
        return DROPPED_FIELDS | frozenset(self.drop)

    def pyiso8583(self) -> dict[str, dict[str, Any]]:
        """The specification pyiso8583 decodes with: TPDU and header as its `h` field."""
        head = self.framing.tpdu_bytes + self.framing.header_bytes
        header = {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": head}
        return {"h": header, **self.fields}


def load_spec(path: Path) -> Spec:
    """Read and check a specification file; raises `SpecError` naming the file and key."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(f"{path}: cannot be read: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return Spec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(top)'}: {error['msg']}"
            for error in exc.errors()
        )
        raise SpecError(f"{path}: {problems}") from exc


@cache
def cup_pos() -> Spec:
    """The China UnionPay POS layout shipped with posmon."""
    return load_spec(CUP_POS_PATH)
