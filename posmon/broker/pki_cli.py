"""`posmon pki ...`: posmon's certificate authority for mutual TLS with the broker.

Run on the operator's machine that keeps the CA folder (not on the broker or an agent):
it prints where each file went and what it is valid for, never a key.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from posmon.broker.files import write_atomically
from posmon.broker.fleet import ALERTS_SUFFIX, Role
from posmon.broker.pki import (
    CLIENT_DAYS,
    KEY_MODE,
    PUBLIC_MODE,
    SERVER_DAYS,
    CertificateAuthority,
    Issued,
    PkiError,
    check_identity,
    crl_number,
    render_broker_conf,
)

app = typer.Typer(
    help="posmon's certificate authority: client and broker certificates for mutual TLS, "
    "revocation (docs/security.md).",
    no_args_is_help=True,
)

DirOption = Annotated[
    Path,
    typer.Option(
        "--dir",
        "-d",
        file_okay=False,
        envvar="POSMON_PKI_DIR",
        help="The CA's folder (keep it off the broker and the agents).",
    ),
]
NameArgument = Annotated[
    str, typer.Argument(help="The identity: its login in the fleet registry.", show_default=False)
]
DaysOption = Annotated[int, typer.Option(min=1, max=3650, help="Days the certificate is valid.")]
ReplaceOption = Annotated[
    bool,
    typer.Option(
        "--replace", help="Issue a new key and certificate over the existing files (renewal)."
    ),
]
DEFAULT_DIR = Path("pki")
BROKER_PATH = "/etc/mosquitto/posmon-tls"
TLS_CONF = "posmon-tls.conf"


def _ca(folder: Path) -> CertificateAuthority:
    return CertificateAuthority(folder)


def _fail(exc: PkiError) -> typer.Exit:
    typer.echo(f"pki: {exc.reason}", err=True)
    return typer.Exit(1)


@app.command()
def init(
    folder: DirOption = DEFAULT_DIR,
    name: Annotated[str, typer.Option(help="The CA's commonName.")] = "posmon CA",
) -> None:
    """Create the CA (EC P-256, valid 10 years) and an empty CRL in a new folder."""
    try:
        ca = CertificateAuthority.init(folder, name)
    except PkiError as exc:
        raise _fail(exc) from exc
    cert = ca.certificate
    typer.echo(f"CA {name!r} in {folder}, valid until {cert.not_valid_after_utc:%Y-%m-%d}")
    typer.echo(f"  {ca.ca_key_path} (0600): the CA's key; back it up, and keep it here only")
    typer.echo(f"  {ca.ca_cert_path}: every client and the broker trust this")
    typer.echo(f"  {ca.crl_path}: the revocation list the broker reads")


def _issue_client(folder: Path, name: str, role: Role, days: int, replace: bool) -> None:
    try:
        issued = _ca(folder).issue_client(name, role, days=days, replace=replace)
    except PkiError as exc:
        raise _fail(exc) from exc
    _report(issued, folder)
    typer.echo(
        "\nOn its box, with the three files in /etc/posmon/tls/ (key 0600, owned by the "
        "program's user):\n"
        "  [mqtt]\n  port = 8883\n  [mqtt.tls]\n  enabled = true\n"
        '  ca_file = "/etc/posmon/tls/ca.crt"\n'
        f'  cert_file = "/etc/posmon/tls/{name}.crt"\n'
        f'  key_file = "/etc/posmon/tls/{name}.key"'
    )
    if replace:
        typer.echo(
            f"\nThe certificate it replaces stays valid until it expires: `posmon pki revoke "
            f"{name}` now would revoke the new one too. Revoke first, then issue, if the old "
            "key may be known to someone."
        )


def _report(issued: Issued, folder: Path) -> None:
    typer.echo(
        f"{issued.kind} certificate for {issued.name}: serial {issued.serial:x}, "
        f"valid {issued.not_before:%Y-%m-%d} to {issued.not_after:%Y-%m-%d %H:%M} UTC"
    )
    typer.echo(f"  {issued.cert_path}")
    typer.echo(f"  {issued.key_path} (0600)")
    typer.echo(f"  {folder / 'ca.crt'}")


@app.command()
def issue(
    name: NameArgument,
    role: Annotated[Role, typer.Option(help="The identity's role in the fleet registry.")],
    folder: DirOption = DEFAULT_DIR,
    days: DaysOption = CLIENT_DAYS,
    replace: ReplaceOption = False,
) -> None:
    """Issue a client key and certificate: CN = NAME (its broker login), clientAuth."""
    _issue_client(folder, name, role, days, replace)


def _alias(role: Role) -> None:
    def command(
        name: NameArgument,
        folder: DirOption = DEFAULT_DIR,
        days: DaysOption = CLIENT_DAYS,
        replace: ReplaceOption = False,
    ) -> None:
        _issue_client(folder, name, role, days, replace)

    command.__doc__ = f"`issue NAME --role {role.value}`."
    app.command(f"issue-{role.value}")(command)


for _role in Role:
    if _role is not Role.COLLECTOR:
        _alias(_role)


@app.command("issue-collector")
def issue_collector(
    name: NameArgument,
    folder: DirOption = DEFAULT_DIR,
    days: DaysOption = CLIENT_DAYS,
    replace: ReplaceOption = False,
) -> None:
    """Issue a collector's two certificates: NAME (its ingest) and NAME-alerts (its alerts).

    The collector publishes alerts over a connection of its own, and over mutual TLS a
    connection's login is its certificate's name: the broker lets one connection per login
    in, so the alert channel needs a certificate of its own ([notify] tls_certfile).
    """
    alerts = name + ALERTS_SUFFIX
    ca = _ca(folder)
    issued: list[Issued] = []
    try:
        check_identity(alerts)
        if not replace:
            # Both or neither: a collector with one certificate cannot run over mutual TLS.
            for login in (name, alerts):
                if (ca.clients / f"{login}.crt").exists():
                    raise PkiError(
                        f"{ca.clients / f'{login}.crt'} exists: pass --replace to issue both "
                        f"again, or `posmon pki issue-collector-alerts {alerts}` for the "
                        "alert certificate alone"
                    )
        for login, role in ((name, Role.COLLECTOR), (alerts, Role.COLLECTOR_ALERTS)):
            issued.append(ca.issue_client(login, role, days=days, replace=replace))
    except PkiError as exc:
        raise _fail(exc) from exc
    for item in issued:
        _report(item, folder)
    typer.echo(
        "\nOn the collector's host, with the five files in /etc/posmon/tls/ (keys 0600, owned "
        "by the collector's user), in collector.toml:\n"
        "  [mqtt]\n  port = 8883\n  [mqtt.tls]\n  enabled = true\n"
        '  ca_file = "/etc/posmon/tls/ca.crt"\n'
        f'  cert_file = "/etc/posmon/tls/{name}.crt"\n'
        f'  key_file = "/etc/posmon/tls/{name}.key"\n'
        "  [notify]\n"
        f'  tls_certfile = "/etc/posmon/tls/{alerts}.crt"\n'
        f'  tls_keyfile = "/etc/posmon/tls/{alerts}.key"'
    )


@app.command("issue-server")
def issue_server(
    hostname: Annotated[
        str, typer.Argument(help="The broker's host name, as clients connect to it.")
    ],
    san: Annotated[
        list[str] | None,
        typer.Option(help="Another DNS name or IP address clients use (repeat)."),
    ] = None,
    folder: DirOption = DEFAULT_DIR,
    days: DaysOption = SERVER_DAYS,
    replace: ReplaceOption = False,
) -> None:
    """Issue the broker's key and certificate: HOSTNAME and each --san, serverAuth."""
    try:
        issued = _ca(folder).issue_server(hostname, san or [], days=days, replace=replace)
    except PkiError as exc:
        raise _fail(exc) from exc
    _report(issued, folder)
    typer.echo(f"Then: posmon pki broker-conf --server {issued.name} --dir {folder}")


