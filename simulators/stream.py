"""Realistic, reproducible traffic of one terminal: transactions, status, batch closes.

`TrafficGenerator` is seeded (`random.Random(seed)`) and is handed the time, so the same
seed and the same times give the same messages. What it produces:

- `TXN`: mostly approved SALEs; declines with the common ISO 8583 codes; PREAUTH_COMPLETION;
  and transactions that refer to an earlier sale (ORIG_STAN/ORIG_RRN set), by the rules a
  real terminal and its host follow:
  - a REVERSAL (冲正) undoes the transaction just made, right after it (the terminal sends
    one when it is unsure the host got the sale), so only the last transaction, if it was an
    approved SALE;
  - a VOID (撤销) cancels a sale that is not settled yet: one of the open batch (its batch is
    settled when it closes), and with `void_window_s` set, at most that old: a D0 or T0
    merchant's sales are paid out one by one (the acquirer simulator pays none sooner than
    `simulators.acquirer.terms.INSTANT_HOLD` after the sale), after which the host refuses
    the void;
  - a REFUND (退货) gives money back for any recent sale, settled or not; the operator uses
    one where a void is no longer possible.
  Amounts are integer fen, STAN increments per transaction, RRN
  is `YDDDhh` + STAN, PANs are Luhn-valid and printed full unless `masked_pan`.
- `STS`: first message after start, then now and then. The host link flaps now and then;
  while it is down sales are approved offline (RC `Y3`) and the SAF backlog grows, and
  it drains once the link is back.
- `BAT`: every `batch_size` transactions (and on `close_batch()`): COUNT and TOTAL are
  the number and the sum of the approved SALEs (RC in `APPROVED_CODES`) of the batch;
  RESULT is OK, or UNBALANCED with probability `unbalanced`. The batch number then
  increments.

HBT frames are timed, not generated: the terminal makes them (`messages.heartbeat`).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo

from posmon.wire.codec import APPROVED_CODES, CURRENCIES
from simulators.cards import Card, new_card
from simulators.messages import Message, terminal_time

# ISO 8583 field 39 decline codes with how often acquirers see them.
DECLINE_CODES: tuple[tuple[str, int], ...] = (
    ("05", 34),  # do not honour
    ("51", 26),  # insufficient funds
    ("55", 12),  # wrong PIN
    ("54", 8),  # expired card
    ("14", 6),  # invalid card number
    ("91", 8),  # issuer unavailable
    ("96", 6),  # system malfunction
)
KINDS: tuple[tuple[str, int], ...] = (
    ("SALE", 82),
    ("PREAUTH_COMPLETION", 5),
    ("VOID", 5),
    ("REFUND", 5),
    ("REVERSAL", 3),
)
ENTRY_MODES: tuple[tuple[str, int], ...] = (
    ("CHIP", 45),
    ("CTLS", 35),
    ("QR", 10),
    ("SWIPE", 8),
    ("MANUAL", 2),
)
NETWORKS: tuple[tuple[str, int], ...] = (("ETH", 40), ("WIFI", 25), ("4G", 30), ("GPRS", 5))
FIRMWARE = ("V2.3.17", "V2.4.2", "3.1.0-cn", "N86_1.08.3")
OFFLINE_APPROVAL = "Y3"
MAX_STAN = 999999
MAX_BATCH = 999999
PAPER_LOW = 30
_RECENT_SALES = 50
_CARD_POOL = 400
_AUTH_CHARS = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"


@dataclass(frozen=True, slots=True)
class TrafficProfile:
    """What a generated stream looks like; the defaults resemble a busy shop counter."""

    mid: str = "898100012340001"
    currency: str = "156"
    masked_pan: bool = False
    batch_size: int = 40
    status_every: int = 10
    decline_rate: float = 0.08
    link_flap: float = 0.1
    unbalanced: float = 0.0
    void_window_s: float | None = None  # see the module docstring; None: the whole open batch

    def __post_init__(self) -> None:
        if len(self.mid) != 15 or not (self.mid.isascii() and self.mid.isalnum()):
            raise ValueError(f"MID must be 15 letters or digits, got {self.mid!r}")
        if self.currency not in CURRENCIES:
            raise ValueError(f"CUR {self.currency!r} is not a known ISO 4217 numeric code")
        if self.batch_size < 0 or self.status_every < 1:
            raise ValueError("batch_size must be >= 0 and status_every >= 1")
        for name in ("decline_rate", "link_flap", "unbalanced"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in 0..1")
        if self.void_window_s is not None and self.void_window_s < 0:
            raise ValueError("void_window_s must be >= 0")


@dataclass(slots=True)
class _Sale:
    stan: str
    rrn: str
    amount: int
    card: Card
    at: datetime
    cancelled: bool = False


@dataclass(slots=True)
class BatchTotals:
    """The open batch as the terminal counts it."""

    number: int
    transactions: int = 0
    count: int = 0
    total: int = 0
    sales: list[_Sale] = field(default_factory=list)


@dataclass(slots=True)
class _Device:
    network: str
    firmware: str
    battery: int | None
    paper_left: int
    link_up: bool = True
    saf: int = 0


def _weighted(rng: random.Random, table: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([value for value, _ in table], weights=[w for _, w in table])[0]


class TrafficGenerator:
    """A seeded source of one terminal's messages (see the module docstring)."""

    def __init__(
        self,
        tid: str,
        profile: TrafficProfile | None = None,
        *,
        seed: int | None = None,
        tz: tzinfo | None = None,
    ) -> None:
        if len(tid) != 8 or not (tid.isascii() and tid.isalnum()):
            raise ValueError(f"TID must be 8 letters or digits, got {tid!r}")
        self.tid = tid
        self.profile = profile or TrafficProfile()
        self.tz = tz or ZoneInfo("Asia/Shanghai")
        self._rng = random.Random(seed)  # noqa: S311 - simulated traffic, not secrets
        rng = self._rng
        network = _weighted(rng, NETWORKS)
        self._device = _Device(
            network=network,
            firmware=rng.choice(FIRMWARE),
            battery=rng.randint(60, 100) if network in ("4G", "GPRS") else None,
            paper_left=rng.randint(150, 600),
        )
        self._stan = rng.randint(1, 900000)
        self.batch = BatchTotals(number=rng.randint(1, 900))
        self._recent: deque[_Sale] = deque(maxlen=_RECENT_SALES)
        self._last: _Sale | None = None  # the transaction just made, if an approved SALE
        self._cards: list[Card] = []
        self._booted = False
        self._link_held = False
        self.decline_rate = self.profile.decline_rate

    # --- what a scenario changes while the terminal runs --------------------------------

    def hold_link_down(self, held: bool) -> None:
        """Take the host link down and keep it down (True), or let it come back (False)."""
        if held:
            self._device.link_up = False
        elif self._link_held:
            self._device.link_up = True
        self._link_held = held

    def status(self, now: datetime) -> Message:
        """A status message now (an idle terminal's report), link as it stands."""
        return self._status(now, flap=False)

    # --- MessageSource ------------------------------------------------------------------

    def next_message(self, now: datetime) -> Message:
        """The next message at `now`: a STS first, then mostly TXN, a BAT when the batch is full."""
        if not self._booted:
            self._booted = True
            return self._status(now, flap=False)
        if self.profile.batch_size and self.batch.transactions >= self.profile.batch_size:
            message = self.close_batch(now)
            assert message is not None
            return message
        status_every = 3 if not self._device.link_up else self.profile.status_every
        if self._rng.random() < 1 / status_every:
            return self._status(now, flap=True)
        return self._transaction(now)

    def close_batch(self, now: datetime) -> Message | None:
        """Close the open batch: its BAT, then a new batch number. None if the batch is empty."""
        batch = self.batch
        if batch.transactions == 0:
            return None
        unbalanced = self._rng.random() < self.profile.unbalanced
        message = Message(
            "BAT",
            {
                "TID": self.tid,
                "MID": self.profile.mid,
                "BATCH": f"{batch.number:06d}",
                "COUNT": str(batch.count),
                "TOTAL": str(batch.total),
                "RESULT": "UNBALANCED" if unbalanced else "OK",
                "TS": terminal_time(now, self.tz),
            },
        )
        self.batch = BatchTotals(number=batch.number % MAX_BATCH + 1)
        self._last = None  # settled with its batch: no reversal any more
        return message

    # --- messages -----------------------------------------------------------------------

    def _status(self, now: datetime, *, flap: bool) -> Message:
        rng, device = self._rng, self._device
        self._last = None  # a reversal comes right after its sale, or not at all
        if flap and not self._link_held:
            if device.link_up and rng.random() < self.profile.link_flap:
                device.link_up = False
            elif not device.link_up and rng.random() < 0.5:
                device.link_up = True
        if device.link_up and device.saf:
            device.saf = max(0, device.saf - rng.randint(1, 5))
        fields = {
            "TID": self.tid,
            "LINK": "UP" if device.link_up else "DOWN",
            "NET": device.network,
            "SAF": str(device.saf),
        }
        if device.network != "ETH":
            fields["RSSI"] = str(rng.randint(-105, -50))
        if device.link_up:
            slow = device.network in ("4G", "GPRS")
            fields["RTT"] = str(rng.randint(120, 900) if slow else rng.randint(25, 250))
        if device.battery is not None:
            device.battery = 100 if device.battery <= 15 else device.battery - rng.randint(0, 2)
            fields["BATT"] = str(device.battery)
        fields["PAPER"] = self._paper()
        fields["FW"] = device.firmware
        return Message("STS", fields)

    def _paper(self) -> str:
        device = self._device
        if device.paper_left <= 0:
            # Someone notices the empty printer and puts in a new roll.
            device.paper_left = self._rng.randint(300, 600)
            return "OUT"
        return "LOW" if device.paper_left < PAPER_LOW else "OK"

    def _transaction(self, now: datetime) -> Message:
        rng, device = self._rng, self._device
        online = device.link_up
        kind, orig = self._kind(online, now)
        card = orig.card if orig is not None else self._card()
        if orig is None:
            amount = self._amount()
        elif kind == "REFUND" and rng.random() < 0.3:
            amount = rng.randint(1, orig.amount)
        else:
            amount = orig.amount
        stan = self._next_stan()
        local = now.astimezone(self.tz)
        rrn = f"{local.year % 10}{local.timetuple().tm_yday:03d}{local.hour:02d}{stan}"
        rc = self._response_code(online, orig)
        fields = {
            "TID": self.tid,
            "MID": self.profile.mid,
            "KIND": kind,
            "AMT": str(amount),
            "CUR": self.profile.currency,
            "PAN": card.printed(masked=self.profile.masked_pan),
            "RC": rc,
            "RRN": rrn,
            "STAN": stan,
            "BATCH": f"{self.batch.number:06d}",
            "TS": terminal_time(now, self.tz),
        }
        if online and rc in APPROVED_CODES:
            fields["AUTH"] = "".join(rng.choice(_AUTH_CHARS) for _ in range(6))
        fields["ISS"] = card.issuer
        fields["ENTRY"] = _weighted(rng, ENTRY_MODES)
        if orig is not None:
            fields["ORIG_STAN"] = orig.stan
            fields["ORIG_RRN"] = orig.rrn
        self._book(kind, rc, _Sale(stan, rrn, amount, card, now), orig)
        return Message("TXN", fields)

    def _kind(self, online: bool, now: datetime) -> tuple[str, _Sale | None]:
        """The kind of the next transaction and the sale it refers to, if any.

        A VOID or REVERSAL that the rules (module docstring) do not allow becomes what an
        operator does instead: a REFUND of a settled sale, or a plain SALE.
        """
        rng = self._rng
        kind = _weighted(rng, KINDS) if online else "SALE"  # offline: sales only
        orig: _Sale | None = None
        if kind == "REVERSAL":
            last = self._last
            orig = last if last is not None and self._voidable(last, now) else None
        elif kind == "VOID":
            voidable = [sale for sale in self.batch.sales if self._voidable(sale, now)]
            if voidable:
                orig = rng.choice(voidable)
            else:
                kind = "REFUND"
        if kind == "REFUND" and self._recent:
            orig = rng.choice(self._recent)
        if kind in ("REVERSAL", "VOID", "REFUND") and orig is None:
            return "SALE", None
        return kind, orig

    def _voidable(self, sale: _Sale, now: datetime) -> bool:
        """A sale of the open batch the host has not settled yet."""
        if sale.cancelled:
            return False
        window = self.profile.void_window_s
        return window is None or (now - sale.at).total_seconds() <= window

    def _response_code(self, online: bool, orig: _Sale | None) -> str:
        rng = self._rng
        if not online:
            self._device.saf += 1
            return OFFLINE_APPROVAL
        if orig is None and rng.random() < self.decline_rate:
            return _weighted(rng, DECLINE_CODES)
        if orig is not None and rng.random() < 0.02:
            return "96"
        return "00"

    def _book(self, kind: str, rc: str, sale: _Sale, orig: _Sale | None) -> None:
        """Count a transaction into the open batch (see the module docstring)."""
        self.batch.transactions += 1
        self._last = sale if kind == "SALE" and rc in APPROVED_CODES else None
        if rc not in APPROVED_CODES:
            return
        self._device.paper_left -= 1
        if kind == "SALE":
            self.batch.count += 1
            self.batch.total += sale.amount
            self.batch.sales.append(sale)
            self._recent.append(sale)
        elif orig is not None and kind in ("VOID", "REVERSAL"):
            orig.cancelled = True

    def _next_stan(self) -> str:
        self._stan = self._stan % MAX_STAN + 1
        return f"{self._stan:06d}"

    def _card(self) -> Card:
        rng = self._rng
        if self._cards and rng.random() < 0.3:
            return rng.choice(self._cards)
        card = new_card(rng)
        if len(self._cards) < _CARD_POOL:
            self._cards.append(card)
        else:
            self._cards[rng.randrange(_CARD_POOL)] = card
        return card

    def _amount(self) -> int:
        rng = self._rng
        band = rng.random()
        if band < 0.55:
            fen = rng.randint(100, 5000)
        elif band < 0.9:
            fen = rng.randint(5000, 50000)
        else:
            fen = rng.randint(50000, 500000)
        if rng.random() < 0.5:
            fen = max(100, fen // 100 * 100)  # whole yuan, as most prices are
        return fen
