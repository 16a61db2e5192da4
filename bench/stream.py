"""Stream worker throughput next to the raw read rate, side by side in one run.

Produces N usage events (batched per host like a real agent, or one per message) onto a fresh
topic, then measures (1) a plain aiokafka consumer reading and JSON-decoding every message of that
topic, and (2) the gpucost Faust worker validating, metering and aggregating the same backlog
(from its first offset commit to its last, read from the consumer group's committed offsets).
Prints events/s for both and the ratio (the goal's measure), and the CPU time each spent per event
(the reader's process, the worker's process between the same two commits): on a busy machine the
wall-clock rates move with other work, the CPU times much less, so their ratio says what changed
in the code. Needs the local broker (`gpucost kafka start`).

    python -m bench.stream --events 400000 --batch 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from core import kafka
from core.settings import Settings

console = Console()
ROOT = Path(__file__).resolve().parent.parent


def make_messages(n_events: int, batch: int, seed: int = 1) -> list[tuple[bytes, bytes, int]]:
    """(key, value, events) per message: hosts of `batch` GPUs reporting every 10 s, recent ts."""
    rng = random.Random(seed)
    hosts = max(1, n_events // batch // 60)  # ~60 intervals per host
    intervals = -(-n_events // (hosts * batch))
    t0 = time.time() - intervals * 10 - 30
    tenants = ["acme", "globex", "initech", "umbrella"]
    out, made = [], 0
    for i in range(intervals):
        ts = t0 + i * 10
        for h in range(hosts):
            if made >= n_events:
                break
            k = min(batch, n_events - made)
            evs = [{"schema_version": 1, "ts": ts, "tenant": tenants[h % 4], "service": f"svc-{h % 7}",
                    "cloud": "aws", "region": "us-east-1", "instance_type": "p5.48xlarge", "gpu_model": "H100-80GB",
                    "host": f"host-{h}", "gpu_index": g, "interval_s": 10.0, "util": round(rng.random(), 3),
                    "mem_used_gb": 40.0, "mem_total_gb": 80.0, "power_w": 400.0, "tokens": 1000}
                   for g in range(k)]
            value = json.dumps(evs[0] if batch == 1 else evs).encode()
            key = f"host-{h}/0".encode() if batch == 1 else f"host-{h}".encode()
            out.append((key, value, k))
            made += k
    return out


async def produce(settings: Settings, messages) -> None:
    await kafka.ensure_topics(settings)
    p = kafka.producer(settings, linger_ms=20, enable_idempotence=False, acks=1)
    await p.start()
    try:
        futs = []
        for key, value, _ in messages:
            futs.append(await p.send(settings.usage_topic, value=value, key=key))
            if len(futs) >= 5000:
                await asyncio.gather(*futs)
                futs.clear()
        await asyncio.gather(*futs)
    finally:
        await p.stop()


async def raw_read(settings: Settings, total_messages: int) -> tuple[float, int, float]:
    """Seconds for a plain aiokafka consumer to read and json-decode every message; events seen;
    CPU seconds this process spent doing it."""
    c = kafka.consumer(settings.usage_topic, settings=settings, group_id=None, auto_offset_reset="earliest",
                       max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20)
    await c.start()
    try:
        seen = events = 0
        start = None
        while seen < total_messages:
            batches = await c.getmany(timeout_ms=1000, max_records=10000)
            if start is None and batches:
                start = time.perf_counter()
                cpu0 = time.process_time()
            for records in batches.values():
                for r in records:
                    doc = json.loads(r.value)
                    events += len(doc) if isinstance(doc, list) else 1
            seen += sum(len(rs) for rs in batches.values())
        return time.perf_counter() - start, events, time.process_time() - cpu0
    finally:
        await kafka.stop_consumer(c)


async def watch_worker(settings: Settings, group: str, total_msgs: int, proc, progress, task):
    """Poll the worker group's committed offsets (one long-lived consumer, 4 polls a second so the
    watcher takes little CPU from the worker); returns (time, offsets, worker CPU seconds) at its
    first commit and (time, worker CPU seconds) when it committed the last message."""
    import psutil
    from aiokafka import TopicPartition

    def cpu() -> float:
        t = worker.cpu_times()
        return t.user + t.system

    worker = psutil.Process(proc.pid)
    c = kafka.consumer(settings=settings, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        tps = [TopicPartition(settings.usage_topic, p) for p in await kafka.partitions_of(c, settings.usage_topic)]
        first = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("the worker exited; see its log")
            done = 0
            for tp in tps:
                done += (await c.committed(tp)) or 0
            now = time.perf_counter()
            progress.update(task, completed=done)
            if done > 0 and first is None:
                first = (now, done, cpu())
            if done >= total_msgs:
                return first, (now, cpu())
            await asyncio.sleep(0.25)
        raise RuntimeError("the worker did not finish within 600 s")
    finally:
        await kafka.stop_consumer(c)


def worker_rate(settings: Settings, messages, env: dict) -> tuple[float, int, float]:
    """Run the real worker on the backlog; seconds and events between its first and last offset
    commit, and the worker's CPU seconds in between."""
    total_msgs = len(messages)
    events_per_msg = sum(m[2] for m in messages) / total_msgs
    group = f"{settings.topic_prefix}{settings.worker_id}-usage"
    log = open(env["GPUCOST_DATA_DIR"] + "/worker.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "gpucost.cli", "worker"], env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("worker", total=total_msgs)
            (t_first, done_first, cpu_first), (t_last, cpu_last) = asyncio.run(
                watch_worker(settings, group, total_msgs, proc, progress, task))
        return t_last - t_first, int((total_msgs - done_first) * events_per_msg), cpu_last - cpu_first
    finally:
        proc.terminate()
        proc.wait(20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--batch", type=int, default=8, help="events per message (a host's GPUs); 1 = one event a message")
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args()

    prefix = f"bench{uuid.uuid4().hex[:8]}."
    data_dir = Path(os.environ.get("TMPDIR", "/tmp")) / prefix.rstrip(".")
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GPUCOST_TOPIC_PREFIX": prefix, "GPUCOST_DATA_DIR": str(data_dir),
           "GPUCOST_AUTH_DISABLED": "true"}
    settings = Settings(topic_prefix=prefix, data_dir=data_dir)
    messages = make_messages(args.events, args.batch)
    with console.status(f"producing {args.events} events in {len(messages)} messages"):
        asyncio.run(produce(settings, messages))
    raw_s, raw_events, raw_cpu = asyncio.run(raw_read(settings, len(messages)))
    w_s, w_events, w_cpu = worker_rate(settings, messages, env)
    raw_rate, w_rate = raw_events / raw_s, w_events / w_s
    raw_us, w_us = raw_cpu / raw_events * 1e6, w_cpu / w_events * 1e6
    t = Table(title=f"stream throughput, {args.events} events, {args.batch} per message, {os.cpu_count()} cores")
    for col in ("reader", "events", "seconds", "events/s", "CPU µs/event"):
        t.add_column(col, justify="right")
    t.add_row("plain aiokafka read + json.loads", f"{raw_events}", f"{raw_s:.2f}", f"{raw_rate:,.0f}", f"{raw_us:.2f}")
    t.add_row("gpucost worker (validate, meter, aggregate, persist)", f"{w_events}", f"{w_s:.2f}", f"{w_rate:,.0f}",
              f"{w_us:.2f}")
    console.print(t)
    console.print(f"[bold]ratio worker / raw read: {w_rate / raw_rate:.2f}[/]  (goal >= 0.75, issue 9); "
                  f"by CPU time per event: {raw_us / w_us:.2f}")
    result = {"events": args.events, "batch": args.batch, "raw_events_per_s": raw_rate,
              "worker_events_per_s": w_rate, "ratio": w_rate / raw_rate, "cores": os.cpu_count(),
              "raw_cpu_us_per_event": raw_us, "worker_cpu_us_per_event": w_us, "cpu_ratio": raw_us / w_us,
              "load_average": os.getloadavg()[0]}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
