"""Pairs host-link requests with their responses and turns each pair into contract events.

Sans-IO: `Pairer` is given decoded messages with the times the relay forwarded them, and
asked to expire what waited too long at a monotonic time it is given; it hands back
`posmon.txn/1`, `posmon.batch/1` and `posmon.status/1` events. A request is paired with the
response of the next message type (0200 with 0210, 0400 with 0410, 0500 with 0510, 0800
with 0810) carrying the same terminal id (field 41) and STAN (field 11).

What becomes what:
- 0200/0210 with processing code 00: an approved or declined SALE (PREAUTH_COMPLETION when
  the layout's message code, CUP 60.1, is 20); processing code 20: a VOID of the sale
  named by field 37 (RRN) and 61.2 (STAN). Other processing codes (balance inquiries)
  only feed link health.
- 0400/0410: a REVERSAL of the sale with the same STAN (CUP reversals repeat the
  original's field 11; 61.2 wins when present).
- 0500/0510: a batch event; field 48 carries the totals and the host's verdict.
- 0800/0810 (sign-in) and every other pair: link health only.
- a request unanswered within the timeout, or an upstream connection that fails: a link
  failure. Link health becomes a status event when it changes: the first answer, every
  failure, and the first answer after failures.

A pair that cannot make a valid event (no RRN, no batch number, no card number) is
counted by reason in `skipped` and published as nothing: a made-up value would send the
collector after the wrong settlement.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

from pydantic import ValidationError

from agent.tap.codec import Message
from agent.tap.spec import Meaning, Slice, Spec
from posmon.wire.codec import APPROVED_CODES, CURRENCIES
from posmon.wire.models import (
    BatchEvent,
    BatchResult,
    EntryMode,
    Network,
    StatusEvent,
    TxnEvent,
    TxnKind,
)

logger = logging.getLogger(__name__)

# As the wire models have them (Tid, SixDigits).
_TID = re.compile(r"^[0-9A-Za-z]{8}$")
_STAN = re.compile(r"^[0-9]{6}$")

Event = TxnEvent | BatchEvent | StatusEvent

# Request message types and the response each expects.
RESPONSES = {"0200": "0210", "0400": "0410", "0500": "0510", "0800": "0810"}
REQUESTS = {response: request for request, response in RESPONSES.items()}
# A CUP POS terminal gives up on a response after 60 s by default.
DEFAULT_TIMEOUT_S = 60.0
# Sales remembered so that a reversal can name the RRN it cancels.
REMEMBERED_SALES = 1024
PENDING_LIMIT = 4096
# Field 22's first two digits (PAN entry mode) as CUP terminals send them.
ENTRY_MODES = {
    "01": EntryMode.MANUAL,
    "02": EntryMode.SWIPE,
    "90": EntryMode.SWIPE,
    "03": EntryMode.QR,
    "05": EntryMode.CHIP,
    "95": EntryMode.CHIP,
    "07": EntryMode.CTLS,
    "91": EntryMode.CTLS,
    "98": EntryMode.CTLS,
}


@dataclass(frozen=True, slots=True)
class Seen:
    """A decoded message and when the relay forwarded it."""

    message: Message
    at: datetime  # wall clock, aware
    mono: float  # monotonic seconds, for response times and timeouts


@dataclass(slots=True)
class LinkHealth:
    """What the tap knows of one terminal's link to its host."""

    reachable: bool | None = None
    last_rtt_ms: int | None = None
    last_response_at: datetime | None = None
    timeouts: int = 0
    connect_failures: int = 0
    consecutive_failures: int = 0


@dataclass(frozen=True, slots=True)
class _Sale:
    rrn: str | None
    pan_masked: str | None
    batch: str | None


