"""Random scenarios: a whole scenario drawn from one seed, to find what the shipped ones miss.

`random_scenario(seed)` draws every part of a scenario file from `random.Random(seed)`:

- the fleet: 2 to 12 terminals on 1 to 4 merchants, each merchant on T1, D0 or T0 terms
  with its own fee and bank, 1 to 3 agents, batch sizes, decline rates, closing hours;
- the calendar: a start on an ordinary day, on the eve of a public holiday (Spring
  Festival, Qingming, Labour Day, Dragon Boat, Mid-Autumn, National Day, New Year) or on
  an adjusted working day (调休: a Saturday or Sunday worked), in 2025 or 2026, so T1
  deadlines fall across weekends, holidays and the days moved into them;
- the faults: a random mix of the acquirer's random faults at random rates, a frozen
  merchant, a bank outage, and terminal faults (link down, switched off, a decline spike,
  a batch never closed, unbalanced closes) at random times, some too short for the
  collector's rules to show (the scorer sets those apart, `simulators.score`);
- the timing: the clock's speed and the trading time, and a settle phase long enough for
  the last sale's deadline to pass, holidays included.

The same seed gives the same scenario, so a seed that fails replays exactly:
`posmon simulate random SEED --score` (`scripts/soak --seed SEED`). `scenario_toml()`
writes the drawn scenario as a scenario file, which each run leaves in its folder.
"""

from __future__ import annotations

import json
import random
from datetime import date, datetime, timedelta
from datetime import time as clock_time
from typing import Any
from zoneinfo import ZoneInfo

from simulators.acquirer.terms import BusinessCalendar, SettlementMode, SettlementTerms
from simulators.scenario import SHANGHAI, ScenarioFile

TZ = ZoneInfo(SHANGHAI)
# Eves of Chinese public holidays and adjusted working days (调休) in 2025 and 2026, as the
# `holidays` library knows them: the days where T1 deadlines move furthest.
HOLIDAY_EVES = (
    date(2025, 1, 27),  # Spring Festival from 28 January
    date(2025, 4, 3),  # Qingming
    date(2025, 4, 30),  # Labour Day
    date(2025, 5, 30),  # Dragon Boat
    date(2025, 9, 30),  # National Day and Mid-Autumn
    date(2025, 12, 31),  # New Year
    date(2026, 2, 13),  # Spring Festival from 15 February
    date(2026, 4, 3),  # Qingming
    date(2026, 4, 30),  # Labour Day
    date(2026, 6, 18),  # Dragon Boat
    date(2026, 9, 24),  # Mid-Autumn
    date(2026, 9, 30),  # National Day
    date(2026, 12, 31),
)
ADJUSTED_WORKING_DAYS = (
    date(2025, 1, 26),
    date(2025, 2, 8),
    date(2025, 4, 27),
    date(2025, 9, 28),
    date(2025, 10, 11),
    date(2026, 1, 4),
    date(2026, 2, 14),
    date(2026, 2, 28),
    date(2026, 5, 9),
    date(2026, 9, 20),
    date(2026, 10, 10),
)
BANKS = ("0102", "0103", "0104", "0105", "0301", "0308", "0309", "0403")
FROZEN_CODES = ("M101", "M102", "M104", "M105", "RR04")
EXCLUSIVE_RATES = (
    "account_failed",
    "account_returned",
    "risk_hold",
    "bank_failed",
    "unspecified_failed",
    "late",
    "duplicate",
    "mismatch",
)
CUTOFF = clock_time(18, 0)
SPIKE_MESSAGES = 200  # what a spiking terminal sends while trading (its own rate)
MAX_SCALE = 7200.0  # virtual seconds per real second: faster squeezes the faults' timing
LONG_SETTLE_S = 30.0  # a settle phase longer than this at the drawn speed ...
LONG_SCALE = 12000.0  # ... runs at up to this speed instead
# Real seconds of the settle phase beyond the last deadline: the last alerts and the
# scorer's cut (it expects only what was visible two seconds before the end).
SETTLE_SLACK_S = 4.0
# The collector's [alerts] for every random run: its rules' thresholds on a fast clock.
ALERTS: dict[str, Any] = {
    "heartbeat_timeout_s": 6,
    "link_down_s": 3,
    "saf_threshold": 3,
    "decline_window": 20,
    "decline_baseline_min": 30,
    "bank_outage_failures": 3,
    "bank_outage_window_min": 90,
    "sweep_s": 0.2,
}


def random_scenario(seed: int) -> ScenarioFile:
    """The scenario of `seed` (see the module docstring)."""
    return ScenarioFile.model_validate(scenario_data(seed))


