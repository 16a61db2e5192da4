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
import time
import zlib

import mode
from aiokafka import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from contracts.aggregates import PaneRecordKey, PaneSums
from contracts.events import UsageRow, decode_usage, decode_usage_rows, max_future_skew_s
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
        self.in_flight: asyncio.Future | None = None  # the last batch's delivery and offset commit

    async def on_start(self) -> None:
        meter = self

        class Rebalance(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked):
                async with meter.batch_lock:  # let the batch in flight finish and commit
                    await meter.settle()
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
        try:
            await self.settle()
        except Exception as exc:  # stopping anyway: the batch is replayed and skipped by offset
            log.warning("meter: the last batch was not committed: %r", exc)
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
        """Per-event work for one partition's batch of messages, in plain Python: decode and
        validate (msgspec's fast path for a message the contract accepts whole, else the contract's
        own `decode_usage`, which keeps the good events of a message and rejects the bad ones with
        their reasons), meter and fold into panes (PaneStore.fold_messages)."""
        if not records:
            return
        fast = decode_usage_rows
        ts_limit = time.time() + max_future_skew_s()
        messages = []
        decode_rejects: dict[int, list] = {}  # message position -> its bad events (slow path only)
        n_good = 0
        for r in records:
            raw = r.value
            rows = fast(raw, ts_limit) if raw is not None else None
            if rows is None:
                rows, bad = decode_usage(raw if raw is not None else b"")
                if bad:
                    decode_rejects[len(messages)] = bad
            n_good += len(rows)
            messages.append((r.offset, rows))
        rejected = self.store.fold_messages(records[0].partition, messages)
        self.stats.messages += len(records)
        self.stats.events += n_good - len(rejected)
        if decode_rejects or rejected:
            self._dead_letter(records, messages, decode_rejects, rejected, pending)

    def _dead_letter(self, records, messages, decode_rejects: dict, rejected: list, pending: list) -> None:
        """Bad events of a batch onto the dead-letter topic, message by message in offset order:
        a message's undecodable or invalid events first, then those the fold could not count.
        An event the fold rejects is sent as the contract's JSON of it (extra fields kept)."""
        dead = self.dead_letters.send
        fold_rejects: dict[int, list] = {}
        for position, rej in rejected:
            fold_rejects.setdefault(position, []).append(rej)
        for position in sorted(decode_rejects.keys() | fold_rejects.keys()):
            r = records[position]
            for reject in decode_rejects.get(position, ()):
                pending.append(dead(reject.reason, reject.raw, r))
            contract_events = None
            for rej in fold_rejects.get(position, ()):
                ev = rej.event
                if isinstance(ev, UsageRow):  # fast path: the same event as the contract decodes it
                    if contract_events is None:
                        contract_events = decode_usage(r.value)[0]
                    ev = contract_events[next(i for i, row in enumerate(messages[position][1]) if row is ev)]
                pending.append(dead(rej.reason, ev.model_dump_json(exclude_none=True).encode(), r))

    async def persist_dirty(self) -> list:
        """Send every changed pane's record and every closed pane's tombstone; returns the
        delivery futures. Records go out as record batches, one per pane partition (or more when
        one fills), through the Faust app's producer: a future per batch instead of one per record
        and none of Faust's per-message bookkeeping (a Faust send cost ~4x the aiokafka send, and
        a pane record goes out for about every 17th event at 8 events a message: bench.stream).
        Order within a partition is the order of the calls, so a pane's record precedes its
        tombstone."""
        producer = await self._kafka_producer()
        topic = self.settings.panes_topic
        n = self.settings.topic_partitions
        by_partition: dict[int, list] = {}
        for tenant, key, value in self.store.take_dirty_encoded():
            by_partition.setdefault(pane_partition(tenant, n), []).append((key, value))
        for record_key in self.store.evict_closed():
            by_partition.setdefault(pane_partition(record_key.key.tenant, n), []).append(
                (record_key.encode().encode(), None))
        futures = []
        for partition, records in by_partition.items():
            batch = producer.create_batch()
            for key, value in records:
                if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start another
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)  # an empty batch takes any record
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        return futures

    async def _kafka_producer(self):
        """The aiokafka producer under the Faust app's (Faust's producer has no batch API)."""
        return (await self.panes_topic.app.maybe_start_producer())._ensure_producer()

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
                # Offsets are committed once this batch's records are durable, in the background:
                # the next batch is fetched and folded meanwhile (its commit waits for this one).
                await self.settle()
                self.in_flight = asyncio.ensure_future(self._commit_when_durable(futures, offsets))

    async def _commit_when_durable(self, futures: list, offsets: dict) -> None:
        for fut in futures:
            await fut
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:
            # A rebalance began while the commit was in flight (UnknownMemberId, CommitFailed):
            # the batch's pane records are durable, so whoever owns these partitions next replays
            # the batch from the last committed offset and skips every event by its offset.
            log.warning("meter: offsets of the last batch not committed (%s); the batch will be "
                        "replayed and skipped by offset", exc.__class__.__name__)

    async def settle(self) -> None:
        """Wait until the last batch's pane records and dead letters are durable and its offsets
        committed (before the next commit, a revocation, a stop)."""
        in_flight, self.in_flight = self.in_flight, None
        if in_flight is not None:
            await in_flight
