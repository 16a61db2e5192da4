"""The one producer of events into Kafka. Usage samples of one host and interval travel as one
message keyed "{host}" (a lone sample is keyed "{host}/{gpu_index}"); billing line items are keyed
"{cloud}/{instance_id}". Sends are idempotent (enable_idempotence) and awaited: a broker restart
delays a send, it never loses or duplicates one."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable

from core import kafka
from core.settings import Settings, get_settings
from contracts.events import BillingEvent, UsageEvent, encode, encode_batch


class EventProducer:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self._producer = kafka.producer(self.settings)
        self.sent_events = 0
        self.sent_messages = 0

    async def start(self) -> "EventProducer":
        await self._producer.start()
        return self

    async def stop(self) -> None:
        await self._producer.stop()

    async def __aenter__(self) -> "EventProducer":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def send_usage(self, events: Iterable[UsageEvent], wait: bool = True) -> list[asyncio.Future]:
        by_host: dict[str, list[UsageEvent]] = defaultdict(list)
        for ev in events:
            by_host[ev.host].append(ev)
        futures = []
        for host, group in by_host.items():
            if len(group) == 1:
                key, value = group[0].kafka_key, encode(group[0])
            else:
                key, value = host, encode_batch(group)
            futures.append(await self._producer.send(self.settings.usage_topic, value=value, key=key.encode()))
            self.sent_events += len(group)
            self.sent_messages += 1
        if wait:
            await asyncio.gather(*futures)
        return futures

    async def send_billing(self, events: Iterable[BillingEvent], wait: bool = True) -> list[asyncio.Future]:
        futures = []
        for ev in events:
            futures.append(await self._producer.send(self.settings.billing_topic, value=encode(ev), key=ev.kafka_key.encode()))
            self.sent_events += 1
            self.sent_messages += 1
        if wait:
            await asyncio.gather(*futures)
        return futures

    async def send_raw(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        """For the HTTP ingest endpoint and for tests that must send what the schema forbids."""
        await (await self._producer.send(topic, value=value, key=key))

    async def flush(self) -> None:
        await self._producer.flush()
