"""Fleet overview: terminals online and offline, transactions, approval and settlement
rates, money at risk, open alerts and cases, and the collector's own health."""

from __future__ import annotations

from typing import Any

from dashboards.panels import dashboard, laid_out, row, series, stat

UID = "posmon-fleet"

OPEN_CASES = (
    'SELECT sum("open") FROM (SELECT last("count") AS "open" FROM "cases" '
    'WHERE "state" !~ /^(CLOSED|CANCELLED)$/ AND $timeFilter GROUP BY "state", "cause")'
)


def build() -> Any:
    panels = [
        row("Fleet"),
        stat("Terminals online", 'SELECT last("online") FROM "fleet" WHERE $timeFilter'),
        stat(
            "Terminals offline",
            'SELECT last("offline") FROM "fleet" WHERE $timeFilter',
            description="No status or heartbeat within the collector's heartbeat timeout.",
        ),
        stat("Host links down", 'SELECT last("links_down") FROM "fleet" WHERE $timeFilter'),
        stat(
            "Offline sales waiting (SAF)",
            'SELECT last("saf_pending") FROM "fleet" WHERE $timeFilter',
        ),
        stat("Open alerts", 'SELECT last("alerts_open") FROM "fleet" WHERE $timeFilter'),
        stat(
            "Open cases",
            OPEN_CASES,
            description="Re-remittance cases not closed or cancelled (issue 6).",
        ),
        row("Money"),
        series(
            "Transactions by kind",
            [
                (
                    'SELECT sum("count") FROM "transactions" WHERE $timeFilter '
                    'GROUP BY time($__interval), "kind" fill(0)',
                    "$tag_kind",
                )
            ],
            stacked=True,
            bars=True,
        ),
        series(
            "Approval rate",
            [
                (
                    'SELECT mean("approval") * 100 FROM "transactions" WHERE $timeFilter '
                    "GROUP BY time($__interval) fill(none)",
                    "approved",
                )
            ],
            unit="percent",
        ),
        series(
            "Settlement success rate",
            [
                (
                    'SELECT mean("success") * 100 FROM "settlements" WHERE $timeFilter '
                    "GROUP BY time($__interval) fill(none)",
                    "settled as expected",
                )
            ],
            unit="percent",
            description="Settled with the expected net, out of every settlement verdict "
            "(failed, returned, overdue, mismatch, duplicate ... count against).",
        ),
        stat(
            "Amount put at risk",
            'SELECT sum("amount_at_risk") / 100 FROM "alerts" '
            "WHERE \"state\" = 'firing' AND $timeFilter",
            reduce="sum",
            decimals=2,
            description="Money named by the alerts fired in the time range (yuan).",
        ),
        stat(
            "Sales amount",
            'SELECT sum("amount") / 100 FROM "transactions" '
            "WHERE \"approved\" = 'true' AND \"kind\" = 'SALE' AND $timeFilter",
            reduce="sum",
            decimals=2,
            description="Approved sales in the time range (yuan).",
        ),
        row("Collector"),
        series(
            "Messages received and stored",
            [
                (
                    'SELECT non_negative_difference(last("received")) FROM "collector" '
                    'WHERE $timeFilter GROUP BY time($__interval), "collector" fill(none)',
                    "received $tag_collector",
                ),
                (
                    'SELECT non_negative_difference(last("stored")) FROM "collector" '
                    'WHERE $timeFilter GROUP BY time($__interval), "collector" fill(none)',
                    "stored $tag_collector",
                ),
            ],
        ),
        series(
            "Ingest lag",
            [
                (
                    'SELECT max("lag_s") FROM "collector" WHERE $timeFilter '
                    'GROUP BY time($__interval), "collector" fill(none)',
                    "$tag_collector",
                )
            ],
            unit="s",
        ),
        series(
            "Dead letters and metrics dropped",
            [
                (
                    'SELECT last("dead_letters") FROM "collector" WHERE $timeFilter '
                    'GROUP BY time($__interval), "collector" fill(none)',
                    "dead letters $tag_collector",
                ),
                (
                    'SELECT last("metrics_dropped") FROM "collector" WHERE $timeFilter '
                    'GROUP BY time($__interval), "collector" fill(none)',
                    "metrics dropped $tag_collector",
                ),
            ],
            description="Totals since each collector started.",
        ),
    ]
    return dashboard(
        UID,
        "posmon: fleet overview",
        "The terminals, the money and the collector at a glance.",
        laid_out(panels, [4, 4, 4, 4, 4, 4, 12, 12, 12, 6, 6, 8, 8, 8]),
    )
