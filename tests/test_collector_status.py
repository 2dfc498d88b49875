"""`posmon collector status`: what docs/collector.md and docs/metrics.md say it shows."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from typer.testing import CliRunner

from collector.cli.collector import app
from collector.config import CollectorConfig
from collector.store import Store
from collector.terms import SettlementTerms
from posmon.config import load


def test_status_shows_the_metrics_sinks_counters(tmp_path: Path) -> None:
    # docs/metrics.md: "The sink's counters (written, dropped, rejected, failures,
    # buffered) are in `posmon collector status`". A collector whose InfluxDB is down
    # retries and buffers; status says so, with the numbers.
    config_file = tmp_path / "collector.toml"
    config_file.write_text(
        f'[collector]\nid = "c-1"\n[database]\nurl = "sqlite:///{tmp_path / "posmon.db"}"\n'
    )
    config: CollectorConfig = load(CollectorConfig, config_file)
    store = Store(config.database.url, SettlementTerms(config), collector_id="c-1")
    store.migrate()
    sink = {"written": 1200, "dropped": 7, "rejected": 0, "failures": 3, "buffered": 5000}
    store.record_collector(
        datetime.now(UTC),
        ["posmon/v1/terminals/+/txn"],
        {"received": 10, **{f"metrics.{name}": value for name, value in sink.items()}},
    )
    store.close()

    result = CliRunner().invoke(app, ["status", "--config", str(config_file)])
    assert result.exit_code == 0, result.output
    assert "metrics sink" in result.output
    [line] = [line for line in result.output.splitlines() if "c-1" in line and "1200" in line]
    cells = [cell.strip() for cell in line.split("│") if cell.strip()]
    assert cells[:6] == ["c-1", "1200", "7", "0", "3", "5000"]
    assert "retrying" in line


def test_status_says_when_no_metrics_sink_is_set(tmp_path: Path) -> None:
    config_file = tmp_path / "collector.toml"
    config_file.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "posmon.db"}"\n')
    result = CliRunner().invoke(app, ["status", "--config", str(config_file)])
    assert result.exit_code == 0, result.output
    assert "metrics sink: off" in result.output
