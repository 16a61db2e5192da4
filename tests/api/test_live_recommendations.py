"""Live-service recommendations (optimizer.recommend_live): the same demand, measured from the
stream, priced on the current fleet (metered) and on the recommended fleet (sized for it)."""

from __future__ import annotations

import math

import pytest

from core.pricing import CatalogRow, PriceCatalog, default_catalog
from optimizer.recommend_live import live_recommendation, load_services, model_for, service_usage

MODEL = {"params": 8e9, "precision": "bf16", "prompt_tokens": 512, "output_tokens": 256,
         "n_layers": 32, "n_kv_heads": 8, "head_dim": 128}


def _rows(n_windows=10, spend_usd=0.5, tokens=60_000, gpus=4, tenant="acme", service="chat-api", model_version=""):
    """n aligned 60 s windows plus the hopping windows between them, which must not be summed."""
    rows = []
    for i in range(n_windows):
        for offset in (0, 10, 20):
            rows.append({"tenant": tenant, "service": service, "region": "us-east-1", "gpu_model": "A100-80GB",
                         "window_start": 1_800_000_000 + i * 60 + offset, "window_s": 60,
                         "spend_usd": spend_usd, "tokens": tokens, "gpu_seconds": gpus * 60.0,
                         "util_avg": 0.5, "model_version": model_version})
    return rows


def _one_instance_catalog(usd_h: float) -> PriceCatalog:
    shipped = default_catalog()
    row = CatalogRow(cloud="testcloud", region="r1", instance_type="h100x1", gpu_model="H100-80GB", gpu_count=1,
                     gpu_mem_gb=80, vcpus=16, ram_gb=200, on_demand_usd_h=usd_h, spot_usd_h=None,
                     source="test", as_of="2026-12-01")
    return PriceCatalog([row], shipped.specs.values())


def test_saves_per_month_is_the_same_demand_on_both_fleets_by_hand():
    usage = service_usage(_rows(), 60)[("acme", "chat-api")]
    rec = live_recommendation(usage, MODEL, 60, catalog=_one_instance_catalog(2.0))
    # By hand: 10 aligned windows of 60 s, $0.50 each -> $5.00 over 600 s = $30.00/h metered;
    # 60,000 tokens each -> 600,000 tokens / 600 s = 1,000 tokens/s of demand; 4 GPUs busy.
    assert rec["period_s"] == 600
    assert rec["spend_rate_usd_h"] == pytest.approx(30.0)
    assert rec["demand_tokens_per_s"] == pytest.approx(1000.0)
    assert rec["gpus_in_use"] == pytest.approx(4.0)
    assert rec["current_usd_per_million_tokens"] == pytest.approx(5.0 / 600_000 * 1e6)
    # One 1x H100 at $2.00/h serves 1,000 tok/s of an 8B bf16 model (a replica does thousands):
    # the recommended fleet for the same demand costs $2.00/h, so it saves (30 - 2) * 730 a month.
    assert rec["status"] == "ok", rec
    assert rec["best_instances"] == 1
    assert rec["best_usd_per_hour"] == pytest.approx(2.0)
    assert rec["savings_usd_per_month"] == pytest.approx((30.0 - 2.0) * 730)
    assert "serves 1,000 tok/s" in rec["best_reason"]
    assert rec["best_basis"] == "projected from specs"
    assert rec["current_basis"].startswith("metered")


def test_the_recommended_fleet_grows_with_the_measured_demand():
    catalog = _one_instance_catalog(2.0)
    small = live_recommendation(service_usage(_rows(tokens=60_000), 60)[("acme", "chat-api")], MODEL, 60,
                                catalog=catalog)
    per_replica = 1000 * small["best_instances"]  # at least what one instance served
    # Ten times the demand at the same spend: more instances, each at the same price.
    big = live_recommendation(service_usage(_rows(tokens=60_000 * 40), 60)[("acme", "chat-api")], MODEL, 60,
                              catalog=catalog)
    assert big["demand_tokens_per_s"] == pytest.approx(40_000)
    assert big["best_instances"] > small["best_instances"]
    assert big["best_usd_per_hour"] == pytest.approx(2.0 * big["best_instances"])
    assert big["savings_usd_per_month"] == pytest.approx((30.0 - 2.0 * big["best_instances"]) * 730)
    assert per_replica > 0


def test_unknown_model_and_missing_tokens_say_so_instead_of_guessing():
    usage = service_usage(_rows(service="vision-ocr"), 60)[("acme", "vision-ocr")]
    rec = live_recommendation(usage, model_for("vision-ocr", (), load_services(), {}), 60)
    assert rec["status"] == "model_unknown" and "model size unknown" in rec["message"]
    assert rec["savings_usd_per_month"] is None
    no_tokens = live_recommendation(service_usage(_rows(tokens=0), 60)[("acme", "chat-api")], MODEL, 60)
    assert no_tokens["status"] == "no_tokens" and no_tokens["best_alternative"] is None


