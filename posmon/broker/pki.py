"""A small certificate authority for mutual TLS between posmon's clients and mosquitto.

Every login of the fleet registry (agent, collector, its alert channel, acquirer feed,
viewer, admin) can get a client certificate whose commonName is that login: mosquitto's
`use_identity_as_username true` makes it the MQTT username, so the broker's ACL applies
to it and no password travels or sits on a box. The broker gets a server certificate
for its host names.

Choices, and why:

- EC P-256 keys, ECDSA with SHA-256. The strength of RSA 3072 (~128 bits), but a key is
  made in a millisecond on the smallest agent box, a certificate is ~600 bytes, and the
  broker signs each full handshake about 90 times faster (OpenSSL 3.0 on the development
  machine: 33,500 P-256 signatures/s, 380 RSA-3072), which is what counts when a thousand
  agents reconnect at once after a broker restart: 30 ms of CPU instead of 2.6 s. Every
  TLS 1.2 and 1.3 stack posmon meets (mosquitto's and Python's OpenSSL) supports it.
- The CA is valid 10 years and may sign only end-entity certificates (path length 0).
- Client and server certificates are valid 397 days: a yearly renewal visit with a month
  of slack (the doctor warns 30 days ahead). 397 days is also the longest a public CA may
  issue a TLS server certificate for (CA/Browser Forum, since 2020), so tools that check
  that policy do not flag the broker's.
- The CRL is valid for 397 days and re-signed by every issue and revocation (and by
  `posmon pki crl`). OpenSSL refuses every client once the broker's copy has passed its
  nextUpdate (tested), so the broker must get a fresh copy at least yearly: the visit
  that renews its own certificate brings one (`posmon pki broker-conf`).
- mosquitto reads `crlfile` at start and on every SIGHUP (`systemctl reload mosquitto`),
  not when the file changes. After a revocation the reload refuses the certificate on
  every new connection, but a client connected with it stays connected: only a restart
  cuts it off at once (mosquitto 2.0.11; tests/test_broker_pki.py pins both).

The builders (`make_ca`, `make_client`, `make_server`, `make_crl`) take keys, names and
times and return objects; `CertificateAuthority` keeps them in a folder (keys 0600):

    ca.crt  ca.key  crl.pem
    clients/NAME.crt  clients/NAME.key      servers/HOST.crt  servers/HOST.key
    issued/SERIAL.crt                       every certificate issued, for revoke and list
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from posmon.broker.files import write_atomically
from posmon.broker.fleet import LOGIN_PATTERN, Role

logger = logging.getLogger(__name__)

CA_DAYS = 3652
CLIENT_DAYS = 397
SERVER_DAYS = 397
CRL_DAYS = 397
# Certificates start a little in the past: a box whose clock is a few minutes behind the
# issuer's must not find its fresh certificate "not yet valid".
BACKDATE = timedelta(minutes=5)
# An identity is a login of the fleet registry: an MQTT username, which the ACL matches,
# and a file name.
IDENTITY = re.compile(LOGIN_PATTERN)
HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9*]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9-]{1,63})*$")
ORGANISATION = "posmon"
KEY_MODE = 0o600
PUBLIC_MODE = 0o644


class PkiError(Exception):
    """A PKI operation that cannot be done; `reason` says why, for the operator."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate in the ledger, with where its current files are (if it is current)."""

    name: str
    kind: str  # a fleet Role's value, or "server"
    serial: int
    not_before: datetime
    not_after: datetime
    revoked_at: datetime | None
    cert_path: Path | None = None
    key_path: Path | None = None

    def state(self, now: datetime) -> str:
        """revoked, expired, not yet valid, or valid."""
        if self.revoked_at is not None:
            return "revoked"
        if now >= self.not_after:
            return "expired"
        if now < self.not_before:
            return "not yet valid"
        return "valid"


@dataclass(frozen=True, slots=True)
class Revocation:
    """One entry of the CRL."""

    serial: int
    revoked_at: datetime


# --- the builders: values in, values out --------------------------------------------------


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def check_identity(name: str) -> str:
    """`name` if it can be a broker identity (MQTT username and file name), else PkiError."""
    if not IDENTITY.fullmatch(name):
        raise PkiError(
            f"{name!r} cannot be an identity: 1 to 64 of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    return name


def _name(common_name: str, unit: str | None = None) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANISATION)]
    if unit is not None:
        parts.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    parts.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(parts)


def make_ca(
    key: ec.EllipticCurvePrivateKey, name: str, now: datetime, days: int = CA_DAYS
) -> x509.Certificate:
    """A self-signed CA certificate that signs end-entity certificates and CRLs only."""
    subject = _name(name)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


