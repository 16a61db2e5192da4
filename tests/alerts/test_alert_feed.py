"""The dashboard's live alert feed: transitions on cost.alerts reach /ws subscribers of the
"alerts" channel, each key seeing only its tenant's alerts."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from core.kafka import producer
from tests.api.test_webhooks import an_alert
from tests.support import async_wait_for

pytestmark = pytest.mark.integration


async def subscribe(stack, key: str):
    ws = await websockets.connect(stack.ws_url + "?api_key=" + key)
    await ws.send(json.dumps({"op": "subscribe", "channel": "alerts", "filter": {}}))
    got: list[dict] = []

    async def read():
        async for raw in ws:
            msg = json.loads(raw)
            if msg["type"] == "alert":
                got.append(msg["data"])
            elif msg["type"] == "snapshot":
                got.extend(msg["data"])
    return ws, got, asyncio.create_task(read())


async def test_alert_transitions_reach_the_dashboard_feed_per_tenant(stack):
    stack.start_api()
    admin_ws, admin_got, t1 = await subscribe(stack, stack.admin_key)
    acme_ws, acme_got, t2 = await subscribe(stack, stack.create_key("acme"))
    await asyncio.sleep(0.5)
    p = producer(stack.settings)
    await p.start()
    try:
        for a in (an_alert(tenant="acme", fingerprint="fp-acme"), an_alert(tenant="globex", fingerprint="fp-globex"),
                  an_alert(state="resolved", tenant="acme", fingerprint="fp-acme")):
            await p.send_and_wait(stack.settings.alerts_topic, key=a["fingerprint"].encode(), value=json.dumps(a).encode())
    finally:
        await p.stop()
    await async_wait_for(lambda: {(a["fingerprint"], a["state"]) for a in admin_got} >=
                         {("fp-acme", "resolved"), ("fp-globex", "firing")}, 20, what="admin feed")
    await async_wait_for(lambda: ("fp-acme", "resolved") in {(a["fingerprint"], a["state"]) for a in acme_got}, 20,
                         what="acme feed")
    await asyncio.sleep(0.5)
    assert {a["tenant"] for a in acme_got} == {"acme"}
    shown = acme_got[-1]
    assert shown["rule_name"] and shown["summary"] and shown["state"] == "resolved"  # what web/static/app.js shows
    for ws, t in ((admin_ws, t1), (acme_ws, t2)):
        await ws.close()
        t.cancel()
