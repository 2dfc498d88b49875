"""The collector's configuration: one TOML file, `POSMON_<SECTION>__<KEY>` overrides."""

from __future__ import annotations

import socket
from datetime import datetime, time
from enum import StrEnum
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator

from collector.alertconfig import AlertsSection, CasesSection, NotifySection
from posmon.config import RoleSettings, Section, TimeZoneName
from posmon.mqtt import MqttSettings


class SettlementMode(StrEnum):
    """When a merchant's money is due."""

    T1 = "T1"  # next business day, before the cut-off
    D0 = "D0"  # the same calendar day, before the cut-off
    T0 = "T0"  # within `t0_hours` of the transaction


class CollectorSection(Section):
    """Who this collector is."""

    id: str = Field(
        default_factory=lambda: socket.gethostname().split(".")[0] or "collector",
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="Collector id, unique among collectors sharing a database.",
    )


class DatabaseSection(Section):
    """Where the collector keeps what it has acknowledged."""

    url: str = Field(
        "sqlite:////var/lib/posmon-collector/posmon.db",
        description=(
            "SQLAlchemy URL: sqlite:///PATH (embedded, one collector) or "
            "postgresql+psycopg://user@host/db (several collectors)."
        ),
    )


class IngestSection(Section):
    """How the collector takes messages from the broker."""

    shared_group: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="MQTT shared subscription group: collectors in one group split the load.",
    )
    peer_timeout_s: float = Field(
        15.0,
        ge=6.0,
        le=3600.0,
        description=(
            "With `shared_group`: a collector of the group not heard of for this long (its "
            "heartbeat in the database, every 5 s) is taken for gone, and the others cover "
            "its share (docs/scaling.md)."
        ),
    )
    cover_max_h: float = Field(
        168.0,
        gt=0,
        description=(
            "With `shared_group`: how long a gone collector's share is covered; match the "
            "broker's persistent_client_expiration (7 days in posmon's configuration)."
        ),
    )
    batch_size: int = Field(
        500, ge=1, le=10_000, description="Messages stored per transaction before the acks."
    )
    batch_wait_ms: int = Field(
        20, ge=0, le=5000, description="Longest a message waits for its batch to fill."
    )
    source: Literal["mqtt", "nats"] = Field(
        "mqtt",
        description=(
            "Where messages come from: `mqtt` (a subscription to [mqtt]'s broker) or `nats` "
            "(a JetStream work queue shared by every collector, [nats]; docs/scaling.md)."
        ),
    )


class NatsSection(Section):
    """The NATS JetStream work queue collectors share when `[ingest] source = "nats"`."""

    servers: list[str] = Field(
        default_factory=lambda: ["nats://127.0.0.1:4222"],
        min_length=1,
        description="NATS URLs of the cluster's nodes (nats://host:4222); the client fails over.",
    )
    capture: Literal["mqtt", "stream"] = Field(
        "mqtt",
        description=(
            "`mqtt`: consume the stream NATS's MQTT listener stores every QoS 1 PUBLISH in "
            "before its PUBACK ($MQTT_msgs): nothing PUBACKed is lost when a node dies. "
            "`stream`: a work-queue stream of our own (`stream`) over posmon's subjects, for "
            "publishers using JetStream directly: MQTT messages published while its leader "
            "is being elected are lost (docs/scaling.md)."
        ),
    )
    stream: str = Field(
        "POSMON",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="With capture = `stream`: the stream over posmon's subjects (made if missing).",
    )
    consumer: str = Field(
        "collectors",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Durable pull consumer every collector binds to: each message goes to one.",
    )
    replicas: int | None = Field(
        None,
        ge=1,
        le=5,
        description=(
            "With capture = `stream`: its replicas; unset: 3, or 1 when `servers` names fewer "
            "than 3 nodes. (With `mqtt`, the server's `mqtt { stream_replicas }` decides.)"
        ),
    )
    ack_wait_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="A message fetched and not acked for this long goes to another collector.",
    )
    max_deliver: int = Field(
        -1, ge=-1, description="Deliveries of one message before NATS gives up (-1: no limit)."
    )
    max_ack_pending: int = Field(
        20_000, ge=1, description="Messages fetched and not yet acked, over all collectors."
    )
    fetch_wait_ms: int = Field(
        200, ge=1, le=30_000, description="Longest one fetch waits for its batch to fill."
    )

    @property
    def stream_replicas(self) -> int:
        return self.replicas or (3 if len(self.servers) >= 3 else 1)


MerchantStatus = Literal["active", "frozen", "licence_expired", "risk_hold", "terminated"]


