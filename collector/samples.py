"""A metric sample and where samples go: the contract between `collector.metrics`, which
measures, and a sink such as `collector.influx`, which writes them.

Kept apart from both so that neither imports the other for it: `metrics` picks the sink
(and loads the InfluxDB client library only when one is configured), the sink knows only
what a sample is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

FieldValue = int | float | bool | str


@dataclass(frozen=True, slots=True)
class Sample:
    """One measured point: measurement, tags (bounded sets only), fields and time."""

    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, FieldValue]
    time: datetime


class MetricsSink(Protocol):
    """Where samples go. `submit` never blocks and never raises."""

    def start(self) -> None: ...

    def submit(self, sample: Sample) -> None: ...

    def counters(self) -> dict[str, int]: ...

    def close(self, timeout: float) -> None: ...
