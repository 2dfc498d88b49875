"""The fleet registry: every broker login of a posmon installation and what it speaks for.

One TOML file (default `fleet.toml`) names the agents and the terminals each one serves,
the collectors, the acquirer feeds, the viewers and the admins, and the topic prefix.
`posmon broker provision` turns it into the broker's password file and ACL (`acl.py`,
`provision.py`); `posmon fleet ...` edits it. The file is the single source of who may
say what: the ACL is generated from it, never written by hand.

    topic_prefix = "posmon/v1"
    collectors = ["collector-1"]
    viewers = ["grafana"]
    admins = ["ops-li"]

    [agents.shop-042]
    tids = ["10000001", "10000002"]

    [acquirers.unionpay-sh]
    feeds = ["0102", "0105"]

A terminal id belongs to at most one agent, and every login name is used once across
all roles (a collector also owns `<id>-alerts`, the login of its alert connection).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from posmon.broker.files import write_atomically
from posmon.config import ConfigError
from posmon.wire.models import Tid

DEFAULT_FLEET = Path("fleet.toml")
# posmon.mqtt.DEFAULT_PREFIX, not imported: posmon.mqtt is the paho adapter, which the
# broker's admin tooling does without (a test keeps the two the same).
DEFAULT_PREFIX = "posmon/v1"
# A login is an MQTT username, a `user` line of the ACL and a file name
# (credentials/<login>.secret): no '/', '+', '#', ':' or space, no leading dot. The same
# rule as posmon.broker.pki's certificate identities, so a login and a certificate's
# commonName can be one name.
LOGIN_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# The login of a collector's alert connection: the collector publishes alerts over a
# connection of its own, and a broker that names each connection after its login
# (use_username_as_clientid) lets one connection per login in.
ALERTS_SUFFIX = "-alerts"
MAX_TIDS = 256  # what a posmon.presence/1 message can list

Login = Annotated[str, Field(pattern=LOGIN_PATTERN)]


class Role(StrEnum):
    """What a broker login is for; the ACL grants topics by role (see acl.py)."""

    AGENT = "agent"
    COLLECTOR = "collector"
    COLLECTOR_ALERTS = "collector-alerts"
    ACQUIRER = "acquirer"
    VIEWER = "viewer"
    ADMIN = "admin"


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentEntry(_Entry):
    """One agent box: the terminals whose events it may publish."""

    tids: list[Tid] = Field(
        min_length=1,
        max_length=MAX_TIDS,
        description="Terminal ids this agent serves; each belongs to one agent only.",
    )

    @model_validator(mode="after")
    def _no_repeats(self) -> Self:
        repeated = sorted({tid for tid in self.tids if self.tids.count(tid) > 1})
        if repeated:
            raise ValueError(f"terminal {', '.join(repeated)} listed twice")
        return self


class AcquirerEntry(_Entry):
    """One acquirer integration that publishes settlement results."""

    feeds: list[str] = Field(
        default_factory=list,
        description="Bank codes or acquirer names this feed settles for (informational).",
    )


class Fleet(BaseModel):
    """Every broker login of one installation, by role, and the topic prefix they share."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic_prefix: str = Field(
        DEFAULT_PREFIX,
        pattern=r"^[^#+\s]+[^/#+\s]$",
        description="Prefix of every posmon topic, without a trailing slash.",
    )
    agents: dict[Login, AgentEntry] = Field(
        default_factory=dict, description="Agent id -> the terminals it serves."
    )
    collectors: list[Login] = Field(default_factory=list, description="Collector ids.")
    acquirers: dict[Login, AcquirerEntry] = Field(
        default_factory=dict, description="Acquirer feed name -> what it feeds."
    )
    viewers: list[Login] = Field(
        default_factory=list, description="Read-only consumers of alerts and presence."
    )
    admins: list[Login] = Field(
        default_factory=list, description="People or tools allowed everything under the prefix."
    )

    @model_validator(mode="after")
    def _one_owner(self) -> Self:
        owner: dict[str, str] = {}
        for agent_id, entry in self.agents.items():
            for tid in entry.tids:
                if tid in owner:
                    raise ValueError(
                        f"agents.{agent_id}.tids: terminal {tid} already belongs to agent "
                        f"{owner[tid]}"
                    )
                owner[tid] = agent_id
        seen: dict[str, str] = {}
        for login in self.logins():
            if login.name in seen:
                raise ValueError(
                    f"{login.key}: login {login.name!r} is already used by {seen[login.name]}"
                )
            seen[login.name] = login.key
        return self

    def logins(self) -> Iterator[LoginSpec]:
        """Every broker login the fleet needs, in a stable order (the files' order)."""
        for agent_id, entry in self.agents.items():
            yield LoginSpec(agent_id, Role.AGENT, f"agents.{agent_id}", tuple(entry.tids))
        for collector in self.collectors:
            yield LoginSpec(collector, Role.COLLECTOR, f"collectors.{collector}")
            yield LoginSpec(
                collector + ALERTS_SUFFIX, Role.COLLECTOR_ALERTS, f"collectors.{collector}"
            )
        for name in self.acquirers:
            yield LoginSpec(name, Role.ACQUIRER, f"acquirers.{name}")
        for name in self.viewers:
            yield LoginSpec(name, Role.VIEWER, f"viewers.{name}")
        for name in self.admins:
            yield LoginSpec(name, Role.ADMIN, f"admins.{name}")

    # --- edits: each returns a new, checked Fleet ----------------------------------------

    def with_agent(self, agent_id: str, tids: list[str], *, replace: bool = False) -> Fleet:
        """The fleet with `agent_id` serving `tids` (FleetEditError if it exists, unless
        `replace`)."""
        if agent_id in self.agents and not replace:
            raise FleetEditError(
                f"agent {agent_id} is already in the fleet (tids "
                f"{', '.join(self.agents[agent_id].tids)}); --replace to change its tids"
            )
        agents = {**self.agents, agent_id: {"tids": tids}}
        return self._edited(agents=agents)

    def without_agent(self, agent_id: str) -> Fleet:
        if agent_id not in self.agents:
            raise FleetEditError(f"no agent {agent_id} in the fleet")
        return self._edited(agents={k: v for k, v in self.agents.items() if k != agent_id})

    def with_member(self, role: Role, name: str, feeds: list[str] | None = None) -> Fleet:
        """The fleet with one more collector, acquirer, viewer or admin."""
        if role is Role.ACQUIRER:
            if name in self.acquirers:
                raise FleetEditError(f"acquirer {name} is already in the fleet")
            return self._edited(acquirers={**self.acquirers, name: {"feeds": feeds or []}})
        field = _LIST_FIELDS[role]
        members: list[str] = getattr(self, field)
        if name in members:
            raise FleetEditError(f"{role.value} {name} is already in the fleet")
        return self._edited(**{field: [*members, name]})

    def without_member(self, role: Role, name: str) -> Fleet:
        if role is Role.ACQUIRER:
            if name not in self.acquirers:
                raise FleetEditError(f"no acquirer {name} in the fleet")
            return self._edited(acquirers={k: v for k, v in self.acquirers.items() if k != name})
        field = _LIST_FIELDS[role]
        members: list[str] = getattr(self, field)
        if name not in members:
            raise FleetEditError(f"no {role.value} {name} in the fleet")
        return self._edited(**{field: [m for m in members if m != name]})

    def _edited(self, **changes: Any) -> Fleet:
        data = self.model_dump()
        data.update(changes)
        try:
            return Fleet.model_validate(data)
        except ValidationError as exc:
            raise FleetEditError("; ".join(_problems(exc))) from exc


