"""Random scenarios: what a seed draws, that it replays exactly, and whole runs of a few
seeds held to the targets (every fault the run can show detected, at least 95% of causes
right, no false alert).

CI runs the seeds in `CI_SEEDS`; `POSMON_RANDOM_SEEDS="1-20"` (or "4,9,17") runs others,
and `scripts/soak --seeds N` runs many with a table (simulators/soak.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from simulators.acquirer.terms import BusinessCalendar
from simulators.randomized import (
    ADJUSTED_WORKING_DAYS,
    HEARD_BY_S,
    HOLIDAY_EVES,
    random_scenario,
    scenario_data,
    scenario_toml,
)
from simulators.scenario import ScenarioFile, load_scenario
from simulators.soak import SeedResult, in_order, row, totals

POSMON = Path(sys.executable).parent / "posmon"
CI_SEEDS = (1, 2, 3)


def _seeds() -> list[int]:
    text = os.environ.get("POSMON_RANDOM_SEEDS", "")
    if not text:
        return list(CI_SEEDS)
    seeds: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        seeds.extend(range(int(first), int(last or first) + 1))
    return seeds


def test_a_seed_draws_the_same_scenario_and_its_file_reads_back(tmp_path: Path) -> None:
    for seed in range(40):
        drawn = random_scenario(seed)
        assert drawn == random_scenario(seed)
        path = tmp_path / f"{seed}.toml"
        path.write_text(scenario_toml(scenario_data(seed)))
        assert load_scenario(path) == drawn, seed
    assert random_scenario(1) != random_scenario(2)


def test_the_draws_cover_fleets_terms_calendar_faults_and_timing() -> None:
    drawn = [random_scenario(seed) for seed in range(200)]
    sizes = {s.fleet.terminals for s in drawn}
    assert min(sizes) == 2 and max(sizes) == 12
    assert {m.mode for s in drawn for m in s.merchants} == {"T1", "D0", "T0"}
    days = [s.time.origin.date() for s in drawn]
    assert sum(day in HOLIDAY_EVES for day in days) >= 30
    assert sum(day in ADJUSTED_WORKING_DAYS for day in days) >= 15
    calendar = BusinessCalendar("CN")
    assert any(day.weekday() >= 5 and calendar.is_business_day(day) for day in days), "调休"
    rates: Counter[str] = Counter()
    for s in drawn:
        rates.update(name for name, rate in s.acquirer.rates.items() if rate > 0)
    assert set(rates) >= {
        "account_failed", "account_returned", "risk_hold", "bank_failed",
        "unspecified_failed", "late", "duplicate", "mismatch", "orphan", "offline_lost",
        "void_ignored",
    }  # fmt: skip
    assert sum(bool(s.acquirer.frozen) for s in drawn) >= 30
    assert sum(bool(s.acquirer.bank_outages) for s in drawn) >= 30
    faults = Counter(
        key
        for s in drawn
        for plan in s.terminal
        for key, value in plan.faults.model_dump().items()
        if value not in (None, False) and not key.endswith(("_for_s", "_rate"))
    )
    assert set(faults) == {
        "link_down_from_s", "silent_after_s", "decline_spike_from_s", "never_close_batch",
        "unbalanced",
    }  # fmt: skip
    assert {s.time.scale for s in drawn} != {drawn[0].time.scale}
    # Every run lasts past its last sale's deadline, and none takes more than two minutes.
    assert all(s.time.traffic_s + s.time.settle_s < 120 for s in drawn)


def test_a_frozen_merchant_has_a_terminal_that_closes_its_batches() -> None:
    # A freeze shows only in the settlements it fails; seed 108 froze the merchant whose
    # two terminals never closed a batch, so none of its sales reached a settlement run.
    for seed in range(400):
        drawn = random_scenario(seed)
        for frozen in drawn.acquirer.frozen:
            mid = frozen.split(":", 1)[0]
            closing = [
                tid
                for tid in drawn.tids()
                if drawn.mid_of(tid) == mid and not drawn.plan(tid).faults.never_close_batch
            ]
            assert closing, (seed, mid)
    assert random_scenario(108).acquirer.frozen


def test_a_terminal_goes_silent_only_after_it_has_surely_reported() -> None:
    # Silence is judged by statuses: seed 49's terminal went silent at 3.0 s, before its
    # first heartbeat (every 2 s) reached a loaded collector, so nothing could be missed.
    silences = [
        drawn.plan(tid).faults.silent_after_s
        for drawn in map(random_scenario, range(400))
        for tid in drawn.tids()
    ]
    drawn_at = [at for at in silences if at is not None]
    assert drawn_at and min(drawn_at) >= HEARD_BY_S
    assert random_scenario(49).plan("10000002").faults.silent_after_s == HEARD_BY_S


def test_the_soak_table_has_a_row_per_seed_and_totals() -> None:
    report = {
        "expected": 40, "detected": 40, "false_alerts": 0, "wrong_cause": [],
        "by_type": {"SETTLEMENT_FAILED": {"expected": 40, "detected": 40, "cause_right": 40}},
        "unshowable": [{"key": ["DECLINE_SPIKE", "10000003"], "why": "..."}],
        "time_to_alert_all_s": [0.01, 0.02, 0.03],
    }  # fmt: skip
    good = SeedResult.from_report(7, report, 30.0)
    bad = SeedResult.from_report(8, {**report, "false_alerts": 1}, 30.0)
    assert good.passed and not bad.passed
    assert row(good) == "| 7 | 40 | 40 | 100% | 0 | 1 | 20 ms | 30 ms | pass |"
    assert row(bad).endswith("| FAIL |")
    assert totals([good, bad]).startswith("| **2 seeds** | 80 | 80 | 100.0% | 1 | 2 |")
    late = {**report, "late_in_transit": [{"type": "SETTLEMENT_OVERDUE"}]}
    assert SeedResult.from_report(9, late, 30.0).in_transit == 1
    assert SeedResult.from_report(9, late, 30.0).passed


def test_soak_jobs_run_seeds_at_once_and_keep_their_order() -> None:
    started: list[int] = []
    gate = threading.Barrier(3, timeout=5)

    def run(seed: int) -> SeedResult:
        started.append(seed)
        if seed <= 3:
            gate.wait()  # the first three seeds run together, or this times out
        return SeedResult(seed, expected=seed)

    done = [result.seed for result in in_order([3, 2, 1, 5, 4], run, jobs=3)]
    assert done == [3, 2, 1, 5, 4]
    assert [result.seed for result in in_order([7, 6], run, jobs=1)] == [7, 6]
    assert started[-2:] == [7, 6]  # one at a time, in order


@pytest.mark.slow
@pytest.mark.parametrize("seed", _seeds())
def test_a_random_seed_meets_the_targets(seed: int, tmp_path: Path) -> None:
    process = subprocess.run(
        [str(POSMON), "simulate", "random", str(seed), "--score", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    replay = f"seed {seed}: replay with `posmon simulate random {seed} --score`"
    assert (tmp_path / "report.json").exists(), replay + process.stdout + process.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["missed"] == [], replay
    assert report["false_alerts"] == 0, (replay, report["false"])
    assert report["cause_accuracy"] >= 0.95, (replay, report["wrong_cause"])
    assert process.returncode == 0, replay + process.stdout[-3000:]
    assert tomllib.loads((tmp_path / "scenario.toml").read_text())["name"] == f"random seed {seed}"
    assert ScenarioFile.model_validate(scenario_data(seed)) == random_scenario(seed)
