"""Bad events leave the worker here: raw bytes onto `gpu.deadletter` with why (header `reason`)
and where they came from (`source_topic`, `source_partition`, `source_offset`), counted by the
kind of reason. Nothing a producer sends is dropped silently, and nothing crashes the worker."""

from __future__ import annotations

import time


class WorkerStats:
    def __init__(self):
        self.messages = 0
        self.events = 0
        self.deadletters: dict[str, int] = {}
        self.started = time.time()

    def dead(self, reason: str) -> None:
        kind = reason.split(":", 1)[0]
        self.deadletters[kind] = self.deadletters.get(kind, 0) + 1


class DeadLetters:
    def __init__(self, topic, stats: WorkerStats):
        self.topic = topic  # a Faust topic (raw bytes)
        self.stats = stats

    def send(self, reason: str, raw: bytes, message):
        """Send one bad event on; returns an awaitable that gives its delivery future."""
        self.stats.dead(reason)
        headers = {
            "reason": reason.encode(),
            "source_topic": message.topic.encode(),
            "source_partition": str(message.partition).encode(),
            "source_offset": str(message.offset).encode(),
        }
        return self.topic.send(key=message.key, value=raw, headers=headers)
