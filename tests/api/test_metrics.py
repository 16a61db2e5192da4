"""`GET /metrics` read back with prometheus_client's own parser: the spend counters equal the totals
of the events streamed through the real broker and worker, a tenant key sees only its tenant, and
the pipeline's health (dead letters by reason) is there for admins."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from contracts.events import UsageEvent
from ingest.producer import EventProducer
from tests.support import ROOT, async_wait_for

pytestmark = pytest.mark.integration

H100_P5_USD_H = 55.04 / 8
L4_G6_USD_H = 0.8048


def usage(ts, tenant, service, instance_type, gpu_model, util, interval_s=10.0, gpu_index=0):
    return UsageEvent(ts=ts, tenant=tenant, service=service, cloud="aws", region="us-east-1",
                      instance_type=instance_type, gpu_model=gpu_model, host=f"{tenant}-host", gpu_index=gpu_index,
                      interval_s=interval_s, util=util, mem_used_gb=1.0, mem_total_gb=24.0, power_w=100.0)


def scrape(stack, key: str | None) -> dict[str, dict[tuple, float]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.get(stack.url + "/metrics", headers=headers, timeout=10)
    r.raise_for_status()
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def labels(**kw) -> tuple:
    return tuple(sorted(kw.items()))


async def test_metrics_counters_equal_the_streamed_totals_and_are_scoped_by_key(stack):
    stack.start_worker()
    stack.start_api()
    T = (int(time.time()) // 60) * 60 - 240
    acme = [usage(T + 5 + 10 * i, "acme", "chat", "p5.48xlarge", "H100-80GB", u) for i, u in enumerate((0.5, 1.0, 0.25, 0.0, 0.75, 0.5, 1.0, 0.2))]
    acme += [usage(T + 95, "acme", "chat", "p5.48xlarge", "H100-80GB", 0.5, gpu_index=1)]
    globex = [usage(T + 30, "globex", "ocr", "g6.xlarge", "L4", 0.2, interval_s=30.0),
              usage(T + 150, "globex", "ocr", "g6.xlarge", "L4", 0.6, interval_s=30.0)]
    async with EventProducer(stack.settings) as producer:
        await producer.send_usage(acme + globex)
        bad = usage(T + 20, "acme", "chat", "p5.48xlarge", "H100-80GB", 0.5).model_dump()
        bad["util"] = 3.0
        await producer.send_raw(stack.settings.usage_topic, json.dumps(bad).encode(), b"bad")

    # The stream's totals, by hand: spend = price x interval, idle = spend x (1 - util).
    acme_spend = sum(H100_P5_USD_H * e.interval_s / 3600 for e in acme)
    acme_idle = sum(H100_P5_USD_H * e.interval_s / 3600 * (1 - e.util) for e in acme)
    globex_spend = sum(L4_G6_USD_H * e.interval_s / 3600 for e in globex)
    acme_key = labels(tenant="acme", service="chat", region="us-east-1", gpu_model="H100-80GB", model_version="")
    globex_key = labels(tenant="globex", service="ocr", region="us-east-1", gpu_model="L4", model_version="")

    def counters_match():
        m = scrape(stack, stack.admin_key)
        spend = m.get("gpucost_spend_usd_total", {})
        return (spend.get(acme_key) == pytest.approx(acme_spend, rel=1e-9)
                and spend.get(globex_key) == pytest.approx(globex_spend, rel=1e-9)
                and m.get("gpucost_deadletters_total", {}).get(labels(reason="invalid usage event")) == 1)

    await async_wait_for(counters_match, 60, what="/metrics counters equal to the stream's totals")
    m = scrape(stack, stack.admin_key)
    assert m["gpucost_idle_usd_total"][acme_key] == pytest.approx(acme_idle, rel=1e-9)
    assert m["gpucost_gpu_seconds_total"][acme_key] == pytest.approx(90.0)
    assert m["gpucost_gpu_seconds_total"][globex_key] == pytest.approx(60.0)
    assert (m["gpucost_usage_events_total"][acme_key], m["gpucost_usage_events_total"][globex_key]) == (9, 2)
    assert set(m["gpucost_spend_rate_usd_per_hour"]) == {acme_key, globex_key}
    assert 0 <= m["gpucost_utilization_ratio"][acme_key] <= 1
    assert m["gpucost_aggregates_received_total"][()] > 0
    assert () in m["gpucost_websocket_clients"]
    # Caught up: the worker's meter has read every usage message (lag is refreshed every 15 s).
    await async_wait_for(lambda: scrape(stack, stack.admin_key).get("gpucost_consumer_lag_messages", {})
                         .get(labels(group="meter")) == 0, 40, what="meter lag 0")

    # A tenant key: its own series, nothing of another tenant, no pipeline internals.
    mine = scrape(stack, stack.create_key("acme"))
    assert set(mine["gpucost_spend_usd_total"]) == {acme_key}
    assert mine["gpucost_spend_usd_total"][acme_key] == pytest.approx(acme_spend, rel=1e-9)
    assert not any(name.startswith(("gpucost_deadletters", "gpucost_websocket", "gpucost_webhook")) for name in mine)
    assert all(dict(k).get("tenant") in (None, "acme") for series in mine.values() for k in series)

    assert httpx.get(stack.url + "/metrics", timeout=5).status_code == 401


def test_the_grafana_dashboard_queries_only_series_that_metrics_exports(stack):
    from ingest.dcgm import DcgmScraper, stats_file

    # A DCGM scraper beside the API (same data dir) adds its per-target series.
    DcgmScraper(["node-1"], stats_path=stats_file(stack.settings.data_dir)).write_stats()
    stack.start_api()
    text = httpx.get(stack.url + "/metrics", headers=stack.headers, timeout=10).text
    exported = set()
    for family in text_string_to_metric_families(text):
        exported.add(family.name + ("_total" if family.type == "counter" else ""))
    assert "gpucost_dcgm_target_up" in exported and "gpucost_spend_usd_total" in exported
    stats = httpx.get(stack.url + "/api/stats", headers=stack.headers, timeout=10).json()
    assert [t["url"] for t in stats["dcgm"]["targets"]] == ["http://node-1:9400/metrics"]
    dashboard = json.loads((ROOT / "docs" / "grafana-gpucost.json").read_text())
    queried = {name for panel in dashboard["panels"] for t in panel["targets"]
               for name in re.findall(r"gpucost_[a-z_]+", t["expr"])}
    assert queried and queried <= exported, queried - exported
