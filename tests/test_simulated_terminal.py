"""The simulated terminal against the real codec, over a real pseudo-terminal.

A miniature agent (`LineReader`) opens the pty's symlink with `posmon.serialport`, feeds a
`SerialCodec` and answers every frame, or drops and NAKs replies as a test asks. The
stream generator and the stop-and-wait sender are also tested on their own, without IO.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from posmon.pan import luhn_valid, mask_pan
from posmon.serialport import SerialPort, SerialPortError, open_port
from posmon.wire.codec import (
    APPROVED_CODES,
    EventBuilder,
    Outcome,
    Received,
    SerialCodec,
    parse_data,
)
from posmon.wire.frames import ACK, NAK, STX
from posmon.wire.models import BatchEvent, StatusEvent, TxnEvent
from simulators.acquirer import (
    AcquirerConfig,
    AcquirerCore,
    FaultRates,
    MerchantProfile,
    SettlementMode,
    SettlementTerms,
)
from simulators.acquirer.terms import VOID_WINDOW
from simulators.faults import Faults, noise_burst, split_frame
from simulators.link import SerialLink
from simulators.messages import Message
from simulators.pty import PtyLink
from simulators.script import ScriptedStream, load_script
from simulators.sender import Settled, StopAndWait
from simulators.stream import DECLINE_CODES, TrafficGenerator, TrafficProfile
from simulators.terminal import Delivery, SimulatedTerminal, TerminalConfig

TID = "10000001"
MID = "898100012340001"
T0 = datetime(2026, 11, 25, 2, 30, tzinfo=UTC)

Policy = Callable[[Received], bytes | None]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


class LineReader:
    """The agent's end of the line in miniature: open, decode, answer; reopen after errors."""

    def __init__(self, path: Path, policy: Policy | None = None) -> None:
        self.path = path
        self.policy: Policy = policy or (lambda received: received.reply)
        self.codec = SerialCodec(EventBuilder(agent_id="t"), source="test")
        self.received: list[tuple[float, Received]] = []
        self.errors: list[str] = []
        self.opens = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="line-reader", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        assert not self._thread.is_alive()

    def outcomes(self, outcome: Outcome) -> list[Received]:
        return [received for _, received in list(self.received) if received.outcome is outcome]

    @property
    def accepted(self) -> list[Received]:
        return self.outcomes(Outcome.ACCEPTED)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                port = open_port(str(self.path), timeout=0.02)
            except SerialPortError:
                self._stop.wait(0.02)
                continue
            self.opens += 1
            try:
                self._serve(port)
            # pyserial's flush() lets termios.error (not an OSError) out of
            # posmon.serialport's write when the line drops mid-ACK.
            except (SerialPortError, termios.error) as exc:
                self.errors.append(str(exc))
            finally:
                port.close()

    def _serve(self, port: SerialPort) -> None:
        while not self._stop.is_set():
            data = port.read(max(1, port.in_waiting))
            now = datetime.now(UTC)
            if not data:
                self.codec.expire(now)
                continue
            for received in self.codec.feed(data, now):
                self.received.append((time.monotonic(), received))
                reply = self.policy(received)
                if reply:
                    port.write(reply)


@pytest.fixture
def line(tmp_path: Path) -> Iterator[PtyLink]:
    with PtyLink(tmp_path / "ttyPOS0") as link:
        yield link


@pytest.fixture
def reader(line: PtyLink) -> Iterator[Callable[..., LineReader]]:
    readers: list[LineReader] = []

    def start(policy: Policy | None = None) -> LineReader:
        readers.append(LineReader(line.path, policy))
        return readers[-1]

    yield start
    for item in readers:
        item.close()


