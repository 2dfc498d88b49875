"""Settlement files in (`posmon settlement import`): UTF-8 and GBK, bad rows reported by line
and skipped, re-imports skipped, headers checked before anything is stored, results
matched to stored transactions, the command's exit codes, and reading in bounded memory.

The importer runs against a real store: a SQLite file, and a fresh PostgreSQL database
(admin URL in POSMON_TEST_POSTGRES) for the tests that touch what the database does.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import subprocess
import sys
import tracemalloc
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from collector.config import CollectorConfig
from collector.schema import outcome_log, settlements, transactions
from collector.settlement_import import (
    SettlementFileError,
    _reason,
    _shown,
    import_settlements,
)
from collector.store import IngestReport, Store
from collector.terms import SettlementTerms
from posmon.wire.models import SettlementEvent, TxnEvent, TxnKind, WireMessage
from simulators.acquirer.files import SettlementFiles

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 25, 10, 30, tzinfo=SHANGHAI)
TID = "10000001"
MID = "898100012340001"
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
REFUSED = "收款账户已销户"  # "the payee account is closed"


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database: a SQLite file, or a new PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/posmon.db"
        return
    with postgres_database() as url:
        yield url


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A new PostgreSQL database, dropped afterwards; yields its URL."""
    admin_url = make_url(os.environ.get("POSMON_TEST_POSTGRES", POSTGRES_ADMIN))
    name = f"posmon_import_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        except OperationalError as exc:
            pytest.fail(f"PostgreSQL not reachable (POSMON_TEST_POSTGRES): {exc.orig}")
        yield admin_url.set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    instance = Store(db_url, SettlementTerms(CollectorConfig()), clock=lambda: NOW)
    instance.migrate()
    yield instance
    instance.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    instance = Store(
        f"sqlite:///{tmp_path}/posmon.db", SettlementTerms(CollectorConfig()), clock=lambda: NOW
    )
    instance.migrate()
    yield instance
    instance.close()


# --- files --------------------------------------------------------------------------------


def row(n: int, **changes: str) -> dict[str, str]:
    """The n-th settlement of a file, as the cells an acquirer writes."""
    amount = 12_800 + n
    cells = {
        "settlement_id": f"ACQ20261125{n:08d}",
        "mid": MID,
        "tid": TID,
        "rrn": f"{n:012d}",
        "txn_date": "2026-11-24",
        "amount": str(amount),
        "fee": "77",
        "net_amount": str(amount - 77),
        "currency": "CNY",
        "status": "CREDITED",
        "settled_at": "2026-11-25T09:00:00+08:00",
        "kind": "ORIGINAL",
        "stan": f"{n % 1_000_000:06d}",
        "batch": "000042",
        "reason_code": "",
        "reason_text": "",
        "bank_code": "0102",
        "account_masked": "6222******1234",
    }
    cells.update(changes)
    return cells


def write_csv(
    path: Path,
    rows: Sequence[dict[str, str] | None],
    *,
    encoding: str = "utf-8",
    columns: Sequence[str] = COLUMNS,
) -> Path:
    """A settlement file; None in `rows` writes a blank line."""
    with path.open("w", newline="", encoding=encoding) as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for cells in rows:
            if cells is None:
                handle.write("\r\n")
            else:
                writer.writerow([cells.get(name, "") for name in columns])
    return path


def stored_count(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(settlements)).scalar_one())


# --- importing ----------------------------------------------------------------------------


def test_a_utf8_file_is_imported_with_empty_cells_as_absent_fields(
    store: Store, tmp_path: Path
) -> None:
    file = write_csv(
        tmp_path / "settlements.csv",
        [row(1), row(2, stan="", batch="", bank_code="", account_masked=""), row(3)],
    )

    result = import_settlements(file, store)

    assert (result.rows, result.imported, result.repeats, result.bad) == (3, 3, 0, 0)
    assert result.stopped is None
    stored = store.settlement("ACQ2026112500000002")
    assert stored is not None
    assert stored.amount == 12_802
    assert stored.net_amount == 12_802 - 77
    assert stored.settled_at == datetime(2026, 11, 25, 1, 0, tzinfo=ZoneInfo("UTC"))
    assert stored.stan is None and stored.batch is None and stored.bank_code is None
    assert stored.source == "csv"
    assert stored.outcome == "ORPHAN"  # no transaction stored for it


