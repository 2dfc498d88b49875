"""Many random scenarios in a row, and a table of how each went: `scripts/soak --seeds N`.

Each seed runs as a process of its own (`posmon simulate random SEED --score`, a clean
start every time) in `runs/soak/SEED`. A row per seed: the faults it injected that the
run could show, how many the collector detected, how many with the injected cause, false
alerts, the faults set apart as too short to show, and the time from a fault becoming
visible to its alert (median and p99, real seconds). Then the totals, with the times of
every alert pooled, and each failing seed with the command that replays it exactly.

`--jobs N` runs N seeds at once, each still a process of its own (a thread pool waits on
the subprocesses); rows are printed in seed order all the same, each as soon as it and the
seeds before it are done. A run mostly waits on its accelerated clock, so on two cores
`--jobs 4` takes about a third of the time; but a loaded machine delays a run's messages,
and on a clock of 10 000x a tenth of a real second is 17 virtual minutes: compare a
seed's times to alert alone and in parallel before trusting a loaded run's timings
(docs/scenarios.md).

A passing seed's folder is reduced to its report and scenario (a run's database is a few
megabytes); a failing one is kept whole. Exit status 1 when a seed misses a target.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from simulators.score import percentile

KEEP = ("report.json", "scenario.toml", "ground-truth.jsonl", "terminal-truth.jsonl")


@dataclass(slots=True)
class SeedResult:
    """One seed's run, from its report."""

    seed: int
    expected: int = 0
    detected: int = 0
    causes_right: int = 0
    judged: int = 0  # detected faults with a cause to judge
    false: int = 0
    unshowable: int = 0
    in_transit: int = 0  # OVERDUEs of credits made in time that arrived late (not false)
    delays: list[float] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None  # the run did not finish with a report

    @property
    def passed(self) -> bool:
        return (
            self.error is None
            and self.detected == self.expected
            and self.false == 0
            and self.causes_right >= 0.95 * self.judged
        )

    @classmethod
    def from_report(cls, seed: int, report: dict[str, object], seconds: float) -> SeedResult:
        by_type = report["by_type"]
        assert isinstance(by_type, dict)
        wrong = report["wrong_cause"]
        assert isinstance(wrong, list)
        right = sum(row["cause_right"] for row in by_type.values())
        delays = report.get("time_to_alert_all_s", [])
        unshowable = report.get("unshowable", [])
        in_transit = report.get("late_in_transit", [])
        assert isinstance(delays, list) and isinstance(unshowable, list)
        assert isinstance(in_transit, list)
        return cls(
            seed=seed,
            expected=int(str(report["expected"])),
            detected=int(str(report["detected"])),
            causes_right=right,
            judged=right + len(wrong),
            false=int(str(report["false_alerts"])),
            unshowable=len(unshowable),
            in_transit=len(in_transit),
            delays=[float(value) for value in delays],
            seconds=seconds,
        )