@app.command()
def revoke(name: NameArgument, folder: DirOption = DEFAULT_DIR) -> None:
    """Revoke every unexpired certificate issued to NAME and rewrite the CRL."""
    ca = _ca(folder)
    try:
        revoked = ca.revoke(name)
        number = crl_number(ca.crl())
    except PkiError as exc:
        raise _fail(exc) from exc
    for item in revoked:
        typer.echo(f"revoked the {item.kind} certificate of {item.name}, serial {item.serial:x}")
    typer.echo(
        f"{ca.crl_path} is CRL number {number}. The broker does not know yet: copy it to "
        f"the broker host ({BROKER_PATH}/crl.pem) and run `systemctl reload mosquitto` to "
        f"refuse new connections with it; a connection already open stays open until "
        "`systemctl restart mosquitto`."
    )


@app.command()
def crl(folder: DirOption = DEFAULT_DIR) -> None:
    """Re-sign the CRL (same entries, a new nextUpdate): at least once a year."""
    try:
        fresh = _ca(folder).refresh_crl()
    except PkiError as exc:
        raise _fail(exc) from exc
    typer.echo(
        f"{folder / 'crl.pem'}: CRL number {crl_number(fresh)}, "
        f"{len(list(fresh))} revoked, valid until {fresh.next_update_utc:%Y-%m-%d}"
    )


