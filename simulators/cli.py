"""`posmon simulate ...`: simulated peers to run posmon against, for demos and CI."""

from __future__ import annotations

import dataclasses
import logging
import secrets
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
from pydantic import ValidationError

from posmon.mqtt import DEFAULT_PREFIX, MqttClient, MqttSettings
from posmon.simclock import SimClock
from simulators.acquirer.core import AcquirerConfig, AcquirerCore, BankBasis, TimeBasis
from simulators.acquirer.faults import FaultRates, Scenarios, parse_frozen, parse_outage
from simulators.acquirer.files import SettlementFiles, TruthLog
from simulators.acquirer.runner import AcquirerRunner
from simulators.acquirer.terms import MerchantProfile, SettlementMode, SettlementTerms
from simulators.faults import Faults
from simulators.link import ByteLink, LinkDown, SerialLink
from simulators.messages import MessageSource
from simulators.pty import PtyLink
from simulators.script import ScriptedStream, ScriptError, load_script
from simulators.stream import TrafficGenerator, TrafficProfile
from simulators.terminal import SimulatedTerminal, TerminalConfig

if TYPE_CHECKING:
    from collector.alerts import StoredAlert
    from collector.store import Store

logger = logging.getLogger(__name__)

PTY_NAME = "ttyPOS0"

