"""Terminal drill-down: one terminal (the `tid` variable) - link, SAF, signal,
transactions, alerts."""

from __future__ import annotations

from typing import Any

from grafanalib.core import Template, Templating

from dashboards.panels import DATASOURCE, alert_annotations, dashboard, laid_out, series, table

UID = "posmon-terminal"
TID = "\"tid\" = '$tid'"


def build() -> Any:
    def status(field: str, how: str = "last") -> str:
        return (
            f'SELECT {how}("{field}") FROM "terminal_status" WHERE {TID} AND $timeFilter '
            "GROUP BY time($__interval) fill(none)"
        )

    panels = [
        series(
            "Host link and serial port",
            [(status("link_up"), "link up"), (status("serial_ok"), "serial ok")],
            description="1 = up; the host link is the terminal's own, the serial port the "
            "agent's view of it.",
        ),
        series("Offline sales waiting (SAF)", [(status("saf_pending", "max"), "SAF")]),
        series(
            "Signal and round trip",
            [(status("rssi_dbm", "mean"), "RSSI dBm"), (status("host_rtt_ms", "mean"), "RTT ms")],
        ),
        series("Battery", [(status("battery"), "battery %")], unit="percent"),
        series(
            "Transactions",
            [
                (
                    f'SELECT sum("count") FROM "transactions" WHERE {TID} AND $timeFilter '
                    'GROUP BY time($__interval), "approved" fill(0)',
                    "approved $tag_approved",
                )
            ],
            stacked=True,
            bars=True,
        ),
        table(
            "Alerts",
            f'SELECT "type", "cause", "state", "summary" FROM "alerts" WHERE {TID} AND $timeFilter',
        ),
    ]
    terminal = Template(
        name="tid",
        label="Terminal",
        query='SHOW TAG VALUES FROM "terminal_status" WITH KEY = "tid"',
        dataSource=DATASOURCE,
        refresh=2,  # on time range change: new terminals appear
    )
    return dashboard(
        UID,
        "posmon: terminal",
        "One terminal: its link, offline queue, signal, transactions and alerts.",
        laid_out(panels, [12, 12, 12, 12, 12, 12]),
        annotations=alert_annotations(TID),
        templating=Templating(list=[terminal]),
    )
