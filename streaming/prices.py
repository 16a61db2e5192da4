"""How the worker prices usage: the shipped catalog plus the newest set of price overrides from the
compacted `cost.prices` topic (written by the API; contracts/prices.py). Like rules, overrides
reach the worker through Kafka, so the worker reads no database.

In: `cost.prices`. Out: (usd per GPU-hour, is_fallback) per event, memoised per
(cloud, region, instance_type, gpu_model) and reset when the catalog changes."""

from __future__ import annotations

import logging

from aiokafka.errors import ConsumerStoppedError

from contracts.events import UsageEvent
from contracts.prices import PRICES_KEY, PriceOverrides
from core.kafka import consumer, read_to_end, stop_consumer
from core.pricing import default_catalog
from core.pricing.catalog import CatalogRow
from core.settings import Settings

log = logging.getLogger("gpucost.prices")


class Metering:
    """Prices usage with the catalog in force; `apply` swaps in a new override set."""

    def __init__(self):
        self.base = default_catalog()
        self.catalog = self.base
        self._cache: dict[tuple[str, str, str, str], tuple[float, bool]] = {}

    def __call__(self, ev: UsageEvent) -> tuple[float, bool]:
        k = (ev.cloud, ev.region, ev.instance_type, ev.gpu_model)
        hit = self._cache.get(k)
        if hit is None:
            q = self.catalog.gpu_hour_price(*k)  # raises UnknownGPUModel
            hit = self._cache[k] = (q.usd_per_gpu_hour, q.fallback)
        return hit

    def apply(self, value: bytes | None) -> None:
        """One record of `cost.prices` (None: a tombstone, back to the shipped catalog)."""
        if value is None:
            overrides = PriceOverrides(rows=[])
        else:
            try:
                overrides = PriceOverrides.model_validate_json(value)
            except ValueError as exc:  # keep metering at the prices in force
                log.warning("ignoring an invalid price override record: %s", exc)
                return
        rows = [CatalogRow(**row.model_dump()) for row in overrides.rows]
        self.catalog = self.base.with_rows(rows) if rows else self.base
        self._cache = {}
        log.info("metering with %d price override(s)", len(rows))


class PriceFollower:
    """Reads `cost.prices` to its end before the first event is metered (`load`), then applies
    changes as they arrive (`follow`), without a restart."""

    def __init__(self, settings: Settings, metering: Metering):
        self.settings = settings
        self.metering = metering
        self.consumer = None  # made in load(), on the running loop

    def _apply(self, record) -> None:
        if record.key == PRICES_KEY:
            self.metering.apply(record.value)

    async def load(self) -> None:
        self.consumer = consumer(settings=self.settings, group_id=None)
        await self.consumer.start()
        await read_to_end(self.consumer, self.settings.prices_topic, self._apply)

    async def follow(self) -> None:
        while True:
            try:
                batches = await self.consumer.getmany(timeout_ms=1000)
            except ConsumerStoppedError:  # the worker is stopping
                return
            for records in batches.values():
                for r in records:
                    self._apply(r)

    async def stop(self) -> None:
        if self.consumer is not None:
            await stop_consumer(self.consumer)