app = typer.Typer(
    help="Simulated peers (POS terminals, an acquirer) for demos and tests.",
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
def _on_signals(action: Callable[[], None]) -> Iterator[None]:
    """Turn Ctrl-C and SIGTERM into `action` (a clean stop, with what the command prints
    at its end), for as long as the block runs."""

    def _stop(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %s: stopping", signal.Signals(signum).name)
        action()

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
        with _on_signals(terminal.stop):
            counters = terminal.run(count=count, duration=duration, close_batch=close_batch)
    finally:
        byte_link.close()
    typer.echo(" ".join(f"{name}={value}" for name, value in counters.as_dict().items()))


# --- posmon simulate acquirer ---------------------------------------------------------------

_ACQ_TIME = "Time"
_ACQ_TERMS = "Settlement terms"
_ACQ_FAULTS = "Faults (probabilities per approved sale; --faults picks the defaults)"
_ACQ_SCENARIOS = "Scenarios"


def _moment(text: str | None, param: str, default: datetime) -> datetime:
    if text is None:
        return default
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r} is not an ISO 8601 time", param_hint=param) from exc
    if moment.utcoffset() is None:
        raise typer.BadParameter(f"{text!r} needs a UTC offset, e.g. +08:00", param_hint=param)
    return moment


def _merchant(spec: str, defaults: SettlementTerms) -> MerchantProfile:
    """`MID:MODE[:FEE_BP[:BANK]]`, e.g. `898100012340002:D0:38:0105`."""
    parts = spec.split(":")
    if not 2 <= len(parts) <= 4:
        raise ValueError(f"merchant {spec!r} is not MID:MODE[:FEE_BP[:BANK]]")
    mode = SettlementMode(parts[1].upper())
    fee_bp = int(parts[2]) if len(parts) > 2 and parts[2] else defaults.fee_bp
    bank = parts[3] if len(parts) > 3 and parts[3] else None
    terms = dataclasses.replace(defaults, mode=mode, fee_bp=fee_bp)
    return MerchantProfile.derive(parts[0], terms, bank)


class FaultPreset(StrEnum):
    """Where the acquirer's fault rates start before single knobs override them."""

    NONE = "none"  # no random faults; sales taken offline are uploaded after all
    DEMO = "demo"  # FaultRates.demo(): every kind of fault within a few hundred sales


def _rates(preset: FaultPreset, overrides: dict[str, float | None]) -> FaultRates:
    base = FaultRates.demo() if preset is FaultPreset.DEMO else FaultRates.none()
    given = {name: value for name, value in overrides.items() if value is not None}
    return dataclasses.replace(base, **given)


def _rate_option(help_text: str) -> Any:
    return typer.Option(min=0, max=1, help=help_text, rich_help_panel=_ACQ_FAULTS)


@app.command()
def acquirer(
    *,
    broker_host: Annotated[str, typer.Option(help="MQTT broker host.")] = "127.0.0.1",
    broker_port: Annotated[int, typer.Option(min=1, max=65535, help="MQTT broker port.")] = 1883,
    prefix: Annotated[str, typer.Option(help="Topic prefix.")] = DEFAULT_PREFIX,
    client_id: Annotated[
        str, typer.Option(help="MQTT client id; the broker keeps its session between runs.")
    ] = "posmon-acquirer-sim",
    seed: Annotated[
        int | None, typer.Option(help="Random seed; the same seed gives the same faults.")
    ] = None,
    ground_truth: Annotated[
        Path | None,
        typer.Option(dir_okay=False, help="Write the injected faults here (JSON lines)."),
    ] = None,
    record_normal: Annotated[
        bool, typer.Option(help="Also write a ground-truth line per on-time settlement.")
    ] = False,
    csv_dir: Annotated[
        Path | None,
        typer.Option(file_okay=False, help="Write settlements-YYYYMMDD.csv files here."),
    ] = None,
    encoding: Annotated[str, typer.Option(help="CSV encoding: utf-8 or gbk.")] = "utf-8",
    duration: Annotated[
        float | None, typer.Option(min=0, help="Stop after this many real seconds.")
    ] = None,
    scale: Annotated[
        float,
        typer.Option(
            min=0.001,
            help="Virtual seconds per real second (3600: an hour a second).",
            rich_help_panel=_ACQ_TIME,
        ),
    ] = 3600.0,
    origin: Annotated[
        str | None,
        typer.Option(
            help="Virtual time at the start, ISO 8601 with offset; default now.",
            rich_help_panel=_ACQ_TIME,
        ),
    ] = None,
    anchor: Annotated[
        str | None,
        typer.Option(
            help="Real time the origin stands for (share it with the collector); default now.",
            rich_help_panel=_ACQ_TIME,
        ),
    ] = None,
    time_basis: Annotated[
        TimeBasis,
        typer.Option(
            help="Count from the terminal's time, or from arrival (terminals on real time).",
            rich_help_panel=_ACQ_TIME,
        ),
    ] = TimeBasis.TERMINAL,
    tz: Annotated[
        str, typer.Option(help="Time zone of cut-offs and dates.", rich_help_panel=_ACQ_TIME)
    ] = "Asia/Shanghai",
    mode: Annotated[
        SettlementMode,
        typer.Option(help="Settlement mode of merchants not listed.", rich_help_panel=_ACQ_TERMS),
    ] = SettlementMode.T1,
    cutoff: Annotated[
        str, typer.Option(help="Cut-off, local HH:MM.", rich_help_panel=_ACQ_TERMS)
    ] = "18:00",
    t0_hours: Annotated[
        float, typer.Option(min=0.01, max=48, help="T0 window.", rich_help_panel=_ACQ_TERMS)
    ] = 2.0,
    fee_bp: Annotated[
        int,
        typer.Option(min=0, max=10000, help="Fee, basis points.", rich_help_panel=_ACQ_TERMS),
    ] = 60,
    fee_fixed: Annotated[
        int, typer.Option(min=0, help="Fixed fee per sale, fen.", rich_help_panel=_ACQ_TERMS)
    ] = 0,
    merchant: Annotated[
        list[str] | None,
        typer.Option(
            help="MID:MODE[:FEE_BP[:BANK]], repeatable; others get the defaults above.",
            rich_help_panel=_ACQ_TERMS,
        ),
    ] = None,
    bank_basis: Annotated[
        BankBasis,
        typer.Option(
            help="Credit the merchant's bank, or take the card issuer's code (ISS).",
            rich_help_panel=_ACQ_TERMS,
        ),
    ] = BankBasis.MERCHANT,
    batch_gate: Annotated[
        bool,
        typer.Option(
            help="T1 sales need their batch closed (BAT) by the deadline.",
            rich_help_panel=_ACQ_TERMS,
        ),
    ] = True,
    faults: Annotated[
        FaultPreset,
        typer.Option(help="Rates to start from: none or demo.", rich_help_panel=_ACQ_FAULTS),
    ] = FaultPreset.NONE,
    account_failed: Annotated[
        float | None, _rate_option("FAILED: AC01/AC03/AC04/AC06/BE01/RC01.")
    ] = None,
    account_returned: Annotated[
        float | None, _rate_option("CREDITED, then RETURNED: AC01/AC04/AC06/BE01.")
    ] = None,
    risk_hold: Annotated[float | None, _rate_option("FAILED: M103 risk hold.")] = None,
    bank_failed: Annotated[float | None, _rate_option("FAILED: B202/B203/TM01.")] = None,
    unspecified_failed: Annotated[
        float | None, _rate_option("FAILED: MS03/NARR (cause UNKNOWN).")
    ] = None,
    late: Annotated[float | None, _rate_option("CREDITED after the deadline.")] = None,
    duplicate: Annotated[float | None, _rate_option("CREDITED twice.")] = None,
    mismatch: Annotated[float | None, _rate_option("CREDITED for a wrong amount.")] = None,
    orphan: Annotated[float | None, _rate_option("Extra settlement, no such sale.")] = None,
    offline_lost: Annotated[
        float | None, _rate_option("Sale taken offline (link down, SAF>0) never uploaded.")
    ] = None,
    void_ignored: Annotated[
        float | None, _rate_option("A void or reversal not processed: the sale is credited.")
    ] = None,
    frozen: Annotated[
        list[str] | None,
        typer.Option(
            help="MID[:CODE]: every settlement of the merchant fails (default M102).",
            rich_help_panel=_ACQ_SCENARIOS,
        ),
    ] = None,
    bank_outage: Annotated[
        list[str] | None,
        typer.Option(
            help="BANK@START/END, times +N[d|h|m] after the origin or ISO: 0102@+26h/+30h.",
            rich_help_panel=_ACQ_SCENARIOS,
        ),
    ] = None,
    outage_delay_share: Annotated[
        float,
        typer.Option(
            min=0,
            max=1,
            help="Share of outage settlements delayed (the rest fail).",
            rich_help_panel=_ACQ_SCENARIOS,
        ),
    ] = 0.5,
) -> None:
    """Run a simulated acquirer: settle the terminals' sales over MQTT, with faults."""
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise typer.BadParameter(f"unknown time zone {tz!r}", param_hint="--tz") from exc
    if seed is None:
        seed = secrets.randbelow(2**31)
    real_start = datetime.now(UTC)
    start = _moment(origin, "--origin", real_start.astimezone(zone))
    real_anchor = _moment(anchor, "--anchor", real_start)
    try:
        settings = MqttSettings(host=broker_host, port=broker_port, topic_prefix=prefix)
        terms = SettlementTerms(
            mode=mode,
            cutoff=time.fromisoformat(cutoff),
            t0_hours=t0_hours,
            fee_bp=fee_bp,
            fee_fixed=fee_fixed,
        )
        rates = _rates(
            faults,
            {
                "account_failed": account_failed,
                "account_returned": account_returned,
                "risk_hold": risk_hold,
                "bank_failed": bank_failed,
                "unspecified_failed": unspecified_failed,
                "late": late,
                "duplicate": duplicate,
                "mismatch": mismatch,
                "orphan": orphan,
                "offline_lost": offline_lost,
                "void_ignored": void_ignored,
            },
        )
        scenarios = Scenarios(
            frozen=tuple(parse_frozen(item) for item in frozen or ()),
            outages=tuple(
                parse_outage(item, start, outage_delay_share) for item in bank_outage or ()
            ),
        )
        config = AcquirerConfig(
            terms=terms,
            merchants=tuple(_merchant(item, terms) for item in merchant or ()),
            rates=rates,
            scenarios=scenarios,
            tz=zone,
            batch_gate=batch_gate,
            time_basis=time_basis,
            bank_basis=bank_basis,
            record_normal=record_normal,
        )
        csv_files = SettlementFiles(csv_dir, zone, encoding) if csv_dir is not None else None
    except (ValueError, ValidationError) as exc:
        raise typer.BadParameter(str(exc)) from exc

    clock = SimClock(start, scale, real_anchor)
    core = AcquirerCore(config, seed=seed)
    client = MqttClient(settings, client_id)
    truth = TruthLog(ground_truth) if ground_truth is not None else None
    stop = threading.Event()
    runner = AcquirerRunner(core, client, clock, csv_files=csv_files, truth=truth)
    typer.echo(
        f"acquirer on {broker_host}:{broker_port} prefix {prefix}, seed {seed}; "
        f"virtual time from {start.isoformat(timespec='seconds')} x{scale:g}; Ctrl-C to stop"
    )
    try:
        with _on_signals(stop.set):
            summary = runner.run(stop, duration=duration)
    finally:
        if truth is not None:
            truth.close()
    typer.echo(" ".join(f"{name}={value}" for name, value in summary.as_dict().items()))


@app.command(short_help="Run a local NATS cluster (JetStream, MQTT listeners) until Ctrl-C.")
def cluster(
    nodes: Annotated[int, typer.Option(min=1, max=9, help="How many nats-server nodes.")] = 3,
    workdir: Annotated[
        Path | None,
        typer.Option(file_okay=False, help="Folder for the nodes' data; default ./runs/nats."),
    ] = None,
) -> None:
    """Start a NATS cluster on free loopback ports, as the calling user: each node runs
    JetStream (its own store folder), routes to the others and an MQTT 3.1.1 listener.
    Prints the MQTT and NATS URLs once JetStream has a meta leader; Ctrl-C stops it."""
    from simulators.natscluster import ClusterError, NatsCluster  # noqa: PLC0415

    folder = workdir or Path("runs") / "nats"
    local = NatsCluster(folder, nodes)
    stop = threading.Event()
    with _on_signals(stop.set):
        try:
            local.start()
        except ClusterError as exc:
            local.stop()
            typer.echo(f"cluster error: {exc}", err=True)
            raise typer.Exit(1) from exc
        try:
            typer.echo(f"NATS cluster of {nodes} in {folder} (JetStream ready)")
            for node in local.nodes:
                typer.echo(f"  {node.name}: {node.mqtt_url}  {node.nats_url}")
            servers = ", ".join(f'"{url}"' for url in local.nats_urls)
            typer.echo(f'collector: [ingest] source = "nats"  [nats] servers = [{servers}]')
            typer.echo("Ctrl-C stops it.")
            while not stop.wait(1):
                down = [node.name for node in local.nodes if not node.running]
                if down:
                    typer.echo(f"nats-server {', '.join(down)} exited; stopping", err=True)
                    break
        finally:
            local.stop()
            typer.echo("cluster stopped")


@app.command(
    short_help="Run a scenario file: fleet, agents, collector, acquirer; score the alerts.",
)
def scenario(
    file: Annotated[Path, typer.Argument(metavar="FILE.toml", help="Scenario file.")],
    score: Annotated[
        bool,
        typer.Option(
            "--score",
            help="Score the alerts against what was injected; exit 1 when a target is missed.",
        ),
    ] = False,
    broker: Annotated[
        str | None,
        typer.Option(
            help="Use this broker (mqtt://host:port) instead of a private mosquitto; "
            "nats-cluster: a 3-node NATS cluster of the run's own (docs/scaling.md).",
        ),
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(file_okay=False, help="Folder for the run's files; default ./runs/NAME."),
    ] = None,
    influx: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="Write the collector's metrics to this InfluxDB (http://host:8086); "
            "the dashboards in dashboards/ read them.",
        ),
    ] = None,
    influx_db: Annotated[
        str, typer.Option(metavar="NAME", help="InfluxDB database for --influx.")
    ] = "posmon",
) -> None:
    """Run a scenario: simulated terminals on pseudo-terminals read by `posmon agent run`,
    the collector and the acquirer simulator on one accelerated clock, the faults the file
    injects. With --score, the collector's alerts are scored against the ground truth:
    detection recall, cause accuracy, false alerts, time to alert."""
    from posmon.config import ConfigError  # noqa: PLC0415
    from simulators.scenario import load_scenario  # noqa: PLC0415

    try:
        plan = load_scenario(file)
    except ConfigError as exc:
        typer.echo(f"scenario error:\n{exc}", err=True)
        raise typer.Exit(2) from exc
    folder = workdir or Path("runs") / file.stem
    _run_scenario(
        plan, folder, score=score, broker=broker, metrics=_metrics_section(influx, influx_db)
    )


