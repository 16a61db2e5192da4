"""The reconciliation's breakdown (api/reconcile.py): each part of the gap between billed and
metered cost on a day built so that every part has a known value, the parts summing to the gap;
and the route on a database of each backend: recent days from the 1-minute windows, older ones
from the hourly and daily rollups, tenant keys scoped, bad days refused with the reason."""

from __future__ import annotations

import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.reconcile import COMPONENTS, DAY, HOUR, Line, MeteredSlot, by_tenant_day, explain

D = 1_799_971_200  # a UTC midnight
CHAT = ("acme", "chat", "us-east-1", "H100-80GB")
TRAIN = ("acme", "train", "us-east-1", "H100-80GB")


def slot(key, hour, usd, gpu_s):
    return MeteredSlot(*key, D + hour * HOUR, HOUR, usd, gpu_s)


def line(key, hour, effective, list_usd=None, pricing="on_demand", category="usage", gpus=8, instance="i-1",
         billed=None, hours=1):
    return Line(*key, "aws", instance, "p5.48xlarge", D + hour * HOUR, D + (hour + hours) * HOUR, gpus, category,
                pricing, effective, list_usd, billed)


def day_of_acme():
    slots = [slot(CHAT, 0, 55.04, 8 * 3600), slot(CHAT, 1, 55.04, 8 * 3600),
             slot(CHAT, 2, 27.52, 4 * 3600),   # half the GPU time of a whole billed hour
             slot(CHAT, 3, 10.0, 1000),         # no line, before the bill's end
             slot(CHAT, 4, 5.0, 500),           # no line, after it: the bill is not in yet
             slot(TRAIN, 0, 12.0, 4 * 3600)]
    lines = [line(CHAT, 0, 38.528, 55.04, "reserved", billed=0.0),
             line(CHAT, 1, 55.04, 55.04), line(CHAT, 2, 55.04, 55.04),
             line(TRAIN, 0, 4.0, 12.5, "spot", gpus=4, instance="i-spot"),  # list 0.5 above the catalog
             line(TRAIN, 3, 20.0, 20.0, instance="i-idle"),                 # billed, nothing metered
             line(("acme", "unassigned", "global", "none"), 0, -25.0, category="credit", gpus=0, instance="credit",
                  hours=24),
             line(("acme", "unassigned", "global", "none"), 0, 3.0, category="tax", gpus=0, instance="tax")]
    return slots, lines


def test_each_part_of_the_gap_has_its_value_and_the_parts_sum_to_it():
    slots, lines = day_of_acme()
    e = by_tenant_day(explain(slots, lines, billed_through=D + 4 * HOUR))[("acme", D)]
    assert e.metered_usd == pytest.approx(164.6, abs=1e-9)
    assert e.billed_usd == pytest.approx(38.528 + 55.04 + 55.04 + 4.0 + 20.0 - 25.0 + 3.0, abs=1e-9)
    assert e.list_usd == pytest.approx(55.04 * 3 + 12.5 + 20.0, abs=1e-9)
    assert e.invoiced_usd == pytest.approx(0.0 + 55.04 * 2 + 4.0 + 20.0 - 25.0 + 3.0, abs=1e-9)
    expected = {"commitment_discount_usd": -16.512, "spot_discount_usd": -8.5, "negotiated_discount_usd": 0.0,
                "credits_usd": -25.0, "tax_and_adjustments_usd": 3.0, "usage_without_bill_usd": -10.0,
                "awaiting_bill_usd": -5.0, "bill_without_usage_usd": 20.0, "partial_hours_usd": 27.52,
                "unexplained_usd": 0.5}
    assert set(expected) == set(COMPONENTS)
    for k, v in expected.items():
        assert e.parts[k] == pytest.approx(v, abs=1e-9), k
    assert sum(e.parts.values()) == pytest.approx(e.difference_usd, abs=1e-9)


def test_per_key_the_instances_billed_under_it_are_listed():
    slots, lines = day_of_acme()
    by_key = explain(slots, lines, billed_through=D + 4 * HOUR)
    train = by_key[(TRAIN, D)]
    assert sorted((i.instance_id, i.lines, i.billed_gpu_hours, i.list_usd) for i in train.instances.values()) == [
        ("i-idle", 1, 8.0, 20.0), ("i-spot", 1, 4.0, 12.5)]
    assert train.parts["bill_without_usage_usd"] == 20.0 and train.parts["spot_discount_usd"] == -8.5
    chat = by_key[(CHAT, D)]
    assert [(i.instance_id, i.lines, i.billed_gpu_hours) for i in chat.instances.values()] == [("i-1", 3, 24.0)]
    for e in by_key.values():
        assert sum(e.parts.values()) == pytest.approx(e.difference_usd, abs=1e-9)


