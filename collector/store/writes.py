"""Bulk writes: many rows in a few statements, `ON CONFLICT DO NOTHING`, or by `COPY`.

`BulkWriter.insert_rows` is how a batch's transactions, settlements, events, conflicts and
outcome log reach the database. It converts values as the columns' bind processors
would (the hot types by `_fast_converter`, in a tenth of the time) and sends multi-row
statements at the driver: what a million-row settlement file, or an ingest batch, mostly
spends is per-row Python time, and SQLAlchemy's executemany would cost several times it.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Connection, Date, Dialect, Table
from sqlalchemy.dialects import postgresql, sqlite

from collector.schema import ScrubbedText, UtcDateTime, outcome_log
from posmon.pan import scrub

# Parameters per multi-row INSERT: within SQLite's 32,766 and PostgreSQL's 65,535.
_PARAMETERS_PER_STATEMENT = 16_000
_MISSING = object()


class BulkWriter:
    """Multi-row inserts for one database; statements and converters built once each."""

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._is_postgres = dialect.name == "postgresql"
        self._insert_sqls: dict[tuple[str, tuple[str, ...], int, str | None], str] = {}
        self._converter_cache: dict[
            tuple[str, tuple[str, ...]], list[tuple[int, Callable[[Any], Any]]]
        ] = {}

    def insert(self, table: Any) -> Any:
        """The dialect's INSERT for `table` (with its `on_conflict_do_update`)."""
        dialect = postgresql if self._is_postgres else sqlite
        return dialect.insert(table)

    def insert_rows(
        self,
        conn: Connection,
        table: Table,
        rows: Sequence[Mapping[str, object]],
        returning: str | None = None,
        *,
        copy: bool = False,
    ) -> list[Any]:
        """Insert many rows (same keys, scalar values), skipping conflicts; returns `returning`.

        Values are converted as the columns' bind processors would (the hot types by
        `_fast_converter`), so the rows are those an executemany through SQLAlchemy would
        write, for a fraction of its per-row Python time (what a million-row settlement
        file, or an ingest batch, mostly spends): multi-row `INSERT ... ON CONFLICT DO
        NOTHING` statements at the driver. With `copy` on PostgreSQL the rows go by `COPY`
        (`_copy_rows`) instead.
        """
        if not rows:
            return []
        names = tuple(rows[0])
        converters = self._converters(table, names)
        take = operator.itemgetter(*names)
        one = len(names) == 1
        per_statement = max(1, _PARAMETERS_PER_STATEMENT // len(names))
        # Values converted so far, per column: times and dates repeat a lot in a batch.
        done: list[dict[Any, Any]] = [{} for _ in converters]
        returned: list[Any] = []
        copied: list[list[Any]] = []
        for part in slices(rows, per_statement):
            flat: list[list[Any]] = []
            for row in part:
                values = [take(row)] if one else list(take(row))
                for (index, convert), converted in zip(converters, done, strict=True):
                    value = values[index]
                    try:
                        new = converted.get(value, _MISSING)
                    except TypeError:  # unhashable: a JSON column's dict
                        values[index] = convert(value)
                        continue
                    if new is _MISSING:
                        new = converted[value] = convert(value)
                    values[index] = new
                flat.append(values)
            if self._is_postgres and copy:
                copied.extend(flat)
                continue
            if self._is_postgres:
                sql = self._insert_sql(table, names, 0, returning)
                parameters: tuple[Any, ...] = tuple(
                    list(column) for column in zip(*flat, strict=True)
                )
            else:
                sql = self._insert_sql(table, names, len(part), returning)
                parameters = tuple(itertools.chain.from_iterable(flat))
            result = conn.exec_driver_sql(sql, parameters)
            if returning is not None:
                returned.extend(result.scalars())
        if copied:
            returned.extend(self._copy_rows(conn, table, names, copied, returning))
        return returned

    def _copy_rows(
        self,
        conn: Connection,
        table: Table,
        names: tuple[str, ...],
        rows: list[list[Any]],
        returning: str | None,
    ) -> list[Any]:
        """PostgreSQL: rows in by `COPY` (rows formatted by psycopg's C code), then inserted.

        psycopg dumps the one-array-per-column parameters of the INSERT element by element
        in Python (docs/performance.md). The rows are copied into a temporary table
        of the same columns and inserted from there (`ON CONFLICT DO NOTHING`, as the
        INSERT would); a table with `returning` None and no unique key but its identity
        (the outcome log) takes the `COPY` itself, in order.
        """
        quote = self._dialect.identifier_preparer.quote
        columns = ", ".join(quote(name) for name in names)
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            direct = returning is None and table is outcome_log
            if direct:
                target = quote(table.name)
            else:
                # Identifiers come from the schema; every value goes through COPY.
                target = quote(f"posmon_in_{table.name}")
                cursor.execute(
                    f"CREATE TEMP TABLE IF NOT EXISTS {target} ON COMMIT DELETE ROWS "  # noqa: S608
                    f"AS SELECT {columns} FROM {quote(table.name)} WITH NO DATA"
                )
            with cursor.copy(f"COPY {target} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            if direct:
                return []
            sql = (
                f"INSERT INTO {quote(table.name)} ({columns}) "  # noqa: S608
                f"SELECT {columns} FROM {target} ON CONFLICT DO NOTHING"
            )
            if returning is not None:
                sql += f" RETURNING {quote(returning)}"
            cursor.execute(sql)
            inserted = [found[0] for found in cursor.fetchall()] if returning else []
            cursor.execute(f"TRUNCATE {target}")
            return inserted
        finally:
            cursor.close()

    def _converters(
        self, table: Table, names: tuple[str, ...]
    ) -> list[tuple[int, Callable[[Any], Any]]]:
        """(position, converter) of the columns whose values need converting for the driver."""
        shape = (table.name, names)
        if shape not in self._converter_cache:
            dialect = self._dialect
            found = []
            for index, name in enumerate(names):
                column_type = table.c[name].type
                convert = _fast_converter(column_type, dialect.name)
                if convert is None:
                    convert = column_type.dialect_impl(dialect).bind_processor(dialect)
                if convert is not None:
                    found.append((index, convert))
            self._converter_cache[shape] = found
        return self._converter_cache[shape]

    def _insert_sql(
        self, table: Table, names: tuple[str, ...], count: int, returning: str | None
    ) -> str:
        shape = (table.name, names, count, returning)
        if shape not in self._insert_sqls:
            dialect = self._dialect
            quote = dialect.identifier_preparer.quote
            columns = ", ".join(quote(name) for name in names)
            if self._is_postgres:
                # One array per column: the statement text stays the same whatever the
                # number of rows (psycopg parses a long VALUES list anew every time).
                # %b: psycopg sends the arrays in binary, without quoting every element.
                arrays = ", ".join(
                    f"%b::{table.c[name].type.compile(dialect=dialect)}[]" for name in names
                )
                source = f"SELECT * FROM unnest({arrays})"  # noqa: S608 - see below
            else:
                one = "(" + ", ".join(["?"] * len(names)) + ")"
                source = f"VALUES {', '.join([one] * count)}"
            # Identifiers and types come from the schema; every value is a bound parameter.
            sql = f"INSERT INTO {quote(table.name)} ({columns}) {source} ON CONFLICT DO NOTHING"
            if returning is not None:
                sql += f" RETURNING {quote(returning)}"
            self._insert_sqls[shape] = sql
        return self._insert_sqls[shape]


def _utc(value: datetime) -> datetime:
    # As UtcDateTime.process_bind_param: aware times only, kept in UTC.
    if value.tzinfo is None:
        raise ValueError("naive datetime: posmon stores aware times only")
    return value.astimezone(UTC)


def _sqlite_utc(value: datetime | None) -> str | None:
    """UtcDateTime for SQLite: naive UTC in SQLAlchemy's DATETIME storage format."""
    if value is None:
        return None
    # "+00:00" cut off: the naive UTC time's text, without building that datetime.
    return _utc(value).isoformat(" ", "microseconds")[:-6]


def _sqlite_date(value: date | None) -> str | None:
    """Date for SQLite, in SQLAlchemy's DATE storage format."""
    if value is None:
        return None
    if type(value) is not date:
        raise TypeError(f"a date column got {type(value).__name__}")
    return value.isoformat()


def _postgres_utc(value: datetime | None) -> datetime | None:
    """UtcDateTime for PostgreSQL: the aware time in UTC."""
    return None if value is None else _utc(value)


def _fast_converter(column_type: Any, dialect: str) -> Callable[[Any], Any] | None:
    """A converter doing what the column type's bind processing does, in a tenth of the time.

    SQLAlchemy's own chain (TypeDecorator, then the dialect's processor) costs about 2 us a
    value; a batch has four times a row. Anything not listed keeps SQLAlchemy's processor.
    """
    if isinstance(column_type, UtcDateTime):
        return _sqlite_utc if dialect == "sqlite" else _postgres_utc
    if dialect == "sqlite" and type(column_type) is Date:
        return _sqlite_date
    if isinstance(column_type, ScrubbedText):
        return _scrubbed
    return None


def _scrubbed(value: str | None) -> str | None:
    return None if value is None else scrub(value)


def slices(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """Consecutive slices of at most `size` items."""
    return (items[start : start + size] for start in range(0, len(items), size))