@app.command(
    "random",
    short_help="Run a random scenario drawn from a seed (fleet, terms, calendar, faults).",
)
def random_scenario(
    seed: Annotated[int, typer.Argument(help="The seed: the same seed, the same scenario.")],
    score: Annotated[
        bool,
        typer.Option(
            "--score",
            help="Score the alerts against what was injected; exit 1 when a target is missed.",
        ),
    ] = False,
    broker: Annotated[
        str | None,
        typer.Option(
            help="Use this broker (mqtt://host:port) instead of a private mosquitto; "
            "nats-cluster: a 3-node NATS cluster of the run's own (docs/scaling.md).",
        ),
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(
            file_okay=False, help="Folder for the run's files; default ./runs/random-SEED."
        ),
    ] = None,
    show: Annotated[
        bool, typer.Option("--show", help="Print the scenario file of the seed and stop.")
    ] = False,
) -> None:
    """Draw a whole scenario from SEED (simulators/randomized.py: 2-12 terminals on T1, D0
    and T0 merchants, a start on an ordinary day, a holiday's eve or an adjusted working
    day, a random mix of faults and timing) and run it as `posmon simulate scenario` does.
    The drawn scenario is left in the run's folder as scenario.toml; the same seed replays
    the same scenario."""
    from simulators.randomized import scenario_data, scenario_toml  # noqa: PLC0415
    from simulators.scenario import ScenarioFile  # noqa: PLC0415

    data = scenario_data(seed)
    text = scenario_toml(data)
    if show:
        typer.echo(text, nl=False)
        return
    folder = workdir or Path("runs") / f"random-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scenario.toml").write_text(text, encoding="utf-8")
    plan = ScenarioFile.model_validate(data)
    _run_scenario(plan, folder, score=score, broker=broker, metrics=None)