def test_a_utf8_byte_order_mark_and_a_schema_column_are_accepted(
    sqlite_store: Store, tmp_path: Path
) -> None:
    file = tmp_path / "bom.csv"
    write_csv(
        file,
        [{**row(1), "schema": "posmon.settlement/1"}, row(2)],
        encoding="utf-8-sig",
        columns=["schema", *COLUMNS],
    )
    assert file.read_bytes().startswith(b"\xef\xbb\xbfschema,")

    result = import_settlements(file, sqlite_store)

    assert (result.imported, result.bad) == (2, 0)


def test_a_gbk_file_with_chinese_reasons_is_imported_when_asked(
    store: Store, tmp_path: Path
) -> None:
    failed = row(2, status="FAILED", reason_code="AC04", reason_text=REFUSED)
    file = write_csv(tmp_path / "gbk.csv", [row(1), failed, row(3)], encoding="gbk")
    assert REFUSED.encode("gbk") in file.read_bytes()

    result = import_settlements(file, store, encoding="gbk")

    assert (result.imported, result.bad, result.stopped) == (3, 0, None)
    stored = store.settlement(failed["settlement_id"])
    assert stored is not None
    assert stored.reason_text == REFUSED
    assert stored.status == "FAILED"


def test_a_gbk_file_read_as_utf8_stops_at_the_line_and_suggests_gbk(
    sqlite_store: Store, tmp_path: Path
) -> None:
    rows = [row(n) for n in range(1, 6)]
    rows[3] = row(4, status="FAILED", reason_code="AC04", reason_text=REFUSED)  # line 5
    file = write_csv(tmp_path / "gbk.csv", rows, encoding="gbk")

    result = import_settlements(file, sqlite_store)

    assert result.stopped is not None
    assert result.stopped.line == 5
    assert "--encoding gbk" in str(result.stopped)
    assert (result.rows, result.imported) == (3, 3)  # everything before line 5
    assert stored_count(sqlite_store) == 3


@pytest.mark.parametrize("amount", ["128.00", "12,800", "1e4", "+12800", "¥12800", "12800元"])
def test_money_must_be_an_integer_in_minor_units(
    sqlite_store: Store, tmp_path: Path, amount: str
) -> None:
    file = write_csv(tmp_path / "money.csv", [row(1, amount=amount)])

    result = import_settlements(file, sqlite_store)

    assert result.imported == 0
    assert [bad.reason for bad in result.bad_rows] == [
        f"amount: {amount!r} is not an integer in minor units"
    ]


def test_bad_rows_are_reported_by_line_and_the_rest_imported(store: Store, tmp_path: Path) -> None:
    rows: list[dict[str, str] | None] = [row(n) for n in range(1, 10)]  # lines 2..10
    rows[1] = row(2, amount="128.00")  # line 3
    rows[3] = row(4, txn_date="2026-02-30")  # line 5
    rows[5] = row(6, net_amount="1")  # line 7
    rows.insert(7, None)  # a blank line 9: skipped, and the lines after keep their numbers
    rows[8] = row(8, settled_at="2026-11-25T09:00:00")  # line 10: no UTC offset
    file = write_csv(tmp_path / "bad.csv", rows)

    result = import_settlements(file, store)

    assert [(bad.line, bad.reason) for bad in result.bad_rows] == [
        (3, "amount: '128.00' is not an integer in minor units"),
        (
            5,
            "txn_date: '2026-02-30': Input should be a valid date or datetime, day value is "
            "outside expected range",
        ),
        (7, "net_amount 1 != amount 12806 - fee 77"),
        (10, "settled_at: '2026-11-25T09:00:00': Input should have timezone info"),
    ]
    assert (result.rows, result.imported, result.bad) == (9, 5, 4)
    assert result.bad_rows[0].text.startswith("ACQ2026112500000002,898100012340001,")
    assert stored_count(store) == 5
    assert store.settlement("ACQ2026112500000002") is None


def test_line_numbers_count_lines_of_quoted_multi_line_cells(
    sqlite_store: Store, tmp_path: Path
) -> None:
    rows = [
        row(1, status="FAILED", reason_code="X1", reason_text="line one\nline two"),  # 2-3
        row(2, fee="7.7"),  # line 4
    ]
    result = import_settlements(write_csv(tmp_path / "multi.csv", rows), sqlite_store)

    assert [bad.line for bad in result.bad_rows] == [4]
    assert result.imported == 1


