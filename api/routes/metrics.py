"""`GET /metrics`: gpucost's numbers in the Prometheus text format (rendered by `prometheus_client`),
for Prometheus and Grafana. It needs an API key like every other route, sent as Prometheus sends
one (`authorization: {credentials: <key>}` in the scrape config: `Authorization: Bearer <key>`);
a tenant key sees its tenant's series only, an admin key every tenant plus the pipeline's health.

Series (labels: tenant, service, region, gpu_model, model_version ("" where events carry none):
bounded by the fleet and its deployed versions, never per event):
- `gpucost_spend_usd_total`, `gpucost_idle_usd_total`, `gpucost_gpu_seconds_total`,
  `gpucost_usage_events_total`: counters, the
  sum of the stored tiled windows (each event once; revisions by late events only add). They cover
  the retained history (GPUCOST_HISTORY_RETENTION_S): pruning old windows reads as a counter reset.
- `gpucost_spend_rate_usd_per_hour`, `gpucost_idle_rate_usd_per_hour`, `gpucost_utilization_ratio`:
  gauges from each key's newest window.
- `gpucost_billed_usd_total`: billed GPU usage line items stored per tenant and cloud (credits, tax
  and adjustments are not in it: a counter never falls).
- `gpucost_alert_firing` (1 firing, 0 resolved) per alert rule and group.
- Admin only: `gpucost_consumer_lag_messages{group}` (the worker's meter on gpu.usage, the
  API's readers of cost.aggregates and cost.billed; refreshed at most every 15 s),
  `gpucost_aggregates_received_total`, `gpucost_deadletters_total{reason}`,
  `gpucost_websocket_clients`, `gpucost_websocket_dropped_total`,
  `gpucost_webhook_deliveries{status}`, and the DCGM scraper's `gpucost_dcgm_*` series when one
  runs beside this API (it writes its state under GPUCOST_DATA_DIR)."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4 as CONTENT_TYPE  # Prometheus 2 and 3 both read it
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select

from api.auth import Principal, principal
from core.db import session_scope
from core.tables.alerts import DeliveryRow
from core.tables.history import AggregateRow, BilledLineItem
from ingest.dcgm import stats_file

router = APIRouter(tags=["metrics"])
KEY_LABELS = ["tenant", "service", "region", "gpu_model", "model_version"]
ALERT_LABELS = ["rule_id", "rule_name", "rule_kind", "level", "severity", *KEY_LABELS]


def _stored_totals(settings, tenant: str | None) -> dict:
    """Sums over the stored windows that tile the timeline (start on a multiple of their size),
    billed totals and webhook deliveries by status, in one database session."""
    size = settings.window_size_s
    totals = (select(AggregateRow.tenant, AggregateRow.service, AggregateRow.region, AggregateRow.gpu_model,
                     AggregateRow.model_version, func.sum(AggregateRow.spend_usd), func.sum(AggregateRow.idle_usd), func.sum(AggregateRow.gpu_seconds),
                     func.sum(AggregateRow.events))
              .where(AggregateRow.window_s == size, AggregateRow.window_start % size == 0)
              .group_by(AggregateRow.tenant, AggregateRow.service, AggregateRow.region, AggregateRow.gpu_model,
                        AggregateRow.model_version))
    # GPU usage lines only: a counter never falls, and credits (negative) would make it; charges
    # are in /api/reconciliation.
    billed = (select(BilledLineItem.tenant, BilledLineItem.cloud, func.sum(BilledLineItem.cost_usd))
              .where(BilledLineItem.charge_category == "usage")
              .group_by(BilledLineItem.tenant, BilledLineItem.cloud))
    if tenant is not None:
        totals = totals.where(AggregateRow.tenant == tenant)
        billed = billed.where(BilledLineItem.tenant == tenant)
    with session_scope(settings) as s:
        out = {"windows": s.execute(totals).all(), "billed": s.execute(billed).all()}
        if tenant is None:
            out["deliveries"] = s.execute(select(DeliveryRow.status, func.count()).group_by(DeliveryRow.status)).all()
    return out


class _Snapshot:
    """A one-off collector over what this request may see."""

    def __init__(self, hub, stored: dict, p: Principal, dcgm: dict | None, lag: dict[str, int] | None = None):
        self.hub, self.stored, self.p, self.dcgm, self.lag = hub, stored, p, dcgm, lag or {}

    def collect(self):
        spend = CounterMetricFamily("gpucost_spend_usd", "Metered GPU spend (USD).", labels=KEY_LABELS)
        idle = CounterMetricFamily("gpucost_idle_usd", "Metered spend on unused GPU capacity (USD).", labels=KEY_LABELS)
        gpu_s = CounterMetricFamily("gpucost_gpu_seconds", "GPU-seconds metered.", labels=KEY_LABELS)
        events = CounterMetricFamily("gpucost_usage_events", "Usage events metered.", labels=KEY_LABELS)
        for tenant, service, region, model, version, spend_usd, idle_usd, seconds, n in self.stored["windows"]:
            labels = [tenant, service, region, model, version]
            spend.add_metric(labels, float(spend_usd or 0))
            idle.add_metric(labels, float(idle_usd or 0))
            gpu_s.add_metric(labels, float(seconds or 0))
            events.add_metric(labels, float(n or 0))
        yield from (spend, idle, gpu_s, events)

        rate = GaugeMetricFamily("gpucost_spend_rate_usd_per_hour", "Spend rate over the newest window (USD/h).",
                                 labels=KEY_LABELS)
        idle_rate = GaugeMetricFamily("gpucost_idle_rate_usd_per_hour", "Idle waste rate over the newest window (USD/h).",
                                      labels=KEY_LABELS)
        util = GaugeMetricFamily("gpucost_utilization_ratio", "GPU utilization over the newest window (0-1, "
                                 "weighted by GPU-seconds).", labels=KEY_LABELS)
        for rec in list(self.hub.latest.values()):
            if not self.p.allows(rec["tenant"]):
                continue
            labels = [rec["tenant"], rec["service"], rec["region"], rec["gpu_model"], rec.get("model_version") or ""]
            rate.add_metric(labels, float(rec["spend_rate_usd_h"]))
            idle_rate.add_metric(labels, float(rec["idle_usd"]) * 3600 / rec["window_s"])
            util.add_metric(labels, float(rec["util_avg"]))
        yield from (rate, idle_rate, util)

        billed = CounterMetricFamily("gpucost_billed_usd", "Billed GPU instance line items stored (USD).",
                                     labels=["tenant", "cloud"])
        for tenant, cloud, cost in self.stored["billed"]:
            billed.add_metric([tenant, cloud], float(cost or 0))
        yield billed

        firing = GaugeMetricFamily("gpucost_alert_firing", "1 while an alert fires, 0 once resolved.",
                                   labels=ALERT_LABELS)
        for alert in list(self.hub.recent_alerts.values()):
            if alert.get("tenant") is not None and not self.p.allows(alert["tenant"]):
                continue
            if alert.get("tenant") is None and not self.p.is_admin:
                continue
            firing.add_metric([str(alert.get(k) if alert.get(k) is not None else "") for k in ALERT_LABELS],
                              1.0 if alert.get("state") == "firing" else 0.0)
        yield firing

        if not self.p.is_admin:
            return
        hub = self.hub
        yield CounterMetricFamily("gpucost_aggregates_received", "Window aggregates this API has read.",
                                  value=hub.records_in)
        dead = CounterMetricFamily("gpucost_deadletters", "Events dead-lettered, by reason.", labels=["reason"])
        for reason, n in sorted(hub.deadletters.items()):
            dead.add_metric([reason], n)
        yield dead
        lag = GaugeMetricFamily("gpucost_consumer_lag_messages", "Messages a consumer group has yet to read.",
                                labels=["group"])
        for group, n in sorted(self.lag.items()):
            lag.add_metric([group], n)
        yield lag
        yield GaugeMetricFamily("gpucost_websocket_clients", "Open WebSocket clients.", value=len(hub.clients))
        yield CounterMetricFamily("gpucost_websocket_dropped", "Updates coalesced or evicted for slow WebSocket clients.",
                                  value=sum(c.dropped + c.overflow for c in list(hub.clients)))
        deliveries = GaugeMetricFamily("gpucost_webhook_deliveries", "Webhook deliveries by status.", labels=["status"])
        for status, n in self.stored.get("deliveries", []):
            deliveries.add_metric([status], n)
        yield deliveries
        if self.dcgm:
            yield from _dcgm_families(self.dcgm)


def _dcgm_families(stats: dict):
    up = GaugeMetricFamily("gpucost_dcgm_target_up", "1 if the last scrape of the exporter succeeded.", labels=["target"])
    failures = CounterMetricFamily("gpucost_dcgm_scrape_failures", "Failed scrapes of the exporter.", labels=["target"])
    events = CounterMetricFamily("gpucost_dcgm_events", "Usage events made from the exporter.", labels=["target"])
    blank = CounterMetricFamily("gpucost_dcgm_blank_readings", "Device scrapes skipped for a DCGM blank or NaN.",
                                labels=["target"])
    for t in stats.get("targets", []):
        up.add_metric([t["url"]], 0.0 if t["consecutive_failures"] else 1.0)
        failures.add_metric([t["url"]], t["failures"])
        events.add_metric([t["url"]], t["events"])
        blank.add_metric([t["url"]], t["blank_skipped"])
    return up, failures, events, blank


def _dcgm_stats(settings) -> dict | None:
    try:
        return json.loads(stats_file(settings.data_dir).read_text())
    except (OSError, ValueError):
        return None


LAG_TTL_S = 15.0


async def _consumer_lag(app) -> dict[str, int]:
    """Lag per consumer group: end offsets minus committed offsets over the group's topic (a
    partition the group never committed counts whole). Cached: Prometheus may scrape often."""
    import time

    from aiokafka import TopicPartition

    from core import kafka

    cached = getattr(app.state, "metrics_lag", None)
    if cached is not None and time.monotonic() - cached[0] < LAG_TTL_S:
        return cached[1]
    s = app.state.settings
    groups = {"meter": (f"{s.topic_prefix}{s.worker_id}-usage", s.usage_topic),
              "api-aggregates": (f"{s.topic_prefix}gpucost-api", s.aggregates_topic),
              "api-billed": (f"{s.topic_prefix}gpucost-api-billed", s.billed_topic)}
    out: dict[str, int] = {}
    admin, reader = kafka.admin(s), kafka.consumer(settings=s, group_id=None)
    try:
        await asyncio.wait_for(asyncio.gather(admin.start(), reader.start()), 5)
        for name, (group, topic) in groups.items():
            committed = await asyncio.wait_for(admin.list_consumer_group_offsets(group), 5)
            tps = [TopicPartition(topic, p) for p in sorted(await kafka.partitions_of(reader, topic))]
            ends = await asyncio.wait_for(reader.end_offsets(tps), 5) if tps else {}
            out[name] = sum(max(0, ends[tp] - (committed[tp].offset if tp in committed else 0)) for tp in tps)
    except Exception:  # the broker is away: the other series still answer, lag is left out
        out = {}
    finally:
        await admin.close()
        await kafka.stop_consumer(reader)
    app.state.metrics_lag = (time.monotonic(), out)
    return out


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
async def metrics(request: Request, p: Principal = Depends(principal)) -> Response:
    settings = request.app.state.settings
    stored = await asyncio.to_thread(_stored_totals, settings, p.tenant)
    dcgm = await asyncio.to_thread(_dcgm_stats, settings) if p.is_admin else None
    lag = await _consumer_lag(request.app) if p.is_admin else None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(request.app.state.hub, stored, p, dcgm, lag))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE)
