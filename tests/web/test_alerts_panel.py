"""The alerts panel across a reconnect: an alert that fired is listed once, and still once after the
API restarts and the page resubscribes (the new snapshot repeats it)."""

from __future__ import annotations

import time

import httpx
import pytest

from contracts.events import UsageEvent
from ingest.producer import EventProducer
from tests.support import Stack, async_wait_for
from tests.web.browser import browser_page, real_errors

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.one_database]


def _usage(ts: float, gpu: int) -> UsageEvent:
    return UsageEvent(ts=ts, tenant="acme", service="chat-api", cloud="aws", region="us-east-1",
                      instance_type="g5.xlarge", gpu_model="A10G", host="h1", gpu_index=gpu, interval_s=1.0,
                      util=0.5, mem_used_gb=10, mem_total_gb=24, power_w=200, tokens=100, requests=1)


@pytest.fixture
def stack(kafka_broker, tmp_path, database_url):
    # All of acme's usage comes from one host, so one partition of gpu.usage: the other three stop
    # holding the watermark back after 2 s instead of the default 30 s.
    s = Stack(tmp_path, database_url=database_url, GPUCOST_IDLE_PARTITION_S="2")
    try:
        yield s
    finally:
        s.stop(graceful=False)  # teardown: nothing is checked about the shutdown


async def test_an_alert_is_listed_once_after_a_reconnect(stack):
    stack.start_worker()
    stack.start_api()
    r = httpx.post(stack.url + "/api/rules", headers=stack.headers, json={
        "name": "acme over one GPU", "kind": "gpu_quota", "tenant": "acme", "params": {"max_gpus": 1, "for_s": 0}})
    assert r.status_code == 201
    async with browser_page() as (page, errors):
        await page.goto(stack.url + f"/?api_key={stack.admin_key}")
        await page.wait_for_function("() => document.getElementById('conn').textContent === 'live'", timeout=30000)
        # Each GPU reports a 1 s sample for every second, as an exporter does, starting with the last
        # 70 s (busy before the page opened): the newest completed 60 s window holds 2 GPUs at once.
        sent_upto = int(time.time()) - 70
        async with EventProducer(stack.settings) as producer:
            async def listed():
                nonlocal sent_upto
                now = int(time.time())
                await producer.send_usage([_usage(float(ts), g) for ts in range(sent_upto + 1, now + 1) for g in (0, 1)])
                sent_upto = max(sent_upto, now)
                return await page.evaluate("window.gpucost.alerts.size") >= 1
            await async_wait_for(listed, 120, interval=1.0, what="the alert in the page")
        await page.wait_for_function("() => document.querySelectorAll('#alerts li.firing').length >= 1")
        before = await page.evaluate("[...window.gpucost.alerts.keys()].sort()")
        items = await page.locator("#alerts li").count()
        messages = await page.evaluate("window.gpucost.messages")
        stack.kill("api")
        stack.start_api()
        await page.wait_for_function(f"() => window.gpucost.messages > {messages} && "
                                     "document.getElementById('conn').textContent === 'live'", timeout=60000)
        await page.wait_for_timeout(2500)  # the snapshot after resubscribing, drawn
        assert await page.evaluate("[...window.gpucost.alerts.keys()].sort()") == before
        assert await page.locator("#alerts li").count() == items
        assert "acme over one GPU" in await page.text_content("#alerts")
        assert real_errors(errors, allow=("net::ERR_",)) == [], errors