def test_bad_rows_are_reported_with_card_and_account_numbers_masked(
    sqlite_store: Store, tmp_path: Path
) -> None:
    pan = "6222021234567890128"  # Luhn-valid, as a terminal would print it
    rows = [
        row(1, account_masked="40128888888818810"),  # a bank account: no Luhn digit
        row(2, amount="1.5", status="FAILED", reason_code="X", reason_text=f"card {pan}"),
    ]
    result = import_settlements(write_csv(tmp_path / "pan.csv", rows), sqlite_store)

    assert [bad.line for bad in result.bad_rows] == [2, 3]
    assert result.bad_rows[0].reason == (
        "account_masked: shows more than the first 6 and last 4 digits"
    )
    report = repr(result.bad_rows)
    assert "40128888888818810" not in report
    assert "*************8810" in result.bad_rows[0].text
    assert pan not in report
    assert "622202*********0128" in result.bad_rows[1].text


def test_a_second_import_skips_everything_as_already_imported(store: Store, tmp_path: Path) -> None:
    rows = [row(n) for n in range(1, 8)]
    rows[2] = row(3, fee="0.77")
    file = write_csv(tmp_path / "again.csv", rows)
    first = import_settlements(file, store, chunk_size=2)

    second = import_settlements(file, store, chunk_size=2)

    assert (first.imported, first.repeats, first.bad) == (6, 0, 1)
    assert (second.imported, second.repeats, second.bad) == (0, 6, 1)
    assert stored_count(store) == 6


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        ([*COLUMNS, "amount_yuan"], "unknown column 'amount_yuan'"),
        ([name for name in COLUMNS if name != "settled_at"], "missing required column settled_at"),
        ([*COLUMNS, "fee"], "column named twice: fee"),
        (["Settlement ID", *COLUMNS[1:]], "unknown column 'Settlement ID'"),
    ],
)
def test_a_bad_header_is_refused_before_anything_is_imported(
    sqlite_store: Store, tmp_path: Path, columns: list[str], expected: str
) -> None:
    file = write_csv(tmp_path / "header.csv", [row(1), row(2)], columns=columns)

    with pytest.raises(SettlementFileError) as raised:
        import_settlements(file, sqlite_store)

    assert expected in str(raised.value)
    assert raised.value.line == 1
    assert stored_count(sqlite_store) == 0


