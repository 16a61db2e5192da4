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


async def publish_updates(stack, seqs: range, window_start: int) -> None:
    for start in range(seqs.start, seqs.stop, 50):
        batch = []
        for seq in range(start, min(start + 50, seqs.stop)):
            r = record(seq, window_start)
            r["sent_ts"] = time.time()
            batch.append(r)
        await publish_aggregates(stack.settings, batch)
        await asyncio.sleep(0.05)


def p99(values: list[float]) -> float:
    values = sorted(values)
    return values[int(0.99 * (len(values) - 1))]


async def test_slow_client_coalesces_latest_per_key_without_slowing_the_others(stack):
    stack.start_api()
    url = stack.ws_url + "?api_key=" + stack.admin_key
    fast = [await connect(url) for _ in range(5)]
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

    async def all_fast_on(newest: dict) -> None:
        deadline = time.monotonic() + 20
        while any(f != newest for f in fast_latest) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert all(f == newest for f in fast_latest), "fast clients did not get the newest value of every key"

    readers = [asyncio.create_task(read_fast(i, ws)) for i, ws in enumerate(fast)]
    # Control: the same updates with no stuck client, for the lag this machine gives right now
    # (a ratio measured side by side, not an absolute time: these machines are noisy).
    control_n = 200
    await publish_updates(stack, range(control_n), window_start)
    await all_fast_on({f"svc-{seq % KEYS}": seq for seq in range(control_n - KEYS, control_n)})
    control_p99 = p99(lag_ms)
    lag_ms.clear()

    slow = await connect(url, rcvbuf=4096)  # and it never reads while updates flow
    n = 600  # 60 updates per key, ~10 MB to the slow client: far past its socket buffers (~4 MB here)
    seqs = range(control_n, control_n + n)
    await publish_updates(stack, seqs, window_start)
    newest = {f"svc-{seq % KEYS}": seq for seq in seqs}
    await all_fast_on(newest)
    stuck_p99 = p99(lag_ms)
    # A fan-out that waited on the stuck socket would hold the fast clients for as long as it is
    # stuck (here: for ever); a slack of 4x plus half a second only absorbs the machine's noise.
    assert stuck_p99 <= 4 * control_p99 + 500, \
        f"fast clients' p99 push lag {stuck_p99:.0f} ms while one client is stuck, {control_p99:.0f} ms before"

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
          f"fast clients p99 lag {stuck_p99:.0f} ms (no stuck client: {control_p99:.0f} ms), all on the newest value")
    for t in readers:
        t.cancel()
    for ws in (*fast, slow):
        await ws.close()
