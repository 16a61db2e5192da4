"""Model version as a dimension (issue 11), end to end on the real broker and worker: a canary and
the stable version of one service come out as windows of their own, each the exact sum of its own
events (and events without a version under ""), on `cost.aggregates`, in REST history and latest,
and on a WebSocket subscription filtered by version; a bad filter is refused with a clear answer."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import websockets

from ingest.producer import EventProducer
from tests.api.test_live_pipeline import H100_P5_USD_H, matches, usage
from tests.support import async_wait_for, expected_windows, last_aggregates, read_topic

pytestmark = pytest.mark.integration

SAMPLE_USD = H100_P5_USD_H * 10 / 3600  # one 10 s sample on one H100 of a p5.48xlarge


def chat(ts: float, util: float, version: str | None, gpu_index: int = 0, **kw):
    return usage(ts, "acme", "chat", "p5.48xlarge", "H100-80GB", util, gpu_index=gpu_index,
                 host=f"chat-{version or 'none'}", model_version=version, **kw)


async def test_windows_split_by_model_version_exactly_through_the_worker_rest_and_websocket(stack):
    stack.start_worker()
    stack.start_api()
    headers = stack.headers
    T = (int(time.time()) // 60) * 60 - 180
    events = [
        chat(T + 1, 0.5, "v1"), chat(T + 1, 1.0, "v1", gpu_index=1),  # the stable host's two GPUs
        chat(T + 2, 0.2, "v2-canary", tokens=1000),
        chat(T + 3, 0.4, None),
        chat(T + 31, 0.0, "v1"),
        chat(T + 32, 0.6, "v2-canary", tokens=3000),
        chat(T + 75, 1.0, "v2-canary", tokens=500),
    ]
    ws = await websockets.connect(stack.ws_url, additional_headers=headers)
    await ws.send(json.dumps({"op": "subscribe", "channel": "aggregates", "filter": {"model_version": "v2-canary"}}))
    await ws.send(json.dumps({"op": "subscribe", "channel": "aggregates", "filter": {"model_version": 2}}))
    received: list[dict] = []

    async def read():
        async for raw in ws:
            received.append(json.loads(raw))

    reader = asyncio.create_task(read())
    async with EventProducer(stack.settings) as producer:
        await producer.send_usage(events[:2])
        for e in events[2:]:
            await producer.send_usage([e])

    expected = expected_windows(events, {"H100-80GB": H100_P5_USD_H})
    # By hand, the window [T, T+60) of each version: stable 3 samples (utils 0.5, 1.0, 0.0), the
    # canary 2 samples (0.2, 0.6) with 4000 tokens, the event without a version 1 sample (0.4).
    base = ("acme", "chat", "us-east-1", "H100-80GB")
    by_hand = {"v1": (3, 1.5 / 3, 0, SAMPLE_USD * 1.5), "v2-canary": (2, 0.4, 4000, SAMPLE_USD * 1.2),
               "": (1, 0.4, 0, SAMPLE_USD * 0.6)}
    for version, (n, util_avg, tokens, idle) in by_hand.items():
        w = expected[(*base, version, T)]
        assert (w["events"], w["tokens"]) == (n, tokens)
        assert w["spend_usd"] == pytest.approx(n * SAMPLE_USD) and w["util_avg"] == pytest.approx(util_avg)
        assert w["idle_usd"] == pytest.approx(idle)
    assert {k[4] for k in expected} == {"v1", "v2-canary", ""}

    async def topic_exact():
        got = last_aggregates(await read_topic(stack.settings, stack.settings.aggregates_topic), window_s=60)
        return set(got) == set(expected) and all(matches(got[k], expected[k]) for k in expected)

    await async_wait_for(topic_exact, 60, what="exact windows per model version on cost.aggregates")

    def history(**params) -> dict:
        r = httpx.get(stack.url + "/api/history", params={"since": T - 60, **params}, headers=headers, timeout=5)
        assert r.status_code == 200, r.text
        return {(x["tenant"], x["service"], x["region"], x["gpu_model"], x["model_version"], x["window_start"]): x
                for x in r.json()}

    def history_exact():
        rows = history()
        return set(rows) == set(expected) and all(matches(rows[k], expected[k]) for k in expected)

    await async_wait_for(history_exact, 30, what="exact REST history per model version")
    canary = {k: v for k, v in expected.items() if k[4] == "v2-canary"}
    rows = history(model_version="v2-canary")
    assert set(rows) == set(canary) and all(matches(rows[k], canary[k]) for k in canary)
    unversioned = history(model_version="")
    assert set(unversioned) == {k for k in expected if k[4] == ""}

    latest = httpx.get(stack.url + "/api/latest", params={"model_version": "v1"}, headers=headers, timeout=5).json()
    assert [(r["service"], r["model_version"]) for r in latest] == [("chat", "v1")]
    assert httpx.get(stack.url + "/api/latest", params={"model_version": "v9"}, headers=headers, timeout=5).json() == []
    too_long = httpx.get(stack.url + "/api/history", params={"model_version": "v" * 201}, headers=headers, timeout=5)
    assert too_long.status_code == 422 and "model_version" in too_long.text

    # The WebSocket subscription filtered to the canary: every canary window, exact, and nothing else.
    def ws_canary() -> dict:
        out = {}
        for m in received:
            for r in m["data"] if m["type"] == "snapshot" else [m["data"]] if m["type"] == "aggregate" else []:
                out[(r["tenant"], r["service"], r["region"], r["gpu_model"], r["model_version"], r["window_start"])] = r
        return out

    await async_wait_for(lambda: all(k in ws_canary() and matches(ws_canary()[k], canary[k]) for k in canary), 30,
                         what="the canary's windows on the filtered /ws")
    await asyncio.sleep(1.0)
    assert set(ws_canary()) == set(canary)
    errors = [m["error"] for m in received if m["type"] == "error"]
    assert errors == ["filter values must be strings"]
    reader.cancel()
    await ws.close()
