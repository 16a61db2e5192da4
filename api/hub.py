"""The API's live core: reads `cost.aggregates` (and the dead-letter topic, to count it), persists
aggregate history in batches with its hourly and daily rollups, keeps the latest window per key for
snapshots, and fans records out to WebSocket subscribers. A slow client never slows the others:
each has its own coalescing queue (latest value per key wins) and a count of what it dropped.

Several API instances run side by side: each reads every partition of `cost.aggregates` with no
consumer group (assigned, from a short look-back) and fans out to its own clients, while
persistence is one consumer group shared by all instances, so each partition is stored by one of
them (the upserts keep a re-read or an overlap during a rebalance harmless)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from aiokafka.errors import KafkaError
from sqlalchemy import select

from api.auth import Principal
from contracts.aggregates import AlertEvent, WindowAggregate
from core.tables.history import AggregateRow, BilledLineItem
from core import kafka, rollups
from core.db import get_engine, session_scope
from core.settings import Settings

log = logging.getLogger("gpucost.api")

RETENTION_EVERY_S = 600.0  # history retention is a slow sweep; the settings say how long rows live


def agg_key(rec: dict) -> tuple:
    return (rec["tenant"], rec["service"], rec["region"], rec["gpu_model"], rec.get("model_version") or "")


@dataclass
class Subscription:
    channel: str
    filter: dict[str, str]

    def matches(self, rec: dict) -> bool:
        for k, v in self.filter.items():
            if rec.get(k) != v:
                return False
        return True


@dataclass(eq=False)  # identity semantics: clients live in a set
class Client:
    principal: Principal
    queue_max: int
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    pending: OrderedDict = field(default_factory=OrderedDict)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0   # updates replaced by a newer value of the same key before being sent
    overflow: int = 0  # keys evicted because the queue held queue_max distinct keys
    sent: int = 0

    def offer(self, coalesce_key: tuple, message: dict) -> None:
        if coalesce_key in self.pending:
            self.dropped += 1
            self.pending[coalesce_key] = message  # latest wins, keeps its place in line
        else:
            if len(self.pending) >= self.queue_max:
                self.pending.popitem(last=False)
                self.overflow += 1
            self.pending[coalesce_key] = message
        self.wakeup.set()

    def drain(self) -> list[dict]:
        out = list(self.pending.values())
        self.pending.clear()
        self.wakeup.clear()
        return out

    def wants(self, channel: str, rec: dict) -> bool:
        tenant = rec.get("tenant")
        if tenant is not None and not self.principal.allows(tenant):
            return False
        return any(s.channel == channel and s.matches(rec) for s in self.subscriptions.values())


class Hub:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.clients: set[Client] = set()
        self.latest: dict[tuple, dict] = {}  # agg key -> newest window record (default window size)
        self.recent_alerts: OrderedDict[str, dict] = OrderedDict()
        self.deadletters: dict[str, int] = {}
        self.records_in = 0
        self.invalid_records = 0  # records on cost.aggregates / cost.alerts that broke their contract
        self._to_persist: dict[tuple, dict] = {}
        self._tasks: list[asyncio.Task] = []
        self._fan_out_positioned = asyncio.Event()  # the fan-out consumer knows where to read from

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self._load_latest_from_db()
        loop = asyncio.get_running_loop()
        # Rollups missing from a database upgraded from before rollups existed (cheap otherwise:
        # only the hours since the newest hourly rollup are recomputed).
        await loop.run_in_executor(None, self._rollup_pending)
        await kafka.ensure_topics(self.settings)
        self._tasks = [
            asyncio.create_task(self._fan_out_aggregates(), name="aggregates-fanout"),
            asyncio.create_task(self._consume_aggregates(), name="aggregates-persist"),
            asyncio.create_task(self._consume_deadletters(), name="deadletters"),
            asyncio.create_task(self._consume_alerts(), name="alerts"),
            asyncio.create_task(self._consume_billed(), name="billed"),
            asyncio.create_task(self._retention_loop(), name="retention"),
        ]
        # Ready only once the fan-out consumer is positioned: a record produced after start()
        # returns (and so after /healthz answers) reaches this instance's snapshots.
        positioned = asyncio.create_task(self._fan_out_positioned.wait())
        await asyncio.wait([positioned, self._tasks[0]], timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if not positioned.done():
            positioned.cancel()
            log.warning("the aggregates fan-out consumer is not positioned yet; snapshots may lag")

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        await asyncio.get_running_loop().run_in_executor(None, self._persist, self._take_persist())

    def _load_latest_from_db(self) -> None:
        since = int(time.time()) - 3600
        with session_scope(self.settings) as s:
            rows = s.scalars(select(AggregateRow).where(AggregateRow.window_start >= since,
                                                        AggregateRow.window_s == self.settings.window_size_s))
            for row in rows:
                self._remember(row.to_dict())

    # -- intake ---------------------------------------------------------------------------
    def _remember(self, rec: dict) -> None:
        if rec.get("window_s") != self.settings.window_size_s:
            return
        k = agg_key(rec)
        cur = self.latest.get(k)
        if cur is None or rec["window_start"] >= cur["window_start"]:
            self.latest[k] = rec

    def ingest_aggregate(self, rec: dict) -> None:
        """Fan-out: this instance's snapshot state and clients (every partition)."""
        self.records_in += 1
        self._remember(rec)
        pkey = (*agg_key(rec), rec["window_s"], rec["window_start"])
        message = {"type": "aggregate", "data": rec}
        for c in self.clients:
            if c.wants("aggregates", rec):
                c.offer(("aggregate", *pkey), message)

    def stage_aggregate(self, rec: dict) -> None:
        """Persistence: stored (with its rollups) by the next batch of the shared group."""
        self._to_persist[(*agg_key(rec), rec["window_s"], rec["window_start"])] = rec

    def ingest_alert(self, alert: dict) -> None:
        fp = alert.get("fingerprint", "")
        self.recent_alerts[fp] = alert
        self.recent_alerts.move_to_end(fp)
        while len(self.recent_alerts) > 500:
            self.recent_alerts.popitem(last=False)
        message = {"type": "alert", "data": alert}
        for c in self.clients:
            if c.wants("alerts", alert):
                c.offer(("alert", fp, alert.get("state")), message)

    async def _consume(self, topic: str, on_record, group: str | None = None, after_batch=None,
                       timeout_ms: int = 1000) -> None:
        """Read a topic forever, calling on_record(record) for each record. With a group: after
        each batch, await after_batch() (persist) and then commit, so a restart re-reads what was
        not stored yet and the upserts make the re-read harmless. Without one: read from the start
        on every start (fan-out and counters only)."""
        s = self.settings
        c = kafka.consumer(topic, settings=s, group_id=f"{s.topic_prefix}{group}" if group else None,
                           auto_offset_reset="earliest")
        await c.start()
        try:
            while True:
                batches = await c.getmany(timeout_ms=timeout_ms, max_records=5000)
                for records in batches.values():
                    for r in records:
                        try:
                            on_record(r)
                        except (ValueError, KeyError, TypeError) as exc:
                            log.warning("skipping malformed record on %s at offset %s: %s", topic, r.offset, exc)
                if batches and group:
                    if after_batch is not None:
                        await after_batch()
                    try:
                        await c.commit()
                    except KafkaError as exc:
                        # Evicted by a rebalance (a member slower than its session, a restart):
                        # the batch is stored, so the next owner's re-read is harmless upserts.
                        # Raising here would end this task, and nothing would persist again.
                        log.warning("%s: offsets not committed (%r); the batch is stored, a re-read "
                                    "is harmless", topic, exc)
        finally:
            await kafka.stop_consumer(c)

    def _read(self, r, model, ingest) -> None:
        """Validate one record against its contract; one that breaks it is logged and skipped
        (the stream wrote it, so this is a version mismatch, not user input)."""
        try:
            record = model.model_validate_json(r.value)
        except ValueError as exc:
            self.invalid_records += 1
            log.warning("skipping a record on %s that breaks %s: %s", r.topic, model.__name__, exc)
            return
        ingest(record.model_dump())

    def _consume_aggregates(self):
        """Persistence, in the group every instance shares: offsets are committed only after the
        batch's windows and rollups are stored."""
        async def persist():
            await asyncio.get_running_loop().run_in_executor(None, self._persist, self._take_persist())

        return self._consume(self.settings.aggregates_topic, lambda r: self._read(r, WindowAggregate, self.stage_aggregate),
                             group="gpucost-api", after_batch=persist, timeout_ms=500)

    @property
    def fan_out_lookback_s(self) -> float:
        """How far back a starting instance re-reads `cost.aggregates` for its snapshots: what is
        older is in the database by then (loaded by _load_latest_from_db)."""
        return self.settings.window_size_s + self.settings.allowed_lateness_s + 30.0

    async def _fan_out_aggregates(self) -> None:
        """Every partition, no group (so every instance gets every record), from the look-back."""
        from aiokafka import TopicPartition

        s = self.settings
        c = kafka.consumer(settings=s, group_id=None)
        await c.start()
        try:
            tps = [TopicPartition(s.aggregates_topic, p) for p in sorted(await kafka.partitions_of(c, s.aggregates_topic))]
            since_ms = int((time.time() - self.fan_out_lookback_s) * 1000)
            # Explicit end offsets, not seek_to_end: aiokafka resolves that lazily, at the first
            # fetch, which would skip whatever was produced in between. And the end first: a
            # record produced between the two requests is then found by the timestamp search
            # (its timestamp is after since_ms), never skipped by seeking past it. Both before
            # assign: an assigned partition is fetched in the background, and a request sent
            # after that waits behind the fetch's long-poll (0.5 s on an idle topic).
            end = await c.end_offsets(tps)
            found = await c.offsets_for_times({tp: since_ms for tp in tps})
            c.assign(tps)
            for tp in tps:
                c.seek(tp, end[tp] if found.get(tp) is None else found[tp].offset)
            self._fan_out_positioned.set()
            while True:
                batches = await c.getmany(timeout_ms=500, max_records=5000)
                for records in batches.values():
                    for r in records:
                        self._read(r, WindowAggregate, self.ingest_aggregate)
        finally:
            await kafka.stop_consumer(c)

    def _consume_deadletters(self):
        def count(r):
            reason = dict(r.headers or ()).get("reason", b"unknown").decode(errors="replace")
            kind = reason.split(":", 1)[0]
            self.deadletters[kind] = self.deadletters.get(kind, 0) + 1

        return self._consume(self.settings.deadletter_topic, count)

    def _consume_alerts(self):
        """Fan-out only (webhook delivery has its own consumer group and outbox)."""
        return self._consume(self.settings.alerts_topic, lambda r: self._read(r, AlertEvent, self.ingest_alert))

    def _consume_billed(self):
        """Validated billing line items into their table (upsert by line item, then commit)."""
        rows: list[dict] = []

        def collect(r):
            if r.value is None:
                return
            item = json.loads(r.value)
            row = {f: item[f] for f in BilledLineItem.FIELDS}
            # What an import says beside the cost (the event's extra fields), NULL where unsaid;
            # every row of one batch gets every column (one INSERT shape).
            for f in BilledLineItem.EXTRA_FIELDS:
                row[f] = item.get(f)
            row["charge_category"] = row["charge_category"] or "usage"
            row["period_start"], row["period_end"] = int(row["period_start"]), int(row["period_end"])
            rows.append(row)

        async def store():
            if rows:
                batch = rows[:]
                rows.clear()
                await asyncio.get_running_loop().run_in_executor(
                    None, self._upsert, BilledLineItem, batch, ["cloud", "instance_id", "period_start", "source"])

        return self._consume(self.settings.billed_topic, collect, group="gpucost-api-billed", after_batch=store)

    # -- persistence ----------------------------------------------------------------------
    def _take_persist(self) -> list[dict]:
        rows = list(self._to_persist.values())
        self._to_persist.clear()
        return rows

    def _persist(self, rows: list[dict]) -> None:
        """Store window records, then recompute the hourly and daily rollups they change."""
        if rows:
            values = [{f: r.get(f, 0) for f in AggregateRow.FIELDS} for r in rows]
            self._upsert(AggregateRow, values, rollups.AGGREGATE_CONFLICT)
            rollups.rollup(get_engine(self.settings), self.settings,
                           rollups.hour_buckets(values, self.settings.window_size_s))

    def _rollup_pending(self) -> None:
        engine = get_engine(self.settings)
        n = rollups.rollup(engine, self.settings, rollups.pending_hours(engine, self.settings))
        if n:
            log.info("recomputed %d pending rollup rows", n)

    async def _retention_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                deleted = await loop.run_in_executor(None, rollups.apply_retention, get_engine(self.settings),
                                                     self.settings)
                if any(deleted.values()):
                    log.info("history retention deleted %s (rows by window_s)", deleted)
            except Exception:  # a busy database: try again at the next sweep
                log.exception("history retention failed")
            await asyncio.sleep(RETENTION_EVERY_S)

    def _upsert(self, model, values: list[dict], conflict: list[str]) -> None:
        """Insert or update by the unique columns: re-reading a topic after a restart is harmless."""
        rollups.upsert(get_engine(self.settings), model, values, conflict)

    # -- clients --------------------------------------------------------------------------
    def snapshot(self, client: Client, sub: Subscription) -> list[dict]:
        if sub.channel == "aggregates":
            src = self.latest.values()
        else:
            src = self.recent_alerts.values()
        return [r for r in src if client.principal.allows(r.get("tenant", "")) and sub.matches(r)]
