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


@pytest.mark.parametrize(
    ("notify", "problem"),
    [
        ("", "notify.tls_certfile: [mqtt.tls] logs in with the certificate"),
        ('tls_certfile = "{d}/c1.crt"\ntls_keyfile = "{d}/c1.key"\n', "is [mqtt.tls]'s own"),
        ('tls_certfile = "{d}/c1-alerts.crt"\n', "tls_certfile and tls_keyfile go together"),
        (
            'tls_certfile = "{d}/gone.crt"\ntls_keyfile = "{d}/c1-alerts.key"\n',
            "notify.tls_certfile: Value error, {d}/gone.crt: no such file",
        ),
        ('tls_certfile = "{d}"\ntls_keyfile = "{d}/c1-alerts.key"\n', "{d}: not a file"),
    ],
    ids=["missing", "the-ingests", "no-key", "no-file", "a-folder"],
)
def test_the_alert_channel_needs_its_own_certificate_under_mutual_tls(
    tmp_path: Path, notify: str, problem: str
) -> None:
    """With a client certificate on [mqtt], the alert channel's connection needs its own
    (CN c1-alerts): the error names the file, the key and what to run."""
    for name in ("ca.crt", "c1.crt", "c1.key", "c1-alerts.crt", "c1-alerts.key"):
        (tmp_path / name).write_text("PEM\n")
    path = tmp_path / "collector.toml"
    d = tmp_path
    path.write_text(
        f'[collector]\nid = "c1"\n[mqtt.tls]\nenabled = true\nca_file = "{d}/ca.crt"\n'
        f'cert_file = "{d}/c1.crt"\nkey_file = "{d}/c1.key"\n[notify]\n' + notify.format(d=d)
    )
    with pytest.raises(ConfigError) as raised:
        load(CollectorConfig, path)
    assert str(raised.value).startswith(f"{path}: ")
    assert problem.format(d=d) in str(raised.value)
    if notify == "":
        assert "c1-alerts" in str(raised.value) and "posmon pki issue-collector c1" in str(
            raised.value
        )


def test_an_alert_certificate_without_one_on_mqtt_is_refused(tmp_path: Path) -> None:
    for name in ("c1-alerts.crt", "c1-alerts.key"):
        (tmp_path / name).write_text("PEM\n")
    path = tmp_path / "collector.toml"
    path.write_text(
        f'[notify]\ntls_certfile = "{tmp_path}/c1-alerts.crt"\n'
        f'tls_keyfile = "{tmp_path}/c1-alerts.key"\n'
    )
    with pytest.raises(ConfigError, match=r"notify.tls_certfile: \[mqtt.tls\] has no client"):
        load(CollectorConfig, path)
    path.write_text(
        path.read_text() + f'[mqtt.tls]\nenabled = true\ncert_file = "{tmp_path}/c1.crt"\n'
        f'key_file = "{tmp_path}/c1.key"\n'
    )
    config = load(CollectorConfig, path)
    assert config.notify.tls_certfile == tmp_path / "c1-alerts.crt"