def run_terminal(
    link: PtyLink | SerialLink,
    *,
    count: int,
    seed: int = 1,
    faults: Faults | None = None,
    profile: TrafficProfile | None = None,
    source: TrafficGenerator | ScriptedStream | None = None,
    close_batch: bool = False,
    timeout: float = 10.0,
    **config: float | None,
) -> tuple[SimulatedTerminal, list[Delivery]]:
    """Run a terminal to the end of its traffic; fail (not hang) if it does not finish."""
    deliveries: list[Delivery] = []
    settings: dict[str, float | None] = {"rate": 0.0, "heartbeat_interval": 0.0, "reader_wait": 5}
    settings.update(config)
    terminal = SimulatedTerminal(
        link,
        source or TrafficGenerator(TID, profile or TrafficProfile(mid=MID), seed=seed),
        TerminalConfig(tid=TID, faults=faults or Faults(), seed=seed, **settings),  # type: ignore[arg-type]
        on_delivery=deliveries.append,
    )
    thread = terminal.start(count=count, close_batch=close_batch)
    thread.join(timeout)
    if thread.is_alive():
        terminal.stop()
        thread.join(3)
        pytest.fail(f"terminal did not finish within {timeout} s: {terminal.counters}")
    return terminal, deliveries


# --- over a real pseudo-terminal ------------------------------------------------------------


def test_generated_frames_arrive_accepted_in_seq_order_with_masked_pan(
    line: PtyLink, reader: Callable[..., LineReader]
) -> None:
    agent = reader()
    terminal, deliveries = run_terminal(line, count=40, seed=3)

    counters = terminal.counters
    assert counters.sent == counters.acked == 40
    assert counters.naks == counters.resends == counters.given_up == 0
    wait_until(lambda: len(agent.accepted) == 40, 2, "40 accepted frames")
    assert [received.seq for received in agent.accepted] == list(range(40))
    assert agent.codec.counters.rejected == 0
    assert agent.codec.decoder.counters.noise_bytes == 0

    txns = [r.message for r in agent.accepted if isinstance(r.message, TxnEvent)]
    printed = [d.message.fields["PAN"] for d in deliveries if d.message.type == "TXN"]
    assert len(txns) == len(printed) > 20
    for event, pan in zip(txns, printed, strict=True):
        assert pan.isdigit() and luhn_valid(pan), "the terminal prints full PANs by default"
        assert event.pan_masked == mask_pan(pan)
        assert "*" in event.pan_masked
    assert all(d.settled is Settled.ACKED and d.attempts == 1 for d in deliveries)


def test_corrupted_lrc_is_naked_and_the_resend_accepted(
    line: PtyLink, reader: Callable[..., LineReader]
) -> None:
    agent = reader()
    terminal, _ = run_terminal(line, count=6, faults=Faults(corrupt_lrc=1.0))

    counters = terminal.counters
    assert (counters.sent, counters.acked, counters.corrupted) == (6, 6, 6)
    assert counters.naks == counters.resends == 6
    assert counters.timeouts == counters.given_up == 0
    wait_until(lambda: len(agent.accepted) == 6, 2, "6 accepted frames")
    rejected = agent.outcomes(Outcome.REJECTED)
    assert [r.reason for r in rejected] == ["lrc"] * 6
    assert all(r.reply == NAK for r in rejected)
    assert [r.seq for r in agent.accepted] == list(range(6))


def test_missing_ack_brings_a_resend_after_a_second_taken_as_repeat(
    line: PtyLink, reader: Callable[..., LineReader]
) -> None:
    dropped: list[Received] = []

    def lose_first_ack(received: Received) -> bytes | None:
        if received.outcome is Outcome.ACCEPTED and not dropped:
            dropped.append(received)
            return None
        return received.reply

    agent = reader(lose_first_ack)
    terminal, deliveries = run_terminal(line, count=3)

    counters = terminal.counters
    assert (counters.sent, counters.acked, counters.timeouts, counters.resends) == (3, 3, 1, 1)
    assert deliveries[0].attempts == 2
    wait_until(lambda: len(agent.received) == 4, 2, "4 frames")
    assert [r.outcome for _, r in agent.received] == [
        Outcome.ACCEPTED,
        Outcome.REPEAT,
        Outcome.ACCEPTED,
        Outcome.ACCEPTED,
    ]
    (first_at, first), (again_at, again) = agent.received[:2]
    assert again.seq == first.seq == 0
    assert 0.9 <= again_at - first_at <= 1.5
    assert [r.seq for r in agent.accepted] == [0, 1, 2], "delivered once"


