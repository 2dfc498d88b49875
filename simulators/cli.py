"""`posmon simulate ...`: simulated peers to run posmon against, for demos and CI."""

from __future__ import annotations

import logging
import secrets
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer

from simulators.faults import Faults
from simulators.link import ByteLink, LinkDown, SerialLink
from simulators.messages import MessageSource
from simulators.pty import PtyLink
from simulators.script import ScriptedStream, ScriptError, load_script
from simulators.stream import TrafficGenerator, TrafficProfile
from simulators.terminal import SimulatedTerminal, TerminalConfig

logger = logging.getLogger(__name__)

PTY_NAME = "ttyPOS0"

app = typer.Typer(
    help="Simulated peers (POS terminals) for demos and tests.",
    no_args_is_help=True,
)

_FAULTS = "Faults (off by default; probabilities are per frame)"


def _link(link: str | None, pty: Path | None, baudrate: int) -> ByteLink:
    if pty is None and link is None:
        raise typer.BadParameter("give --link DIR_OR_URL or --pty PATH", param_hint="--link")
    try:
        if pty is not None:
            return PtyLink(pty)
        assert link is not None
        if Path(link).is_dir():
            return PtyLink(Path(link) / PTY_NAME)
        return SerialLink(link, baudrate)
    except LinkDown as exc:
        raise typer.BadParameter(exc.reason, param_hint="--link") from exc
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--pty" if pty else "--link") from exc


@contextmanager
def _stop_on_signals(terminal: SimulatedTerminal) -> Iterator[None]:
    """Turn Ctrl-C and SIGTERM into a clean stop (counters printed, pty removed)."""

    def _stop(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %s: stopping", signal.Signals(signum).name)
        terminal.stop()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@app.command()
def terminal(
    *,
    link: Annotated[
        str | None,
        typer.Option(
            help="A directory (a pseudo-terminal is made there as ttyPOS0), a device path or "
            "a pyserial URL such as socket://host:port.",
        ),
    ] = None,
    pty: Annotated[
        Path | None,
        typer.Option(help="Make the pseudo-terminal's symlink at this path instead."),
    ] = None,
    tid: Annotated[str, typer.Option(help="Terminal id, 8 characters.")] = "10000001",
    mid: Annotated[str, typer.Option(help="Merchant id, 15 characters.")] = "898100012340001",
    count: Annotated[
        int | None, typer.Option(min=0, help="Stop after this many messages (not heartbeats).")
    ] = None,
    duration: Annotated[
        float | None, typer.Option(min=0, help="Stop after this many seconds.")
    ] = None,
    rate: Annotated[
        float, typer.Option(min=0, help="Messages per second; 0 = as fast as ACKs come.")
    ] = 2.0,
    heartbeat: Annotated[
        float, typer.Option(min=0, help="Seconds between heartbeats; 0 = none.")
    ] = 30.0,
    seed: Annotated[
        int | None, typer.Option(help="Random seed; the same seed gives the same traffic.")
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=0, help="Transactions per batch before a BAT; 0 = only at the end.")
    ] = 40,
    close_batch: Annotated[
        bool, typer.Option(help="Send a BAT for the open batch at the end of the run.")
    ] = True,
    masked_pan: Annotated[
        bool, typer.Option(help="Print PANs masked (first 6 / last 4), as many terminals do.")
    ] = False,
    tz: Annotated[str, typer.Option(help="The terminal's time zone (IANA).")] = "Asia/Shanghai",
    script: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Send these messages (JSON lines) instead."),
    ] = None,
    baudrate: Annotated[int, typer.Option(help="Baud rate for a device path.")] = 115200,
    wait_for_agent: Annotated[
        bool, typer.Option(help="On a pseudo-terminal, start once the agent has opened it.")
    ] = True,
    noise: Annotated[
        float,
        typer.Option(min=0, max=1, help="Line noise before a frame.", rich_help_panel=_FAULTS),
    ] = 0.0,
    corrupt_lrc: Annotated[
        float,
        typer.Option(min=0, max=1, help="Wrong LRC on a first send.", rich_help_panel=_FAULTS),
    ] = 0.0,
    split: Annotated[
        float,
        typer.Option(min=0, max=1, help="Frame written in pieces.", rich_help_panel=_FAULTS),
    ] = 0.0,
    invalid: Annotated[
        float,
        typer.Option(min=0, max=1, help="Missing key or bad value.", rich_help_panel=_FAULTS),
    ] = 0.0,
    unknown_type: Annotated[
        float,
        typer.Option(min=0, max=1, help="Extra frame of unknown TYPE.", rich_help_panel=_FAULTS),
    ] = 0.0,
    unbalanced: Annotated[
        float,
        typer.Option(min=0, max=1, help="BAT with RESULT=UNBALANCED.", rich_help_panel=_FAULTS),
    ] = 0.0,
    unplug_every: Annotated[
        int,
        typer.Option(
            min=0, help="Unplug after every N messages; 0 = never.", rich_help_panel=_FAULTS
        ),
    ] = 0,
    unplug_for: Annotated[
        float, typer.Option(min=0, help="Seconds to stay unplugged.", rich_help_panel=_FAULTS)
    ] = 2.0,
) -> None:
    """Run one simulated POS terminal speaking POSMON-SL/1, until done or Ctrl-C."""
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise typer.BadParameter(f"unknown time zone {tz!r}", param_hint="--tz") from exc
    if seed is None:
        seed = secrets.randbelow(2**31)
    try:
        faults = Faults(
            noise=noise,
            corrupt_lrc=corrupt_lrc,
            split=split,
            invalid=invalid,
            unknown_type=unknown_type,
            unplug_every=unplug_every,
            unplug_for=unplug_for,
        )
        config = TerminalConfig(
            tid=tid,
            tz=zone,
            rate=rate,
            heartbeat_interval=heartbeat,
            faults=faults,
            seed=seed,
            reader_wait=None if wait_for_agent else 0.0,
        )
        source: MessageSource
        if script is not None:
            source = ScriptedStream(load_script(script), tz=zone)
        else:
            profile = TrafficProfile(
                mid=mid, masked_pan=masked_pan, batch_size=batch_size, unbalanced=unbalanced
            )
            source = TrafficGenerator(tid, profile, seed=seed, tz=zone)
    except (ValueError, ScriptError) as exc:
        raise typer.BadParameter(str(exc)) from exc

    byte_link = _link(link, pty, baudrate)
    try:
        terminal = SimulatedTerminal(byte_link, source, config)
        typer.echo(f"Connect the agent to: {byte_link.name}")
        typer.echo(f"terminal {tid}, seed {seed}; Ctrl-C to stop")
        if isinstance(byte_link, PtyLink) and wait_for_agent:
            typer.echo("waiting for the agent to open the port ...")
        with _stop_on_signals(terminal):
            counters = terminal.run(count=count, duration=duration, close_batch=close_batch)
    finally:
        byte_link.close()
    typer.echo(" ".join(f"{name}={value}" for name, value in counters.as_dict().items()))