def _run_scenario(
    plan: Any, folder: Path, *, score: bool, broker: str | None, metrics: dict[str, Any] | None
) -> None:
    """Run a scenario, print its progress and (with `score`) its score; exit 1 on a miss."""
    from simulators.scenario import ScenarioRun  # noqa: PLC0415

    # Each alert (and case) is in the run's database and its score: a log line for each is
    # noise here. The collector's other warnings stay: a metrics sink retrying, dead letters.
    for name, level in (("collector.alerts", logging.ERROR), ("simulators", logging.WARNING)):
        logging.getLogger(name).setLevel(level)
    stop = threading.Event()
    run = ScenarioRun(plan, folder, broker_url=broker, metrics=metrics, on_tick=_tick, stop=stop)
    total = plan.time.traffic_s + plan.time.settle_s
    typer.echo(
        f"scenario {plan.name!r}: {plan.fleet.terminals} terminals, {total:.0f} s "
        f"({plan.time.traffic_s:.0f} s trading), virtual time x{plan.time.scale:g} "
        f"from {plan.time.origin.isoformat(timespec='minutes')}; files in {folder}"
    )
    with _on_signals(stop.set):
        files = run.run()
    if not score:
        typer.echo(f"done; database {files.database}, ground truth {files.ground_truth}")
        return
    result = score_run(files, plan.time.scale, run)
    _print_score(result)
    typer.echo(f"report: {files.report}")
    if not result.passed():
        raise typer.Exit(1)


