"""How fast one collector takes transactions from NATS JetStream, against a bare nats-py
pull consumer on the same cluster in the same run (issue #16).

A 3-node cluster (simulators/natscluster.py: JetStream, MQTT listeners, on loopback) is
started once. Each row publishes the same `--messages` valid `posmon.txn/1` payloads over
MQTT QoS 1 (`_bare_publisher.py`, one per node, in parallel) under a prefix of its own;
NATS's MQTT listener stores each in its `$MQTT_msgs` stream (R3) before the PUBACK. A
durable consumer filtered on that prefix is made before the publish (the stream keeps a
message only while a consumer is interested), so the whole batch waits as a backlog, as
after a collector outage. Then, measured from the first message taken to the last:

- bare nats-py: a pull consumer in its own process fetching batches of 500 and acking each
  message, nothing else: the baseline;
- collector: `posmon collector run` (`[ingest] source = "nats"`) in its own process: every
  message parsed, validated, stored with its expectation and acked after the commit;
  msgs/s from the first stored to the last stored (the `stored_at` it writes).

The target is a collector ratio of at least 0.6 of the bare consumer's rate.

    .venv/bin/python benchmarks/nats_ingest.py [--messages 20000]
        [--databases sqlite postgresql] [--rounds 1] [--batch-size 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from _harness import machine, quiet_logging, stop_process, table, wait_until, workspace
from collector_ingest import Reader, database, make_payloads, write_messages

from collector.config import NatsSection
from collector.jetstream import MQTT_STREAM, ensure_stream
from posmon.mqtt import Topics
from simulators.natscluster import NatsCluster

BIN = Path(sys.executable).parent
POSTGRES_ADMIN_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TARGET = 0.6
BATCH = 500  # messages per fetch, both consumers (the collector's [ingest] batch_size)


# --- the baseline: a bare nats-py pull consumer in its own process -------------------------


def bare_consumer_main(argv: Sequence[str]) -> int:
    """Fetch and ack `--count` messages from a durable consumer; print first/last times."""
    import nats

    parser = argparse.ArgumentParser()
    parser.add_argument("--servers", nargs="+", required=True)
    parser.add_argument("--consumer", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--batch-size", type=int, default=BATCH)
    args = parser.parse_args(argv)

    async def run() -> dict[str, float | int]:
        nc = await nats.connect(args.servers)
        pull = await nc.jetstream().pull_subscribe_bind(durable=args.consumer, stream=MQTT_STREAM)
        first: float | None = None
        taken = 0
        deadline = time.monotonic() + args.timeout
        while taken < args.count and time.monotonic() < deadline:
            try:
                messages = await pull.fetch(args.batch_size, timeout=1)
            except Exception:  # nats-py's timeouts: nothing came this turn
                continue
            if first is None:
                first = time.monotonic()
            for message in messages:
                await message.ack()
            taken += len(messages)
        await nc.flush()
        last = time.monotonic()
        await nc.close()
        return {"first": first or last, "last": last, "count": taken}

    print(json.dumps(asyncio.run(run())))
    return 0


# --- the runs ---------------------------------------------------------------------------


def make_consumer(cluster: NatsCluster, settings: NatsSection, prefix: str) -> None:
    """The durable consumer a run reads, made before its messages are published."""
    import nats

    async def run() -> None:
        nc = await nats.connect(cluster.nats_urls)
        try:
            await ensure_stream(nc.jetstream(), settings, Topics(prefix))
        finally:
            await nc.close()

    asyncio.run(run())


def publish_backlog(
    cluster: NatsCluster, workdir: Path, prefix: str, payloads: list[tuple[str, bytes]]
) -> float:
    """Publish every payload over MQTT, a third through each node; the rate, msgs/s."""
    parts = len(cluster.nodes)
    runs: list[subprocess.CompletedProcess[str]] = []

    def one(index: int) -> None:
        path = write_messages(
            workdir / f"messages-{uuid.uuid4().hex[:6]}.jsonl", prefix, payloads[index::parts]
        )
        runs.append(
            subprocess.run(
                [
                    sys.executable,
                    str(Path(__file__).with_name("_bare_publisher.py")),
                    "--port",
                    str(cluster.nodes[index].mqtt_port),
                    "--inflight",
                    "100",
                    "--messages",
                    str(path),
                ],
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
        )

    start = time.monotonic()
    threads = [threading.Thread(target=one, args=(index,)) for index in range(parts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for run in runs:
        if run.returncode != 0:
            raise RuntimeError(f"publisher failed:\n{run.stdout}{run.stderr}")
    return len(payloads) / (time.monotonic() - start)


def bare_run(
    cluster: NatsCluster,
    workdir: Path,
    payloads: list[tuple[str, bytes]],
    timeout: float,
    *,
    batch: int,
) -> tuple[float, float]:
    """(bare consumer msgs/s, publish msgs/s)."""
    prefix = f"bench/{uuid.uuid4().hex[:10]}"
    settings = NatsSection(servers=cluster.nats_urls, consumer=f"bare-{uuid.uuid4().hex[:8]}")
    make_consumer(cluster, settings, prefix)
    published = publish_backlog(cluster, workdir, prefix, payloads)
    run = subprocess.run(
        [
            sys.executable,
            __file__,
            "--bare-consumer",
            "--servers",
            *cluster.nats_urls,
            "--consumer",
            settings.consumer,
            "--count",
            str(len(payloads)),
            "--timeout",
            str(timeout),
            "--batch-size",
            str(batch),
        ],
        capture_output=True,
        text=True,
        timeout=timeout + 30,
        check=False,
    )
    if run.returncode != 0:
        raise RuntimeError(f"bare consumer failed:\n{run.stdout}{run.stderr}")
    times = json.loads(run.stdout)
    if times["count"] < len(payloads):
        raise RuntimeError(f"bare consumer took {times['count']} of {len(payloads)}")
    return times["count"] / max(times["last"] - times["first"], 1e-9), published


def collector_run(
    cluster: NatsCluster,
    workdir: Path,
    url: str,
    payloads: list[tuple[str, bytes]],
    timeout: float,
    *,
    batch: int,
) -> float:
    """The collector's msgs/s, first stored to last stored."""
    prefix = f"bench/{uuid.uuid4().hex[:10]}"
    settings = NatsSection(servers=cluster.nats_urls, consumer=f"collectors-{uuid.uuid4().hex[:8]}")
    make_consumer(cluster, settings, prefix)
    publish_backlog(cluster, workdir, prefix, payloads)
    name = f"bench-{uuid.uuid4().hex[:8]}"
    config = workdir / f"{name}.toml"
    log = workdir / f"{name}.log"
    servers = ", ".join(f'"{server}"' for server in cluster.nats_urls)
    config.write_text(
        f'[collector]\nid = "{name}"\n[database]\nurl = "{url}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {cluster.nodes[0].mqtt_port}\n'
        f'topic_prefix = "{prefix}"\n'
        f'[ingest]\nsource = "nats"\nbatch_size = {batch}\n'
        f'[nats]\nservers = [{servers}]\nconsumer = "{settings.consumer}"\n'
        "[http]\nenabled = false\n"
    )
    reader = Reader(url)
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(BIN / "posmon"), "collector", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: reader.count() >= len(payloads), timeout, "every message stored")
        first, last = reader.span()
    finally:
        code = stop_process(process)
        reader.close()
    if code not in (0, None):
        raise RuntimeError(f"collector exited {code}:\n{log.read_text(errors='replace')[-2000:]}")
    return len(payloads) / max((last - first).total_seconds(), 1e-9)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--bare-consumer":
        return bare_consumer_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000, help="transactions (20000)")
    parser.add_argument(
        "--databases", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite"]
    )
    parser.add_argument("--rounds", type=int, default=1, help="runs of each row (1)")
    parser.add_argument("--timeout", type=float, default=600, help="per step, seconds (600)")
    parser.add_argument(
        "--batch-size", type=int, default=BATCH, help=f"messages per fetch, both ({BATCH})"
    )
    args = parser.parse_args(argv)
    quiet_logging()
    admin = os.environ.get("POSMON_TEST_POSTGRES", POSTGRES_ADMIN_DEFAULT)
    print(f"machine: {machine()}")
    print(
        f"{args.messages:,} transactions per row, published over MQTT QoS 1 to a 3-node "
        f"NATS cluster (JetStream R3), consumed as a backlog in fetches of {args.batch_size}"
    )
    payloads = make_payloads(args.messages)
    rows = []
    ratios = []
    with workspace() as work:
        cluster = NatsCluster(work / "nats", 3)
        cluster.start()
        try:
            for kind in args.databases:
                for _ in range(args.rounds):
                    bare, published = bare_run(
                        cluster, work, payloads, args.timeout, batch=args.batch_size
                    )
                    with database(kind, work, admin) as url:
                        collector = collector_run(
                            cluster, work, url, payloads, args.timeout, batch=args.batch_size
                        )
                    ratio = collector / bare
                    ratios.append(ratio)
                    rows.append((kind, published, bare, collector, f"{ratio:.2f}"))
                    print(
                        f"  {kind}: publish {published:,.0f}/s, bare {bare:,.0f}/s, "
                        f"collector {collector:,.0f}/s, ratio {ratio:.2f}",
                        flush=True,
                    )
        finally:
            cluster.stop()
    print()
    print(
        table(
            ["database", "MQTT publish msgs/s", "bare nats-py msgs/s", "collector msgs/s", "ratio"],
            rows,
        )
    )
    met = min(ratios) >= TARGET
    print(f"\ntarget: collector >= {TARGET} x bare nats-py consumer")
    print("target met" if met else "target NOT met")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
