"""Settlement files in: a CSV of `posmon.settlement/1` results, streamed into the store.

The file's header row names the fields of `posmon.settlement/1` (CONTRACT §2), in any
order; `schema` may be left out, and the optional fields too. The file is read in bounded
memory: one line at a time, decoded with the encoding asked for (UTF-8 by default, with or
without a byte-order mark; GBK, as many acquirers write, or any codec Python knows), and
handed to `Store.ingest()` in chunks, the same path as MQTT and HTTP. Each chunk is one
database transaction, so an import that stops part-way has stored whole chunks only, and
importing the file again skips what is already stored (by settlement id).

A row is validated as the message it stands for: an empty cell is an absent field, and
money must be a plain integer in minor units ("128.00" is refused, never converted). A
bad row is reported with its line number and the column at fault, and skipped; the rest
is imported. A NUL character in any cell makes a bad row, whatever the column and the
database (PostgreSQL could not store it; no door of the collector takes one). A byte
sequence the encoding cannot decode stops the import at that line: every row before it
is imported, and a wrong encoding would garble everything after it. Row text in reports
has card and account numbers masked, and NUL shown as `\\x00`.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gc
import re
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from pydantic import ValidationError

from posmon.pan import scrub, visible_digits_ok
from posmon.wire.models import SettlementEvent, WireMessage

if TYPE_CHECKING:
    from collector.store import IngestReport

SOURCE = "csv"
DEFAULT_CHUNK = 2000
DEFAULT_LISTED = 100
MAX_LINE_CHARS = 1 << 20  # a row is ~250 characters: longer, the file is not line-based
_BLOCK_BYTES = 1 << 16
MONEY = ("amount", "fee", "net_amount")
_MAX_MONEY_DIGITS = 18  # the store keeps money in 64-bit integers
_SHOWN = 300  # characters of a bad row's text in a report
_ACCOUNT_DIGITS = re.compile(r"[0-9A-Za-z]")
# Money as the importer accepts it: a plain integer that fits the store's 64-bit columns.
_MONEY = re.compile(rf"-?[0-9]{{1,{_MAX_MONEY_DIGITS}}}")
_NUL = "\x00"

# Column names are the wire names (`schema`, not the attribute `schema_`).
FIELDS: tuple[str, ...] = tuple(
    info.alias or name for name, info in SettlementEvent.model_fields.items()
)
REQUIRED: tuple[str, ...] = tuple(
    info.alias or name for name, info in SettlementEvent.model_fields.items() if info.is_required()
)


class Ingest(Protocol):
    """Where the results go: `Store.ingest()`."""

    def ingest(self, messages: Sequence[WireMessage], source: str = ...) -> IngestReport: ...


class SettlementFileError(Exception):
    """A file that cannot be imported (any more): unreadable, bad header, wrong encoding."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {reason}" if line is not None else reason)
        self.reason = reason
        self.line = line


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that was not imported: where, why (naming the column), and its masked text."""

    line: int
    reason: str
    text: str


@dataclass(slots=True)
class ImportResult:
    """What an import did."""

    rows: int = 0  # data rows read (blank lines not counted)
    imported: int = 0  # new to the store
    repeats: int = 0  # already imported (same settlement id), earlier or in this file
    bad: int = 0
    bad_rows: list[BadRow] = field(default_factory=list)  # the first few, in file order
    elapsed_s: float = 0.0
    stopped: SettlementFileError | None = None  # why the import ended before the file did

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.elapsed_s if self.elapsed_s > 0 else 0.0


def import_settlements(
    path: Path,
    store: Ingest,
    *,
    encoding: str = "utf-8",
    chunk_size: int = DEFAULT_CHUNK,
    listed: int = DEFAULT_LISTED,
    progress: Callable[[int, int], None] | None = None,
) -> ImportResult:
    """Import one settlement file into `store`; see the module docstring.

    `progress(bytes_read, rows_read)` is called after each chunk. Raises
    `SettlementFileError` before importing anything when the file cannot be opened, the
    encoding is unknown or the header is wrong; a problem later (undecodable bytes, a
    broken CSV line) ends the import with `result.stopped` set.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    decoder = _decoder(encoding)
    started = time.perf_counter()
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise SettlementFileError(f"cannot read {path}: {exc.strerror}") from exc
    with handle, _old_objects_frozen():
        lines = _Lines(handle, decoder, encoding)
        reader = csv.reader(lines)
        header = _header(reader, lines)
        result = ImportResult()
        chunk: list[SettlementEvent] = []

        def flush() -> None:
            if chunk:
                report = store.ingest(chunk, source=SOURCE)
                result.imported += report.stored["settlement"]
                result.repeats += report.repeats["settlement"]
                chunk.clear()
            if progress is not None:
                progress(lines.bytes_read, result.rows)

        last = reader.line_num
        try:
            for cells in reader:
                line, last = last + 1, reader.line_num
                # A blank line, or a row of empty cells (the first cell decides most rows).
                if not cells or not (cells[0].strip() or "".join(cells).strip()):
                    continue
                result.rows += 1
                outcome = _settlement(header, cells)
                if isinstance(outcome, str):
                    result.bad += 1
                    if len(result.bad_rows) < listed:
                        result.bad_rows.append(BadRow(line, outcome, _masked(header, cells)))
                    continue
                chunk.append(outcome)
                if len(chunk) >= chunk_size:
                    flush()
        except SettlementFileError as exc:
            result.stopped = exc
        except csv.Error as exc:
            result.stopped = SettlementFileError(f"not valid CSV: {exc}", reader.line_num)
        flush()
    result.elapsed_s = time.perf_counter() - started
    return result


