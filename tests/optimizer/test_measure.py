"""Measurements: percentiles, memory, bandwidth and cost arithmetic, and a measured run's sanity."""

import pytest
import torch

from optimizer.bench import BenchConfig, Variant, run_variant
from optimizer.measure import (
    PeakMemory, cost_per_million_tokens, decode_step_bytes, kv_bytes_per_token, latency_summary_ms,
    percentile, peak_bandwidth_bytes_s, usd_per_gpu_hour, Instance,
)
from optimizer.model import build_model


def test_percentiles_interpolate_like_numpy():
    xs = [float(i) for i in range(1, 101)]
    assert percentile(xs, 50) == pytest.approx(50.5)
    assert percentile(xs, 99) == pytest.approx(99.01)
    summary = latency_summary_ms([0.010, 0.020, 0.030])
    assert summary["p50_ms"] == pytest.approx(20.0)
    assert summary["p50_ms"] <= summary["p95_ms"] <= summary["p99_ms"]


def test_cost_per_million_tokens_is_price_over_tokens_per_hour():
    assert cost_per_million_tokens(3.6, 1000.0) == pytest.approx(1.0)
    assert cost_per_million_tokens(None, 1000.0) is None


def test_prices_and_bandwidth_come_from_the_catalog():
    price, fallback = usd_per_gpu_hour(Instance("aws", "us-east-1", "p5.48xlarge"), "H100-80GB")
    assert price == pytest.approx(55.04 / 8) and not fallback
    assert peak_bandwidth_bytes_s("H100-80GB") == pytest.approx(3.35e12)
    assert usd_per_gpu_hour(Instance(), "cpu") == (None, False)


def test_process_memory_is_sampled_on_cpu():
    with PeakMemory("cpu") as mem:
        block = torch.ones(64, 1024, 1024)  # 256 MiB
        del block
    assert mem.source == "process_rss" and mem.peak_bytes > 256 * 2**20


def test_decode_bytes_count_weights_once_and_the_cached_context():
    model = build_model("test")
    model.setup_caches(2, 100)
    per_token = kv_bytes_per_token(model)
    assert per_token == 2 * 2 * 2 * 32 * 4  # layers x (k, v) x kv heads x head dim x fp32
    assert decode_step_bytes(model, 2, 50) == pytest.approx(4 * 656000 + 2 * 50 * per_token)


def test_a_measured_run_is_sane():
    cfg = BenchConfig(model="test", batch_size=2, prompt_tokens=8, new_tokens=8, repeats=2)
    row = run_variant(cfg, Variant())
    assert row.tokens_per_s > 0 and row.requests_per_s > 0
    assert row.latency_p50_ms <= row.latency_p95_ms <= row.latency_p99_ms
    assert 0 < row.ttft_p50_ms <= row.latency_p50_ms
    assert row.model_bytes == 4 * row.params
    assert row.kv_cache_bytes == 2 * 16 * kv_bytes_per_token_for_test()
    assert row.peak_memory_bytes > row.model_bytes and row.peak_memory_source == "process_rss"
    assert row.gpu_model == "cpu" and row.cost_per_million_tokens_usd is None
    assert row.extra["decode_tokens_per_s"] > 0


def kv_bytes_per_token_for_test() -> int:
    return 2 * 2 * 2 * 32 * 4
