"""Host-link pairs become contract events: sales, reversals, batch closes and link health."""

from __future__ import annotations

from datetime import UTC, datetime
from types import MappingProxyType
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.tap.codec import Decoder, Message, encode
from agent.tap.pairing import Event, Pairer, Seen
from agent.tap.spec import cup_pos
from posmon.wire.models import (
    BatchEvent,
    BatchResult,
    EntryMode,
    StatusEvent,
    TxnEvent,
    TxnKind,
    parse_message,
)

SPEC = cup_pos()
DECODER = Decoder(SPEC)
SHANGHAI = ZoneInfo("Asia/Shanghai")
PAN = "6222021234567890123"
TID, MID = "10000001", "898100012340001"
T0 = datetime(2026, 11, 25, 2, 30, 15, tzinfo=UTC)  # 10:30:15 in Shanghai


def message(mti: str, **fields: str) -> Message:
    base = {"41": TID, "42": MID}
    base.update(fields)
    data = encode(
        mti, {k: v for k, v in base.items() if v}, SPEC, tpdu="6000030000", header="603100000000"
    )
    return DECODER.decode(data[2:])


def sale(stan: str = "000017", processing: str = "000000", **more: str) -> Message:
    fields = {
        "2": PAN,
        "3": processing,
        "4": "000000012800",
        "11": stan,
        "22": "051",
        "49": "156",
        "52": "0123456789ABCDEF",
        "60": "22000042000",
    }
    fields.update(more)
    return message("0200", **fields)


def answer(mti: str, stan: str = "000017", rc: str = "00", **more: str) -> Message:
    fields = {
        "11": stan,
        "12": "103015",
        "13": "1125",
        "37": "402511000017",
        "38": "A1B2C3",
        "39": rc,
        "60": "22000042000",
    }
    fields.update(more)
    return message(mti, **fields)


def pairer(**options: object) -> Pairer:
    return Pairer(SPEC, "agent-1", SHANGHAI, timeout_s=60.0, **options)  # type: ignore[arg-type]


def feed(tap: Pairer, request: Message, response: Message, at: float = 0.0) -> list[Event]:
    events = tap.observe(Seen(request, T0, at))
    assert events == []
    return tap.observe(Seen(response, T0, at + 0.25))


def on_the_wire(event: Event) -> Event:
    """The event as the collector would read it back: the contract's own validation."""
    parsed = parse_message(event.to_json())
    assert parsed == event
    assert PAN not in event.to_json().decode()
    return parsed  # type: ignore[return-value]


def test_an_approved_sale_becomes_a_txn_event_and_the_link_is_up() -> None:
    tap = pairer()
    status, txn = feed(tap, sale(), answer("0210"))
    assert isinstance(txn, TxnEvent)
    on_the_wire(txn)
    assert txn.kind is TxnKind.SALE
    assert (txn.tid, txn.mid, txn.stan, txn.rrn, txn.batch) == (
        TID,
        MID,
        "000017",
        "402511000017",
        "000042",
    )
    assert (txn.amount, txn.currency, txn.rc, txn.approved) == (12800, "CNY", "00", True)
    assert txn.pan_masked == "622202*********0123"
    assert txn.auth_code == "A1B2C3"
    assert txn.entry_mode is EntryMode.CHIP
    assert txn.terminal_time == datetime(2026, 11, 25, 10, 30, 15, tzinfo=SHANGHAI)
    assert isinstance(status, StatusEvent)
    on_the_wire(status)
    assert status.link_up is True
    assert status.host_rtt_ms == 250
    # Link health is published when it changes, not with every sale.
    assert [type(e) for e in feed(tap, sale("000018"), answer("0210", "000018"))] == [TxnEvent]


def test_a_declined_sale_is_published_as_declined() -> None:
    _status, txn = feed(pairer(), sale(), answer("0210", rc="51"))
    assert isinstance(txn, TxnEvent)
    assert (txn.rc, txn.approved) == ("51", False)


def test_the_year_of_the_host_date_is_the_one_nearest_the_observation() -> None:
    tap = pairer()
    tap.observe(Seen(sale(), datetime(2026, 12, 31, 16, 0, 30, tzinfo=UTC), 0.0))
    new_year = datetime(2026, 12, 31, 16, 0, 31, tzinfo=UTC)  # 2027-01-01 00:00:31 local
    events = tap.observe(Seen(answer("0210", **{"12": "235959", "13": "1231"}), new_year, 1.0))
    txn = events[-1]
    assert isinstance(txn, TxnEvent)
    assert txn.terminal_time == datetime(2026, 12, 31, 23, 59, 59, tzinfo=SHANGHAI)


def test_a_void_names_the_sale_it_cancels() -> None:
    request = sale("000020", processing="200000", **{"37": "402511000017", "61": "000042000017"})
    _status, void = feed(pairer(), request, answer("0210", "000020", **{"37": "402511000020"}))
    assert isinstance(void, TxnEvent)
    assert void.kind is TxnKind.VOID
    assert (void.orig_stan, void.orig_rrn) == ("000017", "402511000017")


