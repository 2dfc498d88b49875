"""The shipped deployment files are the secure set-up (issue #14).

There is no Docker engine in CI, so deploy/compose/ is checked without it: compose.yaml,
mosquitto.conf and collector.toml must be mutual TLS with the ACL and an identity per
client, never anonymous access; every posmon command the compose file runs must exist
with the options it passes; and posmon-init's script is run here, twice (a first `up`
and a later one), with its volumes moved into a temporary folder, its `pip install` left
out and its `chown` to the image's mosquitto user skipped. The broker it provisions is
then started with the compose mosquitto.conf, and the collector of collector.toml and an
agent's certificate get a transaction through it.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from conftest import wait_until
from test_collector_ingest import Running, txn

from collector.config import CollectorConfig
from collector.store import Store
from collector.terms import SettlementTerms
from posmon.cli import _register_roles, _root_app
from posmon.config import load
from posmon.mqtt import MqttClient, MqttSettings, Topics
from simulators.broker import free_port, mosquitto_binary

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "deploy" / "compose"
BIN = Path(sys.executable).parent
# Where posmon-init's volumes are in its container.
PKI, BROKER, COLLECTOR_TLS = "/srv/posmon-pki", "/mosquitto/posmon", "/etc/posmon/tls"


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def conf_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()[:1] not in ("", "#")]


def interpolated(text: str, environment: dict[str, str]) -> str:
    """What compose makes of a string: ${VAR:-default} from `environment`, $$ -> $."""

    def variable(match: re.Match[str]) -> str:
        return environment.get(match.group(1)) or match.group(2)

    text = re.sub(r"(?<!\$)\$\{(\w+):-([^}]*)\}", variable, text)
    return text.replace("$$", "$")


def init_script() -> str:
    command = compose()["services"]["posmon-init"]["command"]
    assert command[:2] == ["sh", "-euc"]
    return interpolated(command[2], {})


def init_environment() -> dict[str, str]:
    service = compose()["services"]["posmon-init"]
    return {key: interpolated(str(value), {}) for key, value in service["environment"].items()}


def posmon_commands() -> list[list[str]]:
    """Every posmon command line the compose file runs, as words."""
    found = []
    for service in compose()["services"].values():
        command = service.get("command")
        if command is None:
            continue
        text = interpolated(command if isinstance(command, str) else " ".join(command), {})
        text = text.replace("\\\n", " ")
        for line in re.split(r"\n|&&|;|\|\|", text):
            at = re.search(r"(?:^|\s)posmon\s", line)
            if at is not None:
                words = line[at.start() :].strip()
                if words.count('"') % 2:  # the end of the collector's `sh -c "..."`
                    words = words.removesuffix('"')
                found.append(shlex.split(words))
    return found


def test_mosquitto_takes_no_anonymous_client_and_reads_the_provisioned_files() -> None:
    lines = conf_lines((COMPOSE / "mosquitto.conf").read_text())
    assert "allow_anonymous true" not in lines
    assert "allow_anonymous false" in lines
    assert not any(line.startswith(("listener", "port ", "password_file")) for line in lines)
    assert lines[-1] == f"include_dir {BROKER}/posmon.d"
    services = compose()["services"]
    assert f"mosquitto-posmon:{BROKER}:ro" in services["mosquitto"]["volumes"]
    # The provisioned files name each other by absolute path: the same path in both.
    assert f"mosquitto-posmon:{BROKER}" in services["posmon-init"]["volumes"]
    assert services["mosquitto"]["ports"] == ["127.0.0.1:8883:8883"]
    for name in ("mosquitto", "collector"):
        assert services[name]["depends_on"]["posmon-init"] == {
            "condition": "service_completed_successfully"
        }
    # The CA's key stays in posmon-init's volume.
    for name, service in services.items():
        if name != "posmon-init":
            assert not any(
                str(volume).startswith("posmon-pki:") for volume in service.get("volumes", [])
            )


def test_posmon_init_provisions_mutual_tls_and_the_acl() -> None:
    commands = [" ".join(words) for words in posmon_commands()]
    provision = [c for c in commands if c.startswith("posmon broker provision")]
    assert len(provision) == 1
    assert "--tls-only" in provision[0] and f"--tls-dir {BROKER}/tls" in provision[0]
    assert "--listener" not in provision[0]
    assert any(c.startswith("posmon pki issue-collector compose") for c in commands)
    assert any(c.startswith("posmon fleet add-collector compose") for c in commands)


def test_every_posmon_command_in_compose_exists_with_its_options() -> None:
    app = _root_app()
    _register_roles(app, [])
    root = typer.main.get_command(app)
    commands = posmon_commands()
    assert len(commands) >= 9
    for words in commands:
        assert words[0] == "posmon"
        # Duck-typed: typer may bring a click of its own, whose Group is not click's.
        command: Any = root
        for word in words[1:]:
            if not hasattr(command, "get_command") or word.startswith(("-", "$")):
                break
            found = command.get_command(command.context_class(command), word)
            assert found is not None, f"{' '.join(words)}: no command {word!r}"
            command = found
        assert not hasattr(command, "get_command"), f"{' '.join(words)}: not a command"
        options = {opt for param in command.params for opt in param.opts}
        for word in words:
            if word.startswith("--"):
                assert word.split("=")[0] in options, f"{' '.join(words)}: no option {word}"


def test_the_collector_config_is_mutual_tls_with_its_alert_certificate(tmp_path: Path) -> None:
    text = (COMPOSE / "collector.toml").read_text()
    for name in (
        "ca.crt",
        "compose.crt",
        "compose.key",
        "compose-alerts.crt",
        "compose-alerts.key",
    ):
        (tmp_path / name).write_text("PEM\n")
    local = tmp_path / "collector.toml"
    local.write_text(text.replace(COLLECTOR_TLS, str(tmp_path)))
    config = load(CollectorConfig, local)
    tls = config.mqtt.tls
    assert (config.mqtt.host, config.mqtt.port, tls.enabled) == ("mosquitto", 8883, True)
    assert config.mqtt.username is None and config.mqtt.password is None
    assert tls.ca_file == tmp_path / "ca.crt"
    assert tls.cert_file == tmp_path / "compose.crt"
    assert config.notify.tls_certfile == tmp_path / "compose-alerts.crt"
    assert config.collector.id == "compose"


def test_the_agent_service_and_example_point_at_tls() -> None:
    unit = (ROOT / "deploy" / "systemd" / "posmon-agent.service").read_text()
    assert "/etc/posmon/tls" in unit and "posmon pki issue-agent" in unit
    example = subprocess.run(
        [str(BIN / "posmon"), "agent", "config-example"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "[mqtt.tls]" in example and "posmon pki issue-agent" in example


# --- posmon-init's script, run here -----------------------------------------------------------


def run_init(folder: Path, port: int) -> subprocess.CompletedProcess[str]:
    """posmon-init's script with its volumes under `folder` and the TLS port `port`."""
    script = init_script()
    assert script.splitlines()[0].startswith("pip install")
    assert f"chown -R 1883:1883 {BROKER}" in script
    script = "\n".join(script.splitlines()[1:])
    script = script.replace(f"chown -R 1883:1883 {BROKER}", ": chown skipped")
    script = script.replace("--tls-port 8883", f"--tls-port {port}")
    for path, local in ((PKI, "pki"), (BROKER, "broker"), (COLLECTOR_TLS, "collector-tls")):
        script = script.replace(path, str(folder / local))
        (folder / local).mkdir(exist_ok=True)
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("POSMON_")},
        **init_environment(),
        "POSMON_PKI_DIR": str(folder / "pki"),
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    return subprocess.run(
        ["sh", "-euc", script],
        cwd=folder / "pki",
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def initialised(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    port = free_port()
    for _run in range(2):  # the first `up`, then a later one: nothing refused, nothing lost
        done = run_init(tmp_path, port)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    yield tmp_path, port


@pytest.mark.slow
def test_posmon_init_runs_and_its_broker_lets_the_collector_in(
    initialised: tuple[Path, int],
) -> None:
    folder, port = initialised
    auth = conf_lines((folder / "broker" / "posmon.d" / "posmon-auth.conf").read_text())
    assert [line for line in auth if line.startswith("listener")] == [f"listener {port}"]
    for line in (
        "allow_anonymous false",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        f"acl_file {folder / 'broker' / 'posmon.d' / 'acl'}",
    ):
        assert line in auth
    acl = (folder / "broker" / "posmon.d" / "acl").read_text()
    for login in ("shop-1", "shop-2", "compose", "compose-alerts"):
        assert f"user {login}\n" in acl
    assert sorted(p.name for p in (folder / "collector-tls").iterdir()) == [
        "ca.crt",
        "compose-alerts.crt",
        "compose-alerts.key",
        "compose.crt",
        "compose.key",
    ]

    # The compose mosquitto.conf, with this folder's paths and a log file.
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed (Debian: apt-get install mosquitto)")
    conf = (COMPOSE / "mosquitto.conf").read_text()
    conf = conf.replace(BROKER, str(folder / "broker"))
    conf = conf.replace("/mosquitto/data/", f"{folder / 'data'}/")
    conf = conf.replace("log_dest stdout", f"log_dest file {folder / 'mosquitto.log'}")
    if os.geteuid() == 0:
        conf = "user root\n" + conf  # as root, mosquitto would switch to its own user
    (folder / "data").mkdir()
    (folder / "mosquitto.conf").write_text(conf)
    broker = subprocess.Popen([str(mosquitto_binary()), "-c", str(folder / "mosquitto.conf")])
    text = (
        (COMPOSE / "collector.toml")
        .read_text()
        .replace(COLLECTOR_TLS, str(folder / "collector-tls"))
    )
    # The registry's topic prefix (the default), on a broker of this test's own.
    text = text.replace('host = "mosquitto"', 'host = "localhost"')
    text = text.replace("port = 8883", f"port = {port}")
    text = text.replace("/var/lib/posmon-collector", str(folder))
    text = text.replace('host = "0.0.0.0"', "enabled = false")
    (folder / "collector.toml").write_text(text)
    config = load(CollectorConfig, folder / "collector.toml")
    reader = Store(config.database.url, SettlementTerms(config))
    reader.migrate()
    running = None
    agent = MqttClient(
        MqttSettings.model_validate(
            {
                "host": "localhost",
                "port": port,
                "tls": {
                    "enabled": True,
                    "ca_file": folder / "pki" / "ca.crt",
                    "cert_file": folder / "pki" / "clients" / "shop-1.crt",
                    "key_file": folder / "pki" / "clients" / "shop-1.key",
                },
            }
        ),
        "shop-1",
    )
    try:
        deadline = time.monotonic() + 10
        while broker.poll() is None and time.monotonic() < deadline:
            log = folder / "mosquitto.log"
            if log.exists() and f"listen socket on port {port}" in log.read_text():
                break
            time.sleep(0.05)
        assert broker.poll() is None, (folder / "mosquitto.log").read_text()
        running = Running(config)
        agent.connect()
        wait_until(lambda: agent.loop(0.02) and agent.connected, 10, "the agent connected")
        topic = Topics().terminal("10000001", "txn")
        rrns = (f"4025{n:08d}" for n in itertools.count())
        # Again until one is stored: the collector may not have subscribed yet.
        wait_until(
            lambda: (
                agent.publish(topic, txn(next(rrns), tid="10000001").to_json()) is not None
                and agent.loop(0.2)
                and reader.counts()["transactions"] >= 1
            ),
            20,
            "a transaction through the compose broker",
        )
    finally:
        agent.disconnect()
        if running is not None:
            running.stop()
        reader.close()
        broker.terminate()
        broker.wait(timeout=10)
    log = (folder / "mosquitto.log").read_text()
    assert "u'compose'" in log and "u'compose-alerts'" in log and "u'shop-1'" in log
    assert "already connected, closing old connection" not in log
