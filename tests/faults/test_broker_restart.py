"""Restart the broker mid-stream: the producer's sends wait and retry (idempotent, acks=all), the
worker reconnects, and the final aggregates are exact: nothing lost, nothing counted twice. Runs
on a second broker of its own (own data dir and ports); the shared test broker is never touched."""

from __future__ import annotations

import asyncio
import json

import pytest

from core import broker
from core.settings import Settings
from bench.fault_harness import run_broker_restart
from tests.support import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300), pytest.mark.one_database]  # the worker and the broker are under test, not the database


@pytest.fixture(scope="module")
def module_broker(tmp_path_factory, kafka_broker):  # kafka_broker: the jars are fetched, the JVM works
    """One second broker for this module's tests (each test runs on topics of its own)."""
    # A 3 s broker session instead of Kafka's 9 s: after the SIGKILL the broker registers again
    # (and answers) once its previous run's session has expired.
    settings = Settings(data_dir=tmp_path_factory.mktemp("own-broker"), kafka_bootstrap=f"127.0.0.1:{free_port()}",
                        kafka_controller_port=free_port(), kafka_broker_session_timeout_s=3)
    broker.start(settings)
    try:
        yield settings
    finally:
        broker.stop(settings)


@pytest.fixture
def own_broker(module_broker):
    """The module's broker, answering: a test stops and restarts it (one that failed half way may
    have left it down, so start it again; a no-op when it runs)."""
    broker.start(module_broker)
    return module_broker


@pytest.mark.parametrize("hard", [False, True], ids=["sigterm", "sigkill"])
async def test_broker_restart_mid_stream_loses_nothing(tmp_path, own_broker, database_url, hard):
    from tests.support import Stack

    stack = Stack(tmp_path, database_url=database_url, GPUCOST_KAFKA_BOOTSTRAP=own_broker.kafka_bootstrap,
                  BROKER_SESSION_TIMEOUT="10", BROKER_HEARTBEAT_INTERVAL="1")
    try:
        t = await run_broker_restart(stack, own_broker, hard=hard)
    finally:
        stack.stop()
    print("\n" + t.line())
    assert (t.lost, t.double_counted) == (0, 0), t.line() + "\n" + stack.log("worker")[-4000:]
    assert t.aggregated == t.sent and t.windows_wrong == 0, t.line()
    assert t.notes["worker alive"], stack.log("worker")[-4000:]


async def test_post_events_during_a_broker_outage_is_queued_once_not_bounced(tmp_path, own_broker, database_url):
    """A 503 would make clients resend events the producer still delivers later (counted twice):
    while Kafka is down, POST /events answers 202 with durable=false, and after the restart each
    event is on the topic exactly once."""
    import httpx

    from tests.api.test_auth import usage_event
    from tests.support import Stack, async_wait_for, read_topic

    stack = Stack(tmp_path, database_url=database_url, GPUCOST_KAFKA_BOOTSTRAP=own_broker.kafka_bootstrap,
                  GPUCOST_EVENTS_ACK_TIMEOUT_S="2")
    try:
        stack.start_api()
        url, headers = stack.url + "/events", stack.headers
        first = [usage_event("acme", gpu_index=i, host="before") for i in range(3)]
        r = httpx.post(url, headers=headers, json={"usage": first}, timeout=30)
        assert r.status_code == 202 and r.json()["durable"] is True, r.text
        await asyncio.to_thread(broker.stop, own_broker)
        during = [usage_event("acme", gpu_index=i, host="during") for i in range(5)]
        r = httpx.post(url, headers=headers, json={"usage": during}, timeout=30)
        assert r.status_code == 202, r.text
        assert r.json()["durable"] is False and "do not resend" in r.json()["message"]
        await asyncio.to_thread(broker.start, own_broker)

        async def hosts():
            out = []
            for rec in await read_topic(stack.settings, stack.settings.usage_topic):
                payload = json.loads(rec.value)
                out += [(e["host"], e["gpu_index"]) for e in (payload if isinstance(payload, list) else [payload])]
            return sorted(out)

        expected = sorted([("before", i) for i in range(3)] + [("during", i) for i in range(5)])
        await async_wait_for(lambda: hosts(), 60, what="events on the topic")
        await async_wait_for(lambda: _eq(hosts(), expected), 60, what="every queued event delivered")
        await asyncio.sleep(3)
        assert await hosts() == expected  # once each
    finally:
        stack.stop()


async def _eq(coro, expected) -> bool:
    return (await coro) == expected
