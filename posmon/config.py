"""Configuration files: one TOML file per role, environment overrides, errors that name the key.

A role's settings are a pydantic-settings model whose sections are plain models with
`extra="forbid"`. `load()` reads the TOML file, lets `POSMON_<SECTION>__<KEY>` environment
variables override it, and turns every problem into a `ConfigError` that names the file
(or the variable) and the key.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "POSMON_"
ENV_DELIMITER = "__"


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and the key."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


class Section(BaseModel):
    """Base of every configuration section: unknown keys are errors, values are checked."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class RoleSettings(BaseSettings):
    """Base of a role's whole configuration: file values, then environment overrides."""

    model_config = SettingsConfigDict(
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        validate_default=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file arrives as init values; the environment must win over it.
        return env_settings, init_settings


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
    try:
        return model(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, where), path) from exc


def _describe(exc: ValidationError, where: str) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        key = ".".join(str(part) for part in error["loc"])
        variable = ENV_PREFIX + ENV_DELIMITER.join(
            str(part).upper() for part in error["loc"] if not isinstance(part, int)
        )
        origin = f"environment {variable}" if variable in os.environ else where
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{origin}: {key}: {message}")
    return "\n".join(lines)


def example_toml(model: type[BaseModel], examples: dict[str, dict[str, Any]]) -> str:
    """A commented TOML file for `model`: every key with its description and default.

    Sections come from the model's fields; list sections (`[[ports]]`) take their sample
    values from `examples`. Keys without a default value are written commented out.
    """
    lines: list[str] = []
    for name, info in model.model_fields.items():
        section = _section_type(info.annotation)
        if section is None:
            continue
        many = _is_list(info.annotation)
        lines.append("")
        lines.extend(_comment(section.__doc__ or ""))
        lines.extend(_section_lines(section, name, many, examples.get(name, {})))
    return "\n".join(lines).lstrip("\n") + "\n"


def _section_lines(
    section: type[BaseModel], name: str, many: bool, sample: dict[str, Any]
) -> list[str]:
    lines = [f"[[{name}]]" if many else f"[{name}]"]
    nested = []
    for key, info in section.model_fields.items():
        sub = _section_type(info.annotation)
        if sub is not None:
            nested.append((key, sub))
            continue
        lines.extend(_comment(info.description or ""))
        if key in sample:
            lines.append(f"{key} = {_toml_value(sample[key])}")
        elif info.default_factory is not None or info.is_required() or info.default is None:
            lines.append(f"# {key} = {_toml_value(sample.get(key, ''))}")
        else:
            lines.append(f"{key} = {_toml_value(info.default)}")
    for key, sub in nested:
        lines.append("")
        lines.extend(_section_lines(sub, f"{name}.{key}", False, {}))
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
