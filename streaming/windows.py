"""The window stage: pane records in, hopping-window aggregates out.

In: the compacted `cost.panes` (a consumer group of its own, so each member holds every pane of its
keys from every worker). Out: `WindowAggregate` records on `cost.aggregates` (coalesced: each
changed window at most once per emit interval), handed to the alert stage as well.

Its state is the compacted topic itself: on each assignment it reads its partitions from the
beginning and emits nothing until it has caught up, so it never publishes a half-rebuilt window.
This stage stays a bulk consumer rather than a Faust agent with a table: it sees one record per
changed pane per flush (up to ~16,000 records/s at 1,000 live keys on 4 partitions), and a Faust
table updated per record is far slower than that (`python -m bench.faust_table`; the figures are
in docs/benchmarks.md)."""

from __future__ import annotations

import logging

import mode
from aiokafka import ConsumerRebalanceListener

from contracts.aggregates import PaneRecordKey, PaneSums, WindowAggregate
from core.kafka import consumer as kafka_consumer
from core.kafka import stop_consumer
from core.settings import Settings
from streaming.panes import PaneStore, WindowSpec
from streaming.prices import Metering

log = logging.getLogger("gpucost.windows")


class WindowStage(mode.Service):
    def __init__(self, settings: Settings, spec: WindowSpec, metering: Metering, aggregates_topic, **kwargs):
        super().__init__(**kwargs)
        self.settings = settings
        self.spec = spec
        self.metering = metering
        self.aggregates_topic = aggregates_topic
        self.combined = self._new_store()
        self.caught_up_at: dict | None = None  # partition -> end offset still to reach; {}: caught up

    async def on_start(self) -> None:
        stage = self

        class Rebuild(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked):
                pass

            async def on_partitions_assigned(self, assigned):
                stage.combined = stage._new_store()
                stage.caught_up_at = await stage.consumer.end_offsets(list(assigned)) if assigned else {}
                if assigned:
                    await stage.consumer.seek_to_beginning(*assigned)

        s = self.settings
        self.consumer = kafka_consumer(settings=s, group_id=f"{s.topic_prefix}{s.worker_id}-windows",
                                       enable_auto_commit=False, auto_offset_reset="earliest")
        self.consumer.subscribe([s.panes_topic], listener=Rebuild())
        await self.consumer.start()

    def _new_store(self) -> PaneStore:
        # Its watermark (which closes windows) is the minimum over every source partition of
        # gpu.usage, whichever meter holds it: a meter whose watermark lags still finds open
        # every window its own rule accepts events for (docs/design-changes.md, lateness).
        return PaneStore(self.spec, self.metering,
                         expected_partitions=frozenset(range(self.settings.topic_partitions)),
                         idle_partition_s=self.settings.idle_partition_s)

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
                    value = PaneSums.model_validate_json(r.value) if r.value is not None else None
                    combined.restore(PaneRecordKey.decode(r.key.decode()), value)
            if self.caught_up_at:
                for tp in list(self.caught_up_at):
                    if await c.position(tp) >= self.caught_up_at[tp]:
                        del self.caught_up_at[tp]
                if not self.caught_up_at:
                    combined.forget_closed_pending()

    async def emit(self) -> list[WindowAggregate]:
        """Publish every window changed since the last call; returns them (for the alert stage)."""
        if not self.ready:
            return []
        records = self.combined.take_pending_windows()
        send = self.aggregates_topic.send
        for rec in records:
            await send(key=rec.key.encode().encode(), value=rec.model_dump_json().encode())
        return records
