"""Cases: re-remittance (补划款) cases by state, by cause, by age, and SLA breaches.

The `cases` measurement is written from issue 6's case store through
`collector.metrics.Recorder.cases` (a gauge per state and cause, once a heartbeat);
until cases exist these panels stay empty.
"""

from __future__ import annotations

from typing import Any

from dashboards.panels import dashboard, laid_out, series, stat

UID = "posmon-cases"
OPEN = '"state" !~ /^(CLOSED|CANCELLED)$/'


def build() -> Any:
    def latest(field: str, group: str) -> str:
        return (
            f'SELECT sum("n") FROM (SELECT last("{field}") AS "n" FROM "cases" '
            f'WHERE $timeFilter GROUP BY time($__interval), "state", "cause") '
            f'WHERE $timeFilter GROUP BY time($__interval), "{group}" fill(none)'
        )

    panels = [
        stat(
            "Open cases",
            f'SELECT sum("n") FROM (SELECT last("count") AS "n" FROM "cases" '
            f'WHERE {OPEN} AND $timeFilter GROUP BY "state", "cause")',
        ),
        stat(
            "Held past their SLA",
            'SELECT sum("n") FROM (SELECT last("sla_breached") AS "n" FROM "cases" '
            'WHERE $timeFilter GROUP BY "state", "cause")',
        ),
        stat(
            "Owed in open cases",
            f'SELECT sum("n") / 100 FROM (SELECT last("amount") AS "n" FROM "cases" '
            f'WHERE {OPEN} AND $timeFilter GROUP BY "state", "cause")',
            decimals=2,
            description="Minor units in the store, yuan here.",
        ),
        stat(
            "Oldest open case",
            f'SELECT max("oldest_age_s") / 3600 FROM "cases" WHERE {OPEN} AND $timeFilter',
            unit="h",
            decimals=1,
        ),
        series("Cases by state", [(latest("count", "state"), "$tag_state")], stacked=True),
        series("Cases by cause", [(latest("count", "cause"), "$tag_cause")], stacked=True),
        series(
            "Oldest case by state",
            [
                (
                    'SELECT max("oldest_age_s") / 3600 FROM "cases" WHERE $timeFilter '
                    'GROUP BY time($__interval), "state" fill(none)',
                    "$tag_state",
                )
            ],
            unit="h",
        ),
        series(
            "SLA breaches by state",
            [(latest("sla_breached", "state"), "$tag_state")],
            stacked=True,
            bars=True,
        ),
    ]
    return dashboard(
        UID,
        "posmon: cases",
        "Re-remittance cases: where they stand, how old they are, which are late.",
        laid_out(panels, [6, 6, 6, 6, 12, 12, 12, 12]),
    )
