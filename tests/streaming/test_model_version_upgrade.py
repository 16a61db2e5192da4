"""Upgrading to model versions as a key part, after a crash, on the real broker and worker: the old
meter had folded offsets 0..2 of a partition (a stable and a canary version) into one four-part
pane record and made it durable, but had not committed them. The new worker restores that record,
replays from offset 0, and counts every event exactly once: the old pane's events under "" (the
old record cannot tell them apart), every later event under its own version."""

from __future__ import annotations

import json
import time

import pytest

from core import kafka
from streaming.meter import pane_partition
from tests.api.test_live_pipeline import H100_P5_USD_H, matches, usage
from tests.support import async_wait_for, expected_windows, last_aggregates, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.one_database]  # no database involved: worker only


def chat(ts: float, util: float, version: str | None):
    return usage(ts, "acme", "chat", "p5.48xlarge", "H100-80GB", util, host="chat-1", model_version=version)


async def test_an_upgrade_after_a_crash_counts_each_replayed_event_once(stack):
    s = stack.settings
    await kafka.ensure_topics(s)
    T = (int(time.time()) // 60) * 60 - 120
    folded_before = [chat(T + 1, 0.5, "v1"), chat(T + 2, 0.2, "v2-canary"), chat(T + 3, 1.0, "v1")]
    after = [chat(T + 4, 0.4, "v2-canary"), chat(T + 12, 0.6, "v1"), chat(T + 13, 0.0, "v2-canary")]
    producer = kafka.producer(s)
    await producer.start()
    try:
        offsets = [(await producer.send_and_wait(s.usage_topic, e.model_dump_json(exclude_none=True).encode(),
                                                 key=b"chat-1", partition=0)).offset for e in folded_before + after]
        assert offsets == list(range(6))
        # The old meter's durable record of pane [T, T+10) on source partition 0: a four-part key
        # and no every_version_upto, as it wrote them.
        costs = [H100_P5_USD_H * e.interval_s / 3600 for e in folded_before]
        old_value = {"spend_usd": sum(costs), "gpu_seconds": 30.0,
                     "util_seconds": sum(e.util * e.interval_s for e in folded_before),
                     "idle_usd": sum(c * (1 - e.util) for c, e in zip(costs, folded_before)), "events": 3,
                     "tokens": 0, "requests": 0, "fallback_priced": 0, "last_offset": 2, "watermark": T + 3}
        old_key = "\x1f".join(("0", "acme", "chat", "us-east-1", "H100-80GB", str(T)))
        await producer.send_and_wait(s.panes_topic, json.dumps(old_value).encode(), key=old_key.encode(),
                                     partition=pane_partition("acme", s.topic_partitions))
    finally:
        await producer.stop()

    stack.start_worker()
    # What is exact now: the old pane's three events once, under no version; the rest by version.
    expected = expected_windows([e.model_copy(update={"model_version": None}) for e in folded_before] + after,
                                {"H100-80GB": H100_P5_USD_H})
    assert {k[4] for k in expected} == {"", "v1", "v2-canary"}

    async def exact():
        got = last_aggregates(await read_topic(s, s.aggregates_topic), window_s=60)
        return set(got) == set(expected) and all(matches(got[k], expected[k]) for k in expected)

    await async_wait_for(exact, 60, what="every event once, across the upgrade")
    got = last_aggregates(await read_topic(s, s.aggregates_topic), window_s=60)
    window = {k[4]: got[k]["events"] for k in got if k[5] == T}
    assert window == {"": 3, "v2-canary": 2, "v1": 1}  # [T, T+60): 6 events, each counted once
    assert "Traceback" not in stack.log("worker"), stack.log("worker")[-3000:]
    assert await read_topic(s, s.deadletter_topic) == []  # a replayed event is never reported late
