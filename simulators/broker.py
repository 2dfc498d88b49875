"""A private mosquitto for simulations and tests: posmon's broker configuration, own port.

It runs `deploy/mosquitto/posmon.conf` (persistence on, queues sized for a collector
outage) with the listener, the data folder and the log moved into a folder of its own,
anonymous access on 127.0.0.1, and on a free port below the kernel's ephemeral range.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from posmon.mqtt import MqttSettings

ROOT = Path(__file__).resolve().parent.parent
BROKER_CONF = ROOT / "deploy" / "mosquitto" / "posmon.conf"
# Keys of the deployed configuration that a private broker sets for itself.
_OWN_KEYS = (
    "listener",
    "persistence_location",
    "password_file",
    "allow_anonymous",
    "include_dir",
)


class BrokerError(RuntimeError):
    """mosquitto is missing or did not start; the message says why."""


def free_port() -> int:
    """A free port below the kernel's ephemeral range.

    Ports the kernel hands out (port 0, and every outgoing connection) could be taken by
    another client while a broker restarts on the same port; ports below the ephemeral
    range are only ever taken on purpose.
    """
    for _ in range(200):
        port = random.randint(20000, 32000)  # noqa: S311 - a port, not a secret
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise BrokerError("no free port between 20000 and 32000")


def mosquitto_binary() -> str | None:
    """The mosquitto executable, if installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


class PrivateBroker:
    """A mosquitto running posmon's broker configuration on a free port, in its own folder."""

    def __init__(self, workdir: Path, extra: Sequence[str] = ()) -> None:
        """`extra`: configuration lines appended last, so they may extend the listener
        (TLS options) or add another one."""
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        data = workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        lines = [
            line
            for line in BROKER_CONF.read_text().splitlines()
            if line.split(" ", 1)[0] not in _OWN_KEYS
        ]
        lines += [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            f"persistence_location {data}/",
            f"log_dest file {workdir}/mosquitto.log",
        ]
        if os.geteuid() == 0:
            # Started as root, mosquitto drops to user `mosquitto`, which cannot write this
            # folder: persistence would silently fail.
            lines.append("user root")
        lines += extra
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        """Start (or restart on the same port), waiting until it accepts connections."""
        binary = mosquitto_binary()
        if binary is None:
            raise BrokerError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        log_path = self.workdir / "mosquitto.log"
        log = ""
        for _attempt in range(3):
            self.process = subprocess.Popen([binary, "-c", str(self.conf)])
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                        return
                except OSError:
                    time.sleep(0.05)
            log = log_path.read_text() if log_path.exists() else ""
            if "Address already in use" not in log.rstrip().rsplit("\n", 1)[-1]:
                break
            time.sleep(1)  # the old socket is still being torn down: try again
        self.stop()
        raise BrokerError(f"mosquitto did not start on {self.port}:\n{log}")

    def stop(self) -> None:
        """Stop gracefully (SIGTERM): mosquitto writes its persistence file first."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def settings(self, prefix: str, **overrides: object) -> MqttSettings:
        """Client settings for this broker, reconnecting fast."""
        values: dict[str, object] = {
            "host": "127.0.0.1",
            "port": self.port,
            "topic_prefix": prefix,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 1.0,
        }
        values.update(overrides)
        return MqttSettings.model_validate(values)


class EmbeddedBroker:
    """An MQTT 3.1.1 broker inside this process (amqtt, pure Python), for the demo.

    It needs nothing installed and no root. Sessions and queued messages live in memory,
    so it suits a run that keeps it up from start to end; a deployment uses mosquitto with
    posmon's configuration (deploy/mosquitto/posmon.conf).
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._loop: Any = None
        self._broker: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start in a thread of its own; returns once it accepts connections."""
        import asyncio  # noqa: PLC0415

        from amqtt.broker import Broker  # noqa: PLC0415 - only the demo loads it

        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.ERROR)
        config = {
            "listeners": {
                "default": {
                    "type": "tcp",
                    "bind": f"127.0.0.1:{self.port}",
                    "max_connections": 1000,
                }
            },
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._broker = Broker(config, loop=loop)
                loop.run_until_complete(self._broker.start())
            except BaseException as exc:  # reported by start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=serve, name="embedded-broker", daemon=True)
        self._thread.start()
        if not ready.wait(15) or failure:
            raise BrokerError(f"the embedded broker did not start on {self.port}: {failure}")

    def stop(self) -> None:
        import asyncio  # noqa: PLC0415

        if self._loop is None or self._broker is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
        try:
            future.result(timeout=10)
        except Exception:
            logging.getLogger(__name__).warning("the embedded broker did not shut down cleanly")
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._loop = None
