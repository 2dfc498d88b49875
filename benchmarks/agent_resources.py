"""The agent's memory and CPU while one terminal sends 20 frames/s (targets: < 40 MB, < 3%).

A `SimulatedTerminal` (rate 20/s, generated traffic, heartbeats every 30 s as configured
by default) talks to `posmon agent run` over a pty; the agent publishes to a private
broker, where a subscriber takes the events. After `--idle` seconds with the port open
and nothing sent, and a `--warmup` at the rate, the agent is measured for `--seconds`:
RSS (VmRSS sampled every second, and VmHWM, the peak since start) and CPU (utime+stime
from /proc/PID/stat over the window, as % of one core).

Baselines, measured over the same window in the same run, each an idle interpreter: one
with nothing imported, one with the agent's own modules imported (`agent.service`,
`agent.config`), and one with what `posmon agent run` imports (`posmon.cli`, which runs
the agent without typer, then the agent's modules). The agent minus the last is what the
agent's own work costs; the last minus the second is what the command layer adds; the
second minus the first is the libraries' floor (pydantic, paho, pyserial, sqlite3).

    .venv/bin/python benchmarks/agent_resources.py [--seconds 60] [--rate 20]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

from _harness import (
    TID,
    AgentProcess,
    Broker,
    Subscriber,
    cpu_times,
    machine,
    memory_kib,
    mib,
    quiet_logging,
    stop_process,
    table,
    wait_until,
    workspace,
)

from simulators.pty import PtyLink
from simulators.stream import TrafficGenerator
from simulators.terminal import SimulatedTerminal, TerminalConfig

RSS_TARGET_MIB = 40.0
CPU_TARGET_PCT = 3.0

# The agent's own modules, without the `posmon` command around them.
AGENT_MODULES = "import agent.service, agent.config, posmon.logs; "
# What `posmon agent run` has imported by the time the agent runs: what posmon.cli.main()
# does first, then the agent. Since the command runs the agent without typer, that is
# posmon.cli alone; before, main() registered the sub-commands of the role invoked (or of
# every role in older versions whose _register_roles() took no arguments) with typer.
AGENT_IMPORTS = (
    "import inspect, posmon.cli as cli; register = cli._register_roles; "
    "typerless = hasattr(cli, '_agent_run_options'); "
    "typerless or (register(['agent', 'run']) if inspect.signature(register).parameters "
    "else register()); " + AGENT_MODULES
)


@dataclass(slots=True)
class Watch:
    """RSS samples and CPU time of one process over the measured window."""

    label: str
    pid: int
    cpu_start: tuple[float, float] = (0.0, 0.0)  # user, system seconds
    cpu_end: tuple[float, float] = (0.0, 0.0)
    seconds: float = 0.0
    rss: list[int] = field(default_factory=list)  # KiB
    peak: int = 0  # KiB, VmHWM at the end
    anon: int = 0  # KiB, RssAnon at the end
    file: int = 0  # KiB, RssFile at the end

    def begin(self) -> None:
        self.cpu_start = cpu_times(self.pid)

    def sample(self) -> None:
        self.rss.append(memory_kib(self.pid)["VmRSS"])

    def end(self, seconds: float) -> None:
        self.cpu_end = cpu_times(self.pid)
        self.seconds = seconds
        memory = memory_kib(self.pid)
        self.peak, self.anon, self.file = memory["VmHWM"], memory["RssAnon"], memory["RssFile"]

    @property
    def user_pct(self) -> float:
        return 100 * (self.cpu_end[0] - self.cpu_start[0]) / self.seconds

    @property
    def system_pct(self) -> float:
        return 100 * (self.cpu_end[1] - self.cpu_start[1]) / self.seconds

    @property
    def cpu_pct(self) -> float:
        return self.user_pct + self.system_pct


def idle_python(code: str, seconds: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", f"{code}import time; time.sleep({seconds})"])


def check_alive(processes: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    for label, process in processes:
        if process.poll() is not None:
            raise RuntimeError(f"baseline {label!r} exited ({process.returncode}); see above")


def measure(watches: list[Watch], seconds: float, every: float = 1.0) -> None:
    """Sample every process each `every` s for `seconds`; CPU over the whole window."""
    for watch in watches:
        watch.begin()
        watch.sample()
    start = time.monotonic()
    next_sample = start + every
    while (now := time.monotonic()) < start + seconds:
        time.sleep(max(0.0, min(next_sample, start + seconds) - now))
        if time.monotonic() >= next_sample:
            for watch in watches:
                watch.sample()
            next_sample += every
    elapsed = time.monotonic() - start
    for watch in watches:
        watch.sample()
        watch.end(elapsed)


@dataclass(slots=True)
class Outcome:
    """What a run measured: the agent idle (optional), busy, the floors, the terminal."""

    idle: Watch | None
    busy: Watch
    floors: list[Watch]
    rate: float
    heartbeats: int
    resends: int
    given_up: int


def run(args: argparse.Namespace) -> Outcome:
    """Start broker, subscriber, agent, terminal and floors; measure; stop everything."""
    lifetime = args.idle + args.warmup + args.seconds + 120
    with workspace() as workdir, ExitStack() as stack:
        broker = Broker(workdir / "broker")
        broker.start()
        stack.callback(broker.stop)
        prefix = f"bench/{uuid.uuid4().hex[:8]}"
        subscriber = stack.enter_context(Subscriber(broker, prefix))
        subscriber.wait_subscribed()
        link = stack.enter_context(PtyLink(workdir / "ttyPOS0"))
        agent = AgentProcess(workdir / "agent", broker, prefix, link.name)
        stack.callback(agent.stop)
        agent.start()
        floors = [
            ("python, nothing imported", idle_python("", lifetime)),
            ("python + agent modules only", idle_python(AGENT_MODULES, lifetime)),
            ("python + all `posmon agent run` imports", idle_python(AGENT_IMPORTS, lifetime)),
        ]
        for _, process in floors:
            stack.callback(stop_process, process)
        wait_until(lambda: link.wait_for_reader(0.1), 20, "the agent to open the port")
        wait_until(subscriber.online.is_set, 20, "the agent to connect to the broker")
        time.sleep(1)  # the import floors have finished importing by now
        check_alive(floors)
        idle: Watch | None = None
        if args.idle > 0:
            idle = Watch("agent, idle (port open, no frames)", agent.pid)
            measure([idle], args.idle)
        terminal = SimulatedTerminal(
            link,
            TrafficGenerator(TID, seed=1),
            TerminalConfig(tid=TID, rate=args.rate, seed=1, reader_wait=0),
        )
        thread = terminal.start()
        stack.callback(thread.join, 5)
        stack.callback(terminal.stop)
        time.sleep(args.warmup)
        acked_before = terminal.counters.acked
        busy = Watch(f"agent, {args.rate:g} frames/s", agent.pid)
        watches = [Watch(label, process.pid) for label, process in floors]
        measure([busy, *watches], args.seconds)
        acked = terminal.counters.acked - acked_before
        terminal.stop()
        thread.join(5)
        counters = terminal.counters
        if not subscriber.wait_for(counters.acked, 30):
            print(f"warning: the subscriber got {subscriber.count} of {counters.acked} events")
    return Outcome(
        idle,
        busy,
        watches,
        acked / busy.seconds,
        counters.heartbeats,
        counters.resends,
        counters.given_up,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Agent RSS and CPU at a steady frame rate, against idle interpreters "
        "measured over the same window."
    )
    parser.add_argument("--seconds", type=float, default=60, help="measured window (60)")
    parser.add_argument("--rate", type=float, default=20, help="frames/s from the terminal (20)")
    parser.add_argument("--warmup", type=float, default=5, help="at the rate, unmeasured (5)")
    parser.add_argument(
        "--idle", type=float, default=10, help="agent measured idle first, port open (10; 0: skip)"
    )
    args = parser.parse_args(argv)
    quiet_logging()
    print(f"machine: {machine()}")
    out = run(args)
    busy, idle, floor = out.busy, out.idle, out.floors[-1]
    print(
        f"measured {busy.seconds:.1f} s after a {args.warmup:g} s warm-up; the terminal had "
        f"{out.rate:.1f} frames/s ACKed in the window ({out.heartbeats} heartbeats, "
        f"{out.resends} resends, {out.given_up} given up in all)"
    )
    rows = [
        [
            watch.label,
            f"{mib(watch.rss[-1]):.1f}",
            f"{mib(statistics.mean(watch.rss)):.1f}",
            f"{mib(watch.peak):.1f}",
            f"{mib(watch.anon):.1f} / {mib(watch.file):.1f}",
            f"{watch.cpu_pct:.2f}",
            f"{watch.user_pct:.2f} / {watch.system_pct:.2f}",
        ]
        for watch in ([idle] if idle else []) + [busy, *out.floors]
    ]
    print()
    print(table(["process", "RSS MiB", "mean", "peak", "anon / file", "CPU %", "user / sys"], rows))
    rss_ok = "meets" if mib(busy.peak) < RSS_TARGET_MIB else "MISSES"
    # The issue says "40 MB"; read as 10^6 bytes that is 38.1 MiB, so say both.
    strict_ok = "meets" if busy.peak * 1024 < RSS_TARGET_MIB * 1e6 else "misses"
    cpu_ok = "meets" if busy.cpu_pct < CPU_TARGET_PCT else "MISSES"
    print(
        f"\ntarget RSS < {RSS_TARGET_MIB:g} MiB: peak {mib(busy.peak):.1f} MiB ({rss_ok}; "
        f"{busy.peak * 1024 / 1e6:.1f} MB of 10^6 bytes, which {strict_ok} 40 MB read so);\n"
        f"  {mib(floor.rss[-1]):.1f} MiB of it is the imports' floor, of which "
        f"{mib(floor.rss[-1] - out.floors[1].rss[-1]):.1f} MiB the `posmon` command layer;\n"
        f"  {mib(busy.rss[-1] - floor.rss[-1]):.1f} MiB "
        "is the agent's own (threads, buffers, SQLite cache, objects made while running)"
    )
    print(
        f"target CPU < {CPU_TARGET_PCT:g}% of a core: {busy.cpu_pct:.2f}% ({cpu_ok})"
        + (f"; {idle.cpu_pct:.2f}% with no frames at all" if idle else "")
    )
    print(
        "RSS: VmRSS at the end of the window and its mean over 1 s samples; peak: VmHWM "
        "since the process started;\nanon / file: RssAnon / RssFile at the end (file: "
        "mapped libraries and .so files, shared with other processes);\nCPU %: utime+stime "
        "over the window, % of one core (clock ticks of 10 ms: +-0.02% over 60 s)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
