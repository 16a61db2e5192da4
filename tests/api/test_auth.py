"""API keys and tenant isolation: keys are stored hashed and bound to one tenant or admin; no key,
no data; a tenant key sees only its tenant on REST (latest, history), on WebSocket snapshots and
live updates, and may ingest only its own tenant's events."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus
from sqlalchemy import select

from api import keys
from core.db import session_scope
from core.kafka import producer as kafka_producer
from core.settings import Settings
from contracts.events import UsageEvent
from tests.api.test_webhooks import an_alert
from tests.support import async_wait_for, read_topic, wait_for


# -- keys, without a server ------------------------------------------------------------------
@pytest.fixture
def key_settings(tmp_path, database_url):
    return Settings(data_dir=tmp_path / "data", database_url=database_url)


def test_keys_are_stored_hashed_and_bound_to_one_tenant_or_admin(key_settings):
    tenant_key = keys.create_key(key_settings, tenant="acme", name="ci")
    admin_key = keys.create_key(key_settings, admin=True)
    with session_scope(key_settings) as s:
        stored = {r.key_id: r for r in s.scalars(select(keys.ApiKey))}
    assert tenant_key.key not in {r.key_sha256 for r in stored.values()}
    assert all(len(r.key_sha256) == 64 for r in stored.values())
    assert keys.lookup(key_settings, tenant_key.key).tenant == "acme"
    assert keys.lookup(key_settings, admin_key.key).is_admin
    with pytest.raises(keys.InvalidKeyRequest):
        keys.create_key(key_settings, tenant="acme", admin=True)
    with pytest.raises(keys.InvalidKeyRequest):
        keys.create_key(key_settings)


def test_unknown_malformed_and_forged_keys_resolve_to_nobody(key_settings):
    real = keys.create_key(key_settings, tenant="acme")
    prefix, key_id, secret = real.key.split("_", 2)
    forged = f"{prefix}_{key_id}_{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}"  # right id, wrong secret
    for bad in ("", "nonsense", "gpc__x", "gpc_deadbeef0000_" + secret, forged, real.key + "x", "gpc_" + "a" * 40 + "_b"):
        assert keys.lookup(key_settings, bad) is None, bad


def test_revoked_key_stops_working(key_settings):
    k = keys.create_key(key_settings, tenant="acme")
    assert keys.lookup(key_settings, k.key) is not None
    assert keys.revoke_key(key_settings, k.key_id)
    assert keys.lookup(key_settings, k.key) is None
    assert not keys.revoke_key(key_settings, k.key_id)  # already revoked


def test_embedded_default_admin_key_is_reused_across_runs(key_settings):
    first = keys.ensure_admin_key(key_settings)
    assert keys.ensure_admin_key(key_settings) == first
    assert keys.admin_key_file(key_settings).stat().st_mode & 0o077 == 0
    keys.revoke_key(key_settings, first.split("_")[1])
    second = keys.ensure_admin_key(key_settings)
    assert second != first and keys.lookup(key_settings, second).is_admin


# -- against the running API -----------------------------------------------------------------
NOW = int(time.time()) // 60 * 60


def aggregate(tenant: str, service: str, window_start: int, spend: float) -> dict:
    return {"kind": "usage", "tenant": tenant, "service": service, "region": "us-east-1", "gpu_model": "H100-80GB",
            "window_start": window_start, "window_end": window_start + 60, "window_s": 60, "spend_usd": spend,
            "spend_rate_usd_h": spend * 60, "gpu_seconds": 60.0, "util_avg": 0.5, "idle_usd": spend / 2,
            "events": 6, "tokens": 0, "requests": 0, "fallback_priced_events": 0}


async def publish_aggregates(settings: Settings, records: list[dict]) -> None:
    p = kafka_producer(settings)
    await p.start()
    try:
        for rec in records:
            await p.send_and_wait(settings.aggregates_topic, json.dumps(rec).encode(), key=rec["tenant"].encode())
    finally:
        await p.stop()


def usage_event(tenant: str, **kw) -> dict:
    ev = dict(ts=time.time() - 5, tenant=tenant, service="train", cloud="aws", region="us-east-1",
              instance_type="p5.48xlarge", gpu_model="H100", host=f"{tenant}-h1", gpu_index=0, interval_s=10.0,
              util=0.5, mem_used_gb=10.0, mem_total_gb=80.0, power_w=300.0)
    ev.update(kw)
    return ev


@pytest.fixture
async def api_stack(stack):
    stack.start_api()
    await publish_aggregates(stack.settings, [
        aggregate("acme", "train", NOW - 60, 1.0), aggregate("acme", "serve", NOW - 60, 2.0),
        aggregate("globex", "train", NOW - 60, 30.0),
    ])
    await async_wait_for(lambda: len(httpx.get(stack.url + "/api/latest", headers=stack.headers).json()) == 3,
                         20, what="aggregates in the API")
    stack.acme_key = stack.create_key("acme")
    stack.globex_key = stack.create_key("globex")
    return stack


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.integration
async def test_no_key_no_data(api_stack):
    s = api_stack
    for method, path in (("GET", "/api/latest"), ("GET", "/api/history"), ("GET", "/api/stats"),
                         ("GET", "/api/keys"), ("POST", "/events"), ("GET", "/api/recommendations")):
        for headers in ({}, bearer("gpc_000000000000_nope"), {"X-API-Key": "wrong"}):
            r = httpx.request(method, s.url + path, headers=headers, json={})
            assert r.status_code == 401, (method, path, headers, r.text)
            assert "API key" in r.json()["detail"]
    for url in (s.ws_url, s.ws_url + "?api_key=gpc_000000000000_nope"):
        with pytest.raises(InvalidStatus) as refused:  # refused at the handshake, before any data
            async with websockets.connect(url) as ws:
                await ws.recv()
        assert refused.value.response.status_code == 403


@pytest.mark.integration
async def test_rest_latest_and_history_are_filtered_by_the_keys_tenant(api_stack):
    s = api_stack
    for path in ("/api/latest", "/api/history"):
        acme = httpx.get(s.url + path, headers=bearer(s.acme_key), params={"since": NOW - 3600}).json()
        assert {r["tenant"] for r in acme} == {"acme"} and len(acme) == 2, path
        assert {r["tenant"] for r in httpx.get(s.url + path, headers=bearer(s.globex_key)).json()} == {"globex"}
        assert {r["tenant"] for r in httpx.get(s.url + path, headers=s.headers).json()} == {"acme", "globex"}
        # Asking for another tenant is refused, not silently answered with the key's own.
        r = httpx.get(s.url + path, headers=bearer(s.acme_key), params={"tenant": "globex"})
        assert r.status_code == 403 and "bound to tenant 'acme'" in r.json()["detail"]
    # The key also works as a query parameter (the dashboard's ?api_key=) and as X-API-Key.
    assert len(httpx.get(s.url + "/api/latest", params={"api_key": s.acme_key}).json()) == 2
    assert len(httpx.get(s.url + "/api/latest", headers={"X-API-Key": s.acme_key}).json()) == 2
    stats = httpx.get(s.url + "/api/stats", headers=bearer(s.acme_key)).json()
    assert "deadletters_by_reason" not in stats  # fleet-wide counters are admin only


async def _subscribe(url: str, key: str, flt: dict | None = None):
    ws = await websockets.connect(url + "?api_key=" + key)
    await ws.send(json.dumps({"op": "subscribe", "channel": "aggregates", "filter": flt or {}}))
    first = json.loads(await ws.recv())
    if first["type"] == "error":
        return ws, first, None
    snapshot = json.loads(await ws.recv())
    return ws, first, snapshot


@pytest.mark.integration
async def test_websocket_snapshots_and_live_updates_are_filtered_by_the_keys_tenant(api_stack):
    s = api_stack
    acme_ws, sub, snap = await _subscribe(s.ws_url, s.acme_key)
    assert sub["filter"] == {"tenant": "acme"}
    assert {r["tenant"] for r in snap["data"]} == {"acme"} and len(snap["data"]) == 2
    admin_ws, _, admin_snap = await _subscribe(s.ws_url, s.admin_key)
    assert {r["tenant"] for r in admin_snap["data"]} == {"acme", "globex"}
    # Subscribing to another tenant is an error on the socket, not a quiet empty stream.
    other_ws, err, _ = await _subscribe(s.ws_url, s.acme_key, {"tenant": "globex"})
    assert err["type"] == "error" and "acme" in err["error"]
    await other_ws.close()

    await publish_aggregates(s.settings, [aggregate("globex", "train", NOW, 40.0), aggregate("acme", "train", NOW, 4.0)])

    async def next_aggregate(ws):
        while True:
            m = json.loads(await asyncio.wait_for(ws.recv(), 15))
            if m["type"] == "aggregate":
                return m["data"]

    got = await next_aggregate(acme_ws)
    assert (got["tenant"], got["spend_usd"]) == ("acme", 4.0)  # globex's update, sent first, never arrives
    admin_seen = {(await next_aggregate(admin_ws))["tenant"] for _ in range(2)}
    assert admin_seen == {"acme", "globex"}
    await acme_ws.send(json.dumps({"op": "ping"}))
    while (m := json.loads(await asyncio.wait_for(acme_ws.recv(), 5)))["type"] != "pong":
        assert m.get("data", {}).get("tenant", "acme") == "acme"
    await acme_ws.close()
    await admin_ws.close()


@pytest.mark.integration
async def test_key_management_is_admin_only_and_revocation_takes_effect(api_stack):
    s = api_stack
    assert httpx.get(s.url + "/api/keys", headers=bearer(s.acme_key)).status_code == 403
    assert httpx.post(s.url + "/api/keys", headers=bearer(s.acme_key), json={"admin": True}).status_code == 403
    me = httpx.get(s.url + "/api/keys/me", headers=bearer(s.acme_key)).json()
    assert me["tenant"] == "acme" and not me["admin"]
    r = httpx.post(s.url + "/api/keys", headers=s.headers, json={"tenant": "initech", "name": "new"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["key"].startswith("gpc_") and created["tenant"] == "initech"
    listed = httpx.get(s.url + "/api/keys", headers=s.headers).json()
    assert created["key_id"] in {k["key_id"] for k in listed}
    assert all("key" not in k and "key_sha256" not in k for k in listed)  # never the key or its hash
    assert httpx.get(s.url + "/api/latest", headers=bearer(created["key"])).json() == []  # no initech data
    assert httpx.post(s.url + "/api/keys", headers=s.headers, json={"tenant": "x", "admin": True}).status_code == 422
    assert httpx.delete(s.url + f"/api/keys/{created['key_id']}", headers=s.headers).status_code == 204
    assert httpx.get(s.url + "/api/latest", headers=bearer(created["key"])).status_code == 401
    assert httpx.delete(s.url + f"/api/keys/{created['key_id']}", headers=s.headers).status_code == 404


@pytest.mark.integration
async def test_a_revoked_keys_open_websocket_is_closed(api_stack):
    s = api_stack
    created = httpx.post(s.url + "/api/keys", headers=s.headers, json={"tenant": "acme", "name": "soon revoked"}).json()
    ws = await websockets.connect(s.ws_url + "?api_key=" + created["key"])
    await ws.send(json.dumps({"op": "subscribe", "channel": "aggregates", "filter": {}}))
    assert json.loads(await ws.recv())["type"] == "subscribed"
    assert httpx.delete(s.url + f"/api/keys/{created['key_id']}", headers=s.headers).status_code == 204
    with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
        while True:  # snapshot, heartbeats, then the close
            await asyncio.wait_for(ws.recv(), 30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


@pytest.mark.integration
async def test_post_events_accepts_only_the_keys_tenant_and_valid_events(api_stack):
    s = api_stack
    url = s.url + "/events"
    r = httpx.post(url, headers=bearer(s.acme_key), json={"usage": [usage_event("acme"), usage_event("globex")]})
    assert r.status_code == 403, r.text
    assert r.json()["detail"]["errors"][0]["index"] == 1
    r = httpx.post(url, headers=bearer(s.acme_key), json={"usage": [usage_event("acme"), usage_event("acme", util=1.5)]})
    assert r.status_code == 422
    err = r.json()["detail"]["errors"]
    assert err[0]["index"] == 1 and "util" in err[0]["reason"] and "nothing was sent" in r.json()["detail"]["message"]
    for body, status in (("not json", 400), ("[1, 2]", 422), ('{"usage": [], "billing": []}', 422),
                         ('{"usage": {}}', 422), ('{"extra": []}', 422),
                         ('{"usage": [{"ts": NaN}]}', 422)):
        r = httpx.post(url, headers={**bearer(s.acme_key), "content-type": "application/json"}, content=body)
        assert r.status_code == status, (body, r.status_code, r.text)
    good = [usage_event("acme", gpu_index=i) for i in range(3)]
    r = httpx.post(url, headers=bearer(s.acme_key), json={"usage": good})
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == 3 and r.json()["usage"] == 3 and r.json()["durable"] is True
    r = httpx.post(url, headers=s.headers, json={"usage": [usage_event("globex")]})  # admin: any tenant
    assert r.status_code == 202, r.text
    records = await read_topic(s.settings, s.settings.usage_topic)
    tenants = []
    for rec in records:
        payload = json.loads(rec.value)
        for ev in payload if isinstance(payload, list) else [payload]:
            UsageEvent.model_validate_json(json.dumps(ev))
            tenants.append(ev["tenant"])
    assert sorted(tenants) == ["acme"] * 3 + ["globex"]  # the rejected batches sent nothing
    # A tenant key may not lower its own bill: a credit (or tax, adjustment) needs an admin key.
    now = int(time.time()) // 3600 * 3600
    credit = dict(ts=now, tenant="acme", service="unassigned", cloud="aws", region="global", instance_type="none",
                  gpu_model="none", instance_id="credit-1", period_start=now - 86400, period_end=now, gpu_count=0,
                  cost_usd=-25.0, pricing="on_demand", source="manual:credit-1", charge_category="credit")
    r = httpx.post(url, headers=bearer(s.acme_key), json={"billing": [credit]})
    assert r.status_code == 403 and "admin key" in r.json()["detail"]["errors"][0]["reason"], r.text
    r = httpx.post(url, headers=s.headers, json={"billing": [credit]})
    assert r.status_code == 202 and r.json()["billing"] == 1, r.text
    billed = []
    for rec in await read_topic(s.settings, s.settings.billing_topic):
        payload = json.loads(rec.value)
        billed += payload if isinstance(payload, list) else [payload]
    assert [(b["charge_category"], b["cost_usd"]) for b in billed] == [("credit", -25.0)]


@pytest.mark.integration
async def test_request_bodies_over_the_limit_get_413(api_stack):
    s = api_stack
    limit = s.settings.max_request_bytes
    r = httpx.post(s.url + "/events", headers=bearer(s.acme_key), content=b"x" * (limit + 1))
    assert r.status_code == 413 and str(limit) in r.json()["detail"]

    def chunks():  # no Content-Length: cut off while streaming
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    r = httpx.post(s.url + "/events", headers=bearer(s.acme_key), content=chunks())
    assert r.status_code == 413
    wait_for(lambda: httpx.get(s.url + "/healthz").status_code == 200, 5, what="api still serving")


def _tenants_in(value) -> set:
    """Every value of a "tenant" field anywhere in a JSON document."""
    found = set()
    if isinstance(value, dict):
        if isinstance(value.get("tenant"), str):
            found.add(value["tenant"])
        for v in value.values():
            found |= _tenants_in(v)
    elif isinstance(value, list):
        for v in value:
            found |= _tenants_in(v)
    return found


@pytest.mark.integration
async def test_every_get_in_the_spec_shows_a_tenant_key_only_its_tenant(api_stack):
    """A sweep over the whole OpenAPI spec, so a route added later is checked too: with data of
    two tenants stored (aggregates, rules, webhooks), no GET answers an acme key with globex data,
    and globex's objects by id are not found with it."""
    s = api_stack
    globex_ids: dict[str, str] = {}
    for tenant in ("acme", "globex"):
        r = httpx.post(s.url + "/api/rules", headers=s.headers, json={
            "name": f"{tenant} budget", "kind": "budget", "tenant": tenant, "params": {"limit_usd": 100.0}})
        assert r.status_code == 201, r.text
        if tenant == "globex":
            globex_ids["rule_id"] = r.json()["id"]
        r = httpx.post(s.url + "/api/webhooks", headers=s.headers, json={
            "name": f"{tenant} hook", "url": "https://93.184.216.34/hook", "tenant": tenant})
        assert r.status_code == 201, r.text
        if tenant == "globex":
            globex_ids["hook_id"] = r.json()["id"]
    admin_seen = set()
    spec = httpx.get(s.url + "/openapi.json").json()
    checked = []
    for path, ops in spec["paths"].items():
        if "get" not in ops:
            continue
        if "{" in path:
            params = {name: globex_ids[name] for name in globex_ids if "{" + name + "}" in path}
            if len(params) != path.count("{"):
                continue  # no globex object of that kind stored
            url = s.url + path.format(**params)
            r = httpx.get(url, headers=bearer(s.acme_key))
            assert r.status_code in (403, 404), (path, r.status_code, r.text)
            assert httpx.get(url, headers=s.headers).status_code == 200, path  # it does exist
            checked.append(path)
            continue
        r = httpx.get(s.url + path, headers=bearer(s.acme_key), params={"since": NOW - 3600})
        if r.status_code == 200 and "json" in r.headers.get("content-type", ""):
            assert _tenants_in(r.json()) <= {"acme"}, (path, _tenants_in(r.json()))
            checked.append(path)
        ra = httpx.get(s.url + path, headers=s.headers, params={"since": NOW - 3600})
        if ra.status_code == 200 and "json" in ra.headers.get("content-type", ""):
            admin_seen |= _tenants_in(ra.json())
    print("\ntenant sweep checked:", sorted(checked))
    assert {"/api/latest", "/api/history", "/api/rules", "/api/webhooks"} <= set(checked), checked
    assert "globex" in admin_seen  # the sweep would have seen globex data had it leaked


