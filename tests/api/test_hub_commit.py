"""The API's group consumers (persistence, billed line items) survive a refused offset commit:
a rebalance that evicts the member must not end the task that stores what it reads."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import CommitFailedError

from api import hub as hub_module
from core.settings import Settings


class Record:
    def __init__(self, offset: int):
        self.offset, self.topic, self.value = offset, "t", b"{}"


class Consumer:
    """Two batches, then nothing; the first commit is refused as after a rebalance."""

    def __init__(self):
        self.batches = [{"tp": [Record(0), Record(1)]}, {"tp": [Record(2)]}]
        self.commits = 0

    async def start(self):
        pass

    async def getmany(self, timeout_ms, max_records):
        if self.batches:
            return self.batches.pop(0)
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    async def commit(self):
        self.commits += 1
        if self.commits == 1:
            raise CommitFailedError("the group rebalanced")


@pytest.mark.asyncio
async def test_a_refused_commit_is_logged_and_the_consumer_goes_on_storing(monkeypatch, caplog):
    consumer = Consumer()
    stopped = []

    async def stop(c):
        stopped.append(c)

    monkeypatch.setattr(hub_module.kafka, "consumer", lambda *a, **kw: consumer)
    monkeypatch.setattr(hub_module.kafka, "stop_consumer", stop)
    hub = hub_module.Hub(Settings())
    seen, stored = [], []

    async def store():
        stored.append(list(seen))

    task = asyncio.create_task(hub._consume("t", lambda r: seen.append(r.offset), group="g", after_batch=store,
                                            timeout_ms=10))
    for _ in range(200):
        if consumer.commits == 2 or task.done():
            break
        await asyncio.sleep(0.01)
    assert not task.done(), task.exception()  # still running after the refused commit
    assert seen == [0, 1, 2] and stored == [[0, 1], [0, 1, 2]] and consumer.commits == 2
    assert "offsets not committed" in caplog.text and "rebalanced" in caplog.text
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stopped == [consumer]
