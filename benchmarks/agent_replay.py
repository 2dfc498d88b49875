"""How fast the agent empties its outbox after a broker outage, against bare paho.

For each in-flight window (default: 20, the agent's default `mqtt.inflight`, and 100):

1. a subscriber subscribes (persistent session, QoS 1), then the broker is stopped;
2. an agent starts with the broker down and is fed `--events` frames on a pty (TXN only,
   after the one STS a terminal sends first); all are ACKed, so all are in its outbox;
3. the broker starts again; the agent reconnects and replays; the subscriber counts;
4. baseline: `_bare_publisher.py`, a bare paho QoS 1 publisher with the same in-flight
   window, publishes the very same topics and payloads (read from the agent's outbox
   before the replay) to the same broker, and the same subscriber method counts them.

Rates are events/s between the first and the last event the subscriber receives, which
leaves out the agent's reconnect delay; "to last" also gives the rate from the broker's
restart (agent) or the first publish (bare) to the last event received.

    .venv/bin/python benchmarks/agent_replay.py [--events 10000] [--inflight 20 100]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from _harness import (
    AgentProcess,
    Broker,
    RawPty,
    Subscriber,
    fsync_latency,
    machine,
    make_frames,
    quiet_logging,
    table,
    txn_profile,
    workspace,
    write_pipelined,
)

# The agent retries every 0.1-0.5 s (reconnect_min_s/max_s); much longer is worth a look.
SLOW_RECONNECT_S = 2.0


@dataclass(frozen=True, slots=True)
class Replay:
    """One replay as the subscriber saw it; times are time.monotonic()."""

    label: str
    inflight: int
    events: int
    start: float  # broker back up (agent) or first publish (bare)
    first: float
    last: float
    publisher_done: float | None = None  # bare: last PUBACK
    subscriber_back: float | None = None  # agent: the subscriber's reconnection

    @property
    def subscriber_late(self) -> bool:
        """The subscriber came back later than the agent can: it may have got a burst."""
        return self.subscriber_back is None or self.subscriber_back - self.start > 0.5

    @property
    def rate(self) -> float:
        """Events/s from the first to the last event received."""
        return self.events / (self.last - self.first)

    @property
    def rate_from_start(self) -> float:
        return self.events / (self.last - self.start)


def agent_replay(
    workdir: Path,
    broker: Broker,
    frames: list[bytes],
    *,
    inflight: int,
    fsync: str,
    timeout: float,
    name: str,
) -> tuple[Replay, list[tuple[str, bytes]], float]:
    """Fill an agent's outbox with the broker down, start the broker, time the replay."""
    prefix = f"bench/{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        subscriber = stack.enter_context(Subscriber(broker, prefix))
        subscriber.wait_subscribed()
        pty = RawPty()
        stack.callback(pty.close)
        agent = AgentProcess(
            workdir / name, broker, prefix, pty.url, inflight=inflight, fsync=fsync
        )
        stack.callback(agent.stop)
        broker.stop()
        stopped = time.monotonic()
        try:
            agent.start()
            pty.wait_for_reader(20)
            filling = write_pipelined(pty, frames, timeout)
            if filling.acks != len(frames) or agent.outbox_size() != len(frames):
                raise RuntimeError(
                    f"filling: {filling.acks} ACKs, {filling.naks} NAKs, outbox holds "
                    f"{agent.outbox_size()} of {len(frames)}; agent log:\n{agent.log_tail()}"
                )
            entries = agent.outbox_entries()
        finally:
            broker.start()  # the outage ends here, or the next case finds no broker
        start = time.monotonic()
        if not subscriber.wait_for(len(frames), timeout):
            raise RuntimeError(
                f"replay: {subscriber.count} of {len(frames)} events; log:\n{agent.log_tail()}"
            )
        assert subscriber.first is not None and subscriber.last is not None
        if subscriber.first - start > SLOW_RECONNECT_S:
            print(
                f"warning: first replayed event {subscriber.first - start:.1f} s after the "
                f"broker came back; the agent's log:\n{agent.log_tail(30)}",
                flush=True,
            )
        back = [moment for moment in subscriber.connected_at if moment > stopped]
        replay = Replay(
            f"agent, inflight {inflight}",
            inflight,
            len(frames),
            start,
            subscriber.first,
            subscriber.last,
            subscriber_back=back[0] if back else None,
        )
    return replay, entries, len(frames) / filling.seconds