class SkipPair(Exception):
    """A pair that makes no valid event; the reason is counted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Pairer:
    """Request/response pairing and event building for one tap."""

    spec: Spec
    agent_id: str
    tz: tzinfo
    currency: str = "CNY"
    timeout_s: float = DEFAULT_TIMEOUT_S
    network: Network = Network.ETH
    # The terminal behind the tap, when configured: connection failures before any message
    # are reported for it. Otherwise the last terminal id seen is used.
    tid: str | None = None
    new_id: Callable[[], uuid.UUID] = uuid.uuid4
    health: dict[str, LinkHealth] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    _pending: OrderedDict[tuple[str, str, str], Seen] = field(default_factory=OrderedDict)
    _sales: OrderedDict[tuple[str, str], _Sale] = field(default_factory=OrderedDict)

    def observe(self, seen: Seen) -> list[Event]:
        """Take one forwarded message; the events its pair completes."""
        message = seen.message
        tid, stan = message.get("41"), message.get("11")
        if tid is None or stan is None or not _TID.match(tid) or not _STAN.match(stan):
            # Without them nothing can be paired or published for a terminal.
            self.counts["no_tid_or_stan"] += 1
            return []
        self.tid = tid
        if message.mti in RESPONSES:
            key = (tid, stan, message.mti)
            if key in self._pending:
                self.counts["repeated_request"] += 1
                return []
            self._pending[key] = seen
            self.counts["requests"] += 1
            if len(self._pending) > PENDING_LIMIT:
                self._pending.popitem(last=False)
                self.counts["pending_overflow"] += 1
            return []
        request_mti = REQUESTS.get(message.mti)
        if request_mti is None:
            self.counts["other_type"] += 1
            return []
        request = self._pending.pop((tid, stan, request_mti), None)
        if request is None:
            self.counts["unpaired_response"] += 1
            return []
        self.counts["pairs"] += 1
        events = self._answered(tid, request, seen)
        try:
            event = self._event(request.message, message, seen.at)
        except SkipPair as skip:
            self.skipped[skip.reason] += 1
            logger.debug("host-link pair not published: %s", skip.reason)
        except ValidationError as exc:
            # The contract's models refuse a value the host sent; name the fields only.
            reason = "invalid " + ", ".join(str(error["loc"][0]) for error in exc.errors())
            self.skipped[reason] += 1
        else:
            if event is not None:
                events.append(event)
        return events

    def expire(self, mono: float, at: datetime) -> list[Event]:
        """Requests unanswered for `timeout_s`: one link failure each."""
        events: list[Event] = []
        while self._pending:
            key, seen = next(iter(self._pending.items()))
            if mono - seen.mono < self.timeout_s:
                break
            del self._pending[key]
            self.counts["timeouts"] += 1
            health = self._health(key[0])
            health.timeouts += 1
            events.append(self._failed(key[0], health, at))
        return events

    def connect_failed(self, at: datetime) -> list[Event]:
        """The front end refused or did not answer a connection from the relay."""
        self.counts["connect_failures"] += 1
        if self.tid is None:
            return []
        health = self._health(self.tid)
        health.connect_failures += 1
        return [self._failed(self.tid, health, at)]

    @property
    def pending(self) -> int:
        """Requests waiting for their response."""
        return len(self._pending)

    # --- link health --------------------------------------------------------------------

    def _health(self, tid: str) -> LinkHealth:
        return self.health.setdefault(tid, LinkHealth())

    def _answered(self, tid: str, request: Seen, response: Seen) -> list[Event]:
        health = self._health(tid)
        changed = health.reachable is not True
        health.reachable = True
        health.consecutive_failures = 0
        health.last_rtt_ms = max(0, round((response.mono - request.mono) * 1000))
        health.last_response_at = response.at
        return [self._status(tid, health, response.at)] if changed else []

    def _failed(self, tid: str, health: LinkHealth, at: datetime) -> StatusEvent:
        health.reachable = False
        health.consecutive_failures += 1
        return self._status(tid, health, at)

    def _status(self, tid: str, health: LinkHealth, at: datetime) -> StatusEvent:
        extra = {
            "source": "tap",
            # The host link does not show the terminal's store-and-forward queue.
            "saf": "unknown",
            "host_timeouts": str(health.timeouts),
            "host_connect_failures": str(health.connect_failures),
            "host_consecutive_failures": str(health.consecutive_failures),
        }
        if health.last_response_at is not None:
            extra["host_last_response_at"] = health.last_response_at.isoformat()
        return StatusEvent(
            event_id=self.new_id(),
            agent_id=self.agent_id,
            tid=tid,
            link_up=bool(health.reachable),
            network=self.network,
            saf_pending=0,
            serial_ok=True,
            observed_at=at,
            host_rtt_ms=health.last_rtt_ms,
            extra=extra,
        )

    # --- events -------------------------------------------------------------------------

    def _event(self, request: Message, response: Message, at: datetime) -> Event | None:
        if request.mti == "0200":
            return self._financial(request, response, at)
        if request.mti == "0400":
            return self._reversal(request, response, at)
        if request.mti == "0500":
            return self._batch(request, response, at)
        return None

    def _financial(self, request: Message, response: Message, at: datetime) -> TxnEvent | None:
        processing = (request.get("3") or "")[:2]
        meaning = self.spec.meaning
        code = _take(meaning, "message_code", request)
        if processing == "00":
            kind = TxnKind.PREAUTH_COMPLETION if code == "20" else TxnKind.SALE
        elif processing == "20":
            kind = TxnKind.VOID
        else:
            self.counts["not_a_transaction"] += 1
            return None
        values = self._common(request, response, at)
        if kind is TxnKind.VOID:
            original = request.get("61")
            if original is not None and len(original) >= 12:
                values["orig_stan"] = original[6:12]
            values["orig_rrn"] = request.get("37")
        event = TxnEvent(kind=kind, **values)
        if kind is not TxnKind.VOID:
            self._remember(event.tid, event.stan, _Sale(event.rrn, event.pan_masked, event.batch))
        return event

    def _reversal(self, request: Message, response: Message, at: datetime) -> TxnEvent:
        original = request.get("61")
        stan = _need(request, "11")
        orig_stan = original[6:12] if original is not None and len(original) >= 12 else stan
        tid = _need(request, "41")
        sale = self._sales.get((tid, orig_stan), _Sale(None, None, None))
        values = self._common(request, response, at, fallback=sale)
        values["orig_stan"] = orig_stan
        if sale.rrn is not None:
            values["orig_rrn"] = sale.rrn
        return TxnEvent(kind=TxnKind.REVERSAL, **values)

    def _common(
        self,
        request: Message,
        response: Message,
        at: datetime,
        *,
        fallback: _Sale | None = None,
    ) -> dict[str, Any]:
        """The fields every transaction event has; `fallback` is the sale a reversal
        cancels, for what the reversal itself may not carry."""
        fallback = fallback or _Sale(None, None, None)
        rc = response.get("39")
        if rc is None:
            raise SkipPair("response without field 39")
        rrn = response.get("37") or request.get("37") or fallback.rrn
        if rrn is None:
            raise SkipPair("no RRN (field 37)")
        pan = response.pan_masked or request.pan_masked or fallback.pan_masked
        if pan is None:
            raise SkipPair("no card number (field 2 or track 2)")
        batch = (
            _take(self.spec.meaning, "batch", request)
            or _take(self.spec.meaning, "batch", response)
            or fallback.batch
        )
        if batch is None:
            raise SkipPair("no batch number")
        amount = request.get("4") or response.get("4")
        if amount is None or not amount.isdigit():
            raise SkipPair("no amount (field 4)")
        values: dict[str, Any] = {
            "event_id": self.new_id(),
            "agent_id": self.agent_id,
            "tid": _need(request, "41"),
            "mid": response.get("42") or _need(request, "42"),
            "amount": int(amount),
            "currency": self._currency(request, response),
            "pan_masked": pan,
            "rc": rc,
            "approved": rc in APPROVED_CODES,
            "rrn": rrn,
            "stan": _need(request, "11"),
            "batch": batch,
            "terminal_time": self._time(response, request, at),
            "observed_at": at,
        }
        auth = (response.get("38") or "").strip()
        if auth:
            values["auth_code"] = auth
        entry = ENTRY_MODES.get((request.get("22") or "")[:2])
        if entry is not None:
            values["entry_mode"] = entry
        return values

    def _batch(self, request: Message, response: Message, at: datetime) -> BatchEvent:
        totals = self.spec.meaning.totals
        sent = request.get(totals.field)
        if sent is None or len(sent) < totals.credit_total[1]:
            raise SkipPair(f"no batch totals (field {totals.field})")
        numbers = [
            sent[start:end]
            for start, end in (
                totals.debit_count,
                totals.debit_total,
                totals.credit_count,
                totals.credit_total,
            )
        ]
        if not all(number.isdigit() for number in numbers):
            raise SkipPair(f"batch totals not numeric (field {totals.field})")
        debit_count, debit_total, credit_count, credit_total = (int(n) for n in numbers)
        rc = response.get("39")
        answered = response.get(totals.field) or ""
        verdict = answered[totals.result[0] : totals.result[1]]
        if rc not in APPROVED_CODES:
            result = BatchResult.FAIL
        elif verdict in totals.unbalanced:
            result = BatchResult.UNBALANCED
        elif verdict in totals.balanced or not verdict:
            result = BatchResult.OK
        else:
            result = BatchResult.FAIL
        batch = _take(self.spec.meaning, "batch", request)
        if batch is None:
            raise SkipPair("no batch number")
        return BatchEvent(
            event_id=self.new_id(),
            agent_id=self.agent_id,
            tid=_need(request, "41"),
            mid=response.get("42") or _need(request, "42"),
            batch=batch,
            count=debit_count,
            total=debit_total,
            currency=self._currency(request, response),
            result=result,
            terminal_time=self._time(response, request, at),
            observed_at=at,
            extra={
                "source": "tap",
                "credit_count": str(credit_count),
                "credit_total": str(credit_total),
                "rc": rc or "",
            },
        )

    def _currency(self, request: Message, response: Message) -> str:
        numeric = request.get("49") or response.get("49")
        return CURRENCIES.get(numeric or "", self.currency)

    def _time(self, response: Message, request: Message, at: datetime) -> datetime:
        """Fields 12 (hhmmss) and 13 (MMDD) in the terminals' zone; the year is the one
        that puts the date nearest `at`. Without them, or when invalid: `at`."""
        clock = response.get("12") or request.get("12")
        day = response.get("13") or request.get("13")
        local = at.astimezone(self.tz)
        if clock is None or day is None or not (clock + day).isdigit():
            return local
        candidates = []
        for year in (local.year - 1, local.year, local.year + 1):
            try:
                candidates.append(
                    datetime(
                        year,
                        int(day[:2]),
                        int(day[2:4]),
                        int(clock[:2]),
                        int(clock[2:4]),
                        int(clock[4:6]),
                        tzinfo=self.tz,
                    )
                )
            except ValueError:
                continue
        if not candidates:
            return local
        return min(candidates, key=lambda when: abs(when - local))

    def _remember(self, tid: str, stan: str, sale: _Sale) -> None:
        self._sales[(tid, stan)] = sale
        self._sales.move_to_end((tid, stan))
        if len(self._sales) > REMEMBERED_SALES:
            self._sales.popitem(last=False)


def _take(meaning: Meaning, name: str, message: Message) -> str | None:
    where: Slice | None = getattr(meaning, name)
    return None if where is None else where.take(message.fields)


def _need(message: Message, number: str) -> str:
    value = message.get(number)
    if value is None:
        raise SkipPair(f"no field {number}")
    return value
