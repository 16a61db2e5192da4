"""Two workers share the partitions of one topic: a key whose hosts hash to partitions owned by
different workers still gets one exact aggregate per window (stage 2 sums every worker's panes)."""

import json
import re
import time

import pytest

from ingest.producer import EventProducer
from tests.api.test_live_pipeline import H100_P5_USD_H, matches, usage
from tests.support import async_wait_for, expected_windows, last_aggregates, read_topic, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.one_database]  # no database involved: worker only




async def test_two_workers_emit_exact_windows_for_a_key_spread_over_their_partitions(stack):
    stack.start_worker()
    stack._spawn("worker2", "worker", "--loglevel", "info")
    wait_for(lambda: stack.log("worker2").count("Worker]: Ready") >= 1, 60, what="second worker ready")
    # Both members own usage partitions once the group has rebalanced: each one's latest
    # assignment, and together they hold every partition, once.
    def owned(name: str) -> list[int]:
        reads = re.findall(r"meter: read \d+ pane records for source partitions \[([\d, ]*)\]", stack.log(name))
        return [int(p) for p in reads[-1].split(",") if p.strip()] if reads else []

    wait_for(lambda: owned("worker") and owned("worker2")
             and sorted(owned("worker") + owned("worker2")) == list(range(stack.settings.topic_partitions)),
             60, what="the source partitions split between both workers")

    T = (int(time.time()) // 60) * 60 - 120
    # 16 hosts of one key: their messages spread over all 4 partitions, so over both workers.
    events = [usage(T + 1 + (h % 50), "acme", "chat", "p5.48xlarge", "H100-80GB", round(0.05 * (h % 20), 2),
                    host=f"host-{h}") for h in range(16)]
    async with EventProducer(stack.settings) as producer:
        await producer.send_usage(events)
    partitions = {json.loads(r.value)["host"]: r.partition for r in await read_topic(stack.settings, stack.settings.usage_topic)}
    assert len(set(partitions.values())) >= 3, "the hosts should cover several partitions"

    expected = expected_windows(events, {"H100-80GB": H100_P5_USD_H})

    async def exact():
        got = last_aggregates(await read_topic(stack.settings, stack.settings.aggregates_topic))
        return set(got) == set(expected) and all(matches(got[k], expected[k]) for k in expected)

    await async_wait_for(exact, 60, what="exact windows from two workers")
    logs = stack.log("worker") + stack.log("worker2")
    assert "Traceback" not in logs, logs[-3000:]
