"""From the fleet registry to the broker's files: logins, ACL and the configuration snippet.

`provision(fleet, folder)` writes into one folder, which mosquitto reads through the
`include_dir` at the end of deploy/mosquitto/posmon.conf:

    posmon-auth.conf        listeners, logins and ACL switched on (the only *.conf here)
    passwd                  one line per login (0600)
    acl                     what each login may publish and read (0640)
    credentials/NAME.secret the password of each login, written once (0600, folder 0700)

A login already in `passwd` keeps its hash, and its secret file is left as it is; a login
with a secret file but no line (a lost `passwd`) is hashed again from the file; a new
login gets a fresh secret. A login that left the registry loses its line and its secret
file. Secrets are never logged: they are in the files, and in `Provisioned.new_secrets`
for a command that was asked to show them once.

The listeners are defined in the snippet because `use_username_as_clientid` is a listener
option, and mosquitto applies a listener option to the listener defined last *in the same
file*: in an included file, before any `listener` line, it applies to the default listener
(port 1883 on every address) instead, which it then opens (mosquitto 2.0.11).

`reload(pid)` sends the broker SIGHUP: mosquitto 2 then reads `password_file` and
`acl_file` again, so a new agent logs in without a restart, connected clients stay, and a
removed login can no longer publish or receive (its ACL is gone).
"""

from __future__ import annotations

import logging
import os
import re
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from posmon.broker import acl, passwd
from posmon.broker.files import write_atomically
from posmon.broker.fleet import Fleet

logger = logging.getLogger(__name__)

AUTH_CONF = "posmon-auth.conf"
PASSWD = "passwd"  # noqa: S105 - a file name
ACL = "acl"
CREDENTIALS = "credentials"
SECRET_SUFFIX = ".secret"  # noqa: S105 - a file name suffix


class ProvisionError(RuntimeError):
    """Provisioning or reloading cannot be done; the message says why."""


@dataclass(frozen=True, slots=True)
class Listener:
    """A plain MQTT listener of the broker: a port, on every address or on one."""

    port: int
    bind: str | None = None

    @classmethod
    def parse(cls, text: str) -> Listener:
        """`1883` or `ADDRESS:1883` (`[::1]:1883` for IPv6)."""
        match = re.fullmatch(r"(?:\[?([^\s\[\]]+?)\]?:)?(\d{1,5})", text.strip())
        if match is None or not 1 <= int(match.group(2)) <= 65535:
            raise ValueError(f"{text!r} is not PORT or ADDRESS:PORT")
        return cls(int(match.group(2)), match.group(1))

    def line(self) -> str:
        return f"listener {self.port}" + (f" {self.bind}" if self.bind else "")


@dataclass(frozen=True, slots=True)
class Provisioned:
    """What `provision` did: which logins are new, kept or removed, and the files."""

    folder: Path
    new: list[str]
    kept: list[str]
    removed: list[str]
    new_secrets: Mapping[str, SecretStr] = field(repr=False)

    @property
    def conf(self) -> Path:
        return self.folder / AUTH_CONF

    def secret_file(self, login: str) -> Path:
        return self.folder / CREDENTIALS / f"{login}{SECRET_SUFFIX}"


def render_auth_conf(
    passwd_path: Path,
    acl_path: Path,
    listeners: Sequence[Listener],
    *,
    tls_listener: str = "",
) -> str:
    """The mosquitto configuration snippet: logins and ACL on, then each listener.

    `tls_listener` is a TLS listener's lines (`listener 8883` and its certificate
    options) as posmon.broker.pki renders them; like every listener here it is followed
    by `use_username_as_clientid true`.
    """
    lines = [
        "# posmon broker logins and ACL, written by `posmon broker provision`: do not edit",
        "# (docs/security.md). Read through the include_dir of deploy/mosquitto/posmon.conf.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {passwd_path}",
        f"acl_file {acl_path}",
        "",
        "# use_username_as_clientid: each connection is named after its login, whatever",
        "# client id it sends, so no login can take another's session or queued messages,",
        "# or knock it off by connecting under its client id. It is a listener option and",
        "# follows each listener line (a listener option before any listener line of this",
        "# file would go to mosquitto's default listener, port 1883 on every address).",
    ]
    for listener in listeners:
        lines += [listener.line(), "use_username_as_clientid true"]
    lines.append("")
    if tls_listener.strip():
        lines += [tls_listener.rstrip("\n"), "use_username_as_clientid true"]
    else:
        lines.append("# No TLS listener: `posmon broker provision --tls-dir DIR` adds one.")
    return "\n".join(lines) + "\n"


