"""The meter, the worker's hot path: usage events in, pane records out.

In: `gpu.usage` (raw JSON, one event or a batch per message). Out: every changed pane's absolute
record on the compacted `cost.panes` (partitioned by tenant), bad or late events on
`gpu.deadletter`. Per event: decode and validate (contracts/events.py), price
(streaming/prices.py), fold into a pane (streaming/panes.py).

Faust spends most of its time per message (a do-nothing agent reads ~12.8k messages/s on two
cores), so usage is consumed in bulk by a consumer-group member of our own inside the Faust app;
everything it writes goes through the app's producer. Offsets are committed only after the pane
records and dead letters of the batch are durable, so a crash replays, and the offsets inside the
pane records make the replay count once."""

from __future__ import annotations

import asyncio
import logging
import zlib

import mode
from aiokafka import ConsumerRebalanceListener

from contracts.aggregates import PaneRecordKey, PaneSums
from contracts.events import decode_usage
from core.kafka import consumer as kafka_consumer
from core.kafka import read_to_end, stop_consumer
from core.settings import Settings
from streaming.deadletter import DeadLetters, WorkerStats
from streaming.panes import PaneStore
from streaming.prices import PriceFollower

log = logging.getLogger("gpucost.meter")


def pane_partition(tenant: str, partitions: int) -> int:
    """Pane records are partitioned by tenant, so one window-stage member holds every pane of a
    key and every key of a tenant (tenant-wide alert rules see all of it); crc32 is the same on
    every worker, unlike hash()."""
    return zlib.crc32(tenant.encode()) % partitions


class UsageMeter(mode.Service):
    def __init__(self, settings: Settings, store: PaneStore, prices: PriceFollower, panes_topic,
                 dead_letters: DeadLetters, stats: WorkerStats, **kwargs):
        super().__init__(**kwargs)
        self.settings = settings
        self.store = store
        self.prices = prices
        self.panes_topic = panes_topic
        self.dead_letters = dead_letters
        self.stats = stats
        self.batch_lock = asyncio.Lock()

    async def on_start(self) -> None:
        meter = self

        class Rebalance(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked):
                async with meter.batch_lock:  # let the batch in flight finish and commit
                    meter.store.drop_partitions({tp.partition for tp in revoked})

            async def on_partitions_assigned(self, assigned):
                async with meter.batch_lock:
                    meter.store.expected_partitions = frozenset(tp.partition for tp in assigned)
                    await meter.restore_panes({tp.partition for tp in assigned})

        s = self.settings
        await self.prices.load()  # stored price overrides apply from the first event
        self.add_future(self.prices.follow())
        self.consumer = kafka_consumer(
            settings=s, group_id=f"{s.topic_prefix}{s.worker_id}-usage",
            enable_auto_commit=False, auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20)
        self.consumer.subscribe([s.usage_topic], listener=Rebalance())
        await self.consumer.start()

    async def on_stop(self) -> None:
        await stop_consumer(self.consumer)
        await self.prices.stop()

    async def restore_panes(self, partitions: set[int]) -> None:
        """Rebuild the panes of these source partitions from `cost.panes` before any of their
        messages is folded in (records of other partitions are skipped)."""
        store = self.store

        def apply(r):
            key = PaneRecordKey.decode(r.key.decode())
            if key.partition in partitions:
                value = PaneSums.model_validate_json(r.value) if r.value is not None else None
                store.restore(key, value, mark_windows=False)

        c = kafka_consumer(settings=self.settings, group_id=None)
        await c.start()
        try:
            n = await read_to_end(c, self.settings.panes_topic, apply)
            log.info("meter: read %d pane records for source partitions %s, watermark %.3f",
                     n, sorted(partitions), store.watermark)
        finally:
            await stop_consumer(c)

    def fold(self, records, pending: list) -> None:
        """Per-event work, in plain Python: decode, validate, meter, fold into panes."""
        add = self.store.add
        dead = self.dead_letters.send
        stats = self.stats
        for r in records:
            stats.messages += 1
            good, bad = decode_usage(r.value if r.value is not None else b"")
            for reject in bad:
                pending.append(dead(reject.reason, reject.raw, r))
            if not good:
                continue
            rejected = add(good, r.partition, r.offset, advance=False)
            for rej in rejected:
                pending.append(dead(rej.reason, rej.event.model_dump_json(exclude_none=True).encode(), r))
            stats.events += len(good) - len(rejected)

    async def persist_dirty(self) -> list:
        """Send every changed pane's record and every closed pane's tombstone; returns the
        delivery futures."""
        send = self.panes_topic.send
        n = self.settings.topic_partitions
        futures = []
        for record_key, value in self.store.take_dirty():
            futures.append(await send(key=record_key.encode().encode(), value=value.model_dump_json().encode(),
                                      partition=pane_partition(record_key.key.tenant, n)))
        for record_key in self.store.evict_closed():
            futures.append(await send(key=record_key.encode().encode(), value=None,
                                      partition=pane_partition(record_key.key.tenant, n)))
        return futures

    @mode.Service.task
    async def _run(self) -> None:
        c = self.consumer
        s = self.settings
        while not self.should_stop:
            batches = await c.getmany(timeout_ms=int(s.flush_interval_s * 1000), max_records=s.flush_max_events)
            if not batches:
                continue
            async with self.batch_lock:
                pending: list = []
                offsets = {}
                for tp, records in batches.items():
                    self.fold(records, pending)
                    offsets[tp] = records[-1].offset + 1
                self.store.advance_watermark(tp.partition for tp in batches)
                futures = [await f for f in pending] + await self.persist_dirty()
                for fut in futures:
                    await fut
                await c.commit(offsets)