def test_a_line_is_spread_over_the_hours_it_covers_and_a_day_line_over_the_days_slot():
    # A daily line (Azure) against hourly metering: the hours it covers with usage are matched, the
    # rest of its GPU time is billed without being used (partial hours), nothing is unexplained.
    slots = [slot(CHAT, h, 6.88, 3600) for h in range(6)]
    lines = [line(CHAT, 0, 6.88 * 24, 6.88 * 24, gpus=1, hours=24)]
    e = explain(slots, lines, billed_through=D + DAY)[(CHAT, D)]
    assert e.parts["partial_hours_usd"] == pytest.approx(6.88 * 18, abs=1e-9)
    assert e.parts["unexplained_usd"] == pytest.approx(0.0, abs=1e-9)
    assert e.parts["usage_without_bill_usd"] == 0.0 and e.parts["bill_without_usage_usd"] == 0.0
    # Where only daily rollups are left, the day is one slot: same answer.
    daily = [MeteredSlot(*CHAT, D, DAY, 6.88 * 6, 6 * 3600)]
    e = explain(daily, lines, billed_through=D + DAY, slot_s_for_day=lambda d: DAY)[(CHAT, D)]
    assert e.parts["partial_hours_usd"] == pytest.approx(6.88 * 18, abs=1e-9)
    assert e.parts["unexplained_usd"] == pytest.approx(0.0, abs=1e-9)


def test_a_charge_lands_on_the_days_it_covers_and_an_unassigned_one_on_its_own_row():
    # A credit for one day lands on that day whole (exactly, whatever the metering's slots); tax for
    # a day and a half is spread by time; an account-wide credit of no tenant is "unassigned"'s.
    NONE = ("acme", "unassigned", "global", "none")
    slots = [slot(CHAT, h, 55.04, 8 * 3600) for h in range(2)]
    lines = [line(CHAT, h, 55.04, 55.04) for h in range(2)]
    lines += [line(NONE, 0, -25.0, category="credit", gpus=0, instance="credit", hours=24),
              line(NONE, 12, 6.0, category="tax", gpus=0, instance="tax", hours=36),
              line(("unassigned", "unassigned", "global", "none"), 0, -7.0, 0.0, category="credit", gpus=0,
                   instance="acct", hours=24)]
    for slot_s in (HOUR, DAY):
        explained = explain(slots, lines, billed_through=D + 2 * HOUR, slot_s_for_day=lambda d: slot_s)
        days = by_tenant_day(explained)
        acme, next_day, unassigned = days[("acme", D)], days[("acme", D + DAY)], days[("unassigned", D)]
        assert acme.parts["credits_usd"] == -25.0 and acme.parts["tax_and_adjustments_usd"] == 2.0
        assert next_day.parts["tax_and_adjustments_usd"] == 4.0 and next_day.metered_usd == 0.0
        assert acme.billed_usd == pytest.approx(2 * 55.04 - 25.0 + 2.0, abs=1e-12)
        assert acme.list_usd == 2 * 55.04 and acme.parts["unexplained_usd"] == 0.0
        assert (unassigned.metered_usd, unassigned.billed_usd, unassigned.parts["credits_usd"]) == (0.0, -7.0, -7.0)
        assert explained[(NONE, D)].instances == {}  # a charge is no instance's GPU time
        for e in [*days.values(), *explained.values()]:
            assert sum(e.parts.values()) == pytest.approx(e.difference_usd, abs=1e-12)


# -- the route, on a database of each backend --------------------------------------------------------------

@pytest.fixture
def client(tmp_path, database_url):
    from api.routes import reconciliation
    from core.db import init_db
    from core.settings import Settings

    settings = Settings(data_dir=tmp_path, database_url=database_url, auth_disabled=True)
    init_db(settings)
    app = FastAPI()
    app.state.settings = settings
    app.include_router(reconciliation.router)
    with TestClient(app) as c:
        c.settings = settings
        yield c


def store(settings, windows, lines):
    from core import rollups
    from core.db import get_engine
    from core.tables.history import AggregateRow, BilledLineItem

    engine = get_engine(settings)
    rollups.upsert(engine, AggregateRow, windows, rollups.AGGREGATE_CONFLICT)
    rows = [{**{f: getattr(ln, f) for f in ("tenant", "service", "region", "gpu_model", "cloud", "instance_id",
                                             "instance_type", "period_start", "period_end", "gpu_count", "pricing",
                                             "cost_usd", "charge_category")},
             "list_cost_usd": ln.list_cost_usd, "billed_cost_usd": ln.billed_cost_usd, "effective_cost_usd": ln.cost_usd,
             "source": f"focus:{ln.instance_id}:{ln.period_start}", "line_id": None, "account": None} for ln in lines]
    rollups.upsert(engine, BilledLineItem, rows, ["cloud", "instance_id", "period_start", "source"])


def agg(key, window_start, window_s, usd, gpu_s):
    return dict(zip(("tenant", "service", "region", "gpu_model"), key), window_start=window_start,
                window_end=window_start + window_s, window_s=window_s, spend_usd=usd,
                spend_rate_usd_h=usd * 3600 / window_s, gpu_seconds=gpu_s, util_avg=0.5, idle_usd=usd / 2, events=1,
                tokens=0, requests=0, fallback_priced_events=0)