def provision(
    fleet: Fleet,
    folder: Path,
    *,
    listeners: Sequence[Listener] = (Listener(1883),),
    tls_listener: str = "",
    owner: tuple[int, int] | None = None,
) -> Provisioned:
    """Write the broker's files for `fleet` into `folder` (see the module docstring).

    `owner` (uid, gid) is who the broker runs as: `passwd` and `acl` are given to it, as
    mosquitto reads them again on SIGHUP after dropping root. Without it, files being
    replaced keep their owner and new ones belong to the caller.
    """
    if not listeners and not tls_listener.strip():
        raise ProvisionError("no listener: clients could not reach the broker")
    folder.mkdir(parents=True, exist_ok=True)
    credentials = folder / CREDENTIALS
    credentials.mkdir(mode=0o700, exist_ok=True)
    credentials.chmod(0o700)
    passwd_path = folder / PASSWD
    try:
        old = passwd.parse(passwd_path.read_text()) if passwd_path.exists() else {}
    except (passwd.PasswdError, UnicodeDecodeError) as exc:
        raise ProvisionError(f"{passwd_path}: {exc}") from exc

    entries: dict[str, str] = {}
    new: list[str] = []
    kept: list[str] = []
    new_secrets: dict[str, SecretStr] = {}
    for login in fleet.logins():
        secret_file = credentials / f"{login.name}{SECRET_SUFFIX}"
        if login.name in old:
            entries[login.name] = old[login.name]
            kept.append(login.name)
        elif secret_file.exists():
            entries[login.name] = passwd.hash_secret(secret_file.read_text().strip())
            kept.append(login.name)
        else:
            secret = passwd.new_secret()
            write_atomically(secret_file, f"{secret}\n".encode(), 0o600)
            entries[login.name] = passwd.hash_secret(secret)
            new.append(login.name)
            new_secrets[login.name] = SecretStr(secret)

    gone = set(old) | {
        path.name.removesuffix(SECRET_SUFFIX) for path in credentials.glob(f"*{SECRET_SUFFIX}")
    }
    removed = sorted(gone - set(entries))
    # Secrets first, then the password file: a run cut short leaves secrets without a
    # line, which the next run hashes, never a line whose secret no file holds.
    write_atomically(passwd_path, passwd.render(entries).encode(), 0o600, owner=owner)
    write_atomically(folder / ACL, acl.render(fleet).encode(), 0o640, owner=owner)
    conf = render_auth_conf(
        passwd_path.resolve(), (folder / ACL).resolve(), listeners, tls_listener=tls_listener
    )
    write_atomically(folder / AUTH_CONF, conf.encode(), 0o644)
    for name in removed:
        (credentials / f"{name}{SECRET_SUFFIX}").unlink(missing_ok=True)
    logger.info(
        "provisioned %s: %d logins (%d new, %d removed)",
        folder,
        len(entries),
        len(new),
        len(removed),
    )
    return Provisioned(folder, new, kept, removed, new_secrets)


def read_pid(value: str) -> int:
    """A process id given as a number or as a pid file's path."""
    text = value.strip()
    if not text.isdigit():
        try:
            text = Path(value).read_text().strip()
        except OSError as exc:
            raise ProvisionError(f"{value}: cannot read the pid file: {exc.strerror}") from exc
    if not text.isdigit() or int(text) <= 1:
        raise ProvisionError(f"{value}: not a process id: {text[:20]!r}")
    return int(text)


def reload(pid: int) -> None:
    """Ask the broker to read its password and ACL files again (SIGHUP)."""
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError as exc:
        raise ProvisionError(f"no process {pid}: is the broker running?") from exc
    except PermissionError as exc:
        raise ProvisionError(f"not allowed to signal process {pid} (run as its user)") from exc
    logger.info("sent SIGHUP to the broker (pid %d)", pid)
