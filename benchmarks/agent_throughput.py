"""Frames per second one agent carries from a pseudo-terminal to the broker.

Two writers, each measured against the agent and against a baseline in the same run:

- stop-and-wait: a `SimulatedTerminal` with no rate limit, one frame in flight, as a real
  terminal talks; the figure is what one terminal can push through one agent port;
- pipelined: frames written back to back without waiting for ACKs (only the pty buffer
  holds the writer back); the figure is the agent's ceiling on one port.

The agent's figure runs from the first frame written to the last event received by a
subscriber on the broker (every frame must also be ACKed). The baseline is the raw pty
round trip: `_echo_ack.py` opens the port with pyserial as the agent does and ACKs each
frame, with no codec, no outbox and no MQTT; its figure runs to the last ACK.

    .venv/bin/python benchmarks/agent_throughput.py [--frames 2000] [--fsync full normal]
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from _harness import (
    TID,
    AgentProcess,
    Broker,
    RawPty,
    Subscriber,
    fsync_latency,
    machine,
    make_frames,
    quiet_logging,
    start_echo_reader,
    stop_process,
    table,
    wait_until,
    workspace,
    write_pipelined,
)

from simulators.pty import PtyLink
from simulators.stream import TrafficGenerator
from simulators.terminal import SimulatedTerminal, TerminalConfig


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured row: frames carried, in how long, and how long until all were ACKed."""

    label: str
    frames: int
    seconds: float
    acked_s: float

    @property
    def rate(self) -> float:
        return self.frames / self.seconds

    @property
    def ack_rate(self) -> float:
        return self.frames / self.acked_s


def stop_and_wait(link: PtyLink, frames: int, timeout: float) -> tuple[float, float]:
    """Run a SimulatedTerminal flat out for `frames` messages; (start, all ACKed) times."""
    terminal = SimulatedTerminal(
        link,
        TrafficGenerator(TID, seed=1),
        TerminalConfig(tid=TID, rate=0, heartbeat_interval=0, seed=1, reader_wait=0),
    )
    start = time.monotonic()
    thread = terminal.start(count=frames)
    thread.join(timeout)
    if thread.is_alive():
        terminal.stop()
        raise TimeoutError(f"stop-and-wait terminal not done after {timeout:g} s")
    done = time.monotonic()
    counters = terminal.counters
    if counters.acked != frames or counters.resends:
        raise RuntimeError(f"terminal counters show trouble: {counters.as_dict()}")
    return start, done


def baseline(workdir: Path, frames: list[bytes], timeout: float) -> list[Figure]:
    """Both writers against the echo-ACK reader: the pty and pyserial round trip alone."""
    figures = []
    with PtyLink(workdir / f"tty-echo-{uuid.uuid4().hex[:6]}") as link:
        reader = start_echo_reader(link.name)
        try:
            if not link.wait_for_reader(10):
                raise TimeoutError("echo reader did not open the pty")
            start, done = stop_and_wait(link, len(frames), timeout)
        finally:
            stop_process(reader)
    figures.append(Figure("echo-ACK reader (baseline)", len(frames), done - start, done - start))
    pty = RawPty()
    reader = start_echo_reader(pty.url)
    try:
        pty.wait_for_reader(10)
        result = write_pipelined(pty, frames, timeout)
    finally:
        stop_process(reader)
        pty.close()
    if result.acks != len(frames):
        raise RuntimeError(f"echo reader: {result.acks} ACKs, {result.naks} NAKs")
    figures.append(
        Figure("echo-ACK reader (baseline)", len(frames), result.seconds, result.seconds)
    )
    return figures


