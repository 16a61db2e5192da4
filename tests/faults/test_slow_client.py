"""A slow WebSocket client never slows the others: while one client stops reading (its socket
backs up), fast clients keep getting every update promptly; the slow client's queue coalesces by
key (latest value wins, the drops are counted), and when it reads again it ends on the newest value
of every key."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import socket
import time

import httpx
import pytest
import websockets

from bench.fault_harness import publish_aggregates

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120), pytest.mark.one_database]  # the worker and the broker are under test, not the database

KEYS = 10
# Big, incompressible records (permessage-deflate would shrink repeated bytes to nothing) fill
# the slow client's socket buffers quickly.
PAD = base64.b64encode(random.Random(5).randbytes(12_000)).decode()


async def connect(url: str, rcvbuf: int | None = None):
    sock = None
    if rcvbuf:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    ws = await websockets.connect(url, max_queue=2, sock=sock, ping_interval=None, max_size=None)
    await ws.send(json.dumps({"op": "subscribe", "channel": "aggregates", "filter": {}}))
    while json.loads(await ws.recv())["type"] != "snapshot":
        pass
    return ws


def record(seq: int, window_start: int) -> dict:
    k = seq % KEYS
    return {"kind": "usage", "tenant": "acme", "service": f"svc-{k}", "region": "us-east-1", "gpu_model": "H100",
            "window_start": window_start, "window_end": window_start + 60, "window_s": 60, "spend_usd": float(seq),
            "spend_rate_usd_h": 0.0, "gpu_seconds": 60.0, "util_avg": 0.5, "idle_usd": 0.0, "events": 1,
            "tokens": 0, "requests": 0, "fallback_priced_events": 0, "seq": seq, "sent_ts": 0.0, "pad": PAD}


async def test_slow_client_coalesces_latest_per_key_without_slowing_the_others(stack):
    stack.start_api()
    url = stack.ws_url + "?api_key=" + stack.admin_key
    fast = [await connect(url) for _ in range(5)]
    slow = await connect(url, rcvbuf=4096)  # and it never reads while updates flow
    window_start = int(time.time()) // 60 * 60
    fast_latest: list[dict] = [{} for _ in fast]
    lag_ms: list[float] = []

    async def read_fast(i, ws):
        async for raw in ws:
            msg = json.loads(raw)
            if msg["type"] == "aggregate":
                rec = msg["data"]
                fast_latest[i][rec["service"]] = rec["seq"]
                lag_ms.append((time.time() - rec["sent_ts"]) * 1000)

    readers = [asyncio.create_task(read_fast(i, ws)) for i, ws in enumerate(fast)]
    n = 600  # 60 updates per key, ~10 MB to the slow client: far past its socket buffers (~4 MB here)
    for start in range(0, n, 50):
        batch = []
        for seq in range(start, start + 50):
            r = record(seq, window_start)
            r["sent_ts"] = time.time()
            batch.append(r)
        await publish_aggregates(stack.settings, batch)
        await asyncio.sleep(0.05)
    newest = {f"svc-{seq % KEYS}": seq for seq in range(n)}
    deadline = time.monotonic() + 20
    while any(f != newest for f in fast_latest) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert all(f == newest for f in fast_latest), "fast clients did not get the newest value of every key"
    lag_ms.sort()
    p99 = lag_ms[int(0.99 * (len(lag_ms) - 1))]
    assert p99 < 2000, f"fast clients' p99 push lag {p99:.0f} ms while one client is stuck"

    dropped = httpx.get(stack.url + "/api/stats", headers=stack.headers).json()["ws_dropped"]
    assert dropped > 0, "the stuck client's queue should have coalesced"

    got: dict[str, int] = {}
    received = 0
    async def drain():
        nonlocal received
        async for raw in slow:
            msg = json.loads(raw)
            if msg["type"] == "aggregate":
                received += 1
                got[msg["data"]["service"]] = max(got.get(msg["data"]["service"], -1), msg["data"]["seq"])
                if got == newest:
                    return
    await asyncio.wait_for(drain(), 20)
    assert got == newest  # latest value per key wins
    assert received < n, f"slow client got {received} of {n}: nothing was coalesced"
    print(f"\nslow client: received {received} of {n} updates (coalesced), server counted {dropped} dropped; "
          f"fast clients p99 lag {p99:.0f} ms, all on the newest value")
    for t in readers:
        t.cancel()
    for ws in (*fast, slow):
        await ws.close()
