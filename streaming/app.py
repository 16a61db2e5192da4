"""The Faust worker: validates and meters usage events, folds them into per-step panes
(streaming/panes.py), persists changed panes to the compacted `cost.panes` topic before the source
messages are acknowledged, and emits coalesced hopping-window aggregates to `cost.aggregates`.

Per-message work in Faust is the cost to beat (a do-nothing agent manages ~12.8k messages/s on two
cores), so the agent takes messages in batches (`take_events`) and does per-event work in plain
Python; Faust acknowledges a batch only after its body, i.e. after the pane state is durable."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib

import faust
import mode

from core.kafka import consumer as kafka_consumer
from core.kafka import read_to_end, stop_consumer
from core.pricing import default_catalog
from core.settings import Settings, get_settings
from contracts.events import UsageEvent, decode_billing, decode_usage
from streaming.panes import PaneStore, WindowSpec, parse_pane_record_key
from streaming.alerts import AlertEvaluator, follow_rules

log = logging.getLogger("gpucost.worker")


class Metering:
    """Prices usage with the catalog (shipped rows plus the price overrides stored through the
    API); memoised per (cloud, region, instance_type, gpu_model), reset when the catalog changes."""

    def __init__(self):
        self.catalog = default_catalog()
        self._cache: dict[tuple[str, str, str, str], tuple[float, bool]] = {}

    def __call__(self, ev: UsageEvent) -> tuple[float, bool]:
        k = (ev.cloud, ev.region, ev.instance_type, ev.gpu_model)
        hit = self._cache.get(k)
        if hit is None:
            q = self.catalog.gpu_hour_price(*k)  # raises UnknownGPUModel
            hit = self._cache[k] = (q.usd_per_gpu_hour, q.fallback)
        return hit

    async def refresh(self, settings: Settings) -> None:
        """Pick up price overrides without a restart (read off the event loop)."""
        from core.pricing.effective import effective_catalog

        catalog = await asyncio.get_running_loop().run_in_executor(None, effective_catalog, settings)
        if catalog is not self.catalog:
            self.catalog = catalog
            self._cache = {}


class WorkerStats:
    def __init__(self):
        self.messages = 0
        self.events = 0
        self.deadletters: dict[str, int] = {}
        self.started = time.time()

    def dead(self, reason: str) -> None:
        kind = reason.split(":", 1)[0]
        self.deadletters[kind] = self.deadletters.get(kind, 0) + 1


def create_app(settings: Settings | None = None) -> faust.App:
    settings = settings or get_settings()
    app = faust.App(
        f"{settings.topic_prefix}{settings.worker_id}",
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=settings.topic_partitions,
        topic_allow_declare=True,
        producer_acks=-1,
        producer_linger_ms=5,
        broker_commit_every=10_000,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=8192,
        consumer_max_fetch_size=4 * 1024 * 1024,
        stream_wait_empty=False,
        web_enabled=False,
        logging_config=None,
    )
    spec = WindowSpec(settings.window_size_s, settings.window_step_s, settings.allowed_lateness_s)
    metering = Metering()
    store = PaneStore(spec, metering, expected_partitions=frozenset(range(settings.topic_partitions)))
    stats = WorkerStats()
    app.gpucost_store = store  # for the benchmark and for debugging
    app.gpucost_stats = stats

    billing_topic = app.topic(settings.billing_topic, key_type=bytes, value_type=bytes, value_serializer="raw")
    deadletter_topic = app.topic(settings.deadletter_topic, key_type=bytes, value_type=bytes, value_serializer="raw")
    panes_topic = app.topic(settings.panes_topic, key_type=bytes, value_type=bytes, value_serializer="raw")
    billed_topic = app.topic(settings.billed_topic, key_type=bytes, value_type=bytes, value_serializer="raw")
    aggregates_topic = app.topic(settings.aggregates_topic, key_type=bytes, value_type=bytes, value_serializer="raw")
    alerts_topic = app.topic(settings.alerts_topic, key_type=bytes, value_type=bytes, value_serializer="raw")
    evaluator = AlertEvaluator(settings.window_size_s, settings.window_step_s, settings.allowed_lateness_s)
    app.gpucost_alerts = evaluator

    async def publish_alerts(alerts: list[dict]) -> None:
        futures = [await alerts_topic.send(key=a["fingerprint"].encode(), value=json.dumps(a).encode()) for a in alerts]
        for fut in futures:  # durable before the evaluator moves on (streaming/alerts.py)
            await fut

    @app.task
    async def alert_rules():
        await follow_rules(settings, evaluator, publish_alerts)  # cost.rules, changes without restart

    def dead_letter(reason: str, raw: bytes, message):
        """Send a bad event on with its raw bytes and why (an awaitable giving a delivery future)."""
        stats.dead(reason)
        headers = {
            "reason": reason.encode(),
            "source_topic": message.topic.encode(),
            "source_partition": str(message.partition).encode(),
            "source_offset": str(message.offset).encode(),
        }
        return deadletter_topic.send(key=message.key, value=raw, headers=headers)

    def pane_partition(key) -> int:
        """Pane records are partitioned by tenant, so one window-stage member holds every pane of a
        key and every key of a tenant (tenant-wide alert rules see all of it); crc32 is the same
        on every worker, unlike hash()."""
        return zlib.crc32(key[0].encode()) % settings.topic_partitions

    async def restore_panes(partitions: set[int]) -> None:
        """Rebuild the panes of these source partitions from `cost.panes` before any of their
        messages is folded in (records of other partitions are skipped)."""
        def apply(r):
            if parse_pane_record_key(r.key.decode())[0] in partitions:
                store.restore(r.key.decode(), json.loads(r.value) if r.value is not None else None,
                              mark_windows=False)

        c = kafka_consumer(settings=settings, group_id=None)
        await c.start()
        try:
            n = await read_to_end(c, settings.panes_topic, apply)
            log.info("stage 1: read %d pane records for source partitions %s, watermark %.3f",
                     n, sorted(partitions), store.watermark)
        finally:
            await stop_consumer(c)

    async def persist_dirty() -> list:
        futures = []
        for record_key, value, key in store.take_dirty():
            futures.append(await panes_topic.send(key=record_key.encode(), value=json.dumps(value).encode(),
                                                  partition=pane_partition(key)))
        for record_key, key in store.evict_closed():
            futures.append(await panes_topic.send(key=record_key.encode(), value=None, partition=pane_partition(key)))
        return futures

    def fold(records, pending: list) -> None:
        """Per-event work, in plain Python: decode, validate, meter, fold into panes."""
        add = store.add
        for r in records:
            stats.messages += 1
            good, bad = decode_usage(r.value if r.value is not None else b"")
            for reject in bad:
                pending.append(dead_letter(reject.reason, reject.raw, r))
            if not good:
                continue
            rejected = add(good, r.partition, r.offset, advance=False)
            for rej in rejected:
                pending.append(dead_letter(rej.reason, rej.event.model_dump_json(exclude_none=True).encode(), r))
            stats.events += len(good) - len(rejected)

    class UsageMeter(mode.Service):
        """The hot path. Faust spends most of its time per message (a do-nothing agent reads
        ~12.8k messages/s on two cores), so usage is consumed in bulk by a consumer-group member
        of our own inside the Faust app; everything it writes goes through the app's producer.
        Offsets are committed only after the pane records and dead letters of the batch are
        durable, so a crash replays, and the pane offsets make the replay count once."""

        async def on_start(self) -> None:
            from aiokafka import ConsumerRebalanceListener

            service = self

            class Rebalance(ConsumerRebalanceListener):
                async def on_partitions_revoked(self, revoked):
                    async with service.batch_lock:  # let the batch in flight finish and commit
                        store.drop_partitions({tp.partition for tp in revoked})

                async def on_partitions_assigned(self, assigned):
                    async with service.batch_lock:
                        store.expected_partitions = frozenset(tp.partition for tp in assigned)
                        await restore_panes({tp.partition for tp in assigned})

            self.batch_lock = asyncio.Lock()
            await metering.refresh(settings)  # stored price overrides apply from the first event
            self.consumer = kafka_consumer(
                settings=settings, group_id=f"{settings.topic_prefix}{settings.worker_id}-usage",
                enable_auto_commit=False, auto_offset_reset="earliest",
                max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20)
            self.consumer.subscribe([settings.usage_topic], listener=Rebalance())
            await self.consumer.start()

        async def on_stop(self) -> None:
            await stop_consumer(self.consumer)

        @mode.Service.task
        async def _run(self) -> None:
            c = self.consumer
            while not self.should_stop:
                batches = await c.getmany(timeout_ms=int(settings.flush_interval_s * 1000),
                                          max_records=settings.flush_max_events)
                if not batches:
                    continue
                async with self.batch_lock:
                    pending: list = []
                    offsets = {}
                    for tp, records in batches.items():
                        fold(records, pending)
                        offsets[tp] = records[-1].offset + 1
                    store.advance_watermark(tp.partition for tp in batches)
                    futures = [await f for f in pending] + await persist_dirty()
                    for fut in futures:
                        await fut
                    await c.commit(offsets)

    app.service(UsageMeter)

    class WindowStage(mode.Service):
        """Stage 2: a consumer-group member on `cost.panes` (partitioned by aggregate key) that
        holds the panes of its keys from every worker and sums their windows. Its state is the
        compacted topic itself: on each assignment it reads its partitions from the beginning,
        emitting nothing until it has caught up, so it never publishes a half-rebuilt window."""

        async def on_start(self) -> None:
            from aiokafka import ConsumerRebalanceListener

            stage = window_stage["current"] = self
            self.combined = PaneStore(spec, metering)
            self.caught_up_at: dict | None = None

            class Rebuild(ConsumerRebalanceListener):
                async def on_partitions_revoked(self, revoked):
                    pass

                async def on_partitions_assigned(self, assigned):
                    stage.combined = PaneStore(spec, metering)
                    stage.caught_up_at = await stage.consumer.end_offsets(list(assigned)) if assigned else {}
                    if assigned:
                        await stage.consumer.seek_to_beginning(*assigned)

            self.consumer = kafka_consumer(
                settings=settings, group_id=f"{settings.topic_prefix}{settings.worker_id}-windows",
                enable_auto_commit=False, auto_offset_reset="earliest")
            self.consumer.subscribe([settings.panes_topic], listener=Rebuild())
            await self.consumer.start()

        async def on_stop(self) -> None:
            await stop_consumer(self.consumer)

        @property
        def ready(self) -> bool:
            return self.caught_up_at is not None and not self.caught_up_at

        @mode.Service.task
        async def _run(self) -> None:
            c = self.consumer
            while not self.should_stop:
                batches = await c.getmany(timeout_ms=200, max_records=20000)
                combined = self.combined
                for records in batches.values():
                    for r in records:
                        combined.restore(r.key.decode(), json.loads(r.value) if r.value is not None else None)
                if self.caught_up_at:
                    for tp in list(self.caught_up_at):
                        if await c.position(tp) >= self.caught_up_at[tp]:
                            del self.caught_up_at[tp]
                    if not self.caught_up_at:
                        combined.forget_closed_pending()

    window_stage: dict[str, WindowStage] = {}  # the running instance, for the emit timer
    app.service(WindowStage)

    @app.agent(billing_topic, name="check-billing")
    async def check_billing(stream):
        """Billing line items are few (one per instance and hour): a plain Faust agent validates
        them, forwards the good ones to `cost.billed` keyed by line item (a re-sent or replayed
        item overwrites itself downstream) and dead-letters the rest."""
        async for events in stream.take_events(1000, within=settings.flush_interval_s):
            pending = []
            for event in events:
                message = event.message
                good, bad = decode_billing(message.value if message.value is not None else b"")
                for reject in bad:
                    pending.append(await dead_letter(reject.reason, reject.raw, message))
                for item in good:
                    line_key = f"{item.cloud}/{item.instance_id}/{item.period_start:.0f}/{item.source}"
                    pending.append(await billed_topic.send(key=line_key.encode(), value=item.model_dump_json().encode()))
            for fut in pending:
                await fut

    @app.timer(interval=settings.emit_interval_s)
    async def emit_aggregates():
        stage = window_stage.get("current")
        if stage is None or not stage.ready:
            return
        records = stage.combined.take_pending_windows()
        for rec in records:
            key = "|".join((rec["tenant"], rec["service"], rec["region"], rec["gpu_model"])).encode()
            await aggregates_topic.send(key=key, value=json.dumps(rec).encode())
        await publish_alerts(evaluator.observe(records, stage.combined.watermark))

    @app.timer(interval=30.0)
    async def refresh_prices():
        await metering.refresh(settings)

    @app.timer(interval=30.0)
    async def report_stats():
        log.info("messages=%d events=%d late=%d replay-skipped=%d deadletters=%s keys=%d",
                 stats.messages, stats.events, store.late_events, store.replayed_events,
                 stats.deadletters, len(store.panes))

    return app


def run_worker(settings: Settings | None = None, loglevel: str = "warning") -> None:
    """Run the worker in this process until SIGINT/SIGTERM."""
    from faust.worker import Worker

    from core.kafka import ensure_topics

    import gc

    settings = settings or get_settings()
    asyncio.run(ensure_topics(settings))
    app = create_app(settings)
    # The hot path allocates many short-lived objects and no cycles worth collecting often:
    # move what start-up built out of the collector's way and collect young objects less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    logging.basicConfig(level=getattr(logging, loglevel.upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("gpucost").setLevel(logging.INFO)
    # aiokafka logs every send at debug level; building those records cost ~3 % of the hot path.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