def test_a_reversal_cancels_the_sale_with_its_stan() -> None:
    tap = pairer()
    feed(tap, sale(), answer("0210"))
    reversal = message("0400", **{"2": PAN, "3": "000000", "4": "000000012800", "11": "000017"})
    events = feed(tap, reversal, answer("0410", **{"60": ""}), at=5.0)
    (event,) = events
    assert isinstance(event, TxnEvent)
    on_the_wire(event)
    assert event.kind is TxnKind.REVERSAL
    assert (event.stan, event.orig_stan, event.orig_rrn) == ("000017", "000017", "402511000017")
    # The reversal itself carries no field 60: the batch is the sale's, read from it.
    assert event.batch == "000042"


def test_a_reversal_of_a_sale_never_answered_and_without_rrn_is_counted_not_published() -> None:
    tap = pairer()
    reversal = message(
        "0400", **{"2": PAN, "4": "000000012800", "11": "000031", "60": "22000042000"}
    )
    response = message("0410", **{"11": "000031", "39": "00"})
    events = feed(tap, reversal, response)
    assert [type(e) for e in events] == [StatusEvent]
    assert tap.skipped == {"no RRN (field 37)": 1}


def batch_close(verdict: str, rc: str = "00") -> list[Event]:
    totals = "003" + "000000038400" + "001" + "000000012800"
    request = message("0500", **{"11": "000040", "48": totals + "0", "60": "00000042201"})
    response = message(
        "0510", **{"11": "000040", "39": rc, "48": totals + verdict, "60": "00000042201"}
    )
    return feed(pairer(), request, response)


def test_a_balanced_batch_close_becomes_a_batch_event() -> None:
    _status, batch = batch_close("1")
    assert isinstance(batch, BatchEvent)
    on_the_wire(batch)
    assert (batch.batch, batch.count, batch.total, batch.result) == (
        "000042",
        3,
        38400,
        BatchResult.OK,
    )
    assert batch.extra == {
        "source": "tap",
        "credit_count": "1",
        "credit_total": "12800",
        "rc": "00",
    }


def test_an_unbalanced_or_failed_batch_close_says_so() -> None:
    assert batch_close("2")[-1].result is BatchResult.UNBALANCED  # type: ignore[union-attr]
    assert batch_close("1", rc="96")[-1].result is BatchResult.FAIL  # type: ignore[union-attr]


def test_timeouts_and_recovery_are_link_health_status_events() -> None:
    tap = pairer()
    feed(tap, message("0800", **{"11": "000001"}), message("0810", **{"11": "000001"}))
    tap.observe(Seen(sale("000002"), T0, 10.0))
    tap.observe(Seen(sale("000003"), T0, 20.0))
    assert tap.expire(69.9, T0) == []
    (first,) = tap.expire(70.0, T0)
    (second,) = tap.expire(80.0, T0)
    for status, failures in ((first, "1"), (second, "2")):
        assert isinstance(status, StatusEvent)
        on_the_wire(status)
        assert status.link_up is False
        assert status.extra is not None
        assert status.extra["host_consecutive_failures"] == failures
    assert second.extra is not None
    assert second.extra["host_timeouts"] == "2"
    assert "host_last_response_at" in second.extra
    back = feed(tap, sale("000004"), answer("0210", "000004"), at=90.0)
    status = back[0]
    assert isinstance(status, StatusEvent)
    assert status.link_up is True
    assert status.extra is not None
    assert status.extra["host_consecutive_failures"] == "0"
    assert tap.pending == 0


def test_a_refused_connection_is_a_failure_of_the_terminal_behind_the_tap() -> None:
    assert pairer().connect_failed(T0) == []
    (status,) = pairer(tid=TID).connect_failed(T0)
    assert isinstance(status, StatusEvent)
    assert status.tid == TID
    assert status.link_up is False
    assert status.extra is not None
    assert status.extra["host_connect_failures"] == "1"


def test_responses_without_requests_and_sign_ins_publish_no_transaction() -> None:
    tap = pairer()
    assert tap.observe(Seen(answer("0210"), T0, 0.0)) == []
    assert tap.counts["unpaired_response"] == 1
    events = feed(tap, message("0800", **{"11": "000001"}), message("0810", **{"11": "000001"}))
    assert [type(e) for e in events] == [StatusEvent]


_FIELD_VALUES = st.one_of(
    st.text(alphabet="0123456789", max_size=40),
    st.text(alphabet="0123456789ABCDEF *=-", max_size=40),
    st.text(max_size=20),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["0200", "0210", "0400", "0410", "0500", "0510", "0800", "0810"]),
            st.dictionaries(
                st.sampled_from(
                    [
                        "3",
                        "4",
                        "11",
                        "12",
                        "13",
                        "22",
                        "37",
                        "38",
                        "39",
                        "41",
                        "42",
                        "48",
                        "49",
                        "60",
                        "61",
                    ]
                ),
                _FIELD_VALUES,
            ),
            st.sampled_from([None, "622202*********0123", "1234****5678"]),
        ),
        max_size=12,
    )
)
def test_whatever_the_host_link_carries_the_pairer_only_returns_valid_events(
    messages: list[tuple[str, dict[str, str], str | None]],
) -> None:
    tap = pairer()
    mono = 0.0
    for mti, drawn, pan in messages:
        # A fixed TID and STAN (unless drawn) so that requests and responses pair.
        fields = {"41": TID, "11": "000017", **drawn}
        mono += 1.0
        decoded = Message(mti, "", "", MappingProxyType(fields), pan)
        for event in tap.observe(Seen(decoded, T0, mono)) + tap.expire(mono, T0):
            on_the_wire(event)
    for event in tap.expire(mono + 1000.0, T0):
        on_the_wire(event)
