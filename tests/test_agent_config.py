"""The agent's configuration file as a technician meets it: example, overrides, errors."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent.config import AgentConfig
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
