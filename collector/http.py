"""The collector's HTTP server: the REST API (collector.api) served by uvicorn in a thread
of the collector process."""

from __future__ import annotations

import threading

import uvicorn
from fastapi import FastAPI

from collector.api import create_app
from collector.api.settlements import MAX_BATCH

__all__ = ["MAX_BATCH", "HttpServer", "create_app"]


class HttpServer:
    """uvicorn in a thread of the collector process."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        # No log_config: uvicorn's loggers go to posmon's handler (and its PAN guard), not to
        # handlers of their own.
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", lifespan="off", log_config=None
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    @property
    def port(self) -> int | None:
        """The bound port once listening (useful with port 0)."""
        for server in getattr(self.server, "servers", []):
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return None

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