@dataclass(frozen=True, slots=True)
class Issuer:
    """The CA's key and certificate: what signs."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _end_entity(
    issuer: Issuer,
    public: ec.EllipticCurvePublicKey,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    *,
    not_before: datetime,
    days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            # ECDSA keys sign the handshake; they never encrypt a key.
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    )


def make_client(
    issuer: Issuer,
    public: ec.EllipticCurvePublicKey,
    name: str,
    role: Role,
    *,
    not_before: datetime,
    days: int = CLIENT_DAYS,
) -> x509.Certificate:
    """A client certificate: CN = the identity (the broker's username), clientAuth only."""
    subject = _name(check_identity(name), role.value)
    builder = _end_entity(
        issuer,
        public,
        subject,
        ExtendedKeyUsageOID.CLIENT_AUTH,
        not_before=not_before,
        days=days,
    )
    return builder.sign(issuer.key, hashes.SHA256())


def subject_alternative_names(hostname: str, extra: Iterable[str] = ()) -> list[x509.GeneralName]:
    """The host name and each extra name as a DNS name, or an IP address where it is one."""
    names: list[x509.GeneralName] = []
    for value in [hostname, *extra]:
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            if not HOSTNAME.fullmatch(value):
                raise PkiError(f"{value!r} is neither a host name nor an IP address") from None
            general: x509.GeneralName = x509.DNSName(value.lower())
        else:
            general = x509.IPAddress(address)
        if general not in names:
            names.append(general)
    return names


def make_server(
    issuer: Issuer,
    public: ec.EllipticCurvePublicKey,
    hostname: str,
    sans: Sequence[str] = (),
    *,
    not_before: datetime,
    days: int = SERVER_DAYS,
) -> x509.Certificate:
    """The broker's certificate: the names clients connect to as SANs, serverAuth only."""
    builder = _end_entity(
        issuer,
        public,
        _name(hostname, "broker"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        not_before=not_before,
        days=days,
    ).add_extension(
        x509.SubjectAlternativeName(subject_alternative_names(hostname, sans)), critical=False
    )
    return builder.sign(issuer.key, hashes.SHA256())


def make_crl(
    issuer: Issuer,
    revoked: Iterable[Revocation],
    *,
    number: int,
    now: datetime,
    days: int = CRL_DAYS,
) -> x509.CertificateRevocationList:
    """The CA's certificate revocation list, numbered `number`."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(now - BACKDATE)
        .next_update(now + timedelta(days=days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    )
    for entry in sorted(revoked, key=lambda item: item.serial):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial)
            .revocation_date(entry.revoked_at)
            .build()
        )
    return builder.sign(issuer.key, hashes.SHA256())


def common_name(cert: x509.Certificate) -> str:
    """The subject's commonName ("" if it has none)."""
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def kind_of(cert: x509.Certificate) -> str:
    """The role a client certificate was issued for, or "server"."""
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return "?"
    if ExtendedKeyUsageOID.SERVER_AUTH in usages:
        return "server"
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return str(units[0].value) if units else "?"


def render_broker_conf(folder: str, *, port: int = 8883, bind: str | None = None) -> str:
    """mosquitto's mutual-TLS listener, its files named under `folder` on the broker host.

    Only a client showing a certificate of this CA, unexpired and not on the CRL, gets in,
    and the certificate's commonName is its username for the ACL. The files are those
    `posmon pki broker-conf` writes: ca.crt, server.crt, server.key, crl.pem.
    """
    base = folder.rstrip("/")
    address = f" {bind}" if bind else ""
    return (
        "# Mutual TLS (posmon pki, docs/security.md): a client needs a certificate of posmon's\n"
        "# CA, and its commonName is its login. mosquitto reads the CRL at start and on\n"
        "# SIGHUP; a revoked client already connected stays until a restart.\n"
        f"listener {port}{address}\n"
        f"cafile {base}/ca.crt\n"
        f"certfile {base}/server.crt\n"
        f"keyfile {base}/server.key\n"
        f"crlfile {base}/crl.pem\n"
        "require_certificate true\n"
        "use_identity_as_username true\n"
        "# The oldest version allowed: TLS 1.3 is used whenever both ends have it.\n"
        "tls_version tlsv1.2\n"
    )


# --- the folder -----------------------------------------------------------------------------


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Unencrypted: mosquitto and the agent read the key unattended at start. The file
    # mode (0600) and the box's disk are its protection.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class CertificateAuthority:
    """posmon's CA kept in a folder: issue, revoke, list, and the CRL kept current."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca_cert_path = folder / "ca.crt"
        self.ca_key_path = folder / "ca.key"
        self.crl_path = folder / "crl.pem"
        self.clients = folder / "clients"
        self.servers = folder / "servers"
        self.issued = folder / "issued"

    # --- creating and opening ---

    @classmethod
    def init(
        cls, folder: Path, name: str = "posmon CA", *, now: datetime | None = None
    ) -> CertificateAuthority:
        """Create a new CA in `folder` (made 0700); refuses a folder that already has one."""
        pki = cls(folder)
        if pki.ca_key_path.exists() or pki.ca_cert_path.exists():
            raise PkiError(f"{folder} already holds a CA: refusing to replace it")
        now = now or _utcnow()
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)  # the CA key is in it
        for sub in (pki.clients, pki.servers, pki.issued):
            sub.mkdir(mode=0o700, exist_ok=True)
        key = new_key()
        issuer = Issuer(key, make_ca(key, name, now))
        write_atomically(pki.ca_key_path, _key_pem(key), KEY_MODE)
        write_atomically(pki.ca_cert_path, _cert_pem(issuer.cert), PUBLIC_MODE)
        # The broker's `crlfile` must name a CRL of this CA from the first start on.
        pki._write_crl(issuer, [], now)
        logger.info(
            "created CA %r in %s, valid until %s",
            name,
            folder,
            issuer.cert.not_valid_after_utc.date(),
        )
        return pki

    def _issuer(self) -> Issuer:
        try:
            key = serialization.load_pem_private_key(self.ca_key_path.read_bytes(), None)
            cert = x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())
        except FileNotFoundError as exc:
            raise PkiError(
                f"{self.folder} holds no CA ({exc.filename} is missing): "
                "run `posmon pki init` first"
            ) from exc
        except (ValueError, TypeError) as exc:
            raise PkiError(f"cannot read the CA in {self.folder}: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{self.ca_key_path} is not an EC key")
        return Issuer(key, cert)

    @property
    def certificate(self) -> x509.Certificate:
        """The CA's own certificate."""
        try:
            return x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())
        except (FileNotFoundError, ValueError) as exc:
            raise PkiError(f"cannot read {self.ca_cert_path}: {exc}") from exc

    # --- issuing ---

    def issue_client(
        self,
        name: str,
        role: Role,
        *,
        days: int = CLIENT_DAYS,
        not_before: datetime | None = None,
        replace: bool = False,
    ) -> Issued:
        """A new key and client certificate for `name`, as clients/NAME.{crt,key}.

        `not_before` places the validity (tests make expired certificates with it). An
        identity that has files already is refused unless `replace`; the replaced
        certificate stays valid until it expires unless it is revoked.
        """
        check_identity(name)
        issuer = self._issuer()
        cert_path = self.clients / f"{name}.crt"
        self._refuse_existing(cert_path, replace)
        now = _utcnow()
        key = new_key()
        cert = make_client(
            issuer, key.public_key(), name, role, not_before=not_before or now - BACKDATE, days=days
        )
        return self._store(issuer, cert, key, cert_path, now)

    def issue_server(
        self,
        hostname: str,
        sans: Sequence[str] = (),
        *,
        days: int = SERVER_DAYS,
        not_before: datetime | None = None,
        replace: bool = False,
    ) -> Issued:
        """A new key and server certificate for the broker, as servers/HOST.{crt,key}."""
        subject_alternative_names(hostname)  # refuses a bad host name before any work
        hostname = hostname.lower()
        issuer = self._issuer()
        cert_path = self.servers / f"{hostname}.crt"
        self._refuse_existing(cert_path, replace)
        now = _utcnow()
        key = new_key()
        cert = make_server(
            issuer,
            key.public_key(),
            hostname,
            sans,
            not_before=not_before or now - BACKDATE,
            days=days,
        )
        return self._store(issuer, cert, key, cert_path, now)

    @staticmethod
    def _refuse_existing(cert_path: Path, replace: bool) -> None:
        if cert_path.exists() and not replace:
            raise PkiError(
                f"{cert_path} exists: pass --replace to issue a new one (the old "
                "certificate stays valid until it expires unless you revoke it)"
            )

    def _store(
        self,
        issuer: Issuer,
        cert: x509.Certificate,
        key: ec.EllipticCurvePrivateKey,
        cert_path: Path,
        now: datetime,
    ) -> Issued:
        for sub in (cert_path.parent, self.issued):
            sub.mkdir(mode=0o700, exist_ok=True)
        pem = _cert_pem(cert)
        key_path = cert_path.with_suffix(".key")
        write_atomically(self.issued / f"{cert.serial_number:040x}.crt", pem, PUBLIC_MODE)
        write_atomically(key_path, _key_pem(key), KEY_MODE)
        write_atomically(cert_path, pem, PUBLIC_MODE)
        # Every change re-signs the CRL, so any use of the CA moves its nextUpdate on.
        self._write_crl(issuer, self._revocations(), now)
        issued = _issued(cert, None, cert_path, key_path)
        logger.info(
            "issued a %s certificate for %s, serial %x, valid until %s",
            issued.kind,
            issued.name,
            issued.serial,
            issued.not_after.isoformat(timespec="seconds"),
        )
        return issued

    # --- revoking and the CRL ---

    def crl(self) -> x509.CertificateRevocationList:
        """The current CRL."""
        try:
            return x509.load_pem_x509_crl(self.crl_path.read_bytes())
        except (FileNotFoundError, ValueError) as exc:
            raise PkiError(f"cannot read {self.crl_path}: {exc}") from exc

    def _revocations(self) -> list[Revocation]:
        """The entries of the current CRL (none if there is no CRL yet)."""
        if not self.crl_path.exists():
            return []
        return [Revocation(entry.serial_number, entry.revocation_date_utc) for entry in self.crl()]

    def _write_crl(
        self, issuer: Issuer, revoked: list[Revocation], now: datetime
    ) -> x509.CertificateRevocationList:
        number = crl_number(self.crl()) + 1 if self.crl_path.exists() else 1
        crl = make_crl(issuer, revoked, number=number, now=now)
        write_atomically(self.crl_path, crl.public_bytes(_PEM), PUBLIC_MODE)
        return crl

    def revoke(self, name: str, *, now: datetime | None = None) -> list[Issued]:
        """Put every unexpired certificate issued to `name` on the CRL; those revoked now."""
        issuer = self._issuer()
        now = (now or _utcnow()).replace(microsecond=0)  # as the CRL keeps it
        revoked = self._revocations()
        already = {entry.serial for entry in revoked}
        ledger = self.ledger()
        hits = [
            item
            for item in ledger
            if item.name == name and item.serial not in already and item.not_after > now
        ]
        if not hits:
            raise PkiError(
                f"no certificate of {name!r} left to revoke (all revoked or expired)"
                if any(item.name == name for item in ledger)
                else f"this CA never issued a certificate to {name!r}"
            )
        revoked += [Revocation(item.serial, now) for item in hits]
        crl = self._write_crl(issuer, revoked, now)
        for item in hits:
            logger.warning(
                "revoked the %s certificate of %s, serial %x", item.kind, name, item.serial
            )
        logger.info("wrote %s (CRL number %s)", self.crl_path, crl_number(crl))
        return [dataclasses.replace(item, revoked_at=now) for item in hits]

    def refresh_crl(self, *, now: datetime | None = None) -> x509.CertificateRevocationList:
        """Re-sign the CRL with the same entries and a new nextUpdate."""
        return self._write_crl(self._issuer(), self._revocations(), now or _utcnow())

    # --- what was issued ---

    def ledger(self) -> list[Issued]:
        """Every certificate this CA issued, oldest first, marked revoked where it is."""
        revoked = {entry.serial: entry.revoked_at for entry in self._revocations()}
        items = []
        for path in sorted(self.issued.glob("*.crt")):
            cert = x509.load_pem_x509_certificate(path.read_bytes())
            items.append(self._located(cert, revoked.get(cert.serial_number)))
        return sorted(items, key=lambda item: (item.not_before, item.name))

    def _located(self, cert: x509.Certificate, revoked_at: datetime | None) -> Issued:
        """The ledger's entry, with the files in clients/ or servers/ if they are this one."""
        name = common_name(cert)
        folder = self.servers if kind_of(cert) == "server" else self.clients
        cert_path = folder / f"{name}.crt"
        if cert_path.exists():
            current = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if current.serial_number == cert.serial_number:
                return _issued(cert, revoked_at, cert_path, cert_path.with_suffix(".key"))
        return _issued(cert, revoked_at, None, None)


_PEM = serialization.Encoding.PEM


def crl_number(crl: x509.CertificateRevocationList) -> int:
    """The CRL's number (0 if it has none)."""
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def _issued(
    cert: x509.Certificate,
    revoked_at: datetime | None,
    cert_path: Path | None,
    key_path: Path | None,
) -> Issued:
    return Issued(
        common_name(cert),
        kind_of(cert),
        cert.serial_number,
        cert.not_valid_before_utc,
        cert.not_valid_after_utc,
        revoked_at,
        cert_path,
        key_path,
    )
