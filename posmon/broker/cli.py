"""`posmon fleet ...` (the registry of broker logins) and `posmon broker provision`.

Both need only the base install: no paho, nothing of the collector.
"""

from __future__ import annotations

import importlib
import pwd
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from posmon.broker import fleet as registry
from posmon.broker.fleet import Fleet, FleetEditError, Role
from posmon.broker.provision import (
    Listener,
    Provisioned,
    ProvisionError,
    provision,
    read_pid,
    reload,
)
from posmon.config import ConfigError

fleet_app = typer.Typer(
    help="The fleet registry: broker logins and the terminals each agent serves.",
    no_args_is_help=True,
)
broker_app = typer.Typer(
    help="The broker's logins and ACL, made from the fleet registry.", no_args_is_help=True
)

NameArgument = Annotated[str, typer.Argument(help="The login name.", show_default=False)]
FleetOption = Annotated[
    Path,
    typer.Option("--fleet", "-f", dir_okay=False, help="Fleet registry TOML file."),
]


def _load(path: Path, *, missing_ok: bool = False) -> Fleet:
    try:
        return registry.load_or_new(path) if missing_ok else registry.load(path)
    except ConfigError as exc:
        typer.echo(f"fleet registry error:\n{exc}", err=True)
        raise typer.Exit(2) from exc


def _edit(path: Path, change: str, edit: Callable[[Fleet], Fleet]) -> None:
    """Apply `edit` to the registry at `path` (a new one if there is none) and save it."""
    before = _load(path, missing_ok=True)
    try:
        after = edit(before)
    except FleetEditError as exc:
        typer.echo(f"{path}: {exc}", err=True)
        raise typer.Exit(1) from exc
    registry.save(after, path)
    typer.echo(f"{path}: {change}. Apply it: posmon broker provision --fleet {path} --out DIR")


@fleet_app.command("add-agent")
def add_agent(
    agent_id: Annotated[str, typer.Argument(help="The agent's id ([agent] id in agent.toml).")],
    tid: Annotated[
        list[str], typer.Option("--tid", "-t", help="A terminal it serves (repeat for each).")
    ],
    fleet: FleetOption = registry.DEFAULT_FLEET,
    replace: Annotated[
        bool, typer.Option("--replace", help="Change the tids of an agent already listed.")
    ] = False,
) -> None:
    """Add an agent and the terminals whose events it may publish."""
    _edit(
        fleet,
        f"agent {agent_id} serves {', '.join(tid)}",
        lambda f: f.with_agent(agent_id, tid, replace=replace),
    )


@fleet_app.command("remove-agent")
def remove_agent(
    agent_id: Annotated[str, typer.Argument(help="The agent's id.")],
    fleet: FleetOption = registry.DEFAULT_FLEET,
) -> None:
    """Remove an agent: after provisioning and a reload it can no longer log in."""
    _edit(fleet, f"agent {agent_id} removed", lambda f: f.without_agent(agent_id))


def _member_commands(role: Role, what: str, article: str = "a") -> None:
    def add(
        name: NameArgument,
        fleet: FleetOption = registry.DEFAULT_FLEET,
    ) -> None:
        _edit(fleet, f"{role.value} {name} added", lambda f: f.with_member(role, name))

    def remove(
        name: NameArgument,
        fleet: FleetOption = registry.DEFAULT_FLEET,
    ) -> None:
        _edit(fleet, f"{role.value} {name} removed", lambda f: f.without_member(role, name))

    add.__doc__ = f"Add {what}."
    remove.__doc__ = f"Remove {article} {role.value}."
    fleet_app.command(f"add-{role.value}")(add)
    fleet_app.command(f"remove-{role.value}")(remove)


@fleet_app.command("add-acquirer")
def add_acquirer(
    name: NameArgument,
    feed: Annotated[
        list[str] | None,
        typer.Option("--feed", help="A bank code or acquirer it settles for (informational)."),
    ] = None,
    fleet: FleetOption = registry.DEFAULT_FLEET,
) -> None:
    """Add an acquirer integration: it may publish settlement results, nothing else."""
    _edit(
        fleet,
        f"acquirer {name} added",
        lambda f: f.with_member(Role.ACQUIRER, name, feeds=feed or []),
    )


@fleet_app.command("remove-acquirer")
def remove_acquirer(
    name: NameArgument,
    fleet: FleetOption = registry.DEFAULT_FLEET,
) -> None:
    """Remove an acquirer feed."""
    _edit(fleet, f"acquirer {name} removed", lambda f: f.without_member(Role.ACQUIRER, name))


_member_commands(
    Role.COLLECTOR, "a collector (logins NAME for ingest and NAME-alerts for its alerts)"
)
_member_commands(Role.VIEWER, "a viewer: reads alerts and agent presence, publishes nothing")
_member_commands(Role.ADMIN, "an admin: everything under the topic prefix", "an")