def test_cli_creates_lists_and_revokes_keys(tmp_path):
    import os
    import subprocess
    import sys

    from tests.support import ROOT

    env = {**os.environ, "GPUCOST_DATA_DIR": str(tmp_path / "data")}
    env.pop("GPUCOST_DATABASE_URL", None)

    def cli(*args, ok=True):
        r = subprocess.run([sys.executable, "-m", "gpucost.cli", "keys", *args], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert (r.returncode == 0) == ok, (args, r.returncode, r.stdout, r.stderr)
        return r

    key = cli("create", "--tenant", "acme", "--name", "ci").stdout.strip()
    assert key.startswith("gpc_") and "only its hash is kept" in cli("create", "--admin").stderr
    key_id = key.split("_")[1]
    listed = cli("list").stdout
    assert key_id in listed and "tenant=acme" in listed and "admin" in listed and key not in listed
    assert "give exactly one" in cli("create", ok=False).stderr
    assert cli("revoke", key_id).stdout.strip() == f"revoked {key_id}"
    assert key_id not in cli("list").stdout and "REVOKED" in cli("list", "--all").stdout
    cli("revoke", key_id, ok=False)
    assert keys.lookup(Settings(data_dir=tmp_path / "data"), key) is None
    # what `docker compose up` prints: the dashboard with the reused admin key, valid
    url = cli("dashboard-url", "--base", "http://localhost:8000").stdout.strip()
    assert url.startswith("gpucost is up: dashboard on http://localhost:8000/?api_key=gpc_")
    assert cli("dashboard-url", "--base", "http://localhost:8000").stdout.strip() == url
    admin = keys.lookup(Settings(data_dir=tmp_path / "data"), url.split("api_key=")[1])
    assert admin is not None and admin.is_admin


@pytest.mark.integration
async def test_alert_subscriptions_are_filtered_by_the_keys_tenant(api_stack):
    s = api_stack

    async def publish_alerts(alerts):
        p = kafka_producer(s.settings)
        await p.start()
        try:
            for a in alerts:
                await p.send_and_wait(s.settings.alerts_topic, json.dumps(a).encode(), key=a["fingerprint"].encode())
        finally:
            await p.stop()

    def alert(tenant, n):  # a whole AlertEvent: the API skips records that break the contract
        return {**an_alert(tenant=tenant, fingerprint=f"fp-{tenant}-{n}"), "service": "train",
                "summary": f"{tenant} over budget"}

    await publish_alerts([alert("globex", 0), alert("acme", 0)])
    # Both first alerts in the API's memory before the subscription, so they belong to the snapshot.
    await async_wait_for(lambda: {"fp-globex-0", "fp-acme-0"} <= {
        a["fingerprint"] for a in httpx.get(s.url + "/api/alerts", headers=s.headers).json()}, 20, what="alerts in the API")
    ws = await websockets.connect(s.ws_url + "?api_key=" + s.acme_key)
    await ws.send(json.dumps({"op": "subscribe", "channel": "alerts", "filter": {}}))
    assert json.loads(await ws.recv())["type"] == "subscribed"

    async def snapshot():
        while True:
            m = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if m["type"] == "snapshot":
                return m["data"]

    snap = await snapshot()
    await publish_alerts([alert("globex", 1), alert("acme", 1)])
    live = []
    while len(live) < 1:
        m = json.loads(await asyncio.wait_for(ws.recv(), 15))
        if m["type"] == "alert":
            live.append(m["data"])
    await asyncio.sleep(1.0)  # anything else queued would show up now
    try:
        while True:
            m = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
            if m["type"] == "alert":
                live.append(m["data"])
    except TimeoutError:
        pass
    await ws.close()
    assert [a["fingerprint"] for a in snap] == ["fp-acme-0"]
    assert [a["fingerprint"] for a in live] == ["fp-acme-1"]
