"""CSV settlement import: rows/s and peak memory for a 1,000,000-row file (targets: at least
20,000 rows/s, under 200 MB).

A settlement file is generated (streamed to a temporary file: realistic values, one
merchant and terminal per few dozen rows, 3% FAILED with a Chinese reason, masked account
numbers), then imported by `posmon settlement import FILE --config CFG` in a child
process into a fresh SQLite database (and, with --postgres, a fresh PostgreSQL database).
Measured for the child: wall time from start to exit (the command's start-up included),
the import's own rows/s as the command reports it, CPU time, and peak RSS (ru_maxrss from
wait4, so the generator's memory does not count).

Baseline in the same run: a bare `csv.reader` pass over the same file in this process,
to show what parsing alone costs and the import's overhead over it. The machine is often
shared: each import's line carries the 1-minute load average taken as it ended.

No transactions are stored first, so every result is an ORPHAN: matched against an empty
table (two set-based queries per chunk, finding nothing) and logged once. With matching
transactions stored the verdicts also update the transactions table.

    .venv/bin/python benchmarks/settlement_import.py [--rows 1000000] [--postgres]
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from _harness import machine, table

ROWS_PER_S_TARGET = 20_000
MEMORY_TARGET_MB = 200
POSMON = Path(sys.executable).parent / "posmon"
POSTGRES_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
COLUMNS = [
    "settlement_id",
    "mid",
    "tid",
    "rrn",
    "txn_date",
    "amount",
    "fee",
    "net_amount",
    "currency",
    "status",
    "settled_at",
    "kind",
    "stan",
    "batch",
    "reason_code",
    "reason_text",
    "bank_code",
    "account_masked",
]
FAILURES = [
    ("AC04", "收款账户已销户"),  # account closed
    ("AC06", "账户已冻结"),  # account blocked
    ("BE01", "户名与账号不符"),  # name does not match the account
    ("MS03", "商户资质过期"),  # merchant licence expired
    ("TM01", "银行系统维护,请稍后重试"),  # bank maintenance
]
REPORTED = re.compile(r"\(([\d.]+) s, ([\d,]+) rows/s\)")


def generate(path: Path, rows: int, seed: int = 7) -> None:
    """Write `rows` settlement results, one day's file after another, to `path`."""
    rng = random.Random(seed)
    day = date(2026, 11, 2)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for n in range(rows):
            if n and n % 50_000 == 0:
                day += timedelta(days=1)
            merchant = rng.randrange(20_000)
            amount = rng.choice((rng.randrange(100, 20_000), rng.randrange(20_000, 2_000_000)))
            fee = (amount * 38 + 5000) // 10_000
            failed = rng.random() < 0.03
            code, reason = rng.choice(FAILURES) if failed else ("", "")
            writer.writerow(
                [
                    f"ACQ{day:%Y%m%d}{n:010d}",
                    f"898{merchant:012d}",
                    f"{10_000_000 + merchant * 3 + rng.randrange(3):08d}",
                    f"{rng.randrange(10**12):012d}",
                    day.isoformat(),
                    amount,
                    fee,
                    amount - fee,
                    "CNY",
                    "FAILED" if failed else "CREDITED",
                    f"{day + timedelta(days=1)}T{rng.randrange(2, 6):02d}:"
                    f"{rng.randrange(60):02d}:{rng.randrange(60):02d}+08:00",
                    "ORIGINAL",
                    f"{n % 1_000_000:06d}",
                    f"{n // 400 % 1_000_000:06d}",
                    code,
                    reason,
                    f"{rng.randrange(100, 999):04d}",
                    f"6222{rng.randrange(100):02d}******{rng.randrange(10_000):04d}",
                ]
            )


def bare_csv(path: Path) -> tuple[int, float]:
    """Rows and seconds for a plain csv.reader pass (decoding included)."""
    started = time.perf_counter()
    with path.open(newline="", encoding="utf-8") as handle:
        rows = sum(1 for _ in csv.reader(handle)) - 1
    return rows, time.perf_counter() - started


@dataclass
class Run:
    """One `posmon settlement import` child process."""

    label: str
    exit_code: int
    wall_s: float
    cpu_s: float
    peak_mb: float
    load: float  # 1-minute load average as the import ended
    import_s: float | None
    rows_per_s: float | None
    stdout: str
    stderr: str


