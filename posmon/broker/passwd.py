"""mosquitto 2's password file, written without mosquitto_passwd, and the secrets in it.

A line is `login:$7$<iterations>$<salt>$<hash>`: `7` is mosquitto's id for PBKDF2 with
HMAC-SHA512, the salt is 12 random bytes and the hash 64 bytes, both in standard base64
with padding; the file ends with a newline. That is byte for byte what mosquitto_passwd
2.0 writes (tests/test_broker_acl.py checks a line of its against `verify`, and that
mosquitto accepts a file written here).

101 iterations is mosquitto_passwd's own default, kept on purpose: key stretching makes a
guessable password costly to guess from a stolen file, but these secrets are 256 random
bits (`new_secret`), which no number of iterations makes safer, while the broker pays the
iterations on every CONNECT, a thousand times over when every agent reconnects after a
broker restart.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping

PBKDF2_SHA512 = 7
ITERATIONS = 101
SALT_BYTES = 12
HASH_BYTES = 64
SECRET_BYTES = 32


class PasswdError(ValueError):
    """A password file line mosquitto would not read; `line` is its number (from 1)."""

    def __init__(self, reason: str, line: int) -> None:
        super().__init__(f"line {line}: {reason}")
        self.reason = reason
        self.line = line


def new_secret() -> str:
    """A fresh login password: 256 random bits, URL-safe text (43 characters)."""
    return secrets.token_urlsafe(SECRET_BYTES)


def hash_secret(secret: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """The `$7$...` field of a password file line for `secret`."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, iterations, HASH_BYTES)
    return f"${PBKDF2_SHA512}${iterations}${_b64(salt)}${_b64(digest)}"


def verify(secret: str, hashed: str) -> bool:
    """Whether `secret` is the password of a `$7$...` field (as mosquitto checks it)."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[0] or parts[1] != str(PBKDF2_SHA512):
        return False
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except (ValueError, binascii.Error):
        return False
    digest = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, iterations, len(expected))
    return hmac.compare_digest(digest, expected)


def parse(text: str) -> dict[str, str]:
    """login -> hash field of a password file; PasswdError for a line mosquitto would refuse."""
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        login, colon, hashed = line.partition(":")
        if not colon or not login or not hashed.startswith(f"${PBKDF2_SHA512}$"):
            raise PasswdError("not `login:$7$...` (a PBKDF2-SHA512 hash)", number)
        if login in entries:
            raise PasswdError(f"login {login!r} twice", number)
        entries[login] = hashed
    return entries


def render(entries: Mapping[str, str]) -> str:
    """A password file from login -> hash field, in the mapping's order."""
    return "".join(f"{login}:{hashed}\n" for login, hashed in entries.items())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
