"""Alert delivery: the MQTT alert topics, signed webhooks, apprise (chat and e-mail).

Every alert that fires or resolves is queued for every channel in the same database
transaction that stores it (collector.alerts.store). One `Dispatcher` thread per channel
works its channel's queue in order: a channel that is down is retried with backoff from
the stored queue and never holds up another channel, and a collector restart carries on
where it stopped. Delivery is at least once; each webhook request carries the
notification's id (`X-Posmon-Delivery`) so a receiver can drop a repeat.

Webhook signature: `X-Posmon-Signature: sha256=<hex>` is the HMAC-SHA256, keyed with the
channel's secret, of `<X-Posmon-Timestamp>.<body>`; a receiver recomputes it and rejects
old timestamps to stop replays.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from collector.alertconfig import AppriseChannel, NotifySection, WebhookChannel
from collector.alerts import AlertStore, Queued
from posmon.mqtt import Backoff, MqttClient, MqttError, MqttSettings, Topics
from posmon.wire.models import AlertEvent

logger = logging.getLogger(__name__)

MQTT_CHANNEL = "mqtt"
PUBACK_WAIT_S = 5.0
IDLE_WAIT_S = 1.0
RECENT_SENT = 10_000


class DeliveryError(Exception):
    """A channel could not deliver one notification (it will be retried)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Channel(Protocol):
    """Somewhere alerts go."""

    name: str

    def send(self, alert: AlertEvent, payload: bytes, delivery_id: int) -> None:
        """Deliver one alert or raise `DeliveryError`."""

    def idle(self) -> None:
        """Keep a connection alive between deliveries."""

    def close(self) -> None: ...


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The `X-Posmon-Signature` value of a webhook request."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class MqttAlertChannel:
    """Publishes each alert on `{prefix}/alerts/{type}` (QoS 1) with its own connection."""

    name = MQTT_CHANNEL

    def __init__(self, settings: MqttSettings, client_id: str, topics: Topics) -> None:
        self.topics = topics
        self.client = MqttClient(settings, client_id)
        self._acked: set[int] = set()
        self.client.on_published = self._acked.add

    def send(self, alert: AlertEvent, payload: bytes, delivery_id: int) -> None:
        deadline = time.monotonic() + PUBACK_WAIT_S
        while not self.client.connected:
            self.client.connect_when_due()
            self.client.loop(0.05)
            if time.monotonic() > deadline:
                raise DeliveryError(self.client.last_error or "not connected to the broker")
        try:
            mid = self.client.publish(self.topics.alert(alert.type), payload)
        except MqttError as exc:
            raise DeliveryError(exc.reason) from exc
        while mid not in self._acked:
            if not self.client.loop(0.05) and not self.client.connected:
                raise DeliveryError(self.client.last_error or "connection lost before PUBACK")
            if time.monotonic() > deadline:
                raise DeliveryError(f"no PUBACK within {PUBACK_WAIT_S:.0f} s")
        self._acked.discard(mid)

    def idle(self) -> None:
        self.client.connect_when_due()
        self.client.loop(0)

    def close(self) -> None:
        self.client.disconnect()


