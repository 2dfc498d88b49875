"""The collector's HTTP door: settlement results in (one or a batch), and a health check.

The REST API issue extends this app; the settlement endpoint feeds the same
`Store.ingest()` path as MQTT and CSV.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Annotated, Any

import uvicorn
from fastapi import Body, FastAPI, HTTPException
from pydantic import BaseModel, Field

from collector.store import IngestReport, Store
from posmon import __version__
from posmon.wire.models import SettlementEvent

MAX_BATCH = 10_000


class Stored(BaseModel):
    """What a settlement POST did."""

    stored: int = Field(description="Results new to the collector.")
    repeats: int = Field(description="Results it already had (same settlement_id).")


def create_app(store: Store, on_report: Callable[[IngestReport], None] = lambda r: None) -> FastAPI:
    """The FastAPI application over `store`."""
    app = FastAPI(title="posmon collector", version=__version__)

    @app.post("/settlements", response_model=Stored, status_code=200)
    def post_settlements(
        body: Annotated[
            SettlementEvent | list[SettlementEvent],
            Body(description="One posmon.settlement/1 result, or a list of up to 10,000."),
        ],
    ) -> Stored:
        """Take settlement results from an acquirer integration."""
        results = body if isinstance(body, list) else [body]
        if len(results) > MAX_BATCH:
            raise HTTPException(413, f"at most {MAX_BATCH} results per request")
        report = store.ingest(results, source="http")
        on_report(report)
        return Stored(stored=sum(report.stored.values()), repeats=sum(report.repeats.values()))

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Whether the collector is up and its database answers."""
        store.next_deadline()
        return {"status": "ok", "version": __version__}

    return app


class HttpServer:
    """uvicorn in a thread of the collector process."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
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
