"""End to end on the real broker: known usage events through the Faust worker come out exact on a
WebSocket subscription and in REST history; filters deliver only matching keys; bad events land
in the dead-letter topic with a reason while the good ones around them are counted exactly."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import websockets

from contracts.events import UsageEvent
from ingest.producer import EventProducer
from tests.support import async_wait_for, expected_windows, read_topic

pytestmark = pytest.mark.integration

H100_P5_USD_H = 55.04 / 8  # aws us-east-1 p5.48xlarge, per GPU
L4_G6_USD_H = 0.8048       # aws us-east-1 g6.xlarge


def usage(ts, tenant, service, instance_type, gpu_model, util, interval_s=10.0, gpu_index=0, host=None, **kw):
    return UsageEvent(ts=ts, tenant=tenant, service=service, cloud="aws", region="us-east-1",
                      instance_type=instance_type, gpu_model=gpu_model, host=host or f"{tenant}-host",
                      gpu_index=gpu_index, interval_s=interval_s, util=util, mem_used_gb=1.0,
                      mem_total_gb=80.0 if gpu_model.startswith("H100") else 24.0, power_w=200.0, **kw)


def matches(rec: dict, exp: dict) -> bool:
    return rec["events"] == exp["events"] and all(
        rec[k] == pytest.approx(exp[k], rel=1e-9, abs=1e-12) for k in exp)


class WSClient:
    def __init__(self, ws):
        self.ws = ws
        self.latest: dict[tuple, dict] = {}
        self.messages: list[dict] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self):
        async for raw in self.ws:
            msg = json.loads(raw)
            self.messages.append(msg)
            records = msg["data"] if msg["type"] == "snapshot" else [msg["data"]] if msg["type"] == "aggregate" else []
            for r in records:
                self.latest[(r["tenant"], r["service"], r["region"], r["gpu_model"], r["model_version"],
                             r["window_start"])] = r


async def connect(stack, flt: dict) -> WSClient:
    ws = await websockets.connect(stack.ws_url, additional_headers=getattr(stack, "headers", {}))
    await ws.send(json.dumps({"op": "subscribe", "channel": "aggregates", "filter": flt}))
    return WSClient(ws)


async def test_known_events_come_out_exact_on_websocket_and_rest_history(stack):
    stack.start_worker()
    stack.start_api()
    everyone = await connect(stack, {})
    only_acme = await connect(stack, {"tenant": "acme"})

    T = (int(time.time()) // 60) * 60 - 180
    acme = [
        usage(T + 1, "acme", "chat", "p5.48xlarge", "H100-80GB", 0.5, gpu_index=0),
        usage(T + 1, "acme", "chat", "p5.48xlarge", "H100-80GB", 0.9, gpu_index=1),
        usage(T + 11, "acme", "chat", "p5.48xlarge", "H100-80GB", 0.0),
        usage(T + 59, "acme", "chat", "p5.48xlarge", "H100-80GB", 1.0),
        usage(T + 75, "acme", "chat", "p5.48xlarge", "H100-80GB", 0.25, tokens=1000),
    ]
    globex = [
        usage(T + 5, "globex", "ocr", "g6.xlarge", "L4", 0.2, interval_s=30.0),
        usage(T + 65, "globex", "ocr", "g6.xlarge", "L4", 0.8, interval_s=30.0),
    ]
    good = acme + globex
    async with EventProducer(stack.settings) as producer:
        await producer.send_usage(acme[:2])  # one batch message for the host's two GPUs
        await producer.send_raw(stack.settings.usage_topic, b'{"ts": 1, "tenant": ', b"bad-json")
        await producer.send_usage(acme[2:3] + globex[:1])
        bad = usage(T + 20, "acme", "chat", "p5.48xlarge", "H100-80GB", 0.5).model_dump()
        bad["util"] = 2.0
        await producer.send_raw(stack.settings.usage_topic, json.dumps(bad).encode(), b"bad-util")
        unpriced = usage(T + 21, "acme", "chat", "x9.mega", "Z9000", 0.5)
        await producer.send_usage([unpriced])
        # A batch with one bad member: the good member is kept.
        batch = [json.loads(acme[3].model_dump_json()), {**bad, "gpu_index": 3}]
        await producer.send_raw(stack.settings.usage_topic, json.dumps(batch).encode(), b"acme-host")
        await producer.send_usage(acme[4:] + globex[1:])

    expected = expected_windows(good, {"H100-80GB": H100_P5_USD_H, "L4": L4_G6_USD_H})
    # A hand-computed window as a check on the reference itself: acme's [T, T+60) holds 4 samples of
    # 10 s on an H100 at 6.88 USD/h, utils 0.5, 0.9, 0.0, 1.0.
    w = expected[("acme", "chat", "us-east-1", "H100-80GB", "", T)]
    assert w["spend_usd"] == pytest.approx(4 * 6.88 * 10 / 3600)
    assert w["util_avg"] == pytest.approx(0.6)
    assert w["idle_usd"] == pytest.approx(6.88 * 10 / 3600 * (0.5 + 0.1 + 1.0 + 0.0))
    assert w["spend_rate_usd_h"] == pytest.approx(4 * 6.88 * 10 / 3600 * 60)

    def all_exact(client, keys):
        return all(k in client.latest and matches(client.latest[k], expected[k]) for k in keys)

    await async_wait_for(lambda: all_exact(everyone, expected), 60, what="exact aggregates on /ws")
    acme_keys = [k for k in expected if k[0] == "acme"]
    await async_wait_for(lambda: all_exact(only_acme, acme_keys), 30, what="acme aggregates on filtered /ws")
    await asyncio.sleep(1.5)  # let anything else that was coming arrive
    assert {k[0] for k in only_acme.latest} == {"acme"}, "filtered subscription leaked other tenants"
    assert set(everyone.latest) == set(expected), "aggregates for keys/windows no event belongs to"

    def history_exact():
        r = httpx.get(stack.url + "/api/history", params={"since": T - 60}, headers=getattr(stack, "headers", {}), timeout=5)
        rows = {(x["tenant"], x["service"], x["region"], x["gpu_model"], x["model_version"], x["window_start"]): x
                for x in r.json()}
        return set(rows) == set(expected) and all(matches(rows[k], expected[k]) for k in expected)

    await async_wait_for(history_exact, 30, what="exact REST history")

    dead = await read_topic(stack.settings, stack.settings.deadletter_topic)
    reasons = sorted(dict(r.headers)["reason"].decode() for r in dead)
    assert len(reasons) == 4, reasons
    assert any(r.startswith("invalid usage event: event: Invalid JSON") for r in reasons)
    assert any("batch index 1" in r and "util" in r for r in reasons)
    assert any(r.startswith("invalid usage event: util") for r in reasons)
    assert any(r.startswith("unpriceable") and "Z9000" in r for r in reasons)
    raw = {r.key: r.value for r in dead}
    assert raw[b"bad-json"] == b'{"ts": 1, "tenant": '
    # Valid events around the bad ones, counted exactly: each event is in size/step = 6 windows.
    assert sum(r["events"] for r in everyone.latest.values()) == len(good) * 6

    stats = httpx.get(stack.url + "/api/stats", headers=getattr(stack, "headers", {}), timeout=5).json()
    assert stats["deadletters_total"] == 4
    assert "Error" not in stack.log("worker") or "Traceback" not in stack.log("worker"), stack.log("worker")[-3000:]
    for c in (everyone, only_acme):
        c.task.cancel()
        await c.ws.close()


async def test_websocket_rejects_bad_subscriptions_with_a_message(stack):
    stack.start_api()
    async with websockets.connect(stack.ws_url, additional_headers=getattr(stack, "headers", {})) as ws:
        await ws.send(json.dumps({"op": "subscribe", "channel": "nope"}))
        assert "channel must be one of" in json.loads(await ws.recv())["error"]
        await ws.send(json.dumps({"op": "subscribe", "channel": "aggregates", "filter": {"colour": "red"}}))
        assert "unknown filter fields" in json.loads(await ws.recv())["error"]
        await ws.send("not json")
        assert json.loads(await ws.recv())["type"] == "error"
        await ws.send(json.dumps({"op": "subscribe", "channel": "aggregates", "filter": {"tenant": "x"}}))
        assert json.loads(await ws.recv())["type"] == "subscribed"
        snap = json.loads(await ws.recv())
        assert snap["type"] == "snapshot" and snap["data"] == []


async def test_a_price_override_set_through_the_api_meters_new_usage(stack):
    stack.start_api()
    r = httpx.put(stack.url + "/api/pricing/overrides", headers=stack.headers, timeout=5, json={
        "cloud": "aws", "region": "us-east-1", "instance_type": "p5.48xlarge", "on_demand_usd_h": 80.0,
        "note": "negotiated discount"})
    assert r.status_code == 200, r.text
    stack.start_worker()  # reads the stored overrides before its first event
    T = (int(time.time()) // 60) * 60 - 120
    async with EventProducer(stack.settings) as producer:
        await producer.send_usage([usage(T + 1, "acme", "chat", "p5.48xlarge", "H100-80GB", 0.5)])

    def priced_at_override():
        rows = httpx.get(stack.url + "/api/history", params={"since": T - 60}, headers=stack.headers, timeout=5).json()
        return rows and all(x["spend_usd"] == pytest.approx(80.0 / 8 * 10 / 3600, rel=1e-9) for x in rows)

    await async_wait_for(priced_at_override, 60, what="usage metered at the override price")


async def test_a_connection_may_hold_at_most_100_subscriptions(stack):
    stack.start_api()
    async with websockets.connect(stack.ws_url, additional_headers=stack.headers) as ws:
        for i in range(101):
            await ws.send(json.dumps({"op": "subscribe", "channel": "aggregates", "filter": {"service": f"s{i}"}}))
        replies = []
        while len(replies) < 201:  # 100 x (subscribed, snapshot) + 1 error
            replies.append(json.loads(await ws.recv()))
        assert [r["type"] for r in replies].count("subscribed") == 100
        assert "at most 100 subscriptions" in replies[-1]["error"]