class WebhookAlertChannel:
    """POSTs each alert's JSON to a URL, signed (see the module docstring)."""

    def __init__(self, settings: WebhookChannel) -> None:
        self.name = settings.name
        self.settings = settings

    def send(self, alert: AlertEvent, payload: bytes, delivery_id: int) -> None:
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "posmon-collector",
            "X-Posmon-Timestamp": timestamp,
            "X-Posmon-Delivery": str(delivery_id),
            "X-Posmon-Event": f"{alert.type}.{alert.state.value}",
        }
        if self.settings.secret is not None:
            key = self.settings.secret.get_secret_value().encode()
            headers["X-Posmon-Signature"] = sign(key, timestamp, payload)
        request = urllib.request.Request(  # noqa: S310 - the URL is checked to be http(s)
            self.settings.url, data=payload, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as response:  # noqa: S310
                status = response.status
        except urllib.error.HTTPError as exc:
            raise DeliveryError(f"HTTP {exc.code} from {self.name}") from exc
        except (OSError, ValueError) as exc:
            raise DeliveryError(f"{self.name}: {exc}") from exc
        if not 200 <= status < 300:
            raise DeliveryError(f"HTTP {status} from {self.name}")

    def idle(self) -> None:
        pass

    def close(self) -> None:
        pass


class AppriseAlertChannel:
    """Chat and e-mail through apprise, configured by URL (DingTalk, WeCom, Feishu ...)."""

    def __init__(self, settings: AppriseChannel) -> None:
        import apprise  # noqa: PLC0415 - only collectors with such a channel load it

        self.name = settings.name
        self._apprise = apprise.Apprise()
        if not self._apprise.add(settings.url.get_secret_value()):
            raise ValueError(f"notify.apprise {settings.name!r}: apprise cannot use that URL")

    def send(self, alert: AlertEvent, payload: bytes, delivery_id: int) -> None:
        state = "RESOLVED" if alert.state.value == "resolved" else alert.severity.value.upper()
        title = f"[posmon {state}] {alert.type}"
        lines = [alert.summary, f"cause: {alert.cause.value}"]
        evidence = (alert.details or {}).get("evidence")
        if isinstance(evidence, list):
            lines.extend(f"- {item}" for item in evidence)
        lines.append(f"alert {alert.alert_id}, since {alert.started_at.isoformat()}")
        if not self._apprise.notify(body="\n".join(lines), title=title):
            raise DeliveryError(f"{self.name}: apprise could not deliver")

    def idle(self) -> None:
        pass

    def close(self) -> None:
        pass


def channels_for(
    settings: NotifySection, mqtt: MqttSettings, client_id: str, topics: Topics
) -> list[Channel]:
    """Every configured channel; MQTT first (the alert topics always get every alert)."""
    channels: list[Channel] = [MqttAlertChannel(mqtt, client_id, topics)]
    channels.extend(WebhookAlertChannel(webhook) for webhook in settings.webhooks)
    channels.extend(AppriseAlertChannel(item) for item in settings.apprise)
    return channels


class Dispatcher:
    """Works one channel's queue, in order, retrying with backoff while the channel is down."""

    def __init__(
        self,
        channel: Channel,
        store: AlertStore,
        settings: NotifySection,
        *,
        on_delivered: Callable[[AlertEvent], None] = lambda alert: None,
    ) -> None:
        self.channel = channel
        self.store = store
        self.on_delivered = on_delivered
        self.wake = threading.Event()
        self.delivered = 0
        self.failures = 0
        self._backoff = Backoff(settings.retry_min_s, settings.retry_max_s)
        self._paused_until = 0.0
        # The fast path: notifications handed over as they are committed, sent without
        # reading them back, once the stored queue has nothing older (`_caught_up`).
        self._handed: deque[Queued] = deque()
        self._lock = threading.Lock()
        self._caught_up = False
        self._recent: deque[int] = deque(maxlen=RECENT_SENT)  # sent ids, against repeats
        self._recent_set: set[int] = set()

    def hand(self, queued: Queued) -> None:
        """A notification just committed for this channel (from the alert engine)."""
        with self._lock:
            self._handed.append(queued)
        self.wake.set()

    def run(self, stop: threading.Event) -> None:
        """Deliver until `stop` is set; woken at once by `wake` when something is queued."""
        while not stop.is_set():
            try:
                more = self.work()
            except Exception:
                logger.exception("notify %s: delivery loop failed; trying again", self.channel.name)
                more = False
                self._paused_until = time.monotonic() + IDLE_WAIT_S
            if more:
                continue
            self.wake.wait(self._wait())
            self.wake.clear()
            try:
                self.channel.idle()
            except Exception:
                logger.exception("notify %s: keeping the connection failed", self.channel.name)
        self.channel.close()

    def work(self) -> bool:
        """Send what is due; True when there may be more right away."""
        if time.monotonic() < self._paused_until:
            return False
        with self._lock:
            handed, self._handed = list(self._handed), deque()
        rows: list[Queued]
        if handed and self._caught_up:
            rows = [q for q in handed if q.notification_id not in self._recent_set]
        else:
            # Anything handed over is in the stored queue too, behind what is older.
            rows = self.store.due(self.channel.name, datetime.now(UTC))
            self._caught_up = not rows
        sent: list[int] = []
        try:
            for row in rows:
                alert = AlertEvent.from_json(row.payload)
                try:
                    self.channel.send(alert, row.payload.encode(), row.notification_id)
                except DeliveryError as exc:
                    delay = self._backoff.next_delay()
                    self.failures += 1
                    self._paused_until = time.monotonic() + delay
                    retry_at = datetime.now(UTC) + timedelta(seconds=delay)
                    self.store.failed(row.notification_id, exc.reason, retry_at)
                    self._caught_up = False
                    logger.warning(
                        "notify %s: %s; alert %s retried in %.1f s",
                        self.channel.name,
                        exc.reason,
                        alert.alert_id,
                        delay,
                    )
                    return False
                self._backoff.reset()
                sent.append(row.notification_id)
                self._remember(row.notification_id)
                self.delivered += 1
                self.on_delivered(alert)
        finally:
            # One write for what went out: the next alert does not queue behind it.
            if sent:
                self.store.delivered(sent, datetime.now(UTC))
        return len(rows) > 0

    def _remember(self, notification_id: int) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(notification_id)
        self._recent_set.add(notification_id)

    def _wait(self) -> float:
        with self._lock:
            if self._handed:
                return 0.0
        paused = self._paused_until - time.monotonic()
        if paused > 0:
            return min(paused, IDLE_WAIT_S)
        upcoming = self.store.next_due(self.channel.name)
        if upcoming is None:
            return IDLE_WAIT_S
        return min(max((upcoming - datetime.now(UTC)).total_seconds(), 0.0), IDLE_WAIT_S)
