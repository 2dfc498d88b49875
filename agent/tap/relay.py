"""The transparent TCP relay of a host-link tap: forwards, and drops a copy in a queue.

The terminal is pointed at the relay's listening address; for each connection the relay
opens one to the real front end and forwards bytes unchanged both ways, as they arrive.
Fail-open is the design: nothing on the forwarding path waits for, parses or depends on
the decoder. Each chunk is written on before its copy is offered to a bounded queue
without blocking (`CopyQueue.offer`); when the queue is full the copy is dropped and
counted. The sale goes through whatever happens to the copy.

What the terminal sees when the front end misbehaves, as close as a relay can get to what
it would see without one:
- the front end closes its side: the relay closes that side towards the terminal once
  what was in flight is written (a half-close each way, like TCP itself);
- the front end resets, refuses the connection or does not answer within
  `connect_timeout_s`: the terminal's connection is reset (RST). Without the relay a
  refusal would come at connect time; a terminal treats both as "no connection", and
  neither has sent it a byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import socket
import struct
import threading
import time
from dataclasses import dataclass
from enum import StrEnum

logger = logging.getLogger(__name__)

READ_SIZE = 65536
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_QUEUE_SIZE = 10_000


class Direction(StrEnum):
    TO_HOST = "to_host"
    TO_TERMINAL = "to_terminal"


@dataclass(frozen=True, slots=True)
class Copy:
    """Bytes the relay forwarded on one connection, in one direction."""

    connection: int
    direction: Direction
    data: bytes
    mono: float  # time.monotonic() just after the bytes were handed to the kernel


@dataclass(frozen=True, slots=True)
class Closed:
    """A relayed connection ended; its decoder state can go."""

    connection: int
    mono: float


@dataclass(frozen=True, slots=True)
class ConnectFailed:
    """The front end refused or did not answer a connection from the relay."""

    connection: int
    mono: float
    reason: str


Item = Copy | Closed | ConnectFailed


class CopyQueue:
    """The bounded hand-over from the relay to the decoder; never blocks the relay.

    When `maxsize` items wait, a new copy is dropped and counted. A
    connection that lost a copy is out of step (the next bytes start inside a message),
    so its later copies are dropped too until it closes: decoding it would only make
    errors. `Closed` and `ConnectFailed` are always queued: they are small, one or two per
    connection, and the decoder needs them to forget a connection and to see failures.
    """

    def __init__(self, maxsize: int = DEFAULT_QUEUE_SIZE) -> None:
        self.maxsize = maxsize
        self._queue: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self._lost: set[int] = set()
        self.dropped = 0
        self.dropped_bytes = 0

    def offer(self, item: Item) -> None:
        """Queue `item`, or drop and count a copy the decoder has no room for."""
        if isinstance(item, Copy):
            if item.connection in self._lost or self._queue.qsize() >= self.maxsize:
                self._lost.add(item.connection)
                self.dropped += 1
                self.dropped_bytes += len(item.data)
                return
        elif isinstance(item, Closed):
            self._lost.discard(item.connection)
        self._queue.put(item)

    def get(self, timeout: float) -> Item | None:
        """The next item, or None after `timeout` seconds."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None


class Relay:
    """Listens where the terminal connects and relays each connection to the front end."""

    def __init__(
        self,
        listen: tuple[str, int],
        upstream: tuple[str, int],
        copies: CopyQueue,
        *,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> None:
        self.listen = listen
        self.upstream = upstream
        self.copies = copies
        self.connect_timeout_s = connect_timeout_s
        self.connections = 0
        self.connect_failures = 0
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind the listening socket; connections are served from then on."""
        self._server = await asyncio.start_server(self._serve, *self.listen)

    @property
    def port(self) -> int:
        """The port listened on (useful when `listen` asked for port 0)."""
        assert self._server is not None, "start() first"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        """Stop listening and reset the connections in progress (the agent is stopping)."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._open):
            _reset(writer)
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(
        self, terminal_in: asyncio.StreamReader, terminal: asyncio.StreamWriter
    ) -> None:
        connection = next(self._ids)
        self.connections += 1
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        self._open.add(terminal)
        try:
            await self._relay(connection, terminal_in, terminal)
        finally:
            self._open.discard(terminal)
            terminal.close()

    async def _relay(
        self, connection: int, terminal_in: asyncio.StreamReader, terminal: asyncio.StreamWriter
    ) -> None:
        _no_delay(terminal)
        try:
            host_in, host = await asyncio.wait_for(
                asyncio.open_connection(*self.upstream), self.connect_timeout_s
            )
        except (OSError, TimeoutError) as exc:
            self.connect_failures += 1
            reason = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
            logger.warning("tap %s: front end %s:%s %s", self.listen, *self.upstream, reason)
            self.copies.offer(ConnectFailed(connection, time.monotonic(), reason))
            _reset(terminal)
            return
        _no_delay(host)
        self._open.add(host)
        try:
            await asyncio.gather(
                self._pump(terminal_in, host, terminal, connection, Direction.TO_HOST),
                self._pump(host_in, terminal, host, connection, Direction.TO_TERMINAL),
            )
        finally:
            self._open.discard(host)
            host.close()
            self.copies.offer(Closed(connection, time.monotonic()))

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        source: asyncio.StreamWriter,
        connection: int,
        direction: Direction,
    ) -> None:
        """Forward one direction until end of stream; a reset is passed on as a reset."""
        offer = self.copies.offer
        while True:
            try:
                data = await reader.read(READ_SIZE)
            except OSError:
                _reset(writer)
                return
            if not data:
                if not writer.is_closing() and writer.can_write_eof():
                    try:
                        writer.write_eof()
                    except OSError:
                        _reset(source)
                return
            try:
                writer.write(data)
                await writer.drain()
            except OSError:
                _reset(source)
                return
            offer(Copy(connection, direction, data, time.monotonic()))


class RelayThread:
    """Runs relays on an event loop in their own thread, for a synchronous caller."""

    def __init__(self, relays: list[Relay]) -> None:
        self.relays = relays
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tap-relay", daemon=True
        )

    def start(self) -> None:
        """Bind every relay (raises OSError if a port is taken), then serve in the thread."""
        for relay in self.relays:
            self._loop.run_until_complete(relay.start())
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and end the loop and its thread."""
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    async def _close(self) -> None:
        await asyncio.gather(*(relay.close() for relay in self.relays))


def _no_delay(writer: asyncio.StreamWriter) -> None:
    # A POS message is one small write; Nagle would hold it for the peer's delayed ACK.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN: the peer sees a broken connection, not a clean end."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