def _metrics_section(url: str | None, database: str) -> dict[str, Any] | None:
    """The collector's [metrics] for --influx, checked now rather than after the start."""
    if url is None:
        return None
    from pydantic import ValidationError  # noqa: PLC0415

    from collector.config import MetricsSection  # noqa: PLC0415

    section = {"url": url, "database": database}
    try:
        MetricsSection.model_validate(section)
    except ValidationError as exc:
        typer.echo(f"--influx/--influx-db: {exc}", err=True)
        raise typer.Exit(2) from exc
    return section


_last_tick = [0.0]


def _tick(run: Any, elapsed: float) -> None:
    if (
        elapsed - _last_tick[0] < 5
        and elapsed < run.scenario.time.traffic_s + run.scenario.time.settle_s
    ):
        return
    _last_tick[0] = elapsed
    counts = run.collector.store.counts()
    alerts = run.collector.alert_store.counts()
    typer.echo(
        f"  {elapsed:5.0f} s: {counts.get('transactions', 0)} transactions, "
        f"{counts.get('settlements', 0)} settlements, "
        f"{sum(alerts.values())} open alerts"
    )


def score_run(files: Any, scale: float, run: Any) -> Any:
    """Score a finished run from its files and database; writes report.json.

    Faults visible only after the run's end (virtual, less two real seconds for the last
    alerts to be made) are pending, not expected; faults the run could not show by the
    collector's rules (its [alerts] thresholds, the run's length) are unshowable."""
    import json  # noqa: PLC0415

    from sqlalchemy import create_engine  # noqa: PLC0415

    from collector.alerts import AlertStore  # noqa: PLC0415
    from simulators.acquirer.files import read_truth  # noqa: PLC0415
    from simulators.score import Thresholds, score  # noqa: PLC0415

    engine = create_engine(f"sqlite:///{files.database}")
    try:
        alerts = [scorer_row(row) for row in AlertStore(engine, "score", []).find(limit=1_000_000)]
    finally:
        engine.dispose()
    truth = read_truth(files.ground_truth) if files.ground_truth.exists() else []
    terminal = read_truth(files.terminal_truth) if files.terminal_truth.exists() else []
    until = run.virtual_end
    if until is not None:
        until -= timedelta(seconds=2 * scale)
    thresholds = Thresholds.of(run.collector.config.alerts, run.run_s)
    in_transit = late_in_transit(run.collector.store, alerts)
    result = score(
        truth,
        terminal,
        alerts,
        scale=scale,
        until=until,
        thresholds=thresholds,
        late_in_transit=in_transit,
    )
    files.report.write_text(json.dumps(result.as_dict(), indent=2, ensure_ascii=False) + "\n")
    return result