def test_the_route_reads_recent_days_from_windows_and_old_ones_from_rollups(client):
    today = int(time.time()) // DAY * DAY
    old = today - 10 * DAY     # past the 1-minute retention (7 days): hourly rollups
    older = today - 100 * DAY  # past the hourly retention (90 days): daily rollups
    yesterday = today - DAY
    windows = [agg(CHAT, yesterday + 60 * i, 60, 55.04 / 60, 8 * 60) for i in range(60)]      # one hour
    windows += [agg(CHAT, yesterday + 60 * i + 30, 60, 99.0, 8 * 60) for i in range(3)]       # not aligned: overlap
    windows += [agg(CHAT, old + HOUR * h, HOUR, 55.04, 8 * 3600) for h in range(2)]
    windows += [agg(CHAT, old + 60 * i, 60, 1000.0, 480) for i in range(3)]                     # deleted by now in real life
    windows += [agg(CHAT, older, DAY, 110.08, 16 * 3600)]
    lines = [Line(*CHAT, "aws", "i-1", "p5.48xlarge", start, start + HOUR, 8, "usage", "reserved", 38.528, 55.04, 0.0)
             for start in (yesterday, old, old + HOUR, older, older + HOUR)]
    lines.append(Line("globex", "ocr", "us-east-1", "H100-80GB", "aws", "i-9", "p5.48xlarge", yesterday,
                      yesterday + HOUR, 8, "usage", "on_demand", 55.04, 55.04, 55.04))
    store(client.settings, windows, lines)

    rows = client.get("/api/reconciliation", params={"days": 120}).json()
    got = {(r["tenant"], r["day"]): r for r in rows}
    iso = lambda t: time.strftime("%Y-%m-%d", time.gmtime(t))  # noqa: E731
    assert set(got) == {("acme", iso(yesterday)), ("acme", iso(old)), ("acme", iso(older)), ("globex", iso(yesterday))}
    for day, n, source in ((yesterday, 1, "1-minute windows"), (old, 2, "hourly rollups"), (older, 2, "daily rollups")):
        r = got[("acme", iso(day))]
        assert r["metered_from"] == source
        assert r["metered_usd"] == pytest.approx(55.04 * n, rel=1e-12)
        assert r["billed_usd"] == pytest.approx(38.528 * n, rel=1e-12) and r["invoiced_usd"] == 0.0
        assert r["list_usd"] == pytest.approx(55.04 * n, rel=1e-12) and r["list_over_metered"] == pytest.approx(1.0)
        assert r["breakdown"]["commitment_discount_usd"] == pytest.approx(-16.512 * n, rel=1e-12)
        assert r["breakdown"]["unexplained_usd"] == pytest.approx(0.0, abs=1e-9)
        assert sum(r["breakdown"].values()) == pytest.approx(r["difference_usd"], abs=1e-9)

    keys = client.get("/api/reconciliation/instances", params={"day": iso(yesterday)}).json()
    assert [(k["tenant"], k["service"], [i["instance_id"] for i in k["instances"]]) for k in keys] == [
        ("acme", "chat", ["i-1"]), ("globex", "ocr", ["i-9"])]
    assert client.get("/api/reconciliation/instances",
                      params={"day": iso(yesterday), "tenant": "globex"}).json()[0]["billed_usd"] == 55.04


def test_bad_days_are_refused_with_the_reason(client):
    r = client.get("/api/reconciliation/instances", params={"day": "2026-13-01"})
    assert r.status_code == 422 and "day" in str(r.json()["detail"])
    r = client.get("/api/reconciliation/instances", params={"day": "2999-01-01"})
    assert r.status_code == 400 and "in the future" in r.json()["detail"]
    r = client.get("/api/reconciliation/instances", params={"day": "1636-06-30"})
    assert r.status_code == 400 and "before 1970" in r.json()["detail"]
    assert client.get("/api/reconciliation/instances").status_code == 422
    assert client.get("/api/reconciliation", params={"days": 0}).status_code == 422


def test_a_tenant_key_sees_its_own_tenant_only(client):
    from api.keys import create_key
    from api.routes import reconciliation

    settings = client.settings.model_copy(update={"auth_disabled": False})
    app = FastAPI()
    app.state.settings = settings
    app.include_router(reconciliation.router)
    yesterday = int(time.time()) // DAY * DAY - DAY
    store(settings, [agg(k, yesterday, 60, 1.0, 60) for k in (CHAT, ("globex", "ocr", "us-east-1", "H100-80GB"))], [])
    key = create_key(settings, tenant="globex", name="t").key
    with TestClient(app) as c:
        auth = {"Authorization": f"Bearer {key}"}
        assert {r["tenant"] for r in c.get("/api/reconciliation", headers=auth).json()} == {"globex"}
        day = time.strftime("%Y-%m-%d", time.gmtime(yesterday))
        assert {r["tenant"] for r in c.get("/api/reconciliation/instances", params={"day": day},
                                           headers=auth).json()} == {"globex"}
        r = c.get("/api/reconciliation/instances", params={"day": day, "tenant": "acme"}, headers=auth)
        assert r.status_code == 403
        assert c.get("/api/reconciliation").status_code == 401