def bare_replay(
    workdir: Path,
    broker: Broker,
    entries: list[tuple[str, bytes]],
    *,
    inflight: int,
    timeout: float,
) -> Replay:
    """The same messages through a bare paho publisher, under a prefix of their own."""
    prefix = f"bench/{uuid.uuid4().hex[:8]}"
    path = workdir / f"bare-{inflight}.jsonl"
    with path.open("w") as out:
        for topic, payload in entries:
            # Same length topic: only the 8-character random part of the prefix changes.
            rest = topic.split("/", 2)[2]
            out.write(json.dumps({"topic": f"{prefix}/{rest}", "payload": payload.decode()}))
            out.write("\n")
    with Subscriber(broker, prefix) as subscriber:
        subscriber.wait_subscribed()
        run = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).with_name("_bare_publisher.py")),
                "--port",
                str(broker.port),
                "--inflight",
                str(inflight),
                "--messages",
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if run.returncode != 0:
            raise RuntimeError(f"bare publisher failed:\n{run.stdout}{run.stderr}")
        times = json.loads(run.stdout)
        if not subscriber.wait_for(len(entries), timeout):
            raise RuntimeError(f"bare: subscriber got {subscriber.count} of {len(entries)}")
        assert subscriber.first is not None and subscriber.last is not None
        return Replay(
            f"bare paho, inflight {inflight}",
            inflight,
            len(entries),
            times["start"],
            subscriber.first,
            subscriber.last,
            times["done"],
        )


def spread(values: list[float]) -> str:
    """Median, and the range when there are several rounds."""
    middle = statistics.median(values)
    if len(values) == 1:
        return f"{middle:,.0f}"
    return f"{middle:,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Outbox replay rate after a broker outage, against a bare paho QoS 1 "
        "publisher with the same in-flight window, measured in the same run."
    )
    parser.add_argument("--events", type=int, default=10_000, help="events to replay (10000)")
    parser.add_argument(
        "--inflight",
        type=int,
        nargs="+",
        default=[20, 100],
        help="in-flight windows to measure (20 100); 20 is the agent's default",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="agent/bare pairs per window, interleaved; medians are reported (3)",
    )
    parser.add_argument(
        "--fsync", choices=("full", "normal"), default="full", help="agent outbox fsync (full)"
    )
    parser.add_argument("--timeout", type=float, default=300, help="per step, seconds (300)")
    args = parser.parse_args(argv)
    quiet_logging()
    frames = make_frames(args.events, txn_profile())
    print(f"machine: {machine()}")
    agents: dict[int, list[Replay]] = {inflight: [] for inflight in args.inflight}
    bares: dict[int, list[Replay]] = {inflight: [] for inflight in args.inflight}
    fill_rates: list[float] = []
    payload_size = 0.0
    with workspace() as workdir, ExitStack() as stack:
        broker = Broker(workdir / "broker")
        broker.start()
        stack.callback(broker.stop)
        print(f"disk: {fsync_latency(workdir)}", flush=True)
        for round_ in range(args.rounds):
            for inflight in args.inflight:
                agent, entries, fill_rate = agent_replay(
                    workdir,
                    broker,
                    frames,
                    inflight=inflight,
                    fsync=args.fsync,
                    timeout=args.timeout,
                    name=f"agent-{inflight}-{round_}",
                )
                bare = bare_replay(
                    workdir, broker, entries, inflight=inflight, timeout=args.timeout
                )
                agents[inflight].append(agent)
                bares[inflight].append(bare)
                fill_rates.append(fill_rate)
                payload_size = sum(len(payload) for _, payload in entries) / len(entries)
                back = agent.subscriber_back
                late = " (subscriber back late: maybe a burst)" if agent.subscriber_late else ""
                print(
                    f"round {round_ + 1}, inflight {inflight}: agent {agent.rate:,.0f}/s, first "
                    f"event {agent.first - agent.start:.2f} s after the restart, subscriber back "
                    f"after {max(0.0, (back or agent.first) - agent.start):.2f} s{late}; "
                    f"bare {bare.rate:,.0f}/s",
                    flush=True,
                )
    print(
        f"\n{args.events} events (TXN after one STS), payloads {payload_size:.0f} bytes on "
        f"average, agent outbox fsync={args.fsync}, {args.rounds} round(s): "
        "median (min-max)"
    )
    print(f"outbox filled with the broker down at {spread(fill_rates)} frames/s")
    rows = []
    for inflight in args.inflight:
        bare_runs, agent_runs = bares[inflight], agents[inflight]
        rows.append(
            [
                f"bare paho, inflight {inflight}",
                spread([run.rate for run in bare_runs]),
                spread([run.rate_from_start for run in bare_runs]),
                "-",
                "1.00",
            ]
        )
        ratios = [a.rate / b.rate for a, b in zip(agent_runs, bare_runs, strict=True)]
        ratio = f"{statistics.median(ratios):.2f}"
        if len(ratios) > 1:
            ratio += f" ({min(ratios):.2f}-{max(ratios):.2f})"
        rows.append(
            [
                f"agent, inflight {inflight}",
                spread([run.rate for run in agent_runs]),
                spread([run.rate_from_start for run in agent_runs]),
                f"{statistics.median(run.first - run.start for run in agent_runs):.2f}",
                ratio,
            ]
        )
    print()
    print(table(["publisher", "events/s", "to last", "reconnect s", "x bare"], rows))
    print(
        "\nevents/s: first to last event received by the subscriber; to last: from the "
        "broker's restart (agent)\nor the first publish (bare) to the last event received; "
        "reconnect s: broker restart to first event;\nx bare: agent events/s / bare "
        "events/s of the same round and in-flight window (target >= 0.5)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
