"""The InfluxDB sink: the one module that talks to InfluxDB.

Samples are queued in a bounded buffer by `submit()` (a lock and an append: the ingest
and alert threads never wait on the network) and written by a thread of their own, in
batches of `batch_size` or every `flush_interval_s`, as line protocol built by the
`influxdb-client` library's `Point` (no hand-made escaping) and POSTed to the v1 HTTP API
`/write`, which InfluxDB 1.8+, 2.x (v1 compatibility) and 3.x all serve.

While InfluxDB is down or answers 5xx, the batch in hand is retried with exponential
backoff (up to `retry_max_s`) and new samples wait in the buffer; when the buffer is full
the oldest sample is dropped and counted (`dropped`). A batch InfluxDB refuses for good
(a 4xx: bad credentials, a point it will not take) is counted as `rejected` and logged,
not retried. A missing database on InfluxDB 1.x is created once (`CREATE DATABASE`).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from http import HTTPStatus

from influxdb_client.client.write.point import Point
from influxdb_client.domain.write_precision import WritePrecision

from collector.config import MetricsSection
from collector.samples import Sample
from posmon.pan import IDENTIFIER_KEYS, scrub

logger = logging.getLogger(__name__)

RETRY_MIN_S = 0.5


class WriteError(Exception):
    """A write InfluxDB did not take: `status` (0 when it could not be reached) and why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"InfluxDB write: {status or 'unreachable'}: {reason}")
        self.status = status
        self.reason = reason

    @property
    def retryable(self) -> bool:
        return self.status == 0 or self.status >= HTTPStatus.INTERNAL_SERVER_ERROR


def line(sample: Sample) -> str:
    """A sample as one line of line protocol (millisecond precision)."""
    point = Point(sample.measurement)
    # Tags and text fields leave the collector here: anything but a typed identifier passes
    # the card-number scanner (today they are identifiers and enums only).
    for key, value in sample.tags.items():
        point.tag(key, value if key in IDENTIFIER_KEYS else scrub(value))
    for key, field in sample.fields.items():
        if isinstance(field, str) and key not in IDENTIFIER_KEYS:
            field = scrub(field)  # noqa: PLW2901 - the scrubbed value is the one written
        point.field(key, field)
    point.time(sample.time, WritePrecision.MS)
    text: str = point.to_line_protocol()
    return text


class InfluxSink:
    """Batches samples to InfluxDB's /write from a thread of its own; see the module doc."""

    def __init__(self, settings: MetricsSection) -> None:
        if settings.url is None:
            raise ValueError("InfluxSink needs [metrics] url")
        self.settings = settings
        self.base = settings.url.rstrip("/")
        params = {"db": settings.database, "precision": "ms"}
        if settings.retention_policy:
            params["rp"] = settings.retention_policy
        self.write_url = f"{self.base}/write?{urllib.parse.urlencode(params)}"
        self.headers = {"Content-Type": "text/plain; charset=utf-8"}
        if settings.password is not None:
            user = settings.username or ""
            pair = f"{user}:{settings.password.get_secret_value()}".encode()
            self.headers["Authorization"] = f"Basic {base64.b64encode(pair).decode()}"
        self._buffer: deque[Sample] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._batch: list[str] = []  # taken from the buffer, not yet written
        self._created = False
        self.written = 0
        self.dropped = 0
        self.rejected = 0
        self.failures = 0

    # --- the producers' side --------------------------------------------------------------

    def submit(self, sample: Sample) -> None:
        """Queue a sample; when the buffer is full the oldest one is dropped and counted."""
        with self._lock:
            if len(self._buffer) >= self.settings.buffer_limit:
                self._buffer.popleft()
                self.dropped += 1
            self._buffer.append(sample)
            full = len(self._buffer) >= self.settings.batch_size
        if full:
            self._wake.set()

    def counters(self) -> dict[str, int]:
        with self._lock:
            buffered = len(self._buffer) + len(self._batch)
        return {
            "written": self.written,
            "dropped": self.dropped,
            "rejected": self.rejected,
            "failures": self.failures,
            "buffered": buffered,
        }

    # --- the writer thread ----------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)
        self._thread.start()

    def close(self, timeout: float) -> None:
        """Write what is buffered (one try each while InfluxDB answers) and stop."""
        self._closing.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        backoff = 0.0
        while True:
            if backoff:
                self._closing.wait(backoff)
            else:
                self._wake.wait(self.settings.flush_interval_s)
            self._wake.clear()
            closing = self._closing.is_set()
            try:
                self._drain()
                backoff = 0.0
            except WriteError as exc:
                self.failures += 1
                backoff = min(max(backoff * 2, RETRY_MIN_S), self.settings.retry_max_s)
                logger.warning("%s; %s points held, retry in %.1f s", exc, self._held(), backoff)
            except Exception:
                self.failures += 1
                backoff = min(max(backoff * 2, RETRY_MIN_S), self.settings.retry_max_s)
                logger.exception("metrics writer failed; retry in %.1f s", backoff)
            if closing:
                held = self._held()
                if held:
                    logger.warning("metrics: %s points not written at stop", held)
                return

    def _held(self) -> int:
        with self._lock:
            return len(self._buffer) + len(self._batch)

    def _drain(self) -> None:
        """Write batches until the buffer is empty; WriteError leaves the batch for a retry."""
        while True:
            if not self._batch:
                with self._lock:
                    count = min(len(self._buffer), self.settings.batch_size)
                    taken = [self._buffer.popleft() for _ in range(count)]
                lines = [line(sample) for sample in taken]
                with self._lock:
                    self._batch = [text for text in lines if text]
            if not self._batch:
                return
            try:
                self._post(self._batch)
            except WriteError as exc:
                if exc.retryable:
                    raise
                logger.error("%s; %s points dropped", exc, len(self._batch))
                self.rejected += len(self._batch)
            else:
                self.written += len(self._batch)
            with self._lock:
                self._batch = []

    def _post(self, lines: list[str]) -> None:
        body = ("\n".join(lines) + "\n").encode()
        try:
            self._request(self.write_url, body)
        except WriteError as exc:
            if exc.status != HTTPStatus.NOT_FOUND or self._created or "database" not in exc.reason:
                raise
            self._create_database()
            self._request(self.write_url, body)

    def _create_database(self) -> None:
        """InfluxDB 1.x: make the database (2.x needs a DBRP mapping, 3.x makes it itself)."""
        self._created = True
        query = urllib.parse.urlencode({"q": f'CREATE DATABASE "{self.settings.database}"'})
        logger.info("metrics: creating database %s", self.settings.database)
        self._request(f"{self.base}/query", query.encode(), form=True)

    def _request(self, url: str, body: bytes, *, form: bool = False) -> None:
        headers = dict(self.headers)
        if form:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 - http(s) only, checked by the configuration
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as answer:  # noqa: S310
                answer.read()
        except urllib.error.HTTPError as exc:
            raise WriteError(exc.code, _reason(exc)) from exc
        except (OSError, TimeoutError) as exc:
            raise WriteError(0, str(exc)) from exc


def _reason(exc: urllib.error.HTTPError) -> str:
    """InfluxDB's own words for a refused request ({"error": ...}), else the HTTP reason."""
    try:
        text = exc.read().decode("utf-8", "replace")
    except OSError:
        return str(exc.reason)
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        error = None
    return str(error or text.strip() or exc.reason)[:500]