class MerchantRule(Section):
    """Settlement terms of one merchant; a key left out takes the [settlement] default."""

    mid: str = Field(pattern=r"^[0-9A-Za-z]{15}$", description="Merchant id.")
    mode: SettlementMode | None = Field(None, description="T1, D0 or T0.")
    cutoff: time | None = Field(None, description="Local time the money is due by.")
    t0_hours: float | None = Field(
        None, gt=0, le=48, description="T0: hours after the transaction."
    )
    fee_bp: int | None = Field(
        None, ge=0, le=10_000, description="Fee in basis points of the amount."
    )
    fee_fixed: int | None = Field(None, ge=0, description="Fixed fee per transaction, minor units.")
    status: MerchantStatus = Field(
        "active", description="What the acquirer knows of the merchant (alert context)."
    )


class SettlementSection(Section):
    """Defaults for merchants not listed, and the calendar deadlines are counted in."""

    timezone: TimeZoneName = Field("Asia/Shanghai", description="Time zone of cut-offs and dates.")
    calendar: str = Field("CN", description="Country code of the business-day calendar.")
    mode: SettlementMode = Field(SettlementMode.T1, description="Default settlement mode.")
    cutoff: time = Field(time(18, 0), description="Default cut-off, local time.")
    t0_hours: float = Field(2.0, gt=0, le=48, description="Default T0 window in hours.")
    fee_bp: int = Field(0, ge=0, le=10_000, description="Default fee in basis points.")
    fee_fixed: int = Field(0, ge=0, description="Default fixed fee, minor units.")
    skew_days: int = Field(
        1, ge=0, le=3, description="Terminal clock skew tolerated when matching by date."
    )


class ClockSection(Section):
    """Accelerated time for simulations: virtual = origin + (now - anchor) * scale."""

    scale: float = Field(1.0, gt=0, description="1 is real time; 3600 runs an hour a second.")
    origin: datetime | None = Field(None, description="Virtual time at the anchor.")
    anchor: datetime | None = Field(None, description="Real time the origin stands for.")

    @model_validator(mode="after")
    def _aware(self) -> Self:
        for value in (self.origin, self.anchor):
            if value is not None and value.tzinfo is None:
                raise ValueError("origin and anchor need a UTC offset")
        return self


class FleetSection(Section):
    """The fleet registry (`posmon fleet ...`, docs/security.md): which terminals are known."""

    file: Path | None = Field(
        None,
        description=(
            "The fleet registry TOML. When set, a terminal that no agent in it serves is "
            "still stored, but counted as an unknown terminal and logged once."
        ),
    )


class HttpSection(Section):
    """The collector's HTTP endpoint (settlements in)."""

    enabled: bool = Field(True, description="Serve HTTP.")
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8470, ge=0, le=65535, description="Port to listen on (0: any free).")


class RetentionSection(Section):
    """What the collector forgets, and when (collector/store/retention.py, docs/retention.md).

    Nothing an open case or an open alert needs is removed, whatever its age.
    """

    enabled: bool = Field(True, description="Remove old rows (every `every_s`).")
    statuses_days: float = Field(30, gt=0, description="Terminal status messages, by when seen.")
    deadletters_days: float = Field(90, gt=0, description="Dead letters, by when seen.")
    transactions_days: float = Field(
        400,
        gt=0,
        description=(
            "Transactions with their settlements and outcome log, batch closes, unmatched "
            "settlements and conflicting repeats, by the transaction's time."
        ),
    )
    closed_days: float = Field(
        400,
        gt=0,
        description="Resolved alerts and cases no longer worked, by when resolved or last moved.",
    )
    every_s: float = Field(3600, gt=0, description="How often retention runs.")
    batch_rows: int = Field(2000, ge=1, description="Rows per delete transaction.")
    pause_s: float = Field(0.05, ge=0, description="Pause between batches, for ingest.")
    archive_dir: Path | None = Field(
        None,
        description=(
            "When set, each run writes what it removes there first (a folder per run, "
            "gzip JSON lines per table; `posmon collector restore` reads it back)."
        ),
    )


