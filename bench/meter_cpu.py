"""The meter's CPU per event without Kafka: the messages of `bench.stream` as consumer records,
run through the real `UsageMeter.fold` and `persist_dirty` (a topic stub that only counts sends),
next to a bare `json.loads` of the same messages. Splits the per-event time into decode (+
validation), fold into panes, and pane records (build + send calls), so a change to the hot path
can be measured on a noisy box in seconds (process CPU time, so other work on the box counts
less; read ratios of parts measured in one process).

    python -m bench.meter_cpu --events 200000 --batch 8
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import time
import zlib
from collections import namedtuple

from aiokafka.producer.message_accumulator import BatchBuilder

from bench.stream import make_messages
from contracts.events import decode_usage
from core.settings import Settings
from streaming.deadletter import DeadLetters, WorkerStats
from streaming.meter import UsageMeter
from streaming.panes import PaneStore, WindowSpec
from streaming.prices import Metering

Record = namedtuple("Record", "topic partition offset key value")


class StubProducer:
    """Builds real record batches (aiokafka's C builder) and counts the records; sends nothing."""

    def __init__(self, done):
        self.sent = 0
        self.done = done

    def create_batch(self):
        return BatchBuilder(16384, 0)

    async def send_batch(self, batch, topic, *, partition):
        self.sent += batch.record_count()
        return self.done


class StubTopic:
    """A Faust topic that sends nothing (the meter's dead letters; the pane records' producer)."""

    def __init__(self):
        self.sent = 0
        loop = asyncio.get_event_loop()
        self.done = loop.create_future()
        self.done.set_result(None)
        self.producer = StubProducer(self.done)
        self.app = self

    async def maybe_start_producer(self):
        return self

    def _ensure_producer(self):
        return self.producer

    async def send(self, key=None, value=None, partition=None, headers=None):
        self.sent += 1
        return self.done


def records(n_events: int, batch: int, partitions: int = 4, per_fetch: int = 3000) -> list[dict]:
    """getmany-like batches: {partition: [records]} with up to per_fetch records per partition."""
    by_p: dict[int, list] = {p: [] for p in range(partitions)}
    for key, value, _ in make_messages(n_events, batch):
        p = zlib.crc32(key) % partitions
        by_p[p].append(Record("gpu.usage", p, len(by_p[p]), key, value))
    out, i = [], 0
    while any(i < len(rs) for rs in by_p.values()):
        out.append({p: rs[i:i + per_fetch] for p, rs in by_p.items() if rs[i:i + per_fetch]})
        i += per_fetch
    return out


async def one_round(batches, n_events: int) -> dict[str, float]:
    settings = Settings(topic_prefix="benchcpu.")
    stats = WorkerStats()
    topic = StubTopic()
    store = PaneStore(WindowSpec(60, 10, 120), Metering(), expected_partitions=frozenset(range(4)))
    meter = UsageMeter(settings, store, None, topic, DeadLetters(StubTopic(), stats), stats)
    t = {"json.loads (floor)": 0.0, "decode_usage only": 0.0, "fold (decode + panes)": 0.0,
         "pane records (build + send)": 0.0}
    loads = json.loads
    for b in batches:
        t0 = time.process_time()
        for rs in b.values():
            for r in rs:
                loads(r.value)
        t1 = time.process_time()
        for rs in b.values():
            for r in rs:
                decode_usage(r.value)
        t2 = time.process_time()
        pending: list = []
        for rs in b.values():
            meter.fold(rs, pending)
        store.advance_watermark(b)
        t3 = time.process_time()
        await meter.persist_dirty()
        t4 = time.process_time()
        t["json.loads (floor)"] += t1 - t0
        t["decode_usage only"] += t2 - t1
        t["fold (decode + panes)"] += t3 - t2
        t["pane records (build + send)"] += t4 - t3
    assert stats.events == n_events, (stats.events, n_events)
    out = {k: v / n_events * 1e6 for k, v in t.items()}
    out["pane records per 1000 events"] = (topic.sent + topic.producer.sent) / n_events * 1000
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    batches = records(args.events, args.batch)
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)  # as the worker does
    rounds = [asyncio.run(one_round(batches, args.events)) for _ in range(args.rounds)]
    print(f"{args.events} events, {args.batch} per message, median of {args.rounds} rounds (min..max), µs/event:")
    for k in rounds[0]:
        vals = [r[k] for r in rounds]
        print(f"  {k:32s} {statistics.median(vals):7.3f}  ({min(vals):.3f}..{max(vals):.3f})")


if __name__ == "__main__":
    main()
