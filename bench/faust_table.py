"""Can the window stage be a Faust agent with a Faust table? Pane records per second, side by side.

The window stage reads one record per changed pane per flush (up to ~16,000 records/s at 1,000
live keys on 4 partitions). This puts the same backlog of pane records on a fresh topic and
measures, in one run:
  1. bulk: the window stage's own path (aiokafka getmany, `PaneSums` validation,
     `PaneStore.restore`), as streaming/windows.py does it;
  2. faust-table: a Faust agent that stores every record in a Faust table (memory store, changelog
     on Kafka), one event at a time, the way a Faust window stage would hold pane state;
  3. faust-table-batched: the same agent taking events in batches of 1,000 (`take_events`; the
     table then needs `use_partitioner`, since a batch has no current event);
  4. faust-rocksdict: variant 2 with the RocksDB store through rocksdict.
Prints records/s for each and its ratio to the bulk path. Needs the local broker.

    python -m bench.faust_table --records 20000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from rich.console import Console
from rich.table import Table

from contracts.aggregates import AggregateKey, PaneRecordKey, PaneSums
from core import kafka
from core.settings import Settings

console = Console()
TARGET_RECORDS_S = 16_000  # 1,000 live keys on 4 partitions (issue 9)


def pane_records(n: int, keys: int = 1000, partitions: int = 4) -> list[tuple[bytes, bytes]]:
    t0 = int(time.time()) // 10 * 10 - 600
    out = []
    for i in range(n):
        k = AggregateKey(f"tenant-{i % 7}", f"svc-{i % keys}", "us-east-1", "H100-80GB", "")
        key = PaneRecordKey(i % partitions, k, t0 + 10 * (i // keys))
        value = PaneSums(spend_usd=0.02 * (i % 5 + 1), gpu_seconds=80.0, util_seconds=40.0, idle_usd=0.01,
                         events=8, tokens=1000, requests=4, last_offset=i, watermark=t0 + 10 * (i // keys),
                         every_version_upto=-1)
        out.append((key.encode().encode(), value.model_dump_json().encode()))
    return out


async def produce(settings: Settings, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    from aiokafka.admin import NewTopic

    admin = kafka.admin(settings)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 4, 1)])
    finally:
        await admin.close()
    p = kafka.producer(settings, linger_ms=20, max_batch_size=1 << 20)
    await p.start()
    try:
        futures = [await p.send(topic, key=k, value=v) for k, v in records]
        await asyncio.gather(*futures)
    finally:
        await p.stop()


async def bulk_rate(settings: Settings, topic: str, n: int) -> float:
    """The window stage's path: read, validate, restore into a PaneStore."""
    from aiokafka import TopicPartition

    from streaming.panes import PaneStore, WindowSpec

    store = PaneStore(WindowSpec(60, 10, 10**9), lambda e: (1.0, False))
    c = kafka.consumer(settings=settings, group_id=None)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(4)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        seen, t0 = 0, None
        while seen < n:
            batches = await c.getmany(timeout_ms=1000, max_records=20000)
            if t0 is None and batches:
                t0 = time.perf_counter()
            for records in batches.values():
                for r in records:
                    store.restore(PaneRecordKey.decode(r.key.decode()), PaneSums.model_validate_json(r.value))
                    seen += 1
        return n / (time.perf_counter() - t0)
    finally:
        await kafka.stop_consumer(c)