class MetricsSection(Section):
    """Metrics to InfluxDB over the v1 HTTP API (/write); off when `url` is not set.

    The same settings serve InfluxDB 1.8+ (database, user and password), 2.x (its v1
    compatibility API: a DBRP mapping from `database`/`retention_policy` to a bucket, any
    username and a token as the password) and 3.x (the database, a token as the
    password). docs/metrics.md has the details for each.
    """

    url: str | None = Field(
        None,
        pattern=r"^https?://[^/?#]+/?$",
        description="InfluxDB base URL, e.g. http://127.0.0.1:8086; unset: no metrics.",
    )
    database: str = Field(
        "posmon",
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="Database (2.x: the DBRP mapping's database; 3.x: the database).",
    )
    retention_policy: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="Retention policy (`rp`); unset: the database's default.",
    )
    username: str | None = Field(None, description="User (2.x: any name; 3.x: ignored).")
    password: SecretStr | None = Field(
        None, description="Password (2.x and 3.x: an API token with write access)."
    )
    batch_size: int = Field(500, ge=1, le=10_000, description="Points per write request.")
    flush_interval_s: float = Field(
        1.0, gt=0, le=60, description="Longest a point waits before it is written."
    )
    buffer_limit: int = Field(
        50_000,
        ge=100,
        le=5_000_000,
        description="Points held while InfluxDB is slow or down; beyond it the oldest are "
        "dropped (and counted).",
    )
    timeout_s: float = Field(5.0, gt=0, le=120, description="Timeout of one write request.")
    retry_max_s: float = Field(
        30.0, gt=0, le=600, description="Longest wait between retries while InfluxDB is down."
    )

    @model_validator(mode="after")
    def _credentials(self) -> Self:
        if self.username is not None and self.password is None:
            raise ValueError("metrics: a username needs a password (or token)")
        return self


class CollectorConfig(RoleSettings):
    """Everything `posmon collector run` needs."""

    collector: CollectorSection = Field(default_factory=CollectorSection)
    database: DatabaseSection = Field(default_factory=DatabaseSection)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    ingest: IngestSection = Field(default_factory=IngestSection)
    nats: NatsSection = Field(default_factory=NatsSection)
    settlement: SettlementSection = Field(default_factory=SettlementSection)
    merchants: list[MerchantRule] = Field(default_factory=list)
    clock: ClockSection = Field(default_factory=ClockSection)
    http: HttpSection = Field(default_factory=HttpSection)
    fleet: FleetSection = Field(default_factory=FleetSection)
    alerts: AlertsSection = Field(default_factory=AlertsSection)
    notify: NotifySection = Field(default_factory=NotifySection)
    cases: CasesSection = Field(default_factory=CasesSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    retention: RetentionSection = Field(default_factory=RetentionSection)

    @model_validator(mode="after")
    def _unique_merchants(self) -> Self:
        mids = [rule.mid for rule in self.merchants]
        if len(set(mids)) != len(mids):
            raise ValueError("merchants: a merchant is listed twice")
        return self

    @model_validator(mode="after")
    def _nats_subjects(self) -> Self:
        """On NATS, a topic's levels are a subject's tokens: a '.' in the prefix would
        split a level in two (and NATS's MQTT listener writes it as '//')."""
        prefix = self.mqtt.topic_prefix
        if self.ingest.source == "nats" and ("." in prefix or " " in prefix):
            raise ValueError(
                f'mqtt.topic_prefix {prefix!r}: with [ingest] source = "nats" it may not '
                "hold '.' or ' ' (an MQTT level is a NATS subject token)"
            )
        return self

    @model_validator(mode="after")
    def _alert_certificate(self) -> Self:
        """Over mutual TLS, the alert channel's connection needs a certificate of its own.

        The certificate's name is the login (mosquitto's use_identity_as_username), and
        the broker lets one connection per login in (use_username_as_clientid): under the
        ingest's certificate, the alert channel would cut the ingest off at every connect.
        """
        tls, notify = self.mqtt.tls, self.notify
        alerts = f"{self.collector.id}-alerts"
        if notify.tls_certfile is not None and not (tls.enabled and tls.cert_file is not None):
            raise ValueError(
                "notify.tls_certfile: [mqtt.tls] has no client certificate (enabled and "
                "cert_file); the alert channel connects where [mqtt] does, with its CA"
            )
        if tls.enabled and tls.cert_file is not None:
            if notify.tls_certfile is None:
                raise ValueError(
                    f"notify.tls_certfile: [mqtt.tls] logs in with the certificate "
                    f"{tls.cert_file}, so the MQTT alert channel needs one of its own, issued "
                    f"to {alerts!r} (`posmon pki issue-collector {self.collector.id}` "
                    "issues both): set tls_certfile and tls_keyfile"
                )
            if notify.tls_certfile.resolve() == tls.cert_file.resolve():
                raise ValueError(
                    f"notify.tls_certfile: {notify.tls_certfile} is [mqtt.tls]'s own "
                    f"certificate; the alert channel needs the one issued to {alerts!r}"
                )
        return self
