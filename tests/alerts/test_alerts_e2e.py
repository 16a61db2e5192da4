"""Every rule kind end to end on the real broker: rules created through the REST API after the
worker started reach it over cost.rules; a crafted usage sequence through the Faust worker makes
each rule fire exactly once and resolve exactly once on cost.alerts; every transition reaches a
real webhook receiver once, signed."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter, defaultdict

import httpx
import pytest
from standardwebhooks import Webhook

from contracts.events import UsageEvent
from ingest.producer import EventProducer
from tests.alerts.receiver import Receiver
from tests.support import Stack, read_topic, wait_for

pytestmark = pytest.mark.integration

USD_H = 0.8048  # aws us-east-1 g6.xlarge, one L4
SAMPLE_USD = USD_H * 10 / 3600  # one GPU reporting a 10 s interval
T0 = (int(time.time()) // 86400) * 86400 - 86400 + 12 * 3600  # yesterday 12:00 UTC: 12 h left in that day


def usage(ts, tenant, gpus=1, util=0.9):
    return [UsageEvent(ts=float(ts), tenant=tenant, service="svc", cloud="aws", region="us-east-1",
                       instance_type="g6.xlarge", gpu_model="L4", host=f"{tenant}-h{i}", gpu_index=0,
                       interval_s=10.0, util=util, mem_used_gb=1.0, mem_total_gb=24.0, power_w=70.0)
            for i in range(gpus)]


RULES = [
    {"name": "hourly budget", "kind": "budget", "tenant": "t-budget",
     "params": {"period": "1h", "limit_usd": 150 * SAMPLE_USD}},
    {"name": "daily burn", "kind": "burn_rate", "tenant": "t-burn",
     "params": {"horizon": "day", "limit_usd": 3 * USD_H, "lookback_s": 300}},
    {"name": "idle", "kind": "idle_waste", "tenant": "t-idle", "params": {"threshold": 0.5, "for_s": 120}},
    {"name": "spike", "kind": "anomaly", "tenant": "t-anomaly",
     "params": {"factor": 3.0, "baseline_s": 900, "min_baseline_windows": 6}},
    {"name": "quota", "kind": "gpu_quota", "tenant": "t-quota", "params": {"max_gpus": 3}},
]


def phase(start, end, plan):
    """plan: tenant -> (gpus, util); one batch of events per 10 s step."""
    return [ev for ts in range(start, end, 10) for tenant, (gpus, util) in plan.items()
            for ev in usage(ts, tenant, gpus, util)]


async def send(settings, events, chunk_s=60, timeout_s=60.0):
    """In event-time order, one step at a time (one partition keeps the order), as agents report,
    a minute of event time per chunk; after each chunk, wait until the worker has emitted the
    window of the chunk's last step with every event of it (so every window of the chunk, each
    emitted at that emit or before): during a fast catch-up the worker evicts panes it has not
    emitted yet (see the report in issue 5)."""
    from aiokafka import TopicPartition

    from core.kafka import consumer, stop_consumer

    by_ts = defaultdict(list)
    for ev in events:
        by_ts[ev.ts].append(ev)
    aggregates = consumer(settings=settings, group_id=None)
    await aggregates.start()
    try:
        tp = TopicPartition(settings.aggregates_topic, 0)  # GPUCOST_TOPIC_PARTITIONS=1
        end = (await aggregates.end_offsets([tp]))[tp]  # before assign: not queued behind a fetch
        aggregates.assign([tp])
        aggregates.seek(tp, end)

        async def emitted(ts: float) -> None:
            wanted = Counter(ev.tenant for ev in by_ts[ts])  # the window starting at ts holds only them
            deadline = time.monotonic() + timeout_s
            while wanted:
                assert time.monotonic() < deadline, f"no window starting at {ts} emitted complete for {dict(wanted)}"
                for records in (await aggregates.getmany(tp, timeout_ms=500)).values():
                    for r in records:
                        a = json.loads(r.value)
                        if (a["window_s"] == settings.window_size_s and a["window_start"] == ts
                                and wanted.get(a["tenant"]) == a["events"]):
                            del wanted[a["tenant"]]

        async with EventProducer(settings) as p:
            chunk = last = None
            for ts in sorted(by_ts):
                if chunk is not None and ts >= chunk + chunk_s:
                    await p.flush()
                    await emitted(last)
                    chunk = None
                chunk = ts if chunk is None else chunk
                await p.send_usage(by_ts[ts], wait=False)
                last = ts
            await p.flush()
            await emitted(last)
    finally:
        await stop_consumer(aggregates)


def alerts(stack: Stack) -> list[dict]:
    return [json.loads(r.value) for r in asyncio.run(read_topic(stack.settings, stack.settings.alerts_topic))]


def states(stack: Stack) -> dict[str, list[str]]:
    out = defaultdict(list)
    for a in alerts(stack):
        out[a["fingerprint"]].append(a["state"])
    return out


@pytest.fixture
def alert_stack(kafka_broker, tmp_path, database_url):
    s = Stack(tmp_path, database_url=database_url, GPUCOST_TOPIC_PARTITIONS="1", GPUCOST_EMIT_INTERVAL_S="0.2",
              GPUCOST_WEBHOOK_ALLOW_PRIVATE="true", GPUCOST_WEBHOOK_POLL_S="0.1", GPUCOST_WEBHOOK_BACKOFF_BASE_S="0.2")
    try:
        yield s
    finally:
        s.stop(graceful=False)  # teardown: nothing is checked about the shutdown


def test_each_rule_kind_fires_once_and_resolves_once_through_the_worker(alert_stack):
    stack = alert_stack
    receiver = Receiver()
    try:
        stack.start_worker()
        stack.start_api()
        hook = httpx.post(stack.url + "/api/webhooks", json={"name": "ops", "url": receiver.url},
                          headers=stack.headers, timeout=10).json()
        for rule in RULES:
            r = httpx.post(stack.url + "/api/rules", json=rule, headers=stack.headers, timeout=10)
            assert r.status_code == 201 and r.json()["published"], r.text

        # A: normal use (the budget tenant overspends its hour); B: idle, spike, over quota
        asyncio.run(send(stack.settings, phase(T0, T0 + 900, {
            "t-budget": (2, 0.9), "t-burn": (1, 0.9), "t-idle": (1, 0.95), "t-anomaly": (1, 0.9), "t-quota": (2, 0.9)})))
        asyncio.run(send(stack.settings, phase(T0 + 900, T0 + 1200, {
            "t-burn": (1, 0.9), "t-idle": (1, 0.05), "t-anomaly": (8, 0.9), "t-quota": (5, 0.9)})))
        wait_for(lambda: len(states(stack)) == 8, 60, what="4 budget levels and one alert per other kind firing")
        assert all(s == ["firing"] for s in states(stack).values()), states(stack)

        # C: an hour later only the budget tenant spends, a little: every condition stops holding
        asyncio.run(send(stack.settings, phase(T0 + 3600, T0 + 3900, {"t-budget": (1, 0.9)})))
        wait_for(lambda: all(s[-1] == "resolved" for s in states(stack).values()), 60, what="every alert resolved")
        time.sleep(3.0)  # and nothing more comes

        by_fp = states(stack)
        assert all(s == ["firing", "resolved"] for s in by_fp.values()), by_fp
        fired = [a for a in alerts(stack) if a["state"] == "firing"]
        kinds = defaultdict(list)
        for a in fired:
            kinds[a["rule_kind"]].append(a)
        assert {k: len(v) for k, v in kinds.items()} == {"budget": 4, "burn_rate": 1, "idle_waste": 1, "anomaly": 1, "gpu_quota": 1}
        assert sorted(a["level"] for a in kinds["budget"]) == ["100%", "50%", "75%", "90%"]
        assert all(a["tenant"] == rule["tenant"] for rule in RULES for a in kinds[rule["kind"]])
        burn = kinds["burn_rate"][0]["details"]
        assert burn["projected_low_usd"] <= burn["projected_usd"] <= burn["projected_high_usd"]
        assert kinds["gpu_quota"][0]["value"] > 3

        # every transition reached the webhook once, signed
        wait_for(lambda: len(receiver.acknowledged()) == 16, 30, what="16 deliveries")
        got = [Webhook(hook["secret"]).verify(r.body, r.headers)["data"] for r in receiver.acknowledged()]
        assert len({(a["fingerprint"], a["state"]) for a in got}) == 16
    finally:
        receiver.close()


def test_rule_changes_apply_without_restart_and_a_restarted_worker_neither_repeats_nor_forgets(alert_stack):
    stack = alert_stack
    stack.start_worker()
    stack.start_api()
    api = httpx.Client(base_url=stack.url, headers=stack.headers, timeout=10)
    api.post("/api/rules", json={"name": "daily", "kind": "budget", "tenant": "t-b",
                                 "params": {"period": "1d", "limit_usd": 110 * SAMPLE_USD}}).raise_for_status()
    quota = api.post("/api/rules", json={"name": "quota", "kind": "gpu_quota", "tenant": "t-q",
                                         "params": {"max_gpus": 1}}).json()

    asyncio.run(send(stack.settings, phase(T0, T0 + 600, {"t-b": (1, 0.9), "t-q": (2, 0.9)})))
    wait_for(lambda: len(states(stack)) == 2, 60, what="the quota alert and the 50% budget warning")
    time.sleep(2.5)  # the worker persists its folded budget totals about every second
    stack.kill("worker", signal.SIGTERM)  # a deploy (SIGKILL works too, but Faust's group then waits out a session)
    stack.start_worker()

    # another 10 minutes: $120 x SAMPLE in the day now, over the limit only if nothing was forgotten
    asyncio.run(send(stack.settings, phase(T0 + 600, T0 + 1200, {"t-b": (1, 0.9), "t-q": (2, 0.9)})))
    wait_for(lambda: len(states(stack)) == 5, 90, what="the 75%, 90% and 100% warnings")
    assert api.delete(f"/api/rules/{quota['id']}").status_code == 204  # no restart: the alert resolves
    wait_for(lambda: sum(len(s) for s in states(stack).values()) == 6, 30, what="the quota alert resolved")
    time.sleep(2.0)

    by_level = {(a["rule_kind"], a["level"]): [] for a in alerts(stack)}
    for a in alerts(stack):
        by_level[(a["rule_kind"], a["level"])].append(a["state"])
    assert by_level == {("budget", "50%"): ["firing"], ("budget", "75%"): ["firing"], ("budget", "90%"): ["firing"],
                        ("budget", "100%"): ["firing"], ("gpu_quota", ""): ["firing", "resolved"]}