def test_line_noise_is_counted_by_the_decoder_and_nothing_published(
    line: PtyLink, reader: Callable[..., LineReader]
) -> None:
    agent = reader()
    terminal, _ = run_terminal(line, count=15, faults=Faults(noise=1.0, noise_max=12))

    counters = terminal.counters
    assert counters.noise_bytes >= 15
    assert counters.acked == counters.sent == 15
    wait_until(lambda: len(agent.received) == 15, 2, "15 frames")
    assert agent.codec.decoder.counters.noise_bytes == counters.noise_bytes
    assert {r.outcome for _, r in agent.received} == {Outcome.ACCEPTED}


def test_split_frames_reassemble_and_bad_content_is_acked_not_resent(
    line: PtyLink, reader: Callable[..., LineReader]
) -> None:
    agent = reader()
    faults = Faults(split=1.0, invalid=0.4, unknown_type=0.3)
    terminal, _ = run_terminal(line, count=20, seed=5, faults=faults)

    counters = terminal.counters
    assert counters.invalid > 0 and counters.unknown_type > 0
    assert counters.split == counters.sent == counters.acked == 20 + counters.unknown_type
    assert counters.naks == counters.resends == 0
    wait_until(lambda: len(agent.received) == counters.sent, 2, "every frame")
    codec = agent.codec.counters
    assert (codec.invalid, codec.unknown_type, codec.rejected) == (
        counters.invalid,
        counters.unknown_type,
        0,
    )
    assert codec.accepted == 20 - counters.invalid
    assert all(r.reply == ACK for _, r in agent.received)
    seqs = [r.seq for _, r in agent.received]
    assert seqs == list(range(counters.sent))


def test_unplug_replug_reader_reopens_and_traffic_resumes(
    line: PtyLink, reader: Callable[..., LineReader]
) -> None:
    agent = reader()
    faults = Faults(unplug_every=4, unplug_for=0.2)
    terminal, _ = run_terminal(line, count=10, faults=faults)

    counters = terminal.counters
    assert counters.unplugs == 2
    assert counters.acked == counters.sent == 10
    assert counters.given_up == 0
    wait_until(lambda: len(agent.accepted) == 10, 2, "10 accepted frames")
    assert [r.seq for r in agent.accepted] == list(range(10))
    assert len(agent.errors) == 2, "the reader saw each unplug as an error"
    assert agent.opens == 3
    assert line.path.is_symlink()
    assert os.readlink(line.path) == line.device


def test_unplugged_link_has_no_symlink_until_replugged(tmp_path: Path) -> None:
    link = PtyLink(tmp_path / "ttyPOS0")
    try:
        first = link.device
        assert first is not None and os.readlink(link.path) == first
        link.unplug()
        assert not link.up and not link.path.exists() and not link.path.is_symlink()
        link.replug()
        assert link.up and os.readlink(link.path) == link.device
    finally:
        link.close()
    assert not link.path.is_symlink()


def test_a_frame_nobody_answers_is_given_up_after_three_resends(line: PtyLink) -> None:
    started = time.monotonic()
    terminal, deliveries = run_terminal(line, count=1, reader_wait=0, ack_timeout=0.1)

    assert time.monotonic() - started < 2
    counters = terminal.counters
    assert (counters.sent, counters.resends, counters.timeouts, counters.given_up) == (1, 3, 4, 1)
    assert [(d.settled, d.attempts) for d in deliveries] == [(Settled.GIVEN_UP, 4)]


def test_batch_close_counts_and_totals_the_approved_sales(
    line: PtyLink, reader: Callable[..., LineReader]
) -> None:
    agent = reader()
    profile = TrafficProfile(mid=MID, batch_size=12, decline_rate=0.2)
    run_terminal(line, count=45, seed=11, profile=profile, close_batch=True)

    events = [r.message for r in agent.accepted]
    txns = [e for e in events if isinstance(e, TxnEvent)]
    batches = [e for e in events if isinstance(e, BatchEvent)]
    assert len(batches) >= 3
    assert any(not t.approved for t in txns), "the seed should give declines"
    assert any(t.kind != "SALE" for t in txns), "the seed should give other kinds"
    for batch in batches:
        sales = [t for t in txns if t.batch == batch.batch and t.kind == "SALE" and t.approved]
        assert batch.result == "OK"
        assert (batch.count, batch.total) == (len(sales), sum(t.amount for t in sales))
    numbers = [int(b.batch) for b in batches]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))


