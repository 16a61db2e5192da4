"""What rules and price overrides share on their way to the worker: a background task that keeps a
compacted configuration topic equal to what the database holds. A subclass's `publish()` makes one
round (it never raises: a failure is logged and the next round retries); it is called right after
each change by the route that made it, and every `interval_s` by `run()`."""

from __future__ import annotations

import asyncio

from core import kafka
from core.settings import Settings


class ConfigPublisher:
    interval_s = 5.0

    def __init__(self, settings: Settings):
        self.settings = settings
        self.producer = None
        self.lock = asyncio.Lock()  # one round at a time: never an older state sent after a newer one
        self.task: asyncio.Task | None = None

    async def publish(self) -> bool:
        raise NotImplementedError

    async def _producer(self):
        if self.producer is None:
            p = kafka.producer(self.settings)
            await p.start()
            self.producer = p
        return self.producer

    async def run(self) -> None:
        while True:
            await self.publish()
            await asyncio.sleep(self.interval_s)

    def start(self, name: str) -> None:
        self.task = asyncio.create_task(self.run(), name=name)

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass
        if self.producer is not None:
            await self.producer.stop()
