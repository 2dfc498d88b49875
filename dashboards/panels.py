"""The building blocks every posmon dashboard shares: the datasource, InfluxQL panels.

Every query is raw InfluxQL against the provisioned datasource (uid `posmon-influxdb`),
names double-quoted, `$timeFilter` and `$__interval` from Grafana. The dashboards' test
runs each query against an influxd filled by a simulated run, and checks every quoted
name against `collector.metrics.SCHEMA`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grafanalib.core import (
    Annotations,
    Dashboard,
    GridPos,
    RowPanel,
    Stat,
    Table,
    Templating,
    Time,
    TimeSeries,
)
from grafanalib.influxdb import InfluxDBTarget

DATASOURCE_UID = "posmon-influxdb"
DATASOURCE = {"type": "influxdb", "uid": DATASOURCE_UID}
WIDTH = 24  # Grafana's grid is 24 columns wide

# Alert types about one transaction's money (collector/rules.py AlertType).
SETTLEMENT_ALERTS = (
    "SETTLEMENT_FAILED|SETTLEMENT_RETURNED|SETTLEMENT_OVERDUE|AMOUNT_MISMATCH|"
    "DUPLICATE_SETTLEMENT|ORPHAN_SETTLEMENT|REVERSED_BUT_SETTLED"
)


def target(query: str, alias: str = "", ref: str = "A", fmt: str = "time_series") -> Any:
    return InfluxDBTarget(
        query=query, alias=alias, refId=ref, rawQuery=True, format=fmt, datasource=DATASOURCE
    )


def targets(queries: Sequence[tuple[str, str]]) -> list[Any]:
    """(query, alias) pairs as targets A, B, C ..."""
    return [target(query, alias, chr(ord("A") + n)) for n, (query, alias) in enumerate(queries)]


def stat(
    title: str,
    query: str,
    *,
    unit: str = "none",
    reduce: str = "lastNotNull",
    description: str = "",
    decimals: int | None = None,
) -> Any:
    return Stat(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=[target(query)],
        format=unit,
        reduceCalc=reduce,
        graphMode="none",
        decimals=decimals,
        noValue="0",
    )


def series(
    title: str,
    queries: Sequence[tuple[str, str]],
    *,
    unit: str = "none",
    description: str = "",
    stacked: bool = False,
    bars: bool = False,
) -> Any:
    return TimeSeries(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=targets(queries),
        unit=unit,
        drawStyle="bars" if bars else "line",
        fillOpacity=60 if bars else 10,
        stacking={"mode": "normal", "group": "A"} if stacked else {},
        spanNulls=True,
    )


def table(title: str, query: str, *, description: str = "") -> Any:
    return Table(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=[target(query, fmt="table")],
    )


def row(title: str) -> Any:
    return RowPanel(title=title)


def laid_out(panels: Sequence[Any], widths: Sequence[int]) -> list[Any]:
    """Panels placed left to right, wrapping at 24 columns; rows take a line of their own.

    `widths` is consumed one per non-row panel, in order.
    """
    placed: list[Any] = []
    x = y = 0
    height = 0
    sizes = iter(widths)
    for panel in panels:
        if isinstance(panel, RowPanel):
            y += height
            x, height = 0, 0
            panel.gridPos = GridPos(h=1, w=WIDTH, x=0, y=y)
            y += 1
            placed.append(panel)
            continue
        width = next(sizes)
        panel_height = 4 if isinstance(panel, Stat) else 8
        if x + width > WIDTH:
            y += height
            x, height = 0, 0
        panel.gridPos = GridPos(h=panel_height, w=width, x=x, y=y)
        x += width
        height = max(height, panel_height)
        placed.append(panel)
    return placed


def alert_annotations(where: str = "") -> Annotations:
    """Alerts as annotations: one mark where each fired, its summary as the text."""
    condition = f"{where} AND " if where else ""
    return Annotations(
        list=[
            {
                "datasource": DATASOURCE,
                "enable": True,
                "iconColor": "red",
                "name": "posmon alerts",
                "query": 'SELECT "summary", "type", "cause" FROM "alerts" '
                f"WHERE \"state\" = 'firing' AND {condition}$timeFilter",
                "textColumn": "summary",
                "tagsColumn": "type,cause",
            }
        ]
    )


def dashboard(
    uid: str,
    title: str,
    description: str,
    panels: list[Any],
    *,
    annotations: Annotations | None = None,
    templating: Templating | None = None,
) -> Any:
    return Dashboard(
        uid=uid,
        title=title,
        description=description,
        tags=["posmon"],
        panels=panels,
        annotations=annotations or alert_annotations(),
        templating=templating or Templating(),
        time=Time("now-24h", "now"),
        refresh="30s",
        timezone="browser",
    ).auto_panel_ids()
