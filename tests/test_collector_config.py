"""The collector's configuration as an operator meets it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from collector.config import CollectorConfig, SettlementMode
from posmon.config import ConfigError, load

POSMON = str(Path(sys.executable).parent / "posmon")


def test_config_example_loads_and_names_every_section(tmp_path: Path) -> None:
    result = subprocess.run(
        [POSMON, "collector", "config-example"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    for section in ("[database]", "[mqtt]", "[ingest]", "[settlement]", "[[merchants]]"):
        assert section in result.stdout
    path = tmp_path / "collector.toml"
    path.write_text(result.stdout)
    config = load(CollectorConfig, path)
    assert config.merchants[0].mode is SettlementMode.D0
    assert config.settlement.mode is SettlementMode.T1


def test_a_merchant_listed_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "collector.toml"
    path.write_text(
        '[[merchants]]\nmid = "898100012340001"\n[[merchants]]\nmid = "898100012340001"\n'
    )
    with pytest.raises(ConfigError, match="a merchant is listed twice"):
        load(CollectorConfig, path)


def test_environment_overrides_the_database_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSMON_DATABASE__URL", f"sqlite:///{tmp_path}/x.db")
    assert load(CollectorConfig, None).database.url == f"sqlite:///{tmp_path}/x.db"