@fleet_app.command("list")
def list_logins(fleet: FleetOption = registry.DEFAULT_FLEET) -> None:
    """Every broker login of the registry: its role and what it speaks for."""
    loaded = _load(fleet)
    table = Table(title=f"{fleet} (prefix {loaded.topic_prefix})")
    for column in ("login", "role", "speaks for"):
        table.add_column(column)
    for login in loaded.logins():
        detail = ""
        if login.role is Role.AGENT:
            detail = ", ".join(login.tids)
        elif login.role is Role.ACQUIRER:
            detail = ", ".join(loaded.acquirers[login.name].feeds)
        table.add_row(login.name, login.role.value, detail)
    console = Console()
    (console if console.is_terminal else Console(width=200)).print(table)


@broker_app.command("provision")
def provision_command(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            file_okay=False,
            help="Folder mosquitto reads (include_dir of posmon.conf): /etc/mosquitto/posmon.d",
        ),
    ],
    fleet: FleetOption = registry.DEFAULT_FLEET,
    listener: Annotated[
        list[str] | None,
        typer.Option(help="Plain MQTT listener, PORT or ADDRESS:PORT (repeat). Default: 1883."),
    ] = None,
    tls_dir: Annotated[
        str | None,
        typer.Option(
            help="Add the mutual-TLS listener, its files (posmon pki) in this folder "
            "on the broker host."
        ),
    ] = None,
    tls_port: Annotated[int, typer.Option(min=1, max=65535, help="Its port.")] = 8883,
    tls_only: Annotated[
        bool,
        typer.Option(
            "--tls-only",
            help="No plain listener: the mutual-TLS listener only (with --tls-dir).",
        ),
    ] = False,
    owner: Annotated[
        str | None,
        typer.Option(help="User the broker runs as (mosquitto): passwd and acl are given to it."),
    ] = None,
    do_reload: Annotated[
        bool, typer.Option("--reload", help="Then make the broker read them again (SIGHUP).")
    ] = False,
    pid: Annotated[
        str | None, typer.Option("--pid", help="The broker's pid file, or its process id.")
    ] = None,
    show_secrets: Annotated[
        bool,
        typer.Option(
            "--show-secrets", help="Print the passwords of new logins (once: they are not kept)."
        ),
    ] = False,
) -> None:
    """Write the broker's password file, ACL and posmon-auth.conf from the registry.

    New logins get a random password in OUT/credentials/LOGIN.secret; existing logins keep
    theirs; logins no longer in the registry are removed.
    """
    if do_reload and pid is None:
        raise typer.BadParameter("--reload needs --pid (the broker's pid file or process id)")
    if tls_only and (tls_dir is None or listener):
        raise typer.BadParameter(
            "--tls-only needs --tls-dir, and takes no --listener", param_hint="--tls-only"
        )
    loaded = _load(fleet)
    try:
        listeners = [] if tls_only else [Listener.parse(item) for item in listener or ["1883"]]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--listener") from exc
    tls_listener = ""
    if tls_dir is not None:
        tls_listener = _tls_listener(tls_dir, tls_port)
    try:
        done = provision(
            loaded,
            out,
            listeners=listeners,
            tls_listener=tls_listener,
            owner=_owner(owner),
        )
        if do_reload:
            assert pid is not None
            reload(read_pid(pid))
    except ProvisionError as exc:
        typer.echo(f"broker provision: {exc}", err=True)
        raise typer.Exit(1) from exc
    _report(done, loaded, show_secrets=show_secrets, reloaded=do_reload)


def _tls_listener(folder: str, port: int) -> str:
    """The mutual-TLS listener's lines, as posmon.broker.pki renders them.

    Imported by name when asked for: the PKI needs `cryptography`, which provisioning
    logins and ACLs does not.
    """
    try:
        pki = importlib.import_module("posmon.broker.pki")
    except ModuleNotFoundError as exc:
        raise typer.BadParameter(
            f"the TLS listener needs posmon's PKI module and its libraries: {exc}",
            param_hint="--tls-dir",
        ) from exc
    return str(pki.render_broker_conf(folder, port=port))


def _owner(name: str | None) -> tuple[int, int] | None:
    if name is None:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError as exc:
        raise typer.BadParameter(f"no user {name!r}", param_hint="--owner") from exc
    return entry.pw_uid, entry.pw_gid


def _report(done: Provisioned, fleet: Fleet, *, show_secrets: bool, reloaded: bool) -> None:
    roles = {login.name: login.role.value for login in fleet.logins()}
    table = Table(title=f"{done.folder}: {len(roles)} logins")
    for column in ("login", "role", "password", "secret file"):
        table.add_column(column)
    for name in done.new:
        table.add_row(name, roles[name], "new", str(done.secret_file(name)))
    for name in done.kept:
        path = done.secret_file(name)
        table.add_row(name, roles[name], "kept", str(path) if path.exists() else "(not here)")
    for name in done.removed:
        table.add_row(name, "-", "removed", "")
    console = Console()
    (console if console.is_terminal else Console(width=200)).print(table)
    typer.echo(f"mosquitto reads {done.conf} (include_dir of deploy/mosquitto/posmon.conf).")
    if show_secrets:
        for name, secret in done.new_secrets.items():
            typer.echo(f"{name}: {secret.get_secret_value()}")
    if reloaded:
        typer.echo("Broker reloaded: new logins can connect, removed ones are cut off.")
    elif done.new or done.removed:
        typer.echo("Apply: --reload --pid FILE (or restart mosquitto).")
