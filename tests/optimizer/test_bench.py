"""Every CPU variant measured side by side on the tiny model; results stored and described."""

import json

import pytest
from sqlalchemy import select

from core.settings import Settings
from optimizer.bench import BenchConfig, Variant, default_variants, ratios, results_document, run_matrix
from optimizer.publish import run_usage_event, service_name, store_runs
from optimizer.measure import Instance


def test_variant_names_round_trip():
    for text in ("fp32", "bf16+int8-weight-only+kv-int8+window-256+compile+cudagraph",
                 "fp16+fp8+kv-int4+offload", "fp32+int8-dynamic",
                 "bf16+gemv+fused+compile+cudagraph+graph-steps-1+tail-torch"):
        assert Variant.parse(text).name == text
    v = Variant.parse("bf16+gemv+fused+compile+cudagraph+graph-steps-1+tail-torch")
    assert (v.graph_steps, v.greedy_kernel) == (1, False)
    assert Variant.parse("bf16+cudagraph+compile").decode_mode == "compile+cudagraph"
    with pytest.raises(ValueError):
        Variant.parse("bf16+int3")


def test_cpu_only_combinations_are_refused_on_the_wrong_device():
    import torch

    with pytest.raises(ValueError):
        Variant.parse("bf16+cudagraph").check(torch.device("cpu"))
    with pytest.raises(ValueError):
        Variant.parse("bf16+int8-dynamic").check(torch.device("cpu"))
    with pytest.raises(ValueError, match="graph-steps"):  # a graph's steps without graphs
        Variant.parse("bf16+graph-steps-4").check(torch.device("cpu"))


@pytest.fixture(scope="module")
def matrix():
    cfg = BenchConfig(model="test", batch_size=2, prompt_tokens=12, new_tokens=12, repeats=1)
    variants = default_variants("cpu") + [Variant.parse("bf16+int8-weight-only+kv-int8"),
                                          Variant.parse("fp32+offload")]
    return run_matrix(cfg, variants)


def test_every_cpu_variant_runs_and_is_gated(matrix):
    names = [r.variant for r in matrix]
    assert names[0] == "fp32" and len(set(names)) == len(names) == 11
    for row in matrix:
        assert row.tokens_per_s > 0 and row.latency_p50_ms > 0
        assert row.gate is not None and row.accepted is not None
    by_name = {r.variant: r for r in matrix}
    assert by_name["fp32"].accepted and by_name["fp32"].gate["agreement"] == 1.0
    assert by_name["fp32+int8-weight-only"].accepted
    assert by_name["fp32+int8-weight-only"].model_bytes < 0.45 * by_name["fp32"].model_bytes
    assert by_name["bf16"].model_bytes * 2 == by_name["fp32"].model_bytes
    assert by_name["fp32+int8-dynamic"].model_bytes < 0.45 * by_name["fp32"].model_bytes
    # same run shape, so the cache sizes compare directly: int8 and int4 groups of 32 (head_dim 32)
    full = by_name["fp32"].kv_cache_bytes
    assert full / by_name["fp32+kv-int8"].kv_cache_bytes == pytest.approx(4 / (1 + 2 / 32))
    assert full / by_name["fp32+kv-int4"].kv_cache_bytes == pytest.approx(4 / (0.5 + 2 / 32))
    assert by_name["fp32+offload"].model_bytes == by_name["fp32"].model_bytes


def test_ratios_are_against_the_first_row(matrix):
    r = ratios(matrix)
    assert r[0]["speedup"] == 1.0 and r[0]["memory_ratio"] == 1.0
    assert all(x["speedup"] > 0 for x in r)


def test_results_document_is_json_with_every_run(matrix):
    doc = json.loads(json.dumps(results_document(matrix, "gpucost bench"), default=str))
    assert doc["schema"] == "gpucost.optimizer.bench/1" and doc["baseline"] == "fp32"
    assert len(doc["runs"]) == len(matrix) and len(doc["ratios"]) == len(matrix)
    for key in ("gpu_model", "params", "precision", "batch_size", "prompt_tokens", "new_tokens",
                "tokens_per_s", "latency_p99_ms", "ttft_p50_ms", "peak_memory_bytes", "accepted"):
        assert key in doc["runs"][0]


def test_runs_are_stored_for_the_recommender(matrix, database_url):
    from core.db import session_scope
    from core.tables.benchmarks import BenchmarkRun

    settings = Settings(database_url=database_url)
    ids = store_runs(matrix, settings, source="bench")
    assert len(ids) == len(matrix)
    with session_scope(settings) as session:
        rows = session.scalars(select(BenchmarkRun).order_by(BenchmarkRun.id)).all()
    assert [r.variant for r in rows] == [m.variant for m in matrix]
    fp8 = next(r for r in rows if r.variant == "fp32+fp8")
    assert fp8.accepted is not None and fp8.top1_agreement is not None
    assert rows[0].result["variant"] == "fp32" and rows[0].tokens_per_s > 0


def test_a_run_becomes_a_valid_usage_event(matrix):
    event = run_usage_event(matrix[0], Instance("aws", "us-east-1", "g5.xlarge"))
    assert event.service == service_name("fp32") == "optimizer/fp32"
    assert event.gpu_model == "A10G" and event.model_extra["measured_on"] == "cpu"
    assert event.tokens == round(matrix[0].tokens_per_s * matrix[0].wall_s) and event.util == 1.0
