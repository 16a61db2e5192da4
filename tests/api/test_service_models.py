"""Per-service model settings (PUT /api/services/model) for live recommendations: validated by the
schema, limited to the key's tenant, and used by GET /api/recommendations/live at once."""

from __future__ import annotations

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.one_database]


def test_a_tenant_sets_its_own_service_models_only(stack):
    stack.start_api()
    acme = {"Authorization": f"Bearer {stack.create_key('acme')}"}
    body = {"tenant": "acme", "service": "vision-ocr", "params": 2e9, "n_layers": 24, "n_kv_heads": 8, "head_dim": 128}
    r = httpx.put(stack.url + "/api/services/model", json={**body, "tenant": "globex"}, headers=acme)
    assert r.status_code == 403
    r = httpx.put(stack.url + "/api/services/model", json={**body, "params": 0}, headers=acme)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "params"]
    r = httpx.put(stack.url + "/api/services/model", json={k: v for k, v in body.items() if k != "n_layers"},
                  headers=acme)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "kv_bytes_per_token"]
    r = httpx.put(stack.url + "/api/services/model", json=body, headers=acme)
    assert r.status_code == 204
    mine = httpx.get(stack.url + "/api/services/models", headers=acme).json()
    assert mine["settings"] == {"acme/vision-ocr": {"params": 2e9, "precision": "bf16", "prompt_tokens": 512,
                                                    "output_tokens": 256, "n_layers": 24, "n_kv_heads": 8,
                                                    "head_dim": 128, "model": ""}}
    assert "chat-api" in mine["shipped"]
    other = httpx.get(stack.url + "/api/services/models",
                      headers={"Authorization": f"Bearer {stack.create_key('globex')}"}).json()
    assert other["settings"] == {}
