"""Writes the dashboards' JSON (`dashboards/json/`), or checks that it is current.

The JSON is generated, committed, and loaded by Grafana through the provisioning files in
`dashboards/provisioning/`; it is never edited by hand. `posmon dashboards build --check`
(run by the test command) fails when a dashboard module changed and the JSON did not.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafanalib._gen import DashboardEncoder

from dashboards import cases, fleet, settlement, terminal
from posmon import generated

JSON_DIR = Path(__file__).resolve().parent / "json"

# File name -> the module function that builds it.
DASHBOARDS: dict[str, Callable[[], Any]] = {
    "fleet-overview.json": fleet.build,
    "settlement-health.json": settlement.build,
    "terminal.json": terminal.build,
    "cases.json": cases.build,
}


def render(build: Callable[[], Any]) -> str:
    """A dashboard as Grafana JSON text (sorted keys: a change shows as a small diff)."""
    data = json.loads(json.dumps(build().to_json_data(), cls=DashboardEncoder))
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def rendered() -> dict[str, str]:
    return {name: render(build) for name, build in DASHBOARDS.items()}


def write(directory: Path = JSON_DIR) -> list[Path]:
    return generated.write(directory, rendered())


def check(directory: Path = JSON_DIR) -> generated.Drift:
    """How `directory` differs from what the modules build now."""
    return generated.drift(directory, rendered(), "*.json")