_LIST_FIELDS = {Role.COLLECTOR: "collectors", Role.VIEWER: "viewers", Role.ADMIN: "admins"}


@dataclass(frozen=True, slots=True)
class LoginSpec:
    """One broker login: its name, its role, the registry key it comes from, its tids."""

    name: str
    role: Role
    key: str
    tids: tuple[str, ...] = ()


class FleetEditError(ValueError):
    """An edit the registry cannot take (a duplicate, an unknown name, a tid owned twice)."""


# --- the file ---------------------------------------------------------------------------------


def load(path: Path) -> Fleet:
    """Read the registry, or raise ConfigError naming the file and the key."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path}: no such file (start one with `posmon fleet add-agent`)", path
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", path) from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}", path) from exc
    try:
        return Fleet.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(f"{path}: {line}" for line in _problems(exc)), path) from exc


def load_or_new(path: Path) -> Fleet:
    """The registry at `path`, or an empty one if there is no file yet."""
    return load(path) if path.exists() else Fleet()


def save(fleet: Fleet, path: Path) -> None:
    """Write the registry atomically (the old file or the new one, never half of one)."""
    write_atomically(path, dumps(fleet).encode(), 0o644)


def dumps(fleet: Fleet) -> str:
    """The registry as TOML, in the layout of the module docstring."""
    lines = [
        "# posmon fleet registry: who may log in to the broker and what each login may say.",
        "# Edit with `posmon fleet ...`; apply with `posmon broker provision` (docs/security.md).",
        f"topic_prefix = {_string(fleet.topic_prefix)}",
        f"collectors = {_strings(fleet.collectors)}",
        f"viewers = {_strings(fleet.viewers)}",
        f"admins = {_strings(fleet.admins)}",
    ]
    for agent_id, agent in fleet.agents.items():
        lines += ["", f"[agents.{_key(agent_id)}]", f"tids = {_strings(agent.tids)}"]
    for name, acquirer in fleet.acquirers.items():
        lines += ["", f"[acquirers.{_key(name)}]", f"feeds = {_strings(acquirer.feeds)}"]
    return "\n".join(lines) + "\n"


def _string(value: str) -> str:
    # A JSON string is a TOML basic string: the same escapes (\" \\ \n \uXXXX).
    return json.dumps(value, ensure_ascii=False)


def _strings(values: list[str]) -> str:
    return "[" + ", ".join(_string(value) for value in values) + "]"


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _string(name)


def _problems(exc: ValidationError) -> list[str]:
    """`key: problem` for each error, as posmon.config reports a configuration file."""
    lines = []
    for error in exc.errors(include_url=False):
        key = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{key}: {message}" if key else message)
    return lines
