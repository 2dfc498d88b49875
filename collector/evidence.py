"""The evidence package of a re-remittance case, for the bank: JSON and PDF.

What a bank or acquirer asks for before it re-remits: the transaction record, the slip
data (what the terminal printed), every settlement record of the transaction, the
terminal's status around the time, the timeline (outcomes, alert, case moves), and the
cause with the evidence behind it. Card numbers appear only masked (they are never stored
otherwise) and account numbers only masked.

The PDF uses a TrueType font with Chinese glyphs when one is installed (WenQuanYi,
Noto CJK: Debian `fonts-wqy-microhei`), so reason texts print in both languages;
without one, text in Chinese is left out and the English kept.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collector.alerts.rows import StoredAlert
from collector.caserows import CaseEntry, CaseEvidence, StoredCase
from posmon.money import format_money
from posmon.pan import scrub_tree

if TYPE_CHECKING:
    from collector.alerts import AlertStore
    from collector.casestore import CaseStore

# The terminal's status this close to the transaction goes into the package.
STATUS_WINDOW = timedelta(minutes=30)

CJK_FONTS = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc",
)
LATIN_FONTS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",)
MONEY_FIELDS = frozenset({"amount", "fee", "net_amount"})
_CJK = re.compile(r"[\u3000-\u9fff\uff00-\uffef]+")
_CASE_FIELDS = (
    "case_id",
    "state",
    "cause",
    "remedy",
    "amount",
    "currency",
    "tid",
    "mid",
    "rrn",
    "bank_code",
    "account_masked",
    "opened_at",
    "rejection_reason",
    "remittance_settlement_id",
)
_SETTLEMENT_FIELDS = (
    "settlement_id",
    "kind",
    "status",
    "amount",
    "fee",
    "net_amount",
    "currency",
    "settled_at",
    "reason_code",
    "reason_text",
    "bank_code",
    "account_masked",
)
_STATUS_FIELDS = ("observed_at", "link_up", "network", "saf_pending", "serial_ok")
_SLIP_FIELDS = (
    "tid",
    "mid",
    "kind",
    "amount",
    "currency",
    "pan_masked",
    "rc",
    "auth_code",
    "rrn",
    "stan",
    "batch",
    "terminal_time",
    "entry_mode",
    "issuer",
)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _picked(row: object, names: Iterable[str]) -> dict[str, Any]:
    """A row's fields by name, as the package's JSON shows them (built here, returned as
    part of the package)."""
    return {name: getattr(row, name) for name in names}


def package(
    case: StoredCase,
    evidence: CaseEvidence,
    *,
    events: Sequence[CaseEntry],
    alert: StoredAlert | None,
    generated_at: datetime,
) -> dict[str, Any]:
    """The evidence package as JSON-ready data (see the module docstring)."""
    txn = evidence.transaction
    slip = _picked(txn, _SLIP_FIELDS) if txn is not None else {}
    # JSON-ready entries of the package, built and returned here.
    timeline: list[dict[str, Any]] = []
    if txn is not None:
        timeline.append({"at": txn.terminal_time, "what": f"{txn.kind.value} at the terminal"})
        timeline.append({"at": txn.observed_at, "what": "reported by the agent"})
    for item in evidence.settlements:
        reason = f" {item.reason_code}" if item.reason_code else ""
        timeline.append(
            {
                "at": item.settled_at,
                "what": f"settlement {item.settlement_id}: {item.kind.value} "
                f"{item.status.value}{reason}, net {item.net_amount}",
            }
        )
    for step in evidence.outcomes:
        timeline.append({"at": step.at, "what": f"outcome {step.outcome.value}"})
    if alert is not None:
        timeline.append({"at": alert.started_at, "what": f"alert {alert.type.value} fired"})
    for entry in events:
        before = entry.from_state.value if entry.from_state else "-"
        moved = f"{before} -> {entry.to_state.value}"
        note = f": {entry.note}" if entry.note else ""
        timeline.append({"at": entry.at, "what": f"case {moved} by {entry.actor}{note}"})
    timeline.sort(key=lambda item: _plain(item["at"]))
    details = dict(alert.details or {}) if alert is not None else {}
    data = {
        "case": _picked(case, _CASE_FIELDS),
        "cause": {"cause": case.cause.value, "evidence": details.get("evidence", [])},
        "transaction": slip,
        "settlements": [_picked(item, _SETTLEMENT_FIELDS) for item in evidence.settlements],
        "terminal_status": [_picked(item, _STATUS_FIELDS) for item in evidence.statuses],
        "timeline": timeline,
        "generated_at": generated_at,
    }
    # The stored free text is masked already (models and columns); this package leaves the
    # collector, so its free text passes the scanner once more. Identifiers (mid, tid, rrn,
    # ids) are shown as the API shows them.
    return dict(scrub_tree(_plain(data)))


def gather(
    cases: CaseStore, alerts: AlertStore, case: StoredCase, generated_at: datetime
) -> dict[str, Any]:
    """The evidence package of a stored case (JSON-ready data), read from the database."""
    evidence = cases.evidence(case, STATUS_WINDOW)
    alert = alerts.get(case.alert_id) if case.alert_id else None
    events = cases.audit_log(case.case_id)
    return package(case, evidence, events=events, alert=alert, generated_at=generated_at)


def write_json(data: Mapping[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


class _Pdf:
    """A plain document: a title, sections, key-value pairs, lines."""

    def __init__(self) -> None:
        from fpdf import FPDF  # noqa: PLC0415 - only when a PDF is asked for

        # fontTools reports every table it subsets at INFO: nothing an operator needs.
        logging.getLogger("fontTools").setLevel(logging.WARNING)

        self.pdf = FPDF(format="A4")
        self.pdf.set_auto_page_break(auto=True, margin=15)
        self.cjk = next((font for font in CJK_FONTS if Path(font).exists()), None)
        latin = next((font for font in LATIN_FONTS if Path(font).exists()), None)
        self.family = "helvetica"
        if self.cjk is not None or latin is not None:
            self.pdf.add_font("body", fname=self.cjk or latin)
            self.family = "body"
        self.pdf.add_page()

    def text(self, value: Any) -> str:
        out = str(value if value is not None else "-")
        if self.cjk is None:
            # "收款账号错误 (incorrect account number)" -> "incorrect account number"
            out = _CJK.sub("", out).strip()
            out = re.sub(r"(^|:\s)\s*\(([^()]*)\)", r"\1\2", out) or "-"
        if self.family == "helvetica":
            out = out.encode("latin-1", "replace").decode("latin-1")
        return out

    def title(self, text: str, subtitle: str) -> None:
        self.pdf.set_font(self.family, size=15)
        self.line(text)
        self.pdf.set_font(self.family, size=9)
        self.line(subtitle)

    def section(self, title: str) -> None:
        self.pdf.ln(3)
        self.pdf.set_font(self.family, size=12)
        self.line(title)
        self.pdf.set_font(self.family, size=9)

    def line(self, text: Any) -> None:
        self.pdf.multi_cell(0, 5, self.text(text), new_x="LMARGIN", new_y="NEXT")

    def pairs(self, values: Mapping[str, Any]) -> None:
        currency = values.get("currency")
        for key, value in values.items():
            self.pdf.cell(45, 5, self.text(key))
            if key in MONEY_FIELDS and isinstance(value, int):
                self.line(f"{format_money(value, currency)} ({value} minor units)")
            else:
                self.line(value)


def write_pdf(data: Mapping[str, Any], path: Path) -> Path:
    """Write the package as a PDF (see `pdf`)."""
    path.write_bytes(pdf(data))
    return path


def pdf(data: Mapping[str, Any]) -> bytes:
    """The package as a PDF a bank clerk can read."""
    doc = _Pdf()
    case = data["case"]
    doc.title(
        f"Re-remittance evidence: case {case['case_id']}", f"generated {data['generated_at']}"
    )
    doc.section("Case")
    doc.pairs(case)
    doc.section("Cause and evidence")
    doc.pairs({"cause": data["cause"]["cause"]})
    for line in data["cause"]["evidence"]:
        doc.line(f"- {line}")
    doc.section("Transaction (slip data)")
    doc.pairs(data["transaction"])
    doc.section("Settlement records")
    for item in data["settlements"]:
        doc.pairs(item)
        doc.pdf.ln(2)
    if not data["settlements"]:
        doc.line("none received")
    doc.section("Terminal status around the transaction")
    for item in data["terminal_status"]:
        link = "UP" if item["link_up"] else "DOWN"
        doc.line(
            f"{item['observed_at']}  link {link}  {item['network']}  SAF {item['saf_pending']}"
        )
    if not data["terminal_status"]:
        doc.line("no status reported within the window")
    doc.section("Timeline")
    for entry in data["timeline"]:
        doc.line(f"{entry['at']}  {entry['what']}")
    return bytes(doc.pdf.output())