def test_an_empty_file_or_an_unknown_encoding_is_refused(
    sqlite_store: Store, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(SettlementFileError, match="no header row"):
        import_settlements(empty, sqlite_store)
    with pytest.raises(SettlementFileError, match="unknown encoding 'latin-9000'"):
        import_settlements(
            write_csv(tmp_path / "a.csv", [row(1)]), sqlite_store, encoding="latin-9000"
        )
    with pytest.raises(SettlementFileError, match="cannot read"):
        import_settlements(tmp_path / "missing.csv", sqlite_store)


def a_sale(rrn: str, stan: str, amount: int) -> TxnEvent:
    """An approved sale on the terminal of `row()`, the day before its settlement."""
    terminal_time = datetime(2026, 11, 24, 15, 0, tzinfo=SHANGHAI)
    return TxnEvent(
        event_id=uuid.uuid4(),
        agent_id="agent-1",
        tid=TID,
        mid=MID,
        kind=TxnKind.SALE,
        amount=amount,
        currency="CNY",
        pan_masked="622202*********0123",
        rc="00",
        approved=True,
        rrn=rrn,
        stan=stan,
        batch="000042",
        terminal_time=terminal_time,
        observed_at=terminal_time,
    )


def test_an_imported_credit_settles_the_stored_transaction(store: Store, tmp_path: Path) -> None:
    sale = a_sale("432911000017", "000017", 12_800)
    store.ingest([sale])
    credit = row(17, rrn=sale.rrn, amount="12800", fee="0", net_amount="12800")

    result = import_settlements(write_csv(tmp_path / "credit.csv", [credit, row(18)]), store)

    assert (result.imported, result.bad) == (2, 0)
    stored = store.transaction(TID, sale.rrn)
    assert stored is not None
    assert stored.outcome == "SETTLED"
    assert stored.settlement_id == credit["settlement_id"]
    settlement = store.settlement(credit["settlement_id"])
    assert settlement is not None and settlement.outcome == "SETTLED"


@pytest.mark.parametrize("encoding", ["utf-8", "gbk"])
def test_the_acquirer_simulators_files_import_as_written(
    sqlite_store: Store, tmp_path: Path, encoding: str
) -> None:
    def as_message(cells: dict[str, str]) -> SettlementEvent:
        return SettlementEvent.model_validate_strings({k: v for k, v in cells.items() if v})

    sent = [
        as_message(row(1)),
        as_message(row(2, status="FAILED", reason_code="AC04", reason_text=REFUSED)),
        as_message(row(3, stan="", batch="", account_masked="")),
    ]
    files = SettlementFiles(tmp_path / "files", SHANGHAI, encoding=encoding)
    files.write(sent)
    (path,) = files.paths

    result = import_settlements(path, sqlite_store, encoding=encoding)

    assert (result.imported, result.bad, result.stopped) == (3, 0, None)
    for message in sent:
        stored = sqlite_store.settlement(message.settlement_id)
        assert stored is not None
        assert (stored.reason_text, stored.net_amount) == (
            message.reason_text,
            message.net_amount,
        )


def test_sqlite_and_postgresql_store_the_same_import(tmp_path: Path) -> None:
    """The same file and transactions give the same rows in both (PostgreSQL uses COPY)."""
    sales = [a_sale(f"{n:012d}", f"{n:06d}", 12_800 + n) for n in (1, 2, 3)]
    rows = [
        row(1),  # settles sale 1
        row(2, status="FAILED", reason_code="AC04", reason_text=REFUSED),  # sale 2 failed
        row(3, net_amount="1", fee="12802"),  # sale 3: short
        row(4, stan="", batch="", bank_code="", account_masked=""),  # orphan
        row(1),  # the same settlement again, in the file
        row(5, amount="-100", fee="0", net_amount="-100", settled_at="2026-11-25T09:00:01.5Z"),
        row(2, status="CREDITED"),  # a repeat: the first one stays
    ]
    file = write_csv(tmp_path / "both.csv", rows)

    def stored(url: str) -> tuple[list[tuple[object, ...]], ...]:
        store = Store(url, SettlementTerms(CollectorConfig()), clock=lambda: NOW)
        try:
            store.migrate()
            store.ingest(sales)
            first = import_settlements(file, store, chunk_size=3)
            again = import_settlements(file, store, chunk_size=2)
            assert (first.imported, first.repeats, first.bad) == (5, 2, 0)
            assert (again.imported, again.repeats) == (0, 7)
            with store.engine.connect() as conn:
                return tuple(
                    [tuple(found) for found in conn.execute(select(table).order_by(*order))]
                    for table, order in (
                        (settlements, [settlements.c.settlement_id]),
                        (outcome_log, [outcome_log.c.id]),
                        (transactions, [transactions.c.id]),
                    )
                )
        finally:
            store.close()

    on_sqlite = stored(f"sqlite:///{tmp_path}/posmon.db")
    with postgres_database() as url:
        on_postgresql = stored(url)

    assert [len(table) for table in on_sqlite] == [5, 5, 3]
    assert on_postgresql == on_sqlite


# --- bounded memory -----------------------------------------------------------------------


class CountingSink:
    """Stands in for the store: keeps counts and the largest chunk, never the results."""

    def __init__(self) -> None:
        self.rows = 0
        self.largest = 0
        self.chunks = 0

    def ingest(self, messages: Sequence[WireMessage], source: str = "mqtt") -> IngestReport:
        assert all(isinstance(message, SettlementEvent) for message in messages)
        self.rows += len(messages)
        self.largest = max(self.largest, len(messages))
        self.chunks += 1
        report = IngestReport()
        report.stored["settlement"] = len(messages)
        return report


class KeepingSink:
    """Stands in for the store: keeps every result it is given."""

    def __init__(self) -> None:
        self.results: list[WireMessage] = []

    def ingest(self, messages: Sequence[WireMessage], source: str = "mqtt") -> IngestReport:
        self.results.extend(messages)
        report = IngestReport()
        report.stored["settlement"] = len(messages)
        return report


def as_the_model_reads_it(text: str) -> tuple[list[SettlementEvent], list[tuple[int, str]]]:
    """What an import must make of a file's text, row by row, straight from the model.

    Blank rows skipped; cells stripped and empty ones absent; money a plain integer of at
    most 18 digits; everything else `SettlementEvent.model_validate_strings`.
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    header = tuple(cell.strip() for cell in next(reader))
    results: list[SettlementEvent] = []
    bad: list[tuple[int, str]] = []
    last = reader.line_num
    for cells in reader:
        line, last = last + 1, reader.line_num
        if not "".join(cells).strip():
            continue
        if len(cells) != len(header):
            bad.append((line, f"{len(cells)} cells where the header names {len(header)} columns"))
            continue
        values = {name: cell.strip() for name, cell in zip(header, cells, strict=True)}
        values = {name: value for name, value in values.items() if value}
        money = [
            (name, values[name])
            for name in ("amount", "fee", "net_amount")
            if name in values and not re.fullmatch(r"-?[0-9]{1,18}", values[name])
        ]
        if money:
            name, amount = money[0]
            digits = amount.removeprefix("-")
            what = "out of range" if digits.isascii() and digits.isdigit() else None
            bad.append(
                (line, f"{name}: {_shown(amount)} is {what or 'not an integer in minor units'}")
            )
            continue
        try:
            results.append(SettlementEvent.model_validate_strings(values))
        except ValidationError as exc:
            bad.append((line, _reason(exc)))
    return results, bad


_TRICKY = [
    "",
    " ",
    "  \t",
    "0",
    "-0",
    "007",
    "-",
    "+1",
    "1.0",
    "128.00",
    "1e4",
    "\uff11\uff12",  # full-width digits
    "\u0663",  # an Arabic-Indic digit
    "9" * 18,
    "-" + "9" * 18,
    "9" * 19,
    "2026-02-30",
    "2026-11-24T09:00:00",
    "20261124",
    "2026-11-25 09:00:00+08:00",
    "2026-11-25T09:00:00Z",
    "credited",
    "FAILED",
    "REREMITTANCE",
    "cny",
    "6222******1234",
    "6222331234561234",
    "posmon.settlement/1",
    "x" * 257,
]
_cell_changes = st.dictionaries(
    st.sampled_from(["schema", *COLUMNS]),
    st.one_of(
        st.sampled_from(_TRICKY),
        st.builds(lambda value, pad: pad + value + pad, st.sampled_from(_TRICKY), st.just(" ")),
        st.text(st.characters(exclude_characters="\x00\r", exclude_categories=["Cs"]), max_size=20),
    ),
    max_size=4,
)


_money = st.one_of(*(st.integers(-(10**digits), 10**digits) for digits in (3, 17, 18, 19)))
_money_changes = st.builds(
    lambda amount, fee: {"amount": str(amount), "fee": str(fee), "net_amount": str(amount - fee)},
    _money,
    _money,
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    changes=st.lists(st.one_of(st.none(), _cell_changes, _money_changes), min_size=1, max_size=6),
    with_schema=st.booleans(),
    short=st.integers(min_value=-1, max_value=5),
)
def test_rows_are_accepted_and_refused_exactly_as_the_model_reads_them(
    tmp_path_factory: pytest.TempPathFactory,
    changes: list[dict[str, str] | None],
    with_schema: bool,
    short: int,
) -> None:
    """The importer's lean row path against the model applied row by row (hypothesis)."""
    columns = ["schema", *COLUMNS] if with_schema else COLUMNS
    file = tmp_path_factory.mktemp("rows") / "rows.csv"
    with file.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for n, change in enumerate(changes):
            if change is None:
                handle.write("\r\n")  # a blank line
                continue
            cells = [row(n, **change).get(name, "") for name in columns]
            writer.writerow(cells[:-1] if n == short else cells)  # one row a cell short
    expected, expected_bad = as_the_model_reads_it(file.read_text(encoding="utf-8"))
    sink = KeepingSink()

    result = import_settlements(file, sink, chunk_size=2)

    assert [(bad.line, bad.reason) for bad in result.bad_rows] == expected_bad
    assert sink.results == expected
    assert [repr(r) for r in sink.results] == [repr(r) for r in expected]
    assert [r.model_fields_set for r in sink.results] == [r.model_fields_set for r in expected]


def write_large_csv(path: Path, rows: int, bad_every: int = 0) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for n in range(rows):
            cells = row(n, fee="0.5") if bad_every and n % bad_every == 0 else row(n)
            writer.writerow([cells[name] for name in COLUMNS])
    return path


def test_a_large_file_is_read_and_stored_chunk_by_chunk(tmp_path: Path) -> None:
    rows = 50_000
    file = write_large_csv(tmp_path / "large.csv", rows)
    size = file.stat().st_size
    sink = CountingSink()
    seen: list[tuple[int, int]] = []

    result = import_settlements(
        file, sink, chunk_size=1000, progress=lambda done, n: seen.append((done, n))
    )

    assert (result.rows, result.imported, sink.rows) == (rows, rows, rows)
    assert sink.largest == 1000 and sink.chunks == 50
    # Progress came chunk by chunk while reading, not after reading it all.
    assert seen[0][0] < size / 20 and seen[-1] == (size, rows)


def test_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    small = write_large_csv(tmp_path / "small.csv", 1_000, bad_every=10)
    large = write_large_csv(tmp_path / "large.csv", 10_000, bad_every=10)
    peaks = []
    results = []
    for file in (small, large):
        tracemalloc.start()
        try:
            results.append(import_settlements(file, CountingSink(), chunk_size=500))
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()

    # Ten times the rows (and the bad rows) in about the same memory: one chunk of results,
    # one line of text, the first 100 bad rows.
    assert peaks[1] < peaks[0] * 1.5, [f"{peak / 2**20:.1f} MiB" for peak in peaks]
    assert [(r.bad, len(r.bad_rows)) for r in results] == [(100, 100), (1000, 100)]


# --- the command --------------------------------------------------------------------------


def posmon(*args: str | Path) -> subprocess.Popen[str]:
    """`posmon ...` started (not waited for), so that independent runs overlap."""
    return subprocess.Popen(
        [str(POSMON), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"},
    )


def finished(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=60)
    return process.returncode, stdout, stderr


def config_for(folder: Path) -> Path:
    folder.mkdir()
    config = folder / "collector.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{folder}/posmon.db"\n')
    return config


def test_the_command_imports_reports_bad_rows_and_sets_the_exit_status(tmp_path: Path) -> None:
    rows = [row(n) for n in range(1, 6)]
    rows[1] = row(2, amount="128.00")  # line 3
    bad = write_csv(tmp_path / "bad.csv", rows)
    gbk = write_csv(
        tmp_path / "gbk.csv",
        [row(7, status="FAILED", reason_code="AC04", reason_text=REFUSED), row(8)],
        encoding="gbk",
    )
    unknown = write_csv(tmp_path / "unknown.csv", [row(9)], columns=[*COLUMNS, "remark"])
    config = config_for(tmp_path / "a")

    first = posmon("settlement", "import", bad, "--config", config)
    others = [
        posmon(
            "settlement", "import", gbk, "--encoding", "gbk", "--config", config_for(tmp_path / "b")
        ),
        posmon("settlement", "import", gbk, "--config", config_for(tmp_path / "c")),
        posmon("settlement", "import", unknown, "--config", config_for(tmp_path / "d")),
        posmon(
            "settlement", "import", tmp_path / "nope.csv", "--config", config_for(tmp_path / "e")
        ),
    ]
    code, out, err = finished(first)
    assert code == 1, err
    assert "5 rows read, 4 imported, 0 already imported, 1 bad" in out
    assert "line 3: amount: '128.00' is not an integer in minor units" in out
    assert "alembic" not in err  # no migration chatter
    code, out, err = finished(
        posmon("settlement", "import", bad, "--config", config, "--chunk", "2")
    )
    assert code == 1, err
    assert "5 rows read, 0 imported, 4 already imported, 1 bad" in out

    good, undecodable, refused, no_file = map(finished, others)
    assert good[0] == 0, good[2]
    assert "2 rows read, 2 imported" in good[1]
    assert undecodable[0] == 2
    assert "stopped at line 2: bytes" in undecodable[2] and "--encoding gbk" in undecodable[2]
    assert "0 rows read" in undecodable[1]
    assert refused[0] == 2
    assert "unknown column 'remark'" in refused[2] and "nothing imported" in refused[2]
    assert no_file[0] == 2 and "nope.csv: no such file" in no_file[2]
