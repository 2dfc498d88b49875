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
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from posmon.pan import scrub

if TYPE_CHECKING:
    from collector.alertstore import AlertStore
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
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def package(
    case: Mapping[str, Any],
    rows: Mapping[str, Any],
    *,
    events: list[dict[str, Any]],
    alert: Mapping[str, Any] | None,
    generated_at: datetime,
) -> dict[str, Any]:
    """The evidence package as JSON-ready data (see the module docstring)."""
    txn = rows.get("transaction")
    slip = {key: txn[key] for key in _SLIP_FIELDS if txn is not None and key in txn}
    timeline: list[dict[str, Any]] = []
    if txn is not None:
        timeline.append({"at": txn["terminal_time"], "what": f"{txn['kind']} at the terminal"})
        timeline.append({"at": txn["observed_at"], "what": "reported by the agent"})
    for item in rows.get("settlements", []):
        reason = f" {item['reason_code']}" if item.get("reason_code") else ""
        timeline.append(
            {
                "at": item["settled_at"],
                "what": f"settlement {item['settlement_id']}: {item['kind']} "
                f"{item['status']}{reason}, net {item['net_amount']}",
            }
        )
    for item in rows.get("outcomes", []):
        timeline.append({"at": item["at"], "what": f"outcome {item['outcome']}"})
    if alert is not None:
        timeline.append({"at": alert["started_at"], "what": f"alert {alert['type']} fired"})
    for item in events:
        moved = f"{item['from_state'] or '-'} -> {item['to_state']}"
        note = f": {item['note']}" if item.get("note") else ""
        timeline.append({"at": item["at"], "what": f"case {moved} by {item['actor']}{note}"})
    timeline.sort(key=lambda entry: _plain(entry["at"]))
    details = dict(alert.get("details") or {}) if alert is not None else {}
    statuses = [
        {
            key: item[key]
            for key in ("observed_at", "link_up", "network", "saf_pending", "serial_ok")
        }
        for item in rows.get("statuses", [])
    ]
    data = {
        "case": {
            key: case[key]
            for key in (
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
        },
        "cause": {"cause": case["cause"], "evidence": details.get("evidence", [])},
        "transaction": slip,
        "settlements": [
            {
                key: item[key]
                for key in (
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
            }
            for item in rows.get("settlements", [])
        ],
        "terminal_status": statuses,
        "timeline": timeline,
        "generated_at": generated_at,
    }
    # Nothing here holds a full card number; scrub anyway, as every log line is.
    text = json.dumps(_plain(data), ensure_ascii=False)
    return dict(json.loads(scrub(text)))


def gather(
    cases: CaseStore, alerts: AlertStore, case: Mapping[str, Any], generated_at: datetime
) -> dict[str, Any]:
    """The evidence package of a stored case, read from the database."""
    rows = cases.evidence_rows(case, STATUS_WINDOW)
    alert = alerts.get(case["alert_id"]) if case["alert_id"] else None
    events = cases.events(case["case_id"])
    return package(case, rows, events=events, alert=alert, generated_at=generated_at)


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
                whole, cents = divmod(abs(value), 100)
                sign = "-" if value < 0 else ""
                self.line(f"{sign}{whole}.{cents:02d} {currency or ''} ({value} minor units)")
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