@app.command("list")
def list_(folder: DirOption = DEFAULT_DIR) -> None:
    """Every certificate issued: identity, role, validity, state; and the CRL's validity."""
    ca = _ca(folder)
    try:
        ledger = ca.ledger()
        current_crl = ca.crl()
    except PkiError as exc:
        raise _fail(exc) from exc
    now = datetime.now(UTC)
    table = Table(title=f"{folder}: {len(ledger)} certificates issued", title_justify="left")
    for column in ("identity", "role", "serial", "valid from", "valid until", "state", "files"):
        table.add_column(column)
    for item in ledger:
        table.add_row(
            item.name,
            item.kind,
            f"{item.serial:x}"[:12],
            f"{item.not_before:%Y-%m-%d}",
            f"{item.not_after:%Y-%m-%d}",
            item.state(now),
            "current" if item.cert_path else "replaced",
        )
    console = Console(highlight=False)
    (console if console.is_terminal else Console(width=200, highlight=False)).print(table)
    until = current_crl.next_update_utc
    lapsed = until is not None and until <= now
    typer.echo(
        f"CRL number {crl_number(current_crl)}: {len(list(current_crl))} revoked, valid until "
        f"{until:%Y-%m-%d}" + (" (LAPSED: a broker with it refuses every client)" if lapsed else "")
    )


@app.command("broker-conf")
def broker_conf(
    server: Annotated[str, typer.Option(help="The broker's host name (`issue-server` first).")],
    folder: DirOption = DEFAULT_DIR,
    out: Annotated[
        Path | None,
        typer.Option(
            file_okay=False, help="Where to write the broker's files. [default: DIR/broker]"
        ),
    ] = None,
    path: Annotated[
        str, typer.Option(help="Where the files will be on the broker host.")
    ] = BROKER_PATH,
    port: Annotated[int, typer.Option(min=1, max=65535, help="The TLS listener's port.")] = 8883,
    bind: Annotated[
        str | None, typer.Option(help="Listen on this address only. [default: every address]")
    ] = None,
) -> None:
    """The broker's files: ca.crt, crl.pem, server.crt, server.key and posmon-tls.conf.

    posmon-tls.conf is the mutual-TLS listener. On a broker provisioned by `posmon broker
    provision`, pass `--tls-dir PATH` to it instead: it writes the same listener into
    posmon-auth.conf, and a second copy in posmon.d would take the port twice.
    """
    ca = _ca(folder)
    target = out or folder / "broker"
    host = server.lower()
    cert, key = ca.servers / f"{host}.crt", ca.servers / f"{host}.key"
    if not cert.exists():
        raise _fail(PkiError(f"no certificate for {host}: run `posmon pki issue-server {host}`"))
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    for source, name, mode in (
        (ca.ca_cert_path, "ca.crt", PUBLIC_MODE),
        (ca.crl_path, "crl.pem", PUBLIC_MODE),
        (cert, "server.crt", PUBLIC_MODE),
        (key, "server.key", KEY_MODE),
    ):
        write_atomically(target / name, source.read_bytes(), mode)
    conf = render_broker_conf(path, port=port, bind=bind) + "use_username_as_clientid true\n"
    write_atomically(target / TLS_CONF, conf.encode(), PUBLIC_MODE)
    typer.echo(f"wrote {target}: ca.crt, crl.pem, server.crt, server.key (0600), {TLS_CONF}")
    typer.echo(
        f"Copy them to {path}/ on the broker host, server.key owned by mosquitto's user "
        "(it reads the key again on every reload, after dropping root), then either\n"
        f"  posmon broker provision ... --tls-dir {path} --tls-port {port}\n"
        f"or, on a broker not provisioned by posmon, put {TLS_CONF} in its include_dir; "
        "then restart mosquitto."
    )
