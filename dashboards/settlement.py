"""Settlement health: failures by cause, by bank and by merchant, latency, overdue."""

from __future__ import annotations

from typing import Any

from dashboards.panels import SETTLEMENT_ALERTS, dashboard, laid_out, row, series, stat, table

UID = "posmon-settlement"


def build() -> Any:
    panels = [
        row("Verdicts"),
        stat(
            "Success rate",
            'SELECT mean("success") * 100 FROM "settlements" WHERE $timeFilter',
            unit="percent",
            decimals=1,
        ),
        stat(
            "Overdue",
            'SELECT sum("count") FROM "settlements" WHERE "outcome" = \'OVERDUE\' AND $timeFilter',
            reduce="sum",
            description="Transactions whose deadline passed with no credit.",
        ),
        stat(
            "Not credited",
            'SELECT sum("expected_net") / 100 FROM "settlements" '
            'WHERE "success" = 0 AND $timeFilter',
            reduce="sum",
            decimals=2,
            description="Expected net of the failed, returned and overdue verdicts (yuan).",
        ),
        stat(
            "Median time to money",
            'SELECT median("latency_s") / 3600 FROM "settlements" WHERE $timeFilter',
            unit="h",
            decimals=1,
        ),
        series(
            "Outcomes",
            [
                (
                    'SELECT sum("count") FROM "settlements" WHERE $timeFilter '
                    'GROUP BY time($__interval), "outcome" fill(0)',
                    "$tag_outcome",
                )
            ],
            stacked=True,
            bars=True,
        ),
        series(
            "Overdue",
            [
                (
                    'SELECT sum("count") FROM "settlements" '
                    "WHERE \"outcome\" = 'OVERDUE' AND $timeFilter "
                    "GROUP BY time($__interval) fill(0)",
                    "overdue",
                )
            ],
            bars=True,
        ),
        row("Failures"),
        series(
            "Failures by cause",
            [
                (
                    'SELECT sum("count") FROM "alerts" '
                    f'WHERE "state" = \'firing\' AND "type" =~ /^({SETTLEMENT_ALERTS})$/ '
                    'AND $timeFilter GROUP BY time($__interval), "cause" fill(0)',
                    "$tag_cause",
                )
            ],
            stacked=True,
            bars=True,
            description="The cause each settlement alert was classified with.",
        ),
        series(
            "Failures by bank",
            [
                (
                    'SELECT sum("count") FROM "settlements" WHERE "success" = 0 AND $timeFilter '
                    'GROUP BY time($__interval), "bank_code" fill(0)',
                    "bank $tag_bank_code",
                )
            ],
            stacked=True,
            bars=True,
            description="Verdicts against the merchant's money, by the settling bank "
            "(overdue ones have no bank: nothing came).",
        ),
        table(
            "Failures by merchant",
            'SELECT sum("count") AS "failures", sum("expected_net") / 100 AS "yuan" '
            'FROM "settlements" WHERE "success" = 0 AND $timeFilter GROUP BY "mid"',
        ),
        row("Latency"),
        series(
            "Time from sale to credit",
            [
                (
                    'SELECT median("latency_s") / 3600 FROM "settlements" WHERE $timeFilter '
                    "GROUP BY time($__interval) fill(none)",
                    "median",
                ),
                (
                    'SELECT max("latency_s") / 3600 FROM "settlements" WHERE $timeFilter '
                    "GROUP BY time($__interval) fill(none)",
                    "max",
                ),
            ],
            unit="h",
            description="Terminal time of the sale to the acquirer's settled_at, for "
            "credits with the expected amount.",
        ),
    ]
    return dashboard(
        UID,
        "posmon: settlement health",
        "Whether the merchants' money arrives, and why not when it does not.",
        laid_out(panels, [6, 6, 6, 6, 12, 12, 8, 8, 8, 24]),
    )