def agent_figures(
    workdir: Path, broker: Broker, frames: list[bytes], fsync: str, timeout: float
) -> list[Figure]:
    """Both writers against a fresh agent each, timed to the subscriber's last event."""
    label = f"agent, fsync={fsync}"
    figures = []
    with ExitStack() as stack:
        prefix = f"bench/{uuid.uuid4().hex[:8]}"
        link = stack.enter_context(PtyLink(workdir / f"tty-saw-{fsync}"))
        subscriber = stack.enter_context(Subscriber(broker, prefix))
        subscriber.wait_subscribed()
        agent = AgentProcess(workdir / f"agent-saw-{fsync}", broker, prefix, link.name, fsync=fsync)
        stack.callback(agent.stop)
        agent.start()
        ready(agent, subscriber, lambda: link.wait_for_reader(0.1))
        start, acked = stop_and_wait(link, len(frames), timeout)
        received(agent, subscriber, len(frames), timeout)
        assert subscriber.last is not None
        figures.append(Figure(label, len(frames), subscriber.last - start, acked - start))
    with ExitStack() as stack:
        prefix = f"bench/{uuid.uuid4().hex[:8]}"
        pty = RawPty()
        stack.callback(pty.close)
        subscriber = stack.enter_context(Subscriber(broker, prefix))
        subscriber.wait_subscribed()
        agent = AgentProcess(workdir / f"agent-pipe-{fsync}", broker, prefix, pty.url, fsync=fsync)
        stack.callback(agent.stop)
        agent.start()
        ready(agent, subscriber, pty.reader_attached)
        result = write_pipelined(pty, frames, timeout)
        if result.acks != len(frames):
            raise RuntimeError(f"agent: {result.acks} ACKs and {result.naks} NAKs")
        received(agent, subscriber, len(frames), timeout)
        assert subscriber.last is not None
        figures.append(
            Figure(label, len(frames), subscriber.last - result.first_write, result.seconds)
        )
    return figures


def ready(agent: AgentProcess, subscriber: Subscriber, port_open: Callable[[], bool]) -> None:
    """Wait until the agent has opened the port and is connected to the broker."""
    try:
        wait_until(lambda: not agent.alive() or port_open(), 20, "the agent to open the port")
        wait_until(
            lambda: not agent.alive() or subscriber.online.is_set(), 20, "the agent's presence"
        )
    except TimeoutError as exc:
        raise RuntimeError(f"{exc}; agent log:\n{agent.log_tail()}") from exc
    if not agent.alive():
        raise RuntimeError(f"the agent exited; its log:\n{agent.log_tail()}")


def received(agent: AgentProcess, subscriber: Subscriber, count: int, timeout: float) -> None:
    if not subscriber.wait_for(count, timeout):
        raise RuntimeError(
            f"subscriber got {subscriber.count} of {count} events; agent log:\n{agent.log_tail()}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Frames/s from a pty through one agent to the broker, against the bare "
        "pty round trip (an echo-ACK reader) measured in the same run."
    )
    parser.add_argument("--frames", type=int, default=2000, help="frames per case (2000)")
    parser.add_argument(
        "--fsync",
        nargs="+",
        choices=("full", "normal"),
        default=["full", "normal"],
        help="agent outbox fsync modes to measure (both; 'full' is the default config)",
    )
    parser.add_argument(
        "--baseline-runs", type=int, default=3, help="baseline runs, median kept (3)"
    )
    parser.add_argument("--timeout", type=float, default=300, help="per case, seconds (300)")
    args = parser.parse_args(argv)
    quiet_logging()
    frames = make_frames(args.frames)
    print(f"machine: {machine()}")
    print(f"{args.frames} frames per case, {sum(map(len, frames)) / len(frames):.0f} bytes each")
    with workspace() as workdir, ExitStack() as stack:
        broker = Broker(workdir / "broker")
        broker.start()
        stack.callback(broker.stop)
        print(f"disk: {fsync_latency(workdir)}", flush=True)
        # The baseline takes well under a second a run: take the median of a few.
        runs = [baseline(workdir, frames, args.timeout) for _ in range(args.baseline_runs)]
        base = [
            sorted((run[index] for run in runs), key=lambda figure: figure.rate)[len(runs) // 2]
            for index in range(2)
        ]
        agents = [
            agent_figures(workdir, broker, frames, fsync, args.timeout) for fsync in args.fsync
        ]
    rows = []
    for index, writer in enumerate(("stop-and-wait", "pipelined")):
        reference = base[index]
        rows.append([writer, reference.label, reference.seconds, reference.rate, "-", "1.00"])
        for figures in agents:
            figure = figures[index]
            rows.append(
                [
                    writer,
                    figure.label,
                    figure.seconds,
                    figure.rate,
                    f"{figure.ack_rate:,.0f}",
                    f"{figure.rate / reference.rate:.2f}",
                ]
            )
    print()
    print(
        table(
            ["writer", "reader", "seconds", "frames/s", "ACKed/s", "x baseline"],
            [[r[0], r[1], f"{r[2]:.2f}", f"{r[3]:,.0f}", r[4], r[5]] for r in rows],
        )
    )
    print(
        "\nframes/s: first frame written to last event at the subscriber (agent) or last ACK "
        "(baseline);\nACKed/s: the same frames to the last ACK the writer read; "
        "x baseline: agent frames/s / baseline frames/s."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