def scenario_data(seed: int) -> dict[str, Any]:
    """The scenario of `seed` as the data of a scenario file."""
    rng = random.Random(seed)  # noqa: S311 - simulated scenarios, not secrets
    origin = _origin(rng)
    terminals = rng.randint(2, 12)
    merchants = _merchants(rng, min(4, terminals))
    scale = round(rng.uniform(2400.0, MAX_SCALE))
    traffic_s = round(rng.uniform(8.0, 14.0), 1)
    settle_s = _settle_s(origin, scale, traffic_s, merchants)
    if settle_s > LONG_SETTLE_S:
        # A holiday's week of deadlines: a faster clock, so a run stays a minute or so.
        scale = round(min(LONG_SCALE, scale * settle_s / LONG_SETTLE_S))
        settle_s = _settle_s(origin, scale, traffic_s, merchants)
    mids = [spec["mid"] for spec in merchants]
    first_tid = 10000001
    tids = [str(first_tid + n) for n in range(terminals)]
    return {
        "name": f"random seed {seed}",
        "time": {
            "origin": origin,
            "scale": scale,
            "traffic_s": traffic_s,
            "settle_s": settle_s,
        },
        "fleet": {
            "terminals": terminals,
            "agents": rng.randint(1, min(3, terminals)),
            "first_tid": first_tid,
            "rate": 2.0,
            "batch_size": rng.randint(8, 20),
            "decline_rate": round(rng.uniform(0.02, 0.06), 3),
            "heartbeat_s": 2.0,
            "mids": mids,
            "seed": seed,
            "close_at": clock_time(rng.choice((16, 17)), rng.choice((0, 30))),
            "reopen_at": CUTOFF,
        },
        "terminal": (plans := _terminal_faults(rng, tids, traffic_s)),
        "merchants": merchants,
        "acquirer": _acquirer(
            rng, seed, merchants, scale, traffic_s + settle_s, settling=_settling(plans, tids, mids)
        ),
        "collector": {"alerts": {**ALERTS, "context_window_s": round(3600 / scale, 3)}},
    }


def _origin(rng: random.Random) -> datetime:
    pick = rng.random()
    if pick < 0.3:
        day = rng.choice(HOLIDAY_EVES)
    elif pick < 0.45:
        day = rng.choice(ADJUSTED_WORKING_DAYS)
    else:
        day = date(2025, 1, 1) + timedelta(days=rng.randrange(730))
    return datetime.combine(day, clock_time(rng.randint(8, 13), rng.choice((0, 15, 30))), TZ)


def _merchants(rng: random.Random, most: int) -> list[dict[str, Any]]:
    count = rng.randint(1, most)
    found = []
    for n in range(count):
        mode = rng.choices(("T1", "D0", "T0"), weights=(50, 25, 25))[0]
        spec: dict[str, Any] = {
            "mid": f"8981000123{40001 + n:05d}",
            "mode": mode,
            "fee_bp": rng.choice((38, 45, 55, 60)),
            "bank_code": rng.choice(BANKS[: max(2, count)]),  # merchants may share a bank
        }
        if mode == "T0":
            # A T0 credit comes as late as 90 % into its window: on a fast clock, a one-hour
            # window leaves it 6 virtual minutes, tens of real milliseconds, to arrive on time.
            spec["t0_hours"] = float(rng.choice((2, 3, 4)))
        found.append(spec)
    return found


def _settle_s(
    origin: datetime, scale: float, traffic_s: float, merchants: list[dict[str, Any]]
) -> float:
    """Real seconds after trading until the last sale's deadline has passed."""
    calendar = BusinessCalendar("CN")
    traffic_end = origin + timedelta(seconds=traffic_s * scale)
    last = traffic_end
    for spec in merchants:
        terms = SettlementTerms(
            mode=SettlementMode(spec["mode"]), cutoff=CUTOFF, t0_hours=spec.get("t0_hours", 2.0)
        )
        last = max(last, terms.deadline(traffic_end, TZ, calendar))
    span = (last - traffic_end).total_seconds() + 3600  # an hour for the OVERDUE to show
    return round(span / scale + SETTLE_SLACK_S, 1)


# Two heartbeats (`heartbeat_s` 2.0) and a second of start-up: by then every terminal has
# reported its status at least once, even on a loaded machine (seed 49 went silent at 3.0 s
# under load 8 before its first heartbeat reached the collector).
HEARD_BY_S = 5.0


