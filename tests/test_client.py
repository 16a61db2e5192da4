"""The Python client (`gpucost/client.py`) against the real stack: known events through the Faust
worker arrive exact; the API is killed and started again under it, and the client yields a fresh
snapshot holding every key with exact values (the brute-force reference of tests/support.py),
then goes on with live updates. A refused key raises `AuthenticationError` at once. A minimal
protocol peer covers what the real API cannot be made to do on demand: close a live connection
with 4401, send a message type this client does not know."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import pytest

from contracts.events import UsageEvent
from gpucost.client import (AggregateUpdate, AuthenticationError, LiveState, Snapshot, Subscription,
                            SubscriptionRejected)
from api.ws_protocol import AggregateRecord
from ingest.producer import EventProducer
from tests.support import async_wait_for, expected_windows

H100_P5_USD_H = 55.04 / 8  # aws us-east-1 p5.48xlarge, per GPU
L4_G6_USD_H = 0.8048       # aws us-east-1 g6.xlarge
PRICES = {"H100-80GB": H100_P5_USD_H, "L4": L4_G6_USD_H}
FIELDS = ("spend_usd", "spend_rate_usd_h", "gpu_seconds", "util_avg", "idle_usd")


def usage(ts, tenant, service, gpu_model, util, interval_s=10.0, gpu_index=0):
    itype = "p5.48xlarge" if gpu_model == "H100-80GB" else "g6.xlarge"
    return UsageEvent(ts=ts, tenant=tenant, service=service, cloud="aws", region="us-east-1", instance_type=itype,
                      gpu_model=gpu_model, host=f"{tenant}-{service}-host", gpu_index=gpu_index, interval_s=interval_s,
                      util=util, mem_used_gb=1.0, mem_total_gb=80.0 if gpu_model == "H100-80GB" else 24.0,
                      power_w=200.0, tokens=100)


def newest_per_key(expected: dict) -> dict[tuple, dict]:
    """The reference's newest window of each key: what a snapshot holds."""
    out: dict[tuple, tuple[int, dict]] = {}
    for (*key, ws), w in expected.items():
        if tuple(key) not in out or ws > out[tuple(key)][0]:
            out[tuple(key)] = (ws, w)
    return {k: {**w, "window_start": ws} for k, (ws, w) in out.items()}


def exact(records: list[AggregateRecord], want: dict[tuple, dict]) -> bool:
    got = {(r.tenant, r.service, r.region, r.gpu_model, r.model_version): r for r in records}
    return set(got) == set(want) and all(
        got[k].window_start == w["window_start"] and got[k].events == w["events"] and got[k].tokens == w["tokens"]
        and all(getattr(got[k], f) == pytest.approx(w[f], rel=1e-9, abs=1e-12) for f in FIELDS)
        for k, w in want.items())


class Recorder:
    """Iterates a subscription in the background, noting which connection each message came on."""

    def __init__(self, sub: Subscription):
        self.sub, self.state, self.log = sub, LiveState(), []
        self.task = asyncio.create_task(self._run())

    async def _run(self):
        async for msg in self.sub:
            self.log.append((self.sub.connections, msg))
            self.state.apply(msg)

    def snapshots(self, connection: int) -> list[Snapshot]:
        return [m for c, m in self.log if c == connection and isinstance(m, Snapshot) and m.channel == "aggregates"]


