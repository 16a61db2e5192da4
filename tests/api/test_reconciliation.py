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


async def test_a_matched_synthetic_fleet_reconciles_within_one_percent(stack, tmp_path):
    """The simulator's fleet and its own FOCUS bill (ingest/billing/synthetic.py), through the real
    broker, worker, importer and API: per tenant and day the bill at list price is within 1 % of
    the metered cost, the rest of the gap is the savings plan and spot discounts, and the parts of
    the breakdown sum to the gap. The bill's account-wide $25 credit a day (no tenant tag, no
    account rule) is the "unassigned" tenant's credits_usd, exactly, on its day. A revised export
    of the same lines overwrites them."""
    import math

    from ingest.billing.synthetic import HourlyExport
    from ingest.simulator import Fleet, run

    stack.start_worker()
    stack.start_api()
    fleet = Fleet.build(seed=7, hosts=6, interval_s=20.0)
    hour = math.floor(time.time() / 3600) * 3600
    start, end = hour - 3 * 3600 - 1800, hour - 3600  # starts inside an hour: a prorated first line
    if (start + 1800) % 86400 == 0:
        # A UTC day would hold only the first half hour, whose first 20 s have no sample: 1.1 % of
        # that day's bill unused, past the 1 % asked per tenant and day (the test failed when run
        # from 03:00 to 04:00 UTC). An hour earlier, that day holds an hour and a half.
        start, end = start - 3600, end - 3600
    export = HourlyExport(fleet, tmp_path / "billing", start)
    async with EventProducer(stack.settings) as producer:
        # Usage of (start, end - 20]; each sample counts at its end time, so the last one is the
        # first of the hour at `end`, which is not billed.
        await run(producer, fleet, duration_s=end - start - 20, realtime=False, start_ts=start, billing=export)
        await export.due(end, producer)
    assert export.billed_upto == end and sum(r.rows_rejected for r in export.reports) == 0
    gpu_lines = sum(r.gpu_lines for r in export.reports)
    assert gpu_lines == len(fleet.hosts) * 3  # the half hour, then two whole hours

    from core.pricing import default_catalog

    catalog = default_catalog()
    fleet_usd_h = sum(catalog.gpu_hour_price(h.cloud, h.region, h.instance_type, h.gpu_model).usd_per_gpu_hour
                      * h.gpu_count for h in fleet.hosts)
    samples = int((end - start - 20) / 20)
    metered_usd = samples * 20 / 3600 * fleet_usd_h  # every sample of every GPU, at catalog prices
    list_usd = sum(r.gpu_list_usd for r in export.reports)
    assert list_usd == pytest.approx(fleet_usd_h * (end - start) / 3600, rel=1e-9)
    # One credit line per UTC day the bill touches, sent by every export of that day (same line id).
    days = sorted({dt.datetime.fromtimestamp(t, dt.timezone.utc).date().isoformat() for t in (start, end - 1)})
    assert sum(r.charge_lines for r in export.reports) >= len(days)

    def rows():
        return stack.get("/api/reconciliation", days=2)

    def settled():
        got = rows()
        return got if (sum(r["metered_usd"] for r in got) == pytest.approx(metered_usd, rel=1e-9)
                       and sum(r["list_usd"] for r in got) == pytest.approx(list_usd, rel=1e-9)
                       and sum(r["breakdown"]["credits_usd"] for r in got) == -25.0 * len(days)) else None

    got = await async_wait_for(settled, 90, what="the fleet's usage and bill in the reconciliation")
    assert {r["tenant"] for r in got} == {h.tenant for h in fleet.hosts} | {"unassigned"}
    # The credit: its own row per day, exactly -25, the whole gap of that row.
    credited = sorted((r["day"], r["metered_usd"], r["billed_usd"], r["difference_usd"], r["list_usd"],
                       r["invoiced_usd"], r["breakdown"]["credits_usd"]) for r in got if r["tenant"] == "unassigned")
    assert credited == [(d, 0.0, -25.0, -25.0, 0.0, -25.0, -25.0) for d in days]
    for r in got:
        if r["tenant"] == "unassigned":
            assert {k: v for k, v in r["breakdown"].items() if v} == {"credits_usd": -25.0}, r
    got = [r for r in got if r["tenant"] != "unassigned"]
    saw_spot = saw_plan = False
    for r in got:
        # The fleet's tenants: no credit or tax of theirs in this bill.
        assert r["breakdown"]["credits_usd"] == r["breakdown"]["tax_and_adjustments_usd"] == 0, r
        b = r["breakdown"]
        assert r["metered_usd"] > 0 and r["billed_usd"] > 0, r
        assert r["list_over_metered"] == pytest.approx(1.0, abs=0.01), r  # within 1 %
        # Catalog and list prices are the same, so nothing is unexplained; the first half hour's
        # first 20 s have no sample (a sample counts at its end), which is billed GPU time unused.
        assert b["unexplained_usd"] == pytest.approx(0.0, abs=1e-9 * r["metered_usd"]), r
        assert 0 <= b["partial_hours_usd"] < 0.01 * r["metered_usd"], r
        assert b["usage_without_bill_usd"] == b["bill_without_usage_usd"] == b["awaiting_bill_usd"] == 0, r
        assert sum(b.values()) == pytest.approx(r["difference_usd"], abs=1e-9 * r["metered_usd"]), r
        assert r["billed_usd"] == pytest.approx(r["effective_usd"], rel=1e-9)
        assert r["effective_usd"] == pytest.approx(r["list_usd"] + b["commitment_discount_usd"] + b["spot_discount_usd"],
                                                   rel=1e-9)
        saw_spot |= b["spot_discount_usd"] < 0
        saw_plan |= b["commitment_discount_usd"] < 0
    assert saw_plan and saw_spot  # the fleet has both, so the explanation is exercised
    assert sum(r["breakdown"]["partial_hours_usd"] for r in got) == pytest.approx(fleet_usd_h * 20 / 3600, rel=1e-6)

    # Per metered key, the instances billed under it; all of a day's keys add up to the day.
    day = got[0]["day"]
    keys = stack.get("/api/reconciliation/instances", day=day)
    assert {i["instance_id"] for k in keys for i in k["instances"]} <= {h.host for h in fleet.hosts}
    for tenant in {r["tenant"] for r in got if r["day"] == day}:
        mine = [k for k in keys if k["tenant"] == tenant]
        total = next(r for r in got if r["tenant"] == tenant and r["day"] == day)
        assert sum(k["billed_usd"] for k in mine) == pytest.approx(total["billed_usd"], rel=1e-9)
        assert sum(k["metered_usd"] for k in mine) == pytest.approx(total["metered_usd"], rel=1e-9)

    # A revised export (a deeper savings-plan discount) of the same hours: same line ids, so the
    # covered lines are overwritten, not added; nothing else changes.
    from sqlalchemy import create_engine, text
    engine = create_engine(stack.settings.database)
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM billed_line_items")).scalar()
    assert stored == gpu_lines + len(days)  # the credit re-sent by every export of its day is one row a day
    before = {(r["tenant"], r["day"]): r for r in got}
    revised = HourlyExport(fleet, tmp_path / "revised", start, savings_plan_discount=0.5)
    async with EventProducer(stack.settings) as producer:
        await revised.due(end, producer)

    def revised_in():
        now = {(r["tenant"], r["day"]): r for r in rows()}
        return now if all(
            now[k]["breakdown"]["commitment_discount_usd"] == pytest.approx(r["breakdown"]["commitment_discount_usd"] * 5 / 3,
                                                                            rel=1e-6) for k, r in before.items()) else None

    after = await async_wait_for(revised_in, 60, what="the revised export")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM billed_line_items")).scalar() == gpu_lines + len(days)
        assert conn.execute(text("SELECT count(DISTINCT line_id) FROM billed_line_items")).scalar() == gpu_lines + len(days)
        assert [tuple(row) for row in conn.execute(text(
            "SELECT charge_category, tenant, sum(cost_usd) FROM billed_line_items "
            "WHERE charge_category <> 'usage' GROUP BY charge_category, tenant"))] == [("credit", "unassigned", -25.0 * len(days))]
    engine.dispose()
    for k, r in before.items():
        assert after[k]["list_usd"] == pytest.approx(r["list_usd"], rel=1e-9)
        assert after[k]["metered_usd"] == pytest.approx(r["metered_usd"], rel=1e-9)