def _terminal_faults(rng: random.Random, tids: list[str], traffic_s: float) -> list[dict[str, Any]]:
    plans = []
    for tid in tids:
        if rng.random() >= 0.35:
            continue
        kind = rng.choice(("link_down", "silent", "spike", "never_close", "unbalanced"))
        faults: dict[str, Any]
        rate = None
        if kind == "link_down":
            faults = {
                "link_down_from_s": round(rng.uniform(0.1, 0.6) * traffic_s, 1),
                "link_down_for_s": round(rng.uniform(2.0, 8.0), 1),
            }
        elif kind == "silent":
            # Not before the terminal has surely reported: one never heard has no liveness
            # to lose (the collector judges silence by statuses), so it cannot be missed.
            silent = max(round(rng.uniform(0.3, 0.9) * traffic_s, 1), HEARD_BY_S)
            faults = {"silent_after_s": silent}
        elif kind == "spike":
            # A busy counter, or the rule has too little evidence in a run this short
            # (SPIKE_MESSAGES); some spikes come too early all the same: unshowable.
            faults = {
                "decline_spike_from_s": round(rng.uniform(0.2, 0.6) * traffic_s, 1),
                "decline_spike_rate": round(rng.uniform(0.8, 0.95), 2),
            }
            rate = round(min(20.0, SPIKE_MESSAGES / traffic_s), 1)
        elif kind == "never_close":
            faults = {"never_close_batch": True}
        else:
            faults = {"unbalanced": True}
        plans.append({"tid": tid, "faults": faults, **({"rate": rate} if rate else {})})
    return plans


def _settling(plans: list[dict[str, Any]], tids: list[str], mids: list[str]) -> set[str]:
    """The merchants with a terminal that closes its batches: the only ones whose sales
    reach a settlement run (terminals go to merchants in turn, `ScenarioFile.mid_of`)."""
    unclosed = {plan["tid"] for plan in plans if plan["faults"].get("never_close_batch")}
    return {mids[n % len(mids)] for n, tid in enumerate(tids) if tid not in unclosed}


def _acquirer(
    rng: random.Random,
    seed: int,
    merchants: list[dict[str, Any]],
    scale: float,
    total_s: float,
    *,
    settling: set[str],
) -> dict[str, Any]:
    rates: dict[str, float] = {}
    for name in EXCLUSIVE_RATES:
        if rng.random() < 0.6:
            rates[name] = round(rng.uniform(0.005, 0.05), 3)
    if rng.random() < 0.5:
        rates["orphan"] = round(rng.uniform(0.005, 0.03), 3)
    rates["offline_lost"] = 1.0 if rng.random() < 0.8 else 0.0
    if rng.random() < 0.5:
        rates["void_ignored"] = round(rng.uniform(0.1, 0.5), 2)
    section: dict[str, Any] = {"seed": seed, "rates": rates, "cutoff": CUTOFF}
    if rng.random() < 0.3:
        # A freeze shows only in the settlements it fails: a merchant whose terminals all
        # keep their batches open has none (random seed 108 froze one), so another is
        # frozen, or none when no merchant settles.
        mid: str | None = rng.choice(merchants)["mid"]
        if mid not in settling:
            mid = rng.choice(sorted(settling)) if settling else None
        code = rng.choice(FROZEN_CODES)
        if mid is not None:
            section["frozen"] = [f"{mid}:{code}"]
    if rng.random() < 0.35:
        bank = rng.choice(merchants)["bank_code"]
        span_h = total_s * scale / 3600
        start_h = rng.uniform(0.0, max(0.5, span_h - 4.0))
        length_h = rng.uniform(2.0, 10.0)
        section["bank_outages"] = [f"{bank}@+{start_h:.2f}h/+{start_h + length_h:.2f}h"]
        section["outage_delay_share"] = round(rng.uniform(0.0, 0.7), 2)
    return section


# --- the scenario as a file -------------------------------------------------------------


def scenario_toml(data: dict[str, Any]) -> str:
    """A scenario's data as a scenario file (TOML) that `load_scenario` reads back."""
    lines: list[str] = []
    tables = {k: v for k, v in data.items() if isinstance(v, dict) or _tables(v)}
    for key, value in data.items():
        if key not in tables:
            lines.append(f"{key} = {_value(value)}")
    for key, value in tables.items():
        if isinstance(value, dict):
            _table(lines, key, value)
        else:
            for item in value:
                _table(lines, key, item, array=True)
    return "\n".join(lines) + "\n"


def _tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict)


def _table(lines: list[str], name: str, table: dict[str, Any], *, array: bool = False) -> None:
    lines.append("")
    lines.append(f"[[{name}]]" if array else f"[{name}]")
    nested = {k: v for k, v in table.items() if isinstance(v, dict)}
    for key, value in table.items():
        if key not in nested:
            lines.append(f"{key} = {_value(value)}")
    for key, value in nested.items():
        if array:
            lines.append(f"{key} = {_inline(value)}")
        else:
            _table(lines, f"{name}.{key}", value)


def _inline(table: dict[str, Any]) -> str:
    return "{ " + ", ".join(f"{key} = {_value(value)}" for key, value in table.items()) + " }"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, datetime | clock_time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return _inline(value)
    return json.dumps(str(value), ensure_ascii=False)