@contextlib.contextmanager
def _old_objects_frozen() -> Generator[None]:
    """The objects alive before the import left out of garbage collection while it runs.

    An import allocates millions of objects, so the cyclic collector runs its full
    collection again and again, each time walking every object of the process (modules,
    SQLAlchemy, pydantic): a quarter of a 100,000-row import's time, a twentieth of a
    million-row one's. None of those is the import's garbage. Not done when something
    else has frozen objects (`gc.freeze`).
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _decoder(encoding: str) -> codecs.IncrementalDecoder:
    try:
        info = codecs.lookup(encoding)
    except LookupError as exc:
        raise SettlementFileError(f"unknown encoding {encoding!r}") from exc
    # UTF-8 files from Windows tools often start with a byte-order mark: drop it.
    name = "utf-8-sig" if info.name == "utf-8" else info.name
    return codecs.getincrementaldecoder(name)(errors="strict")


class _Lines:
    """The file's lines as text, one at a time, counting lines and bytes as it goes.

    The file is read and decoded in blocks; a block that does not decode still has the
    lines before the bad bytes handed out, so the import stops exactly at the bad line.
    """

    def __init__(self, handle: BinaryIO, decoder: codecs.IncrementalDecoder, encoding: str):
        self.handle = handle
        self.decoder = decoder
        self.encoding = encoding
        self.line = 0  # lines handed out
        self.bytes_read = 0

    def __iter__(self) -> Iterator[str]:
        pending = ""  # the start of a line whose end has not been read yet
        while True:
            raw = self.handle.read(_BLOCK_BYTES)
            self.bytes_read += len(raw)
            try:
                text = pending + self.decoder.decode(raw, final=not raw)
                failed = None
            except UnicodeDecodeError as exc:
                # The decoder's input (what it held back, then this block) up to the bad
                # bytes decodes; its lines go out before the import stops.
                good = codecs.decode(exc.object[: exc.start], self.decoder_name, "replace")
                text, failed = pending + good, exc
            *complete, pending = text.split("\n")
            for piece in complete:
                self.line += 1
                yield piece + "\n"
            if failed is not None:
                raise self._undecodable(failed)
            if len(pending) > MAX_LINE_CHARS:
                raise SettlementFileError(
                    f"longer than {MAX_LINE_CHARS:,} characters: is this a CSV file?",
                    self.line + 1,
                )
            if not raw:
                if pending:
                    self.line += 1
                    yield pending
                return

    @property
    def decoder_name(self) -> str:
        return "utf-8" if codecs.lookup(self.encoding).name == "utf-8" else self.encoding

    def _undecodable(self, exc: UnicodeDecodeError) -> SettlementFileError:
        bad = exc.object[exc.start : exc.end]
        hint = (
            "if the file is GBK (as many acquirers' files are), import it with --encoding gbk"
            if codecs.lookup(self.encoding).name == "utf-8"
            else "check the file's encoding (--encoding)"
        )
        done = " Rows before this line were imported; importing again skips them."
        return SettlementFileError(
            f"bytes {bad.hex(' ')} are not valid {self.encoding}; {hint}."
            + (done if self.line > 1 else ""),
            self.line + 1,
        )


def _header(reader: Iterator[list[str]], lines: _Lines) -> tuple[str, ...]:
    """The column names, checked against `posmon.settlement/1`; raises SettlementFileError."""
    try:
        row = next(reader, None)
    except csv.Error as exc:
        raise SettlementFileError(f"header is not valid CSV: {exc}", 1) from exc
    if row is None or not "".join(row).strip():
        raise SettlementFileError(
            "no header row: the first line must name the posmon.settlement/1 fields", 1
        )
    names = tuple(cell.strip() for cell in row)
    problems = []
    if "" in names:
        problems.append(f"column {names.index('') + 1} has no name")
    repeated = sorted({name for name in names if name and names.count(name) > 1})
    if repeated:
        problems.append(f"column named twice: {', '.join(repeated)}")
    unknown = [name for name in names if name and name not in FIELDS]
    if unknown:
        problems.append(f"unknown column {', '.join(repr(name) for name in unknown)}")
    missing = [name for name in REQUIRED if name not in names]
    if missing:
        problems.append(f"missing required column {', '.join(missing)}")
    if problems:
        raise SettlementFileError(
            "; ".join(problems) + f". Columns are the posmon.settlement/1 fields: "
            f"{', '.join(FIELDS)} (required: {', '.join(REQUIRED)}).",
            lines.line,
        )
    return names


def _settlement(header: tuple[str, ...], cells: list[str]) -> SettlementEvent | str:
    """The row as a validated result, or the reason it is not one."""
    if len(cells) != len(header):
        return f"{len(cells)} cells where the header names {len(header)} columns"
    if _NUL in "".join(cells):  # one look per row; the column is found only when needed
        column = next(name for name, cell in zip(header, cells) if _NUL in cell)  # noqa: B905
        return f"{column}: holds a NUL character (\\x00); no field may"
    # (The lengths are equal: zip without strict=True, a row costs microseconds.)
    values = {name: value for name, cell in zip(header, cells) if (value := cell.strip())}  # noqa: B905
    for name in MONEY:
        amount = values.get(name)
        if amount is not None and _MONEY.fullmatch(amount) is None:
            return _money_reason(name, amount)
    try:
        # Text in, as if read from JSON: dates and times parsed the way the MQTT door does.
        return _validate_strings(values)
    except ValidationError as exc:
        return _reason(exc)


def _validate_strings(values: dict[str, Any]) -> SettlementEvent:
    """`SettlementEvent.model_validate_strings`, without its Python wrapper (a million rows)."""
    event: SettlementEvent = SettlementEvent.__pydantic_validator__.validate_strings(values)
    return event


def _money_reason(name: str, amount: str) -> str:
    digits = amount[1:] if amount[0] == "-" else amount
    if not (digits.isascii() and digits.isdigit()):
        return f"{name}: {_shown(amount)} is not an integer in minor units"
    return f"{name}: {_shown(amount)} is out of range"


def _reason(exc: ValidationError) -> str:
    """One line naming each bad column and, where harmless, the value it held."""
    parts = []
    for error in exc.errors(include_url=False):
        column = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        value = error.get("input")
        if not column:
            parts.append(message)  # a check across columns; the message names them
        elif isinstance(value, str) and column != "account_masked":
            parts.append(f"{column}: {_shown(value)}: {message}")
        elif error["type"] == "missing":
            parts.append(f"{column}: empty, but required")
        else:
            parts.append(f"{column}: {message}")
    return scrub("; ".join(parts))


def _shown(value: str) -> str:
    # Masked whole, then cut: cut first, a card number across the cut would be left too
    # short to be one, its first digits shown in clear.
    shown = scrub(value)
    return repr(shown if len(shown) <= 40 else shown[:40] + "...")


def _masked(header: tuple[str, ...], cells: list[str]) -> str:
    """A bad row's text for a report: account numbers and card numbers masked."""
    shown = list(cells)
    if "account_masked" in header and header.index("account_masked") < len(cells):
        at = header.index("account_masked")
        if not visible_digits_ok(cells[at].strip()):
            shown[at] = _ACCOUNT_DIGITS.sub("*", cells[at][:-4]) + cells[at][-4:]
    text = scrub(",".join(shown)).replace(_NUL, "\\x00")
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."
