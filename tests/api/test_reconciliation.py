"""Billed against metered per tenant and day, end to end: usage metered by the worker, billing line
items validated by the worker (a re-sent item counted once, a bad one dead-lettered), both stored
by the API and compared."""

import datetime as dt
import json
import time
from collections import defaultdict

import httpx
import pytest

from contracts.events import BillingEvent
from ingest.producer import EventProducer
from tests.api.test_live_pipeline import H100_P5_USD_H, usage
from tests.support import async_wait_for, read_topic

pytestmark = pytest.mark.integration


def billing(period_start, cost, instance="i-1", tenant="acme"):
    return BillingEvent(ts=time.time(), period_start=period_start, period_end=period_start + 3600, tenant=tenant,
                        service="chat", cloud="aws", region="us-east-1", instance_type="p5.48xlarge",
                        gpu_model="H100-80GB", gpu_count=8, cost_usd=cost, pricing="on_demand",
                        source="aws-cur", instance_id=instance)


async def test_billed_and_metered_cost_per_tenant_and_day(stack):
    stack.start_worker()
    stack.start_api()
    now = int(time.time())
    T = (now // 60) * 60 - 240
    events = [usage(T + 5 + 17 * i, "acme", "chat", "p5.48xlarge", "H100-80GB", 0.5) for i in range(10)]
    events += [usage(T + 7 + 23 * i, "globex", "ocr", "p5.48xlarge", "H100-80GB", 0.9, host="g") for i in range(4)]
    hour = (now // 3600) * 3600
    items = [billing(hour - 7200, 55.04), billing(hour - 3600, 55.04), billing(hour - 3600, 55.04)]  # one re-sent
    items.append(billing(hour - 3600, 12.5, instance="i-2", tenant="globex"))
    async with EventProducer(stack.settings) as producer:
        await producer.send_usage(events)
        await producer.send_billing(items)
        bad = json.loads(items[0].model_dump_json())
        bad["cost_usd"] = -3
        await producer.send_raw(stack.settings.billing_topic, json.dumps(bad).encode(), b"aws/i-1")

    metered, billed = defaultdict(float), defaultdict(float)
    for e in events:
        metered[(e.tenant, int(e.ts) // 86400)] += H100_P5_USD_H * e.interval_s / 3600
    for b in {(b.tenant, b.instance_id, b.period_start): b for b in items}.values():
        billed[(b.tenant, int(b.period_start) // 86400)] += b.cost_usd

    def epoch_day(iso: str) -> int:
        return (dt.date.fromisoformat(iso) - dt.date(1970, 1, 1)).days

    def exact():
        rows = httpx.get(stack.url + "/api/reconciliation", params={"days": 2}, headers=stack.headers, timeout=5).json()
        got = {(r["tenant"], epoch_day(r["day"])): r for r in rows}
        keys = set(metered) | set(billed)
        return set(got) == keys and all(
            got[k]["metered_usd"] == pytest.approx(metered[k], rel=1e-9)
            and got[k]["billed_usd"] == pytest.approx(billed[k], rel=1e-9) for k in keys)

    await async_wait_for(exact, 60, what="exact reconciliation")
    dead = await read_topic(stack.settings, stack.settings.deadletter_topic)
    assert [dict(r.headers)["reason"].decode().split(":")[0] for r in dead] == ["invalid billing event"]

    # A tenant key sees its own tenant only.
    from api.keys import create_key
    key = create_key(stack.settings, tenant="globex", name="t").key
    rows = httpx.get(stack.url + "/api/reconciliation", headers={"Authorization": f"Bearer {key}"}, timeout=5).json()
    assert {r["tenant"] for r in rows} == {"globex"}