def test_a_canary_alone_is_sized_on_its_own_model_and_mixed_versions_on_the_service_model():
    from optimizer.recommend_live import usage_model

    shipped = load_services()
    canary = service_usage(_rows(model_version="v2-canary"), 60)[("acme", "chat-api")]
    assert canary.model_versions == {"v2-canary"} and canary.tokens == 10 * 60_000
    assert usage_model(canary, shipped, {})["precision"] == "fp8"  # ingest/services.json: the fp8 canary
    both = service_usage(_rows(model_version="v2-canary") + _rows(model_version="v1"), 60)[("acme", "chat-api")]
    assert usage_model(both, shipped, {})["precision"] == "bf16"
    assert usage_model(service_usage(_rows(), 60)[("acme", "chat-api")], shipped, {})["precision"] == "bf16"
    rec = live_recommendation(canary, usage_model(canary, shipped, {}), 60)
    assert rec["model_versions"] == ["v2-canary"] and rec["model"]["model"].endswith("(fp8 canary)")


def test_a_per_service_setting_wins_over_the_services_file():
    shipped = load_services()
    assert shipped["chat-api"]["params"] == pytest.approx(8.03e9)
    assert "vision-ocr" not in shipped  # left unknown on purpose: the dashboard asks for it
    mine = model_for("chat-api", (), shipped, {"chat-api": {**MODEL, "params": 70e9}})
    assert mine["params"] == 70e9
    assert math.isclose(model_for("chat-api", (), shipped, {})["params"], 8.03e9)


def test_recommend_without_arguments_recommends_for_the_live_services(tmp_path, monkeypatch):
    import time

    from typer.testing import CliRunner

    from core.db import init_db, session_scope
    from core.settings import Settings, get_settings
    from core.tables.history import AggregateRow
    from gpucost.cli import _register_commands, app

    monkeypatch.setenv("GPUCOST_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    settings = Settings()
    init_db(settings)
    start = int(time.time() // 60) * 60 - 600
    with session_scope(settings) as s:
        for r in _rows(n_windows=5) + _rows(n_windows=5, service="vision-ocr"):
            s.add(AggregateRow(**{**r, "window_start": r["window_start"] - 1_800_000_000 + start,
                                  "window_end": r["window_start"] - 1_800_000_000 + start + 60,
                                  "spend_rate_usd_h": r["spend_usd"] * 60, "idle_usd": 0.0, "events": 6,
                                  "requests": 0, "fallback_priced_events": 0}))
    _register_commands()
    try:
        result = CliRunner().invoke(app, ["recommend", "--json"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    import json

    rows = {r["service"]: r for r in json.loads(result.output)}
    assert rows["chat-api"]["status"] == "ok"
    assert rows["chat-api"]["demand_tokens_per_s"] == pytest.approx(1000.0)
    assert rows["chat-api"]["savings_usd_per_month"] == pytest.approx(
        (30.0 - rows["chat-api"]["best_usd_per_hour"]) * 730)
    assert rows["vision-ocr"]["status"] == "model_unknown"


def test_the_optimizer_service_is_labelled_with_the_hardware_it_ran_on(tmp_path, monkeypatch):
    """Its usage is priced as a GPU instance; on a CPU machine the answer says it ran on a CPU, and
    its model comes from its own benchmark run."""
    import time

    from core.db import init_db, session_scope
    from core.settings import Settings
    from core.tables.benchmarks import BenchmarkRun
    from core.tables.history import AggregateRow
    from optimizer.recommend_live import live_services

    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'g.db'}")
    init_db(settings)
    start = int(time.time() // 60) * 60 - 300
    with session_scope(settings) as s:
        s.add(BenchmarkRun(source="service", gpu_model="cpu", device="cpu: 2 cores", model="tiny", params=1_000_000,
                           variant="int8", precision="fp32", quantization="int8-dynamic", kv_cache="full", window=None,
                           decode_mode="eager", batch_size=4, concurrency=4, prompt_tokens=64, new_tokens=32,
                           tokens_per_s=500.0, requests_per_s=10.0, latency_p50_ms=1, latency_p95_ms=2,
                           latency_p99_ms=3, ttft_p50_ms=1, peak_memory_bytes=1, peak_memory_source="rss",
                           model_bytes=1_000_000, kv_cache_bytes=4 * 96 * 1024, result={}))
        for r in _rows(n_windows=4, tenant="optimizer", service="optimizer/int8"):
            s.add(AggregateRow(**{**r, "window_start": r["window_start"] - 1_800_000_000 + start,
                                  "window_end": r["window_start"] - 1_800_000_000 + start + 60,
                                  "spend_rate_usd_h": 30.0, "idle_usd": 0.0, "events": 6, "requests": 0,
                                  "fallback_priced_events": 0}))
    (rec,) = live_services(settings)
    assert rec["service"] == "optimizer/int8"
    assert rec["hardware"] == "CPU (cpu: 2 cores)"
    assert rec["model"]["params"] == 1_000_000 and rec["model"]["kv_bytes_per_token"] == pytest.approx(1024.0)
    assert rec["status"] == "ok", rec