def run_seed(seed: int, workdir: Path, posmon: Path, timeout: float) -> SeedResult:
    """Run one seed in its own process; its result from the report it writes."""
    folder = workdir / str(seed)
    started = time.monotonic()
    command = [str(posmon), "simulate", "random", str(seed), "--score", "--workdir", str(folder)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return SeedResult(seed, error=f"no end within {timeout:.0f} s")
    seconds = time.monotonic() - started
    (folder / "output.txt").write_text(done.stdout + done.stderr, encoding="utf-8")
    report_path = folder / "report.json"
    if not report_path.exists():
        return SeedResult(seed, seconds=seconds, error=f"exit {done.returncode}, no report")
    result = SeedResult.from_report(seed, json.loads(report_path.read_text()), seconds)
    if result.passed:
        for item in folder.iterdir():
            if item.name not in (*KEEP, "output.txt"):
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    return result


def in_order(
    seeds: Sequence[int], run: Callable[[int], SeedResult], jobs: int
) -> Iterator[SeedResult]:
    """Each seed's result in the order of `seeds`, with up to `jobs` seeds running at once."""
    if jobs <= 1:
        yield from (run(seed) for seed in seeds)
        return
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures: list[Future[SeedResult]] = [pool.submit(run, seed) for seed in seeds]
        for future in futures:
            yield future.result()


def _ms(values: list[float], share: float | None) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    value = statistics.median(ordered) if share is None else percentile(ordered, share)
    return f"{value * 1000:.0f} ms"


def row(result: SeedResult) -> str:
    """One seed as a table row."""
    if result.error is not None:
        return f"| {result.seed} | - | - | - | - | - | - | - | FAIL: {result.error} |"
    causes = f"{result.causes_right / result.judged:.0%}" if result.judged else "-"
    return (
        f"| {result.seed} | {result.expected} | {result.detected} | {causes} | {result.false} "
        f"| {result.unshowable} | {_ms(result.delays, None)} | {_ms(result.delays, 0.99)} "
        f"| {'pass' if result.passed else 'FAIL'} |"
    )


HEADER = (
    "| seed | faults | detected | causes right | false | unshowable | "
    "time to alert, median | p99 | verdict |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---|"
)


def totals(results: Sequence[SeedResult]) -> str:
    """The totals row: sums, the cause share over every judged fault, pooled times."""
    finished = [r for r in results if r.error is None]
    expected = sum(r.expected for r in finished)
    detected = sum(r.detected for r in finished)
    right = sum(r.causes_right for r in finished)
    judged = sum(r.judged for r in finished)
    delays = [d for r in finished for d in r.delays]
    passed = sum(r.passed for r in results)
    causes = f"{right / judged:.1%}" if judged else "-"
    return (
        f"| **{len(results)} seeds** | {expected} | {detected} | {causes} "
        f"| {sum(r.false for r in finished)} | {sum(r.unshowable for r in finished)} "
        f"| {_ms(delays, None)} | {_ms(delays, 0.99)} | {passed} passed |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/soak",
        description="Run random scenarios (posmon simulate random SEED --score), one after "
        "another or --jobs at once, and print a table: per seed the faults, detected, causes "
        "right, false alerts and time to alert.",
    )
    parser.add_argument("--seeds", type=int, default=10, help="How many seeds (default 10).")
    parser.add_argument("--first", type=int, default=1, help="The first seed (default 1).")
    parser.add_argument(
        "--seed", type=int, action="append", default=[], help="Run this seed (repeatable)."
    )
    parser.add_argument("--workdir", type=Path, default=Path("runs/soak"))
    parser.add_argument("--timeout", type=float, default=600.0, help="Per seed, seconds.")
    parser.add_argument(
        "--jobs", type=int, default=1, help="Seeds run at once (default 1); rows stay in order."
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    seeds = args.seed or list(range(args.first, args.first + args.seeds))
    posmon = Path(sys.executable).parent / "posmon"
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(HEADER, flush=True)
    results: list[SeedResult] = []
    started = time.monotonic()

    def run(seed: int) -> SeedResult:
        return run_seed(seed, args.workdir, posmon, args.timeout)

    for result in in_order(seeds, run, args.jobs):
        results.append(result)
        print(row(result), flush=True)
    print(totals(results))
    late = [r for r in results if r.in_transit]
    if late:
        print(
            f"\nlate in transit (credited by the deadline, stored by the collector after its "
            f"OVERDUE; not false): {sum(r.in_transit for r in late)} OVERDUE alerts in seeds "
            + ", ".join(str(r.seed) for r in late)
        )
    minutes = (time.monotonic() - started) / 60
    print(
        f"\n{len(results)} seeds in {minutes:.0f} min with --jobs {args.jobs}; "
        f"runs in {args.workdir}/SEED"
    )
    failed = [r for r in results if not r.passed]
    for result in failed:
        print(
            f"FAILED seed {result.seed}: replay with `posmon simulate random {result.seed} "
            f"--score` (details: {args.workdir / str(result.seed)}/report.json)"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