def import_child(label: str, file: Path, config: Path, workdir: Path, chunk: int) -> Run:
    """Run the import command, with its own resource usage from wait4."""
    out, err = workdir / f"{label}.out", workdir / f"{label}.err"
    command = [str(POSMON), "settlement", "import", str(file), "--config", str(config)]
    command += ["--chunk", str(chunk)]
    with out.open("w") as stdout, err.open("w") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    text = out.read_text()
    reported = REPORTED.search(text)
    return Run(
        label=label,
        exit_code=process.returncode,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_mb=usage.ru_maxrss * 1024 / 1e6,  # KiB on Linux
        load=os.getloadavg()[0],
        import_s=float(reported.group(1)) if reported else None,
        rows_per_s=float(reported.group(2).replace(",", "")) if reported else None,
        stdout=text,
        stderr=err.read_text(),
    )


@contextmanager
def postgres_database(admin: str) -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards; yields its URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin_url = make_url(admin)
    name = f"posmon_bench_{uuid.uuid4().hex[:8]}"
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def stored(url: str) -> tuple[int, int]:
    """Settlements stored, and of them ORPHAN."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            total = conn.execute(text("SELECT count(*) FROM settlements")).scalar_one()
            orphans = conn.execute(
                text("SELECT count(*) FROM settlements WHERE outcome = 'ORPHAN'")
            ).scalar_one()
    finally:
        engine.dispose()
    return int(total), int(orphans)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="posmon settlement import: rows/s and peak RSS for a generated CSV file."
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the file (1000000)")
    parser.add_argument(
        "--chunk", type=int, default=5000, help="rows per transaction (5000, as the command)"
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="also import into a fresh PostgreSQL database (admin URL: POSMON_TEST_POSTGRES)",
    )
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    print(f"sqlite {sqlite3.sqlite_version}")

    with tempfile.TemporaryDirectory(prefix="posmon-bench-import-") as tmp:
        workdir = Path(tmp)
        file = workdir / "settlements.csv"
        started = time.perf_counter()
        generate(file, args.rows)
        size_mb = file.stat().st_size / 1e6
        took = time.perf_counter() - started
        print(f"generated {args.rows:,} rows, {size_mb:,.0f} MB in {took:.1f} s")
        bare_rows, bare_s = bare_csv(file)
        assert bare_rows == args.rows

        targets: list[tuple[str, str]] = [("sqlite", f"sqlite:///{workdir}/posmon.db")]
        runs: list[tuple[Run, tuple[int, int]]] = []
        postgres = (
            postgres_database(os.environ.get("POSMON_TEST_POSTGRES", POSTGRES_ADMIN))
            if args.postgres
            else nullcontext(None)
        )
        with postgres as pg_url:
            if pg_url is not None:
                targets.append(("postgresql", pg_url))
            for label, url in targets:
                config = workdir / f"{label}.toml"
                config.write_text(f'[database]\nurl = "{url}"\n')
                run = import_child(label, file, config, workdir, args.chunk)
                if run.exit_code != 0:
                    print(f"{label}: import failed ({run.exit_code}):\n{run.stdout}{run.stderr}")
                    return 1
                counts = stored(url)
                if counts != (args.rows, args.rows):
                    print(f"{label}: {counts[0]:,} stored, {counts[1]:,} ORPHAN; expected all")
                    return 1
                runs.append((run, counts))

    print()
    bare_rate = bare_rows / bare_s
    rows = [["bare csv.reader pass (this process)", f"{bare_rate:,.0f}", "-", "-", "-", "-", "-"]]
    for run, _ in runs:
        rows.append(
            [
                f"posmon settlement import ({run.label})",
                f"{run.rows_per_s:,.0f}" if run.rows_per_s else "?",
                f"{args.rows / run.wall_s:,.0f}",
                f"{run.cpu_s:,.1f}",
                f"{args.rows / run.cpu_s:,.0f}",
                f"{run.peak_mb:,.0f}",
                f"{run.load:.2f}",
            ]
        )
    headers = ["", "rows/s", "incl. start-up", "CPU s", "rows per CPU s", "peak RSS MB", "load"]
    print(table(headers, rows))
    print()
    verdicts = []
    for run, (total, orphans) in runs:
        rate = run.rows_per_s or 0.0
        verdicts.append(
            [
                run.label,
                f">= {ROWS_PER_S_TARGET:,} rows/s",
                f"{rate:,.0f}",
                "meets" if rate >= ROWS_PER_S_TARGET else "MISSES",
                f"< {MEMORY_TARGET_MB} MB",
                f"{run.peak_mb:,.0f}",
                "meets" if run.peak_mb < MEMORY_TARGET_MB else "MISSES",
            ]
        )
        overhead = f"{bare_rate / rate:.0f}x" if rate else "?"
        print(
            f"{run.label}: {total:,} settlements stored ({orphans:,} ORPHAN: no transactions "
            f"stored); import {run.import_s} s of {run.wall_s:.1f} s wall; {overhead} the "
            "bare csv pass's time per row"
        )
    print()
    print(table(["database", "target", "measured", "", "target", "measured", ""], verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
