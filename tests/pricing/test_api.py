"""The pricing and recommendation routes over HTTP, on a fresh database of each backend (no
broker needed: only these routers are mounted)."""

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.routes import pricing, recommendations, services
from core.db import init_db
from core.pricing.effective import invalidate
from core.settings import Settings


@pytest.fixture
def client(tmp_path, database_url):
    settings = Settings(data_dir=tmp_path, database_url=database_url, auth_disabled=True)
    init_db(settings)
    invalidate()
    app = FastAPI()
    app.state.settings = settings
    for module in (pricing, recommendations, services):
        app.include_router(module.router)
    with TestClient(app) as c:
        yield c
    invalidate()


def test_quote_is_the_catalog_lookup(client):
    r = client.get("/api/pricing/quote", params=dict(cloud="aws", region="us-east-1",
                                                     instance_type="p5.48xlarge", gpu_model="H100"))
    assert r.status_code == 200
    body = r.json()
    assert body["usd_per_gpu_hour"] == pytest.approx(6.88) and body["fallback"] is False


def test_unknown_gpu_model_is_404_with_the_reason(client):
    r = client.get("/api/pricing/quote", params=dict(cloud="x", region="y", instance_type="z",
                                                     gpu_model="Voodoo2"))
    assert r.status_code == 404 and "Voodoo2" in r.json()["detail"]


def test_override_round_trip_changes_the_quote(client):
    r = client.put("/api/pricing/overrides", json=dict(cloud="aws", region="us-east-1",
                                                       instance_type="p5.48xlarge",
                                                       on_demand_usd_h=40.0, note="EDP"))
    assert r.status_code == 200, r.text
    assert r.json()["gpu_count"] == 8
    q = client.get("/api/pricing/quote", params=dict(cloud="aws", region="us-east-1",
                                                     instance_type="p5.48xlarge", gpu_model="H100")).json()
    assert q["usd_per_gpu_hour"] == pytest.approx(5.0) and q["override"] is True
    assert len(client.get("/api/pricing/overrides").json()) == 1
    assert client.delete("/api/pricing/overrides/aws/us-east-1/p5.48xlarge").status_code == 204
    q = client.get("/api/pricing/quote", params=dict(cloud="aws", region="us-east-1",
                                                     instance_type="p5.48xlarge", gpu_model="H100")).json()
    assert q["usd_per_gpu_hour"] == pytest.approx(6.88)
    assert client.delete("/api/pricing/overrides/aws/us-east-1/p5.48xlarge").status_code == 404


def test_override_for_unknown_instance_without_gpu_is_422(client):
    r = client.put("/api/pricing/overrides", json=dict(cloud="onprem", region="dc1",
                                                       instance_type="box", on_demand_usd_h=1.0))
    assert r.status_code == 422 and "gpu_model" in r.json()["detail"]


def test_catalog_filters_by_gpu_model(client):
    rows = client.get("/api/pricing/catalog", params={"gpu_model": "H200"}).json()
    assert rows and {r["gpu_model"] for r in rows} == {"H200-141GB"}
    assert all(r["source"] and r["as_of"] for r in rows)


def test_recommendation_is_ranked_stored_and_readable(client):
    body = dict(params=8e9, precision="bf16", prompt_tokens=1024, output_tokens=256,
                n_layers=32, n_kv_heads=8, head_dim=128, tokens_per_s=5000, slo_tpot_ms=60,
                limit=3, use_stored_measurements=False)
    r = client.post("/api/recommendations", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert [o["rank"] for o in out["ranked"]] == [1, 2, 3]
    costs = [o["usd_per_million_tokens"] for o in out["ranked"]]
    assert costs == sorted(costs) and all(o["reason"] for o in out["ranked"])
    assert client.get(f"/api/recommendations/{out['id']}").json()["ranked"] == out["ranked"]
    listed = client.get("/api/recommendations").json()
    assert listed[0]["id"] == out["id"] and listed[0]["best_instance"]


def test_recommendation_from_a_benchmark_run_uses_it_as_measured(client):
    run = dict(gpu_model="H100", precision="bf16", params=1.1e9, batch_size=32, prompt_tokens=128,
               output_tokens=128, tokens_per_s=4000.0, kv_bytes_per_token=65536, label="bench 1b")
    r = client.post("/api/recommendations", json=dict(benchmark_run=run, tokens_per_s=8000,
                                                      max_batch_size=32, gpu_models=["H100"],
                                                      clouds=["aws"], use_stored_measurements=False))
    assert r.status_code == 200, r.text
    p5_4x = [o for o in r.json()["ranked"] if o["instance_type"] == "p5.4xlarge"][0]
    assert p5_4x["throughput_source"] == "measured" and p5_4x["tokens_per_s_per_replica"] == 4000.0
    assert p5_4x["instances"] == 2  # 8,000 tok/s / 4,000 per H100


def test_recommendation_without_demand_is_422(client):
    r = client.post("/api/recommendations", json=dict(params=8e9, kv_bytes_per_token=131072))
    assert r.status_code == 422


def test_live_view_sets_what_a_service_pays_beside_its_best_alternative(client):
    import time

    from core.tables.history import AggregateRow
    from core.db import session_scope

    settings = client.app.state.settings
    now = int(time.time()) // 60 * 60
    with session_scope(settings) as s:
        # Two tiling 60 s windows ($0.60 and $0.40, 1M tokens in all) and one overlapping window
        # (start not a multiple of 60) that must not be counted again.
        for start, spend, tokens in ((now - 120, 0.60, 600_000), (now - 60, 0.40, 400_000),
                                     (now - 110, 9.99, 999_999)):
            s.add(AggregateRow(tenant="acme", service="chat", region="us-east-1", gpu_model="H100-80GB",
                               window_start=start, window_end=start + 60, window_s=60, spend_usd=spend,
                               spend_rate_usd_h=spend * 60, gpu_seconds=60, util_avg=0.5, idle_usd=0,
                               events=1, tokens=tokens, requests=0, fallback_priced_events=0))
    # Unknown model: what it pays is shown, and the alternative is asked for, not guessed.
    [row] = client.get("/api/recommendations/live").json()
    assert (row["tenant"], row["service"]) == ("acme", "chat")
    assert row["spend_usd"] == pytest.approx(1.0) and row["tokens"] == 1_000_000
    assert row["current_usd_per_million_tokens"] == pytest.approx(1.0)
    assert row["spend_rate_usd_h"] == pytest.approx(30.0)  # $1 over 120 s
    assert row["current_usd_per_month"] == pytest.approx(30.0 * 730)
    assert row["status"] == "model_unknown" and row["best_alternative"] is None
    # With the service's model set, the alternative serves the same demand (issue 11).
    r = client.put("/api/services/model", json=dict(tenant="acme", service="chat", params=8e9, n_layers=32,
                                                   n_kv_heads=8, head_dim=128))
    assert r.status_code == 204, r.text
    [row] = client.get("/api/recommendations/live").json()
    assert row["status"] == "ok" and row["best_alternative"]
    assert row["demand_tokens_per_s"] == pytest.approx(1_000_000 / 120)
    assert row["best_usd_per_month"] == pytest.approx(row["best_usd_per_hour"] * 730)
    assert row["savings_usd_per_month"] == pytest.approx(30.0 * 730 - row["best_usd_per_hour"] * 730)
