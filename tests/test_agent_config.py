"""The agent's configuration file as a technician meets it: example, overrides, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent.config import AgentConfig, OutboxSection
from posmon.cli import AgentRun, _agent_run_options
from posmon.config import ConfigError, load


def posmon(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "posmon"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_config_example_is_valid_toml_that_loads(tmp_path: Path) -> None:
    result = posmon("agent", "config-example")
    assert result.returncode == 0, result.stderr
    assert "# Broker host name or address." in result.stdout
    path = tmp_path / "agent.toml"
    path.write_text(result.stdout)
    config = load(AgentConfig, path)
    assert config.ports[0].name == "counter-1"
    assert config.mqtt.topic_prefix == "posmon/v1"
    assert tomllib.loads(result.stdout)["outbox"]["fsync"] == "full"


def test_unknown_key_names_the_file_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[mqtt]\nhost = "broker"\nprot = 1883\n')
    with pytest.raises(ConfigError) as error:
        load(AgentConfig, path)
    assert str(error.value) == f"{path}: mqtt.prot: unknown key"


def test_bad_value_names_the_key_and_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[agent]\ntimezone = "Mars/Olympus"\n[[ports]]\nname = "a"\nurl = "x"\nbaudrate = 12345\n'
    )
    with pytest.raises(ConfigError) as error:
        load(AgentConfig, path)
    message = str(error.value)
    assert f"{path}: agent.timezone: Value error, unknown time zone 'Mars/Olympus'" in message
    assert f"{path}: ports.0.baudrate:" in message


def test_environment_overrides_the_file_and_is_named_when_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[mqtt]\nhost = "from-file"\nport = 1883\n')
    monkeypatch.setenv("POSMON_MQTT__HOST", "from-env")
    assert load(AgentConfig, path).mqtt.host == "from-env"
    monkeypatch.setenv("POSMON_MQTT__PORT", "not-a-port")
    with pytest.raises(ConfigError) as error:
        load(AgentConfig, path)
    assert "environment POSMON_MQTT__PORT: mqtt.port:" in str(error.value)


def test_posmon_ports_replaces_the_files_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # docs/agent.md: "the port list, being a list, takes JSON: POSMON_PORTS='[...]'".
    path = tmp_path / "agent.toml"
    path.write_text('[[ports]]\nname = "from-file"\nurl = "/dev/ttyUSB9"\n')
    monkeypatch.setenv("POSMON_PORTS", '[{"name": "counter-1", "url": "/dev/ttyUSB0"}]')
    ports = load(AgentConfig, path).ports
    assert [(p.name, p.url) for p in ports] == [("counter-1", "/dev/ttyUSB0")]
    monkeypatch.setenv("POSMON_PORTS", '[{"name": "counter-1", "url": "x", "baudrate": 1}]')
    with pytest.raises(ConfigError) as error:
        load(AgentConfig, path)
    assert "environment POSMON_PORTS: ports.0.baudrate:" in str(error.value)


def test_agent_run_and_doctor_read_posmon_ports(tmp_path: Path) -> None:
    # Both commands take their ports from the environment when it names them.
    environ = {
        **os.environ,
        "POSMON_PORTS": json.dumps([{"name": "env-port", "url": str(tmp_path / "ttyNONE")}]),
        "POSMON_AGENT__STATE_DIR": str(tmp_path / "state"),
        "POSMON_MQTT__PORT": "1",
    }
    doctor = posmon("agent", "doctor", "--listen-seconds", "0.1", env=environ)
    assert "env-port" in doctor.stdout + doctor.stderr, doctor.stdout
    assert "Listening to 1 port(s)" in doctor.stderr
    bad = {**environ, "POSMON_PORTS": '[{"name": "env-port", "url": "x", "baudrate": 7}]'}
    run = posmon("agent", "run", env=bad)
    assert run.returncode == 2
    assert "environment POSMON_PORTS: ports.0.baudrate:" in run.stderr


def test_broken_toml_and_missing_file_are_clear(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[mqtt\nhost = 1\n")
    with pytest.raises(ConfigError, match=r"broken.toml: not valid TOML"):
        load(AgentConfig, broken)
    with pytest.raises(ConfigError, match=r"nowhere.toml: no such file"):
        load(AgentConfig, tmp_path / "nowhere.toml")


def test_agent_run_with_a_bad_file_exits_2_naming_key_and_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[outbox]\nmax_events = 5\n")
    result = posmon("agent", "run", "--config", str(path))
    assert result.returncode == 2
    assert f"{path}: outbox.max_events: Input should be greater than or equal to 100" in (
        result.stderr
    )


def test_the_outbox_minimum_is_where_a_technician_reads() -> None:
    # The model refuses fewer than 100 events; the example file and docs/agent.md say so.
    metadata = OutboxSection.model_fields["max_events"].metadata
    floor = next(item.ge for item in metadata if hasattr(item, "ge"))
    example = posmon("agent", "config-example").stdout
    assert f"# Capacity, at least {floor} events" in example
    docs = (Path(__file__).resolve().parent.parent / "docs" / "agent.md").read_text()
    assert f"`outbox.max_events` events (default 200,000; at least {floor}" in docs


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        (["agent", "run"], {}, AgentRun("INFO", False, None)),
        (["agent", "run", "-c", "a.toml"], {}, AgentRun("INFO", False, Path("a.toml"))),
        (["agent", "run", "-ca.toml"], {}, AgentRun("INFO", False, Path("a.toml"))),
        (["agent", "run", "--config=a.toml"], {}, AgentRun("INFO", False, Path("a.toml"))),
        (
            ["--log-level", "debug", "--log-json", "agent", "run", "--config", "a.toml"],
            {},
            AgentRun("debug", True, Path("a.toml")),
        ),
        (
            ["agent", "run"],
            {"POSMON_LOG_LEVEL": "WARNING", "POSMON_LOG_JSON": "yes"},
            AgentRun("WARNING", True, None),
        ),
        (["--log-level=ERROR", "agent", "run"], {}, AgentRun("ERROR", False, None)),
    ],
)
def test_plain_agent_run_is_read_without_typer(
    argv: list[str], environ: dict[str, str], expected: AgentRun
) -> None:
    assert _agent_run_options(argv, environ) == expected


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        (["agent", "run", "--help"], {}),
        (["agent", "run", "-c"], {}),
        (["agent", "run", "--config="], {}),
        (["agent", "run", "-c", "a.toml", "--log-level", "DEBUG"], {}),
        (["--log-level", "LOUD", "agent", "run"], {}),
        (["--version", "agent", "run"], {}),
        (["agent", "doctor"], {}),
        (["agent", "run"], {"POSMON_LOG_JSON": "maybe"}),
        ([], {}),
    ],
)
def test_anything_else_goes_to_typer(argv: list[str], environ: dict[str, str]) -> None:
    assert _agent_run_options(argv, environ) is None


def test_agent_run_help_and_a_bad_option_still_answer_through_typer() -> None:
    assert "--config" in posmon("agent", "run", "--help").stdout
    bad = posmon("--log-level", "LOUD", "agent", "run")
    assert bad.returncode == 2
    assert "unknown level 'LOUD'" in bad.stderr