def faust_rate(settings: Settings, topic: str, n: int, variant: str, timeout_s: float) -> tuple[float, int]:
    """Run the Faust variant in its own process; returns (records/s, records processed)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        proc = subprocess.Popen([sys.executable, "-m", "bench.faust_table", "--role", variant, "--topic", topic,
                                 "--records", str(n), "--out", str(out), "--data-dir", tmp,
                                 "--timeout-s", str(timeout_s), "--bootstrap", settings.kafka_bootstrap],
                                stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / "faust.log", "wb"))
        try:
            proc.wait(timeout_s + 90)
        except subprocess.TimeoutExpired:
            proc.kill()
        if not out.exists():
            raise RuntimeError(f"faust variant {variant} gave no result:\n" + (Path(tmp) / "faust.log").read_text()[-3000:])
        result = json.loads(out.read_text())
        return result["rate"], result["processed"]


def run_faust_variant(args) -> None:
    """The child process: a Faust app whose agent puts every pane record into a table."""
    import faust

    store = "rocksdb://" if args.role == "faust-rocksdict" else "memory://"
    app = faust.App(f"bench-table-{uuid.uuid4().hex[:8]}", broker=f"kafka://{args.bootstrap}", store=store,
                    datadir=args.data_dir, value_serializer="raw", key_serializer="raw", topic_partitions=4,
                    web_enabled=False, producer_linger_ms=5, logging_config=None,
                    table_rocksdb_use_rocksdict=True if args.role == "faust-rocksdict" else None)
    topic = app.topic(args.topic, key_type=bytes, value_type=bytes, value_serializer="raw")
    # take_events hands over a batch with no current event, and a table written outside an event
    # must pick its changelog partition by the key's partitioner (use_partitioner).
    table = app.Table("panes", default=None, partitions=4, key_type=bytes, value_type=bytes,
                      use_partitioner=args.role == "faust-table-batched")
    state = {"n": 0, "t0": None}

    def done():
        rate = state["n"] / (time.perf_counter() - state["t0"]) if state["t0"] else 0.0
        Path(args.out).write_text(json.dumps({"rate": rate, "processed": state["n"]}))
        os.kill(os.getpid(), signal.SIGTERM)

    def count(k: int) -> None:
        if state["t0"] is None:
            state["t0"] = time.perf_counter()
        state["n"] += k
        if state["n"] >= args.records or time.perf_counter() - state["t0"] > args.timeout_s:
            done()

    if args.role == "faust-table-batched":
        @app.agent(topic)
        async def fold(stream):
            async for events in stream.take_events(1000, within=0.2):
                for event in events:
                    PaneSums.model_validate_json(event.value)
                    table[event.key] = event.value
                count(len(events))
    else:
        @app.agent(topic)
        async def fold(stream):
            async for event in stream.events():
                PaneSums.model_validate_json(event.value)
                table[event.key] = event.value
                count(1)

    from faust.worker import Worker

    Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--timeout-s", type=float, default=40.0, help="a Faust variant stops after this long")
    ap.add_argument("--role", default="main")
    ap.add_argument("--topic"), ap.add_argument("--out"), ap.add_argument("--data-dir"), ap.add_argument("--bootstrap")
    args = ap.parse_args()
    if args.role != "main":
        return run_faust_variant(args)
    settings = Settings()
    topic = f"bench-panes-{uuid.uuid4().hex[:8]}"
    with console.status(f"producing {args.records} pane records ..."):
        asyncio.run(produce(settings, topic, pane_records(args.records)))
    rows = []
    with console.status("bulk (the window stage's path) ..."):
        bulk = asyncio.run(bulk_rate(settings, topic, args.records))
    rows.append(("bulk (streaming/windows.py)", bulk, args.records))
    for variant in ("faust-table", "faust-table-batched", "faust-rocksdict"):
        with console.status(f"{variant} ..."):
            rate, processed = faust_rate(settings, topic, args.records, variant, args.timeout_s)
        rows.append((variant, rate, processed))
    t = Table(title=f"pane records/s, {args.records} records, target {TARGET_RECORDS_S:,}/s")
    for col in ("path", "records/s", "processed", "vs bulk", "keeps up"):
        t.add_column(col)
    for name, rate, processed in rows:
        t.add_row(name, f"{rate:,.0f}", str(processed), f"{rate / bulk:.3f}", "yes" if rate >= TARGET_RECORDS_S else "no")
    console.print(t)


if __name__ == "__main__":
    main()
