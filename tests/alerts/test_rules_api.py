"""Rules over REST: validated per kind, stored, limited to the key's tenant, and published on every
change to the compacted cost.rules topic (a deletion is a tombstone) that the worker follows."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.support import read_topic

pytestmark = pytest.mark.integration


def on_topic(stack) -> dict:
    out = {}
    for r in asyncio.run(read_topic(stack.settings, stack.settings.rules_topic)):
        out[r.key.decode()] = json.loads(r.value) if r.value is not None else None
    return out


def test_rules_are_stored_published_and_tombstoned(stack):
    stack.start_api()
    api = httpx.Client(base_url=stack.url, headers=stack.headers, timeout=10)
    r = api.post("/api/rules", json={"name": "acme monthly", "kind": "budget", "tenant": "acme",
                                     "params": {"period": "month", "limit_usd": 5000}})
    assert r.status_code == 201, r.text
    rule = r.json()
    assert rule["published"] and rule["version"] == 1 and rule["params"]["warn_at"] == [0.5, 0.75, 0.9]
    assert on_topic(stack)[rule["id"]]["params"]["limit_usd"] == 5000

    r = api.put(f"/api/rules/{rule['id']}", json={**{k: rule[k] for k in ("name", "kind", "tenant")},
                                                  "params": {"period": "month", "limit_usd": 8000}})
    assert r.status_code == 200 and r.json()["version"] == 2
    assert on_topic(stack)[rule["id"]]["version"] == 2
    assert [x["id"] for x in api.get("/api/rules").json()] == [rule["id"]]

    assert api.delete(f"/api/rules/{rule['id']}").status_code == 204
    assert on_topic(stack)[rule["id"]] is None  # tombstone: the worker drops the rule
    assert api.get(f"/api/rules/{rule['id']}").status_code == 404
    assert api.get("/api/rules").json() == []


def test_invalid_rules_are_refused_with_the_reason(stack):
    stack.start_api()
    api = httpx.Client(base_url=stack.url, headers=stack.headers, timeout=10)
    for body in ({"name": "x", "kind": "budget", "params": {"limit_usd": -5}},
                 {"name": "x", "kind": "budget", "params": {"limit_usd": 5, "period": "week"}},
                 {"name": "x", "kind": "idle_waste", "params": {"threshold": 1.5}},
                 {"name": "x", "kind": "teleport", "params": {}},
                 {"name": "x", "kind": "anomaly", "params": {"factor": 3, "surprise": True}}):
        r = api.post("/api/rules", json=body)
        assert r.status_code == 422, (body, r.text)


def test_a_tenant_key_sees_and_changes_only_its_tenants_rules(stack):
    stack.start_api()
    admin = httpx.Client(base_url=stack.url, headers=stack.headers, timeout=10)
    acme = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {stack.create_key('acme')}"}, timeout=10)
    other = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {stack.create_key('other')}"}, timeout=10)
    mine = acme.post("/api/rules", json={"name": "q", "kind": "gpu_quota", "params": {"max_gpus": 8}}).json()
    assert mine["tenant"] == "acme" and mine["group_by"] == ["tenant"]
    everyone = admin.post("/api/rules", json={"name": "idle", "kind": "idle_waste", "params": {"threshold": 0.8}}).json()
    assert everyone["tenant"] is None and everyone["group_by"][0] == "tenant"  # one state per tenant

    assert other.post("/api/rules", json={"name": "q", "kind": "gpu_quota", "tenant": "acme",
                                          "params": {"max_gpus": 1}}).status_code == 403
    assert other.get("/api/rules").json() == []
    assert other.get(f"/api/rules/{mine['id']}").status_code == 404
    assert other.delete(f"/api/rules/{mine['id']}").status_code == 404
    assert acme.get(f"/api/rules/{everyone['id']}").status_code == 404
    assert [r["id"] for r in acme.get("/api/rules").json()] == [mine["id"]]
    assert {r["id"] for r in admin.get("/api/rules").json()} == {mine["id"], everyone["id"]}
