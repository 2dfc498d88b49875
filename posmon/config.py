"""Configuration files: one TOML file per role, environment overrides, errors that name the key.

A role's settings are a pydantic model whose sections are models with `extra="forbid"`.
`load()` reads the TOML file, lets `POSMON_<SECTION>__<KEY>` environment variables
override it, and turns every problem into a `ConfigError` that names the file (or the
variable) and the key.

The environment overlay is done here rather than by pydantic-settings: importing
pydantic-settings costs the agent about 6 MB of resident memory (it brings asyncio,
argparse, dotenv and its cloud secret sources), and the agent's budget on a small box is
40 MB. What posmon needs of it is twenty lines.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

ENV_PREFIX = "POSMON_"
ENV_DELIMITER = "__"


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and the key."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


def _known_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {value!r}") from exc
    return value


TimeZoneName = Annotated[str, AfterValidator(_known_zone)]
"""An IANA time zone name (Asia/Shanghai), checked when the configuration loads."""


class Section(BaseModel):
    """Base of every configuration section: unknown keys are errors, values are checked."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class RoleSettings(BaseModel):
    """Base of a role's whole configuration: file values, then environment overrides."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


Settings = TypeVar("Settings", bound=RoleSettings)


def load(model: type[Settings], path: Path | None) -> Settings:
    """Read `path` (None: defaults and environment only) into `model`, or raise ConfigError."""
    data: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        try:
            with path.open("rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: no such file", path) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}", path) from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}", path) from exc
    _apply_environment(model, data, os.environ)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, where), path) from exc


def _apply_environment(
    model: type[BaseModel], data: dict[str, Any], environ: Mapping[str, str]
) -> None:
    """Overlay `POSMON_<SECTION>__<KEY>[__<KEY>...]` variables on the file's values, and
    `POSMON_<SECTION>` for a whole section, as JSON: the way to give a list section such as
    `POSMON_PORTS='[{"name": "counter-1", "url": "/dev/ttyUSB0"}]'`.

    Only variables whose first part names a section of `model` count (POSMON_LOG_LEVEL
    and the like belong to the command line). A value that looks like JSON (a list or an
    object) is parsed as JSON; anything else stays text for the model to convert.
    """
    for variable, value in sorted(environ.items()):
        if not variable.startswith(ENV_PREFIX):
            continue
        path = variable.removeprefix(ENV_PREFIX).lower().split(ENV_DELIMITER)
        if path[0] not in model.model_fields or not all(path):
            continue
        if len(path) == 1:
            data[path[0]] = _env_value(value)  # a whole section replaces the file's
            continue
        target = data
        for part in path[:-1]:
            existing = target.get(part)
            if not isinstance(existing, dict):
                existing = target[part] = {}
            target = existing
        target[path[-1]] = _env_value(value)


def _env_value(value: str) -> Any:
    if value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _describe(exc: ValidationError, where: str) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        key = ".".join(str(part) for part in error["loc"])
        names = [str(part).upper() for part in error["loc"] if not isinstance(part, int)]
        # The variable that set the key: POSMON_MQTT__PORT, or a whole POSMON_PORTS.
        variables = [
            ENV_PREFIX + ENV_DELIMITER.join(names[:end]) for end in range(len(names), 0, -1)
        ]
        variable = next((name for name in variables if name in os.environ), None)
        origin = f"environment {variable}" if variable else where
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{origin}: {key}: {message}")
    return "\n".join(lines)


def example_toml(model: type[BaseModel], examples: dict[str, dict[str, Any]]) -> str:
    """A commented TOML file for `model`: every key with its description and default.

    Sections come from the model's fields; list sections (`[[ports]]`) take their sample
    values from `examples`, and one without an example is written commented out. Keys
    without a default value are written commented out.
    """
    lines: list[str] = []
    for name, info in model.model_fields.items():
        section = _section_type(info.annotation)
        if section is None:
            continue
        many = _is_list(info.annotation)
        lines.append("")
        lines.extend(_comment(section.__doc__ or ""))
        section_lines = _section_lines(section, name, many, examples.get(name, {}))
        if many and name not in examples:
            # Empty by default: a template to copy, commented out, so the file loads.
            section_lines = [
                line if line.startswith("#") else f"# {line}" for line in section_lines
            ]
        lines.extend(section_lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _section_lines(
    section: type[BaseModel], name: str, many: bool, sample: dict[str, Any]
) -> list[str]:
    lines = [f"[[{name}]]" if many else f"[{name}]"]
    nested = []
    for key, info in section.model_fields.items():
        sub = _section_type(info.annotation)
        if sub is not None:
            nested.append((key, sub, _is_list(info.annotation)))
            continue
        lines.extend(_comment(info.description or ""))
        if key in sample:
            lines.append(f"{key} = {_toml_value(sample[key])}")
        elif info.default_factory is not None or info.is_required() or info.default is None:
            lines.append(f"# {key} = {_toml_value(sample.get(key, ''))}")
        else:
            lines.append(f"{key} = {_toml_value(info.default)}")
    for key, sub, list_of in nested:
        lines.append("")
        sub_lines = _section_lines(sub, f"{name}.{key}", list_of, {})
        if list_of:
            # None by default: an example to copy, commented out.
            sub_lines = [line if line.startswith("#") else f"# {line}" for line in sub_lines]
        lines.extend(sub_lines)
    return lines


def _section_type(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _is_list(annotation: Any) -> bool:
    return getattr(annotation, "__origin__", None) is list


def _comment(text: str) -> list[str]:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return [f"# {first}"] if first else []


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if hasattr(value, "value"):  # enums
        return _toml_value(value.value)
    return json.dumps(str(value), ensure_ascii=False)