def test_scripted_messages_keep_given_seq_and_wrap(
    line: PtyLink, reader: Callable[..., LineReader], tmp_path: Path
) -> None:
    script = tmp_path / "script.jsonl"
    lines = [
        {"type": "HBT", "fields": {"SEQ": 65534, "TID": TID, "TS": "@now"}},
        {"type": "STS", "fields": {"TID": TID, "LINK": "DOWN", "NET": "4G", "SAF": 3}},
        {"type": "HBT", "fields": {"TID": TID, "TS": "20261125103015"}},
    ]
    script.write_text(
        "# a wrap\n" + "\n".join(json.dumps(item) for item in lines) + "\n", encoding="utf-8"
    )
    agent = reader()
    source = ScriptedStream(load_script(script))
    terminal, _ = run_terminal(line, count=10, source=source)

    assert terminal.counters.acked == 3 and terminal.next_seq == 1
    wait_until(lambda: len(agent.accepted) == 3, 2, "3 accepted frames")
    assert [r.seq for r in agent.accepted] == [65534, 65535, 0]
    status = agent.accepted[1].message
    assert isinstance(status, StatusEvent)
    assert (status.link_up, status.saf_pending) == (False, 3)


def test_serial_url_link_over_a_socket() -> None:
    codec = SerialCodec(EventBuilder(agent_id="t"), source="socket")
    received: list[Received] = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(5)
        port = server.getsockname()[1]

        def agent() -> None:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(5)
                while data := conn.recv(4096):
                    for item in codec.feed(data, datetime.now(UTC)):
                        received.append(item)
                        conn.sendall(item.reply)

        thread = threading.Thread(target=agent, daemon=True)
        thread.start()
        link = SerialLink(f"socket://127.0.0.1:{port}")
        try:
            terminal, _ = run_terminal(link, count=5, faults=Faults(corrupt_lrc=0.5))
        finally:
            link.close()
        thread.join(5)
    assert not thread.is_alive()
    assert terminal.counters.acked == 5
    assert [r.seq for r in received if r.outcome is Outcome.ACCEPTED] == list(range(5))


# --- the command ----------------------------------------------------------------------------


