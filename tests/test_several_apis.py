"""Two `gpucost api` processes on different ports against one worker: a WebSocket client on each
sees every key exact (each instance reads every partition of cost.aggregates itself), history is
stored once, and every alert transition is delivered to the webhook once across the instances,
also when the instance that held the alert partition is SIGKILLed half way."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid

import httpx
import pytest
import websockets

from contracts.events import UsageEvent
from ingest.producer import EventProducer
from core import kafka
from tests.alerts.receiver import Receiver
from tests.support import Stack, async_wait_for, expected_windows, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300), pytest.mark.one_database]

PRICES = {"H100-80GB": 55.04 / 8, "L4": 0.8048}  # aws us-east-1 p5.48xlarge per GPU, g6.xlarge
FLEET = {"H100-80GB": "p5.48xlarge", "L4": "g6.xlarge"}


def known_events(T: int) -> list[UsageEvent]:
    """12 keys (so every one of the 4 partitions holds some), a few samples each."""
    out = []
    for t in range(4):
        for svc in range(3):
            model = "H100-80GB" if (t + svc) % 2 else "L4"
            for j, dt in enumerate((1, 14, 47, 61, 95)[: 2 + (t + svc) % 4]):
                out.append(UsageEvent(
                    ts=T + dt + svc, tenant=f"tenant-{t}", service=f"svc-{svc}", cloud="aws", region="us-east-1",
                    instance_type=FLEET[model], gpu_model=model, host=f"h{t}{svc}", gpu_index=j, interval_s=10.0,
                    util=round(0.1 * (1 + (t + j) % 9), 2), mem_used_gb=1.0, mem_total_gb=80.0, power_w=100.0,
                    tokens=100 * j))
    return out


class Client:
    def __init__(self, url: str, key: str):
        self.url = url.replace("http", "ws") + "/ws?api_key=" + key
        self.latest: dict[tuple, dict] = {}
        self.task = None

    async def start(self):
        self.ws = await websockets.connect(self.url)
        await self.ws.send(json.dumps({"op": "subscribe", "channel": "aggregates", "filter": {}}))
        self.task = asyncio.create_task(self._read())

    async def _read(self):
        async for raw in self.ws:
            msg = json.loads(raw)
            for r in msg["data"] if msg["type"] == "snapshot" else [msg["data"]] if msg["type"] == "aggregate" else []:
                self.latest[(r["tenant"], r["service"], r["region"], r["gpu_model"], r["model_version"],
                             r["window_start"])] = r


def exact(got: dict, expected: dict) -> bool:
    return set(got) == set(expected) and all(
        got[k]["events"] == e["events"] and got[k]["tokens"] == e["tokens"]
        and all(got[k][f] == pytest.approx(e[f], rel=1e-9, abs=1e-12) for f in ("spend_usd", "gpu_seconds", "idle_usd"))
        for k, e in expected.items())


async def test_two_api_instances_each_fan_out_every_key_and_deliver_each_alert_once(kafka_broker, tmp_path):
    stack = Stack(tmp_path, GPUCOST_WEBHOOK_ALLOW_PRIVATE="true", GPUCOST_WEBHOOK_POLL_S="0.1",
                  GPUCOST_WEBHOOK_BACKOFF_BASE_S="0.2")
    receiver = Receiver()
    try:
        await asyncio.to_thread(stack.start_worker)
        urls = [await asyncio.to_thread(stack.start_api, "api"), await asyncio.to_thread(stack.start_api, "api2")]
        clients = [Client(u, stack.ensure_admin_key()) for u in urls]
        for c in clients:
            await c.start()

        T = (int(time.time()) // 60) * 60 - 180
        events = known_events(T)
        async with EventProducer(stack.settings) as producer:
            await producer.send_usage(events)
        expected = expected_windows(events, PRICES)
        assert len({k[:4] for k in expected}) == 12
        for i, c in enumerate(clients):
            await async_wait_for(lambda c=c: exact(c.latest, expected), 60, what=f"every key exact on API {i + 1}")

        def history_exact(url: str) -> bool:
            rows = httpx.get(url + "/api/history", params={"since": T - 120}, headers=stack.headers, timeout=10).json()
            keyed = {(r["tenant"], r["service"], r["region"], r["gpu_model"], r["model_version"], r["window_start"]): r
                     for r in rows}
            return len(keyed) == len(rows) and exact(keyed, expected)

        wait_for(lambda: all(history_exact(u) for u in urls), 30, what="history exact from both instances")

        # Alerts: one webhook, 10 firing transitions, then the first instance is SIGKILLed (if it
        # held cost.alerts the other takes the partition over and re-reads what was not
        # committed), then the 10 resolutions.
        hook = httpx.post(urls[0] + "/api/webhooks", json={"name": "ops", "url": receiver.url},
                          headers=stack.headers, timeout=10)
        assert hook.status_code == 201, hook.text
        fps = [uuid.uuid4().hex for _ in range(10)]

        def alert(fp: str, state: str) -> dict:
            return {"fingerprint": fp, "state": state, "starts_at": T + 60.0, "ends_at": T + 600.0 if state == "resolved" else None,
                    "emitted_at": time.time(), "tenant": "tenant-0", "group": {"tenant": "tenant-0"},  # a whole AlertEvent
                    "rule_id": "r1", "rule_name": "budget",
                    "rule_kind": "budget", "severity": "warning", "value": 2.0, "threshold": 1.0, "summary": "over"}

        async def publish(alerts: list[dict]) -> None:
            p = kafka.producer(stack.settings)
            await p.start()
            try:
                for a in alerts:
                    await p.send_and_wait(stack.settings.alerts_topic, json.dumps(a).encode(), key=a["fingerprint"].encode())
            finally:
                await p.stop()

        await publish([alert(fp, "firing") for fp in fps])
        await async_wait_for(lambda: len(receiver.acknowledged()) >= 10, 60, what="10 firing deliveries")
        stack.kill("api", signal.SIGKILL)
        await publish([alert(fp, "resolved") for fp in fps])
        await async_wait_for(lambda: len(receiver.acknowledged()) >= 20, 90, what="10 resolved deliveries")
        await asyncio.sleep(3.0)  # nothing more may come
        got = [(r.json()["data"]["fingerprint"], r.json()["data"]["state"]) for r in receiver.requests]
        assert sorted(got) == sorted((fp, s) for fp in fps for s in ("firing", "resolved")), got
        assert stack.procs["api2"].poll() is None, stack.log("api2")[-3000:]
    finally:
        for c in locals().get("clients", []):
            if c.task:
                c.task.cancel()
        receiver.close()
        stack.stop()