@pytest.mark.integration
@pytest.mark.timeout(240)
async def test_the_client_resumes_from_a_fresh_exact_snapshot_after_an_api_restart(stack):
    stack.start_worker()
    stack.start_api()
    T = (int(time.time()) // 60) * 60 - 180
    before = [usage(T + 1, "acme", "chat", "H100-80GB", 0.5), usage(T + 1, "acme", "chat", "H100-80GB", 0.9, gpu_index=1),
              usage(T + 31, "acme", "chat", "H100-80GB", 0.25), usage(T + 5, "acme", "embed", "L4", 0.2, interval_s=30.0),
              usage(T + 12, "globex", "ocr", "L4", 0.8, interval_s=30.0), usage(T + 44, "globex", "train", "H100-80GB", 1.0),
              usage(T + 70, "initech", "chat", "H100-80GB", 0.0)]
    async with EventProducer(stack.settings) as producer:
        await producer.send_usage(before)
    want = newest_per_key(expected_windows(before, PRICES))
    assert len(want) == 5

    async with Subscription(stack.ws_url, stack.admin_key, channel=("aggregates", "alerts"),
                            backoff_initial_s=0.2, backoff_max_s=2.0) as sub:
        rec = Recorder(sub)
        await async_wait_for(lambda: exact(rec.state.windows(), want), 60, what="exact newest windows on the client")

        # Wait until the API has stored them, so the restarted API's snapshot can hold them all.
        def stored():
            rows = httpx.get(stack.url + "/api/history", params={"since": T - 60}, headers=stack.headers, timeout=5).json()
            newest = [r for r in rows if r["window_start"] == want[
                (r["tenant"], r["service"], r["region"], r["gpu_model"], r["model_version"])]["window_start"]]
            return exact([AggregateRecord.model_validate(r) for r in newest], want)

        await async_wait_for(stored, 30, what="newest windows stored by the API")
        stack.kill("api", signal.SIGKILL)
        killed = time.monotonic()
        await asyncio.sleep(1.0)  # the client notices and starts retrying with backoff
        await asyncio.to_thread(stack.start_api)
        up_s = time.monotonic() - killed

        await async_wait_for(lambda: rec.snapshots(2), 30, what="a fresh snapshot on the second connection")
        print(f"\nAPI killed; healthy again after {up_s:.1f} s, fresh snapshot on the client after "
              f"{time.monotonic() - killed:.1f} s")
        fresh = rec.snapshots(2)[0]
        assert exact(fresh.data, want), f"snapshot after restart: {[r.model_dump() for r in fresh.data]}"

        # Live again: events sent after the restart arrive as updates on the new connection.
        after = [usage(T + 95, "acme", "chat", "H100-80GB", 0.75), usage(T + 99, "umbrella", "chat", "L4", 0.5)]
        async with EventProducer(stack.settings) as producer:
            await producer.send_usage(after)
        want_after = newest_per_key(expected_windows(before + after, PRICES))
        await async_wait_for(lambda: exact(rec.state.windows(), want_after), 60, what="exact live updates after restart")
        assert any(c == 2 and isinstance(m, AggregateUpdate) and m.data.tenant == "umbrella" for c, m in rec.log)
        assert sub.connections == 2
        rec.task.cancel()


@pytest.mark.integration
@pytest.mark.one_database
async def test_a_refused_key_raises_at_once_and_a_filter_on_another_tenant_is_rejected(stack):
    stack.start_api()
    started = time.monotonic()
    with pytest.raises(AuthenticationError, match="refused the API key"):
        async with Subscription(stack.ws_url, "gpc_not-a-key", backoff_initial_s=0.1):
            pass
    assert time.monotonic() - started < 10, "a refused key must not be retried"

    acme_key = stack.create_key("acme")
    with pytest.raises(SubscriptionRejected, match="bound to tenant 'acme'"):
        async with Subscription(stack.ws_url, acme_key, filter={"tenant": "globex"}) as sub:
            async for _ in sub:
                pass
    # The same key with its own tenant is served: the first message is the snapshot.
    async with Subscription(stack.ws_url, acme_key, filter={"tenant": "acme"}) as sub:
        first = await asyncio.wait_for(anext(aiter(sub)), 10)
        assert isinstance(first, Snapshot) and first.data == []


def agg(tenant: str, window_start: int, spend_usd: float, window_s: int = 60) -> AggregateRecord:
    return AggregateRecord(tenant=tenant, service="s", region="r", gpu_model="g", window_start=window_start,
                           window_end=window_start + window_s, window_s=window_s, spend_usd=spend_usd,
                           spend_rate_usd_h=spend_usd * 3600 / window_s, gpu_seconds=1.0, util_avg=0.5,
                           idle_usd=spend_usd / 2, events=1)


def test_a_snapshot_replaces_what_was_held_and_an_older_window_never_replaces_a_newer_one():
    state = LiveState()
    state.apply(Snapshot(type="snapshot", id="a", channel="aggregates", data=[agg("acme", 100, 1.0), agg("gone", 100, 1.0)]))
    state.apply(AggregateUpdate(type="aggregate", data=agg("acme", 110, 2.0)))
    state.apply(AggregateUpdate(type="aggregate", data=agg("acme", 90, 9.0)))  # a revision of an older window
    state.apply(AggregateUpdate(type="aggregate", data=agg("acme", 0, 50.0, window_s=3600)))  # another window size
    assert {r.tenant: r.spend_usd for r in state.windows()} == {"acme": 2.0, "gone": 1.0}
    assert [r.spend_usd for r in state.windows(3600)] == [50.0]
    state.apply(Snapshot(type="snapshot", id="a", channel="aggregates", data=[agg("acme", 120, 3.0)]))
    assert {r.tenant: r.spend_usd for r in state.windows()} == {"acme": 3.0}


def test_the_newest_ended_window_is_picked_over_one_still_filling():
    state = LiveState()
    for start in range(0, 200, 10):  # more windows than are kept
        state.apply(AggregateUpdate(type="aggregate", data=agg("acme", start, start / 10)))
    assert len(state.recent[("acme", "s", "r", "g", "", 60)]) == LiveState.KEEP
    assert state.windows()[0].window_start == 190
    assert state.windows(complete_before=200)[0].window_start == 140  # [140, 200) has ended by 200
    assert state.windows(complete_before=199)[0].window_start == 130
    assert state.windows(complete_before=0)[0].window_start == 190  # none ended: the newest, not nothing


def test_a_subscription_refuses_unknown_channels_and_filter_fields_before_connecting():
    with pytest.raises(ValueError, match="channel must be one or more of"):
        Subscription("ws://127.0.0.1:1/ws", "k", channel="prices")
    with pytest.raises(ValueError, match="unknown filter fields"):
        Subscription("ws://127.0.0.1:1/ws", "k", filter={"colour": "red"})
    with pytest.raises(AuthenticationError, match="no API key"):
        Subscription("ws://127.0.0.1:1/ws", "")


class Peer:
    """A minimal WebSocket server that speaks the documented protocol, for what the real API
    cannot be made to do on demand (close a live connection with a given code, send a message
    type this client does not know). Each connection runs the next script in `scripts`."""

    def __init__(self, scripts):
        self.scripts, self.connections = list(scripts), 0

    async def handler(self, ws):
        self.connections += 1
        script = self.scripts.pop(0) if self.scripts else "hold"
        sub = json.loads(await ws.recv())
        if script == "flap":
            await ws.close(code=1011, reason="internal error")
            return
        await ws.send(json.dumps({"type": "subscribed", "id": sub["id"], "channel": sub["channel"], "filter": {}}))
        await ws.send(json.dumps({"type": "snapshot", "id": sub["id"], "channel": "aggregates",
                                  "data": [agg("acme", 100 * self.connections, float(self.connections)).model_dump()]}))
        if script == "drop":
            ws.transport.abort()  # as a killed process: no close frame
        elif script == "revoke":
            await ws.close(code=4401, reason="API key revoked")
        elif script == "novelty":
            await ws.send(json.dumps({"type": "cost_forecast", "data": {}}))
            await ws.send(json.dumps({"type": "aggregate", "data": agg("acme", 500, 5.0).model_dump()}))
            await asyncio.sleep(30)
        else:
            await asyncio.sleep(30)


async def serve(peer: Peer):
    from websockets.asyncio.server import serve as ws_serve

    server = await ws_serve(peer.handler, "127.0.0.1", 0)
    return server, f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"


async def test_a_drop_reconnects_and_the_new_snapshot_replaces_the_old_then_a_revoked_key_stops_it():
    peer = Peer(["drop", "revoke"])
    server, url = await serve(peer)
    try:
        got = []
        with pytest.raises(AuthenticationError, match="close code 4401: API key revoked"):
            async with Subscription(url, "k", backoff_initial_s=0.05) as sub:
                async for msg in sub:
                    got.append((sub.connections, msg.data[0].spend_usd))
        assert got == [(1, 1.0), (2, 2.0)]  # one fresh snapshot per connection
        assert peer.connections == 2, "a revoked key must not be retried"
    finally:
        server.close()


async def test_a_message_type_this_client_does_not_know_is_skipped():
    server, url = await serve(Peer(["novelty"]))
    try:
        async with Subscription(url, "k") as sub:
            it = aiter(sub)
            assert isinstance(await asyncio.wait_for(anext(it), 5), Snapshot)
            update = await asyncio.wait_for(anext(it), 5)
            assert isinstance(update, AggregateUpdate) and update.data.spend_usd == 5.0
    finally:
        server.close()


def test_the_client_imports_no_server_module():
    """A program that only subscribes needs pydantic, websockets and the contracts, not the API's stack."""
    import os
    import subprocess
    import sys

    from tests.support import ROOT

    code = ("import sys, gpucost.client; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('fastapi', 'starlette', 'sqlalchemy', 'aiokafka', 'faust', 'core', 'streaming') "
            "or m in ('api.hub', 'api.ws', 'api.app')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


async def test_with_a_limit_on_attempts_an_unreachable_api_raises_connection_failed():
    from gpucost.client import ConnectionFailed
    from tests.support import free_port

    url = f"ws://127.0.0.1:{free_port()}/ws"  # nothing listens there
    with pytest.raises(ConnectionFailed, match="after 3 attempts"):
        async with Subscription(url, "k", max_attempts=3, backoff_initial_s=0.01):
            pass


async def test_a_server_that_drops_every_connection_at_once_is_not_hammered():
    peer = Peer(["flap"] * 1000)
    server, url = await serve(peer)
    try:
        sub = Subscription(url, "k", backoff_initial_s=0.05, backoff_max_s=5.0)
        task = asyncio.create_task(anext(aiter(sub)))  # never gets a message: every connection flaps
        await asyncio.sleep(1.0)
        task.cancel()
        # Backing off 0.05 s, 0.1 s, 0.2 s, 0.4 s ... (times 0.5 to 1 for jitter): at most 8 in a
        # second, where reconnecting at once would make hundreds.
        assert 2 <= peer.connections <= 8, peer.connections
    finally:
        server.close()