def _posmon(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", "from posmon.cli import main; main()", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_cli_runs_a_terminal_on_a_pty_and_prints_counters(tmp_path: Path) -> None:
    process = _posmon(
        "simulate", "terminal", "--link", str(tmp_path), "--count", "5", "--rate", "0",
        "--heartbeat", "0", "--seed", "4", "--masked-pan",
    )  # fmt: skip
    agent = None
    try:
        wait_until((tmp_path / "ttyPOS0").is_symlink, 10, "the pty symlink")
        agent = LineReader(tmp_path / "ttyPOS0")
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        if agent is not None:
            agent.close()
    assert process.returncode == 0, err
    assert f"Connect the agent to: {tmp_path / 'ttyPOS0'}" in out
    assert "sent=6 acked=6" in out, "5 messages and the closing BAT"
    assert not (tmp_path / "ttyPOS0").exists()
    assert len(agent.accepted) == 6
    assert isinstance(agent.accepted[-1].message, BatchEvent)


def test_cli_ctrl_c_stops_cleanly(tmp_path: Path) -> None:
    link = tmp_path / "pos" / "by-id"
    link.parent.mkdir()
    process = _posmon("simulate", "terminal", "--pty", str(link), "--rate", "50", "--seed", "2")
    agent = None
    try:
        wait_until(link.is_symlink, 10, "the pty symlink")
        agent = LineReader(link)
        wait_until(lambda: len(agent.accepted) >= 5, 5, "traffic")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        if agent is not None:
            agent.close()
    assert process.returncode == 0, err
    assert "acked=" in out.splitlines()[-1]
    assert "Traceback" not in err
    assert not link.exists()


# --- without IO: the traffic generator ------------------------------------------------------


def _traffic(seed: int, n: int, **profile: object) -> list[Message]:
    generator = TrafficGenerator(TID, TrafficProfile(mid=MID, **profile), seed=seed)  # type: ignore[arg-type]
    return [generator.next_message(T0 + timedelta(seconds=7 * i)) for i in range(n)]


def test_same_seed_gives_the_same_traffic() -> None:
    assert _traffic(42, 300) == _traffic(42, 300)
    assert _traffic(42, 300) != _traffic(43, 300)


def test_generated_traffic_is_valid_and_realistic() -> None:
    messages = _traffic(8, 600, link_flap=0.3)
    builder = EventBuilder(agent_id="t")
    for index, message in enumerate(messages):
        fields = {"SEQ": str(index), **message.fields}
        builder.build(parse_data(Message(message.type, fields).to_data()), T0)  # contract-valid

    txns = [m.fields for m in messages if m.type == "TXN"]
    kinds = {t["KIND"] for t in txns}
    assert kinds == {"SALE", "VOID", "REFUND", "REVERSAL", "PREAUTH_COMPLETION"}
    codes = {t["RC"] for t in txns}
    assert {"00", "Y3"} <= codes and codes - {"00", "Y3"} <= {c for c, _ in DECLINE_CODES}
    assert len(codes) >= 5
    for txn in txns:
        pan = txn["PAN"]
        assert luhn_valid(pan) and len(pan) in (16, 19)
        assert pan[0] in "45" or pan.startswith("62")
        assert txn["CUR"] == "156" and len(txn["RRN"]) == 12 and txn["RRN"][-6:] == txn["STAN"]
        assert txn["TS"] == "20261125" + txn["TS"][8:] and txn["TS"][8:10] in {"10", "11"}
    stans = [int(t["STAN"]) for t in txns]
    assert stans == list(range(stans[0], stans[0] + len(stans)))

    earlier: dict[str, str] = {}
    for txn in txns:
        if txn["KIND"] in ("VOID", "REFUND", "REVERSAL"):
            assert earlier[txn["ORIG_STAN"]] == txn["ORIG_RRN"], "refers to an earlier sale"
        elif txn["KIND"] == "SALE" and txn["RC"] in APPROVED_CODES:
            earlier[txn["STAN"]] = txn["RRN"]


def test_saf_grows_while_the_host_link_is_down() -> None:
    messages = _traffic(8, 600, link_flap=0.3)
    saf_when_down = []
    offline = 0
    for message in messages:
        if message.type == "STS" and message.fields["LINK"] == "DOWN":
            saf_when_down.append(int(message.fields["SAF"]))
        elif message.type == "TXN" and message.fields["RC"] == "Y3":
            offline += 1
    assert offline > 0 and max(saf_when_down) > 0
    downs = [m for m in messages if m.type == "STS" and m.fields["LINK"] == "DOWN"]
    assert all("RTT" not in m.fields for m in downs)


def test_masked_pan_option_prints_first_six_last_four() -> None:
    pans = [m.fields["PAN"] for m in _traffic(2, 50, masked_pan=True) if m.type == "TXN"]
    assert pans and all(pan == mask_pan(pan) and "*" in pan for pan in pans)


# --- without IO: faults and the stop-and-wait sender ----------------------------------------


def test_noise_never_holds_stx_and_split_pieces_join_up() -> None:
    rng = random.Random(0)
    assert all(STX not in noise_burst(rng, 64) for _ in range(200))
    frame = _traffic(1, 1)[0].with_seq(0).to_frame()
    for _ in range(50):
        pieces = split_frame(frame, rng)
        assert 2 <= len(pieces) <= 4 and b"".join(pieces) == frame


def test_sender_resends_the_same_bytes_and_gives_up_after_three_resends() -> None:
    sender = StopAndWait()
    assert sender.send(b"frame", 0.0, first=b"broken") == b"broken"
    assert sender.receive(NAK, 0.2).write == b"frame"
    assert sender.poll(1.1).write == b""
    assert sender.poll(1.2).write == b"frame"
    assert sender.poll(2.2).write == b"frame"
    step = sender.poll(3.2)
    assert (step.write, step.settled) == (b"", Settled.GIVEN_UP)
    assert not sender.busy
    counters = sender.counters
    assert (counters.sent, counters.naks, counters.timeouts, counters.resends) == (1, 1, 3, 3)
    assert counters.given_up == 1 and counters.acked == 0


def test_sender_settles_on_ack_and_counts_late_answers_as_stray() -> None:
    sender = StopAndWait()
    sender.send(b"frame", 0.0)
    assert sender.receive(b"\x00" + ACK + ACK, 0.1).settled is Settled.ACKED
    assert sender.receive(ACK, 0.2).settled is None
    assert sender.counters.acked == 1 and sender.counters.stray_bytes == 3


def _replay(messages: list[tuple[datetime, Message]], core: AcquirerCore) -> list[str]:
    """Feed a terminal's messages to the acquirer simulator as the agent would publish them;
    the voids and reversals of a sale already credited, by RRN."""
    builder = EventBuilder(agent_id="t")
    credited: set[str] = set()
    late: list[str] = []
    for seq, (at, message) in enumerate(messages):
        credited |= {s.rrn for s in core.advance(at).settlements}
        event = builder.build(parse_data(message.with_seq(seq % 65536).to_data()), at)
        if (
            isinstance(event, TxnEvent)
            and event.kind in ("VOID", "REVERSAL")
            and event.approved
            and event.orig_rrn in credited
        ):
            late.append(event.orig_rrn)
        core.receive(event, at)
    return late


@pytest.mark.parametrize("mode", ["D0", "T0"])
def test_a_terminal_voids_only_what_its_acquirer_has_not_paid(mode: str) -> None:
    # A D0 or T0 merchant is paid sale by sale: once paid, a void is refused and the
    # operator refunds instead. A busy day, a message every two minutes.
    terms = SettlementTerms(mode=SettlementMode(mode), t0_hours=1.0)
    core = AcquirerCore(
        AcquirerConfig(merchants=(MerchantProfile.derive(MID, terms),), rates=FaultRates.none()),
        seed=5,
    )
    profile = TrafficProfile(
        mid=MID, batch_size=400, link_flap=0.0, void_window_s=VOID_WINDOW.total_seconds()
    )
    generator = TrafficGenerator(TID, profile, seed=4)
    start = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)
    messages = [
        (start + timedelta(minutes=2 * n), generator.next_message(start + timedelta(minutes=2 * n)))
        for n in range(300)
    ]
    kinds = [m.fields.get("KIND") for _, m in messages]
    assert kinds.count("VOID") >= 3 and kinds.count("REVERSAL") >= 2 and kinds.count("REFUND")
    assert _replay(messages, core) == []
    core.advance(start + timedelta(days=2))
    assert core.counters["cancelled"] >= 5


def test_a_reversal_follows_its_sale_and_a_void_stays_in_the_open_batch() -> None:
    generator = TrafficGenerator(TID, TrafficProfile(mid=MID, batch_size=15), seed=9)
    previous: Message | None = None
    batch_of: dict[str, str] = {}
    for n in range(2000):
        message = generator.next_message(T0 + timedelta(seconds=7 * n))
        fields = message.fields
        if message.type == "TXN" and fields["KIND"] == "SALE":
            batch_of[fields["RRN"]] = fields["BATCH"]
        elif message.type == "TXN" and fields["KIND"] == "REVERSAL":
            assert previous is not None and previous.type == "TXN"
            assert previous.fields["KIND"] == "SALE" and previous.fields["RC"] in APPROVED_CODES
            assert fields["ORIG_RRN"] == previous.fields["RRN"]
        elif message.type == "TXN" and fields["KIND"] == "VOID":
            assert batch_of[fields["ORIG_RRN"]] == fields["BATCH"], "voids the open batch only"
        previous = message