def scorer_row(alert: StoredAlert) -> dict[str, Any]:
    """A stored alert as `simulators.score` reads it: its columns by name, the type, severity
    and cause as the strings stored."""
    return {
        **dataclasses.asdict(alert),
        "type": alert.type.value,
        "severity": alert.severity.value,
        "cause": alert.cause.value,
    }


def late_in_transit(store: Store, alerts: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """The (tid, rrn) of OVERDUE alerts whose credit was settled before the deadline but
    stored by the collector only after its overdue watch had marked the transaction
    OVERDUE (`simulators.score`: late in transit), from the run's database."""
    from collector.correlate import Outcome  # noqa: PLC0415
    from posmon.wire.models import SettlementStatus, TxnKind  # noqa: PLC0415

    found: set[tuple[str, str]] = set()
    for alert in alerts:
        if alert["type"] != "SETTLEMENT_OVERDUE" or not alert["rrn"]:
            continue
        tid, rrn = alert["tid"], alert["rrn"]
        txn = store.transaction(tid, rrn) or store.transaction(tid, rrn, TxnKind.PREAUTH_COMPLETION)
        if txn is None or not txn.settlement_id or txn.deadline is None:
            continue
        credit = store.settlement(txn.settlement_id)
        if (
            credit is None
            or credit.status != SettlementStatus.CREDITED
            or credit.settled_at >= txn.deadline
        ):
            continue
        # The outcomes in the order they were stored: the watch's OVERDUE came first when
        # the credit reached the store after the deadline (whatever its received_at says:
        # a loaded ingest stamps a message well before it commits it).
        history = store.outcome_history(tid, rrn)
        credited = [n for n, o in enumerate(history) if o in (Outcome.SETTLED, Outcome.MISMATCH)]
        if Outcome.OVERDUE in history and history.index(Outcome.OVERDUE) < min(
            credited, default=len(history)
        ):
            found.add((tid, rrn))
    return found


def _print_score(result: Any) -> None:
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    table = Table(title="alerts against what was injected")
    for column in ("alert type", "injected", "detected", "cause right", "time to alert (real s)"):
        table.add_column(column, justify="right" if column != "alert type" else "left")
    for name, (expected, detected, right) in result.by_type().items():
        delays = result.delays_s.get(name)
        timing = (
            f"median {sorted(delays)[len(delays) // 2]:.2f}, max {max(delays):.2f}"
            if delays
            else "-"
        )
        table.add_row(name, str(expected), str(detected), str(right), timing)
    console = Console()
    console.print(table)
    console.print(
        f"recall {result.recall:.1%} ({result.detected}/{len(result.expected)}), "
        f"cause accuracy {result.cause_accuracy:.1%}, false alerts {len(result.false_alerts)}, "
        f"related {result.related}"
    )
    report = result.as_dict()
    if report["unshowable"]:
        console.print(
            f"unshowable (the run was too short or small for the rule's minimum evidence): "
            f"{len(report['unshowable'])}"
        )
    for title, rows in (
        ("missed", report["missed"]),
        ("wrong cause", report["wrong_cause"]),
        ("false", report["false"]),
        ("unshowable", report["unshowable"]),
        ("late in transit (not false)", report["late_in_transit"]),
    ):
        for row in rows[:20]:
            console.print(f"  {title}: {row}")
    verdict = "PASS" if result.passed() else "FAIL"
    console.print(f"targets (all detected, >= 95% causes right, no false alert): {verdict}")


demo_app = typer.Typer(
    invoke_without_command=True,
    help=(
        "Run the whole system on embedded defaults: simulated terminals read by agents, an "
        "embedded broker, the collector and a faulty acquirer, watched live; at the end each "
        "injected fault against what was found. Exits 1 when the targets (every fault "
        "detected, >= 95% causes right, no false alert) are missed by a run that ran its "
        "course (one stopped with Ctrl-C is not judged)."
    ),
)


@demo_app.callback()
def demo(
    ctx: typer.Context,
    terminals: Annotated[int, typer.Option(min=1, max=200, help="Simulated terminals.")] = 8,
    minutes: Annotated[
        float, typer.Option(min=0.5, max=120, help="How long it runs, in real minutes.")
    ] = 1.5,
    broker: Annotated[
        str | None,
        typer.Option(help="Use this broker (mqtt://host:port) instead of the embedded one."),
    ] = None,
    influx: Annotated[
        str | None,
        typer.Option(metavar="URL", help="Also write the metrics the dashboards read."),
    ] = None,
    influx_db: Annotated[str, typer.Option(metavar="NAME", help="InfluxDB database.")] = "posmon",
    workdir: Annotated[
        Path, typer.Option(file_okay=False, help="Folder for the run's files (started afresh).")
    ] = Path("runs/demo"),
    seed: Annotated[int, typer.Option(help="Seed of the traffic and the faults.")] = 7,
) -> None:
    """The demo (see `posmon demo --help`)."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console  # noqa: PLC0415
    from rich.live import Live  # noqa: PLC0415

    from simulators.broker import EmbeddedBroker  # noqa: PLC0415
    from simulators.demo import LiveView, demo_scenario, summary, write_outputs  # noqa: PLC0415
    from simulators.scenario import ScenarioRun  # noqa: PLC0415

    plan = demo_scenario(terminals, minutes, seed=seed)
    metrics = _metrics_section(influx, influx_db)
    for name in ("collector", "simulators", "posmon", "paho"):
        logging.getLogger(name).setLevel(logging.ERROR)
    console = Console()
    console.print(
        f"posmon demo: {terminals} terminals for {minutes:g} min, virtual time "
        f"x{plan.time.scale:.0f} from {plan.time.origin:%a %d %b %H:%M}; files in {workdir}"
    )
    console.print(
        "Not a production set-up: the embedded broker takes anyone, in clear. A secure one "
        "(mutual TLS, the ACL): docs/install-secure.md"
    )
    embedded = None
    if broker is None:
        embedded = EmbeddedBroker()
        embedded.start()
        broker = embedded.url
    stop = threading.Event()
    try:
        with Live(console=console, refresh_per_second=2, transient=False) as live:
            view = LiveView(live)
            run = ScenarioRun(
                plan, workdir, broker_url=broker, metrics=metrics, on_tick=view.tick, stop=stop
            )
            with _on_signals(stop.set):
                files = run.run()
        if not console.is_terminal:
            # Written to a file, the live view's last frame ends without a line break.
            console.line()
    finally:
        if embedded is not None:
            embedded.stop()
    result = score_run(files, plan.time.scale, run)
    outputs = write_outputs(run, result)
    summary(console, result, outputs, interrupted=stop.is_set())
    # The summary said FAIL: so does the exit status. A run stopped early with Ctrl-C is not
    # judged: a fault injected from the start (a frozen merchant) shows only at the first
    # settlement run, which an early stop may not have reached.
    if not result.passed() and not stop.is_set():
        raise typer.Exit(1)
