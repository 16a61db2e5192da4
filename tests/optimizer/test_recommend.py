"""The recommender as a specification, on a small made-up catalog whose numbers can be followed by
hand. Shared setup: a 10B-parameter bf16 model (weights W = 20 GB), KV 1e5 bytes per token,
100-token prompts and 100-token outputs, GPUs with so much compute that only memory bandwidth
matters. Per serving step (chunked prefill, context L = 150 during decode) a batch of B reads
  bytes(B) = W + B*L*kv + (B/O)*S*kv = 20e9 + B*(1.5e7 + 1e5) = 20e9 + 1.51e7*B,
  step(B) = bytes(B) / (BW * 0.7)   (default bandwidth efficiency),   tokens/s = B / step(B)."""

from dataclasses import replace

import pytest

from core.pricing import CatalogRow, GPUSpec, PriceCatalog
from optimizer.recommend import (
    Measurement,
    RecommendError,
    RequestClass,
    Workload,
    projection_error,
    recommend,
)

HUGE_TFLOPS = 1e9  # compute time ~0: every number below is a bandwidth number


def spec(name, memory_gb, bw_gb_s):
    return GPUSpec(name, memory_gb, bw_gb_s, HUGE_TFLOPS, None, None, "test spec")


def row(instance, gpu, count, usd_h, spot=None):
    return CatalogRow("test", "r1", instance, gpu, count, 0, 8, 64, usd_h, spot, "test", "2026-01-01")


@pytest.fixture
def catalog():
    return PriceCatalog(
        [row("big.1", "BIG", 1, 4.0, spot=1.2), row("small.1", "SMALL", 1, 1.0),
         row("tiny.1", "TINY", 1, 0.5), row("tiny.2", "TINY", 2, 1.0)],
        [spec("BIG", 80, 2000), spec("SMALL", 24, 500), spec("TINY", 16, 300)])


def workload(**kw):
    base = dict(params=10e9, precision="bf16", prompt_tokens=100, output_tokens=100,
                kv_bytes_per_token=1e5, tokens_per_s=10_000)
    base.update(kw)
    return Workload(**base)


def by_instance(options):
    return {o.instance_type: o for o in options}


def test_model_too_big_for_one_gpu_is_rejected_and_fits_on_two(catalog):
    result = recommend(workload(), catalog=catalog)
    rejected = by_instance(result.rejected)
    # TINY: 90 % of 16 GB = 14.4 GB < 20 GB of weights + 0.02 GB of KV for one sequence.
    assert not rejected["tiny.1"].fits
    assert "does not fit" in rejected["tiny.1"].reason and "20.0 GB" in rejected["tiny.1"].reason
    # Two TINY: 28.8 GB usable, (28.8 - 20) GB / (200 tokens * 1e5 B) = 440 sequences.
    tiny2 = by_instance(result.ranked)["tiny.2"]
    assert tiny2.gpus_per_replica == 2 and tiny2.replicas_per_instance == 1
    assert tiny2.max_batch_fit == 440


def test_max_batch_is_what_fits_beside_the_weights(catalog):
    ranked = by_instance(recommend(workload(), catalog=catalog).ranked)
    assert ranked["big.1"].max_batch_fit == 2600  # (72 - 20) GB / 20 MB per sequence
    assert ranked["small.1"].max_batch_fit == 80  # (21.6 - 20) GB / 20 MB


def test_slo_violated_at_batch_one_rejects_the_gpu(catalog):
    # SMALL at batch 1: (20e9 + 1.51e7) / (500e9 * 0.7) = 57.19 ms per output token.
    result = recommend(workload(slo_tpot_ms=50), catalog=catalog)
    small = by_instance(result.rejected)["small.1"]
    assert small.fits and not small.slo_ok
    assert "SLO violated even at batch 1" in small.reason and "57.2 ms > SLO 50 ms" in small.reason


def test_batch_grows_until_the_slo_binds_and_the_fleet_is_sized_for_demand(catalog):
    # BIG: step(B) = (20e9 + 1.51e7*B) / 1.4e12 <= 20 ms  ->  B <= (28e9 - 20e9) / 1.51e7 = 529.8.
    # step(529) = 27.9879e9 / 1.4e12 = 19.991 ms -> 26,461 tokens/s per replica;
    # 60,000 tokens/s need ceil(2.27) = 3 replicas = 3 instances at $4/h.
    big = by_instance(recommend(workload(slo_tpot_ms=20, tokens_per_s=60_000),
                                catalog=catalog).ranked)["big.1"]
    assert big.batch_size == 529
    assert big.tpot_ms == pytest.approx(19.991, rel=1e-4)
    assert big.tokens_per_s_per_replica == pytest.approx(26461.4, rel=1e-4)
    assert (big.replicas, big.instances) == (3, 3)
    assert big.usd_per_hour == pytest.approx(12.0)
    assert big.usd_per_million_tokens == pytest.approx(12.0 / (60_000 * 3600) * 1e6)  # $0.0556
    assert big.usd_per_month == pytest.approx(12.0 * 730)
    assert big.throughput_source == "projected" and "no measurement" in big.projected_from


def test_spot_ranks_first_only_when_allowed(catalog):
    on_demand_only = recommend(workload(slo_tpot_ms=20, tokens_per_s=60_000), catalog=catalog)
    assert all(o.pricing == "on_demand" for o in on_demand_only.ranked)
    with_spot = recommend(workload(slo_tpot_ms=20, tokens_per_s=60_000, spot_allowed=True),
                          catalog=catalog)
    best = with_spot.best
    assert (best.instance_type, best.pricing) == ("big.1", "spot")
    assert best.usd_per_hour == pytest.approx(3 * 1.2)  # same 3 instances at $1.20/h
    assert "spot capacity can be reclaimed" in best.reason
    assert best.rank == 1 and "cheaper than #2" in best.reason


def measured_big(tokens_per_s=2000.0, batch=64, label="bench on BIG"):
    return Measurement(gpu_model="BIG", precision="bf16", params=10e9, batch_size=batch,
                       prompt_tokens=100, output_tokens=100, tokens_per_s=tokens_per_s,
                       kv_bytes_per_token=1e5, label=label)


def test_measured_throughput_is_used_where_measured(catalog):
    # The roofline alone would say 64 / (20.9664e9 / 1.4e12) = 4,273 tokens/s; measured: 2,000.
    result = recommend(workload(max_batch_size=64), [measured_big()], catalog=catalog)
    big = by_instance(result.ranked)["big.1"]
    assert big.batch_size == 64 and big.throughput_source == "measured"
    assert big.tokens_per_s_per_replica == pytest.approx(2000.0)
    assert "each (measured)" in big.reason


def test_other_gpus_are_projected_from_the_measurement_by_bandwidth(catalog):
    # Both memory-bound: SMALL has a quarter of BIG's bandwidth, so 2,000 / 4 = 500 tokens/s.
    result = recommend(workload(max_batch_size=64), [measured_big()], catalog=catalog)
    small = by_instance(result.ranked)["small.1"]
    assert small.throughput_source == "projected" and "calibrated on measured bench on BIG" in small.projected_from
    assert small.batch_size == 64
    assert small.tokens_per_s_per_replica == pytest.approx(500.0, rel=1e-6)


def test_measured_point_preferred_over_a_slightly_better_projection(catalog):
    # Calibration: ideal step at 64 = 20.9664e9 / 2e12 = 10.483 ms, measured 32 ms -> efficiency
    # 0.3276. At batch 66 that projects 66 / (20.9966e9 / 2e12 / 0.3276) = 2,059.5 tokens/s, within
    # 5 % of the measured 2,000 at batch 64, so the measured point is kept.
    result = recommend(workload(max_batch_size=66), [measured_big()], catalog=catalog)
    big = by_instance(result.ranked)["big.1"]
    assert big.throughput_source == "measured" and big.batch_size == 64


def test_projection_error_between_two_measured_configurations(catalog):
    # From batch 64 (2,000 tok/s: efficiency 0.3276) to batch 16: ideal step
    # (20e9 + 16*1.51e7) / 2e12 = 10.1208 ms, / 0.3276 = 30.894 ms -> 517.9 tok/s vs 500 measured.
    check = projection_error(measured_big(), measured_big(tokens_per_s=500.0, batch=16,
                                                          label="batch 16"), catalog)
    assert check["metric"] == "serving tokens/s"
    assert check["projected"] == pytest.approx(517.9, rel=1e-3)
    assert check["abs_error_pct"] == pytest.approx(3.58, rel=1e-2)
    assert check["within_15pct"]


def test_projection_error_on_decode_steps_when_both_runs_measured_them(catalog):
    # Decode only (no prefill): ideal step at 64 = (20e9 + 64*150*1e5) / 2e12 = 10.48 ms, measured
    # 64 / 2,500 = 25.6 ms -> efficiency 0.409375; at 16: 10.12 ms / 0.409375 = 24.72 ms -> 647.2.
    source = replace(measured_big(), decode_tokens_per_s=2500.0)
    target = replace(measured_big(batch=16), decode_tokens_per_s=640.0)
    check = projection_error(source, target, catalog)
    assert check["metric"] == "decode tokens/s"
    assert check["projected"] == pytest.approx(647.2, rel=1e-3)
    assert check["bandwidth_efficiency"] == pytest.approx(0.409375)
    assert check["abs_error_pct"] == pytest.approx(1.13, rel=2e-2)


def test_ranking_is_by_cost_and_every_rank_has_a_reason(catalog):
    result = recommend(workload(), catalog=catalog)
    costs = [o.usd_per_hour for o in result.ranked]
    assert costs == sorted(costs)
    assert [o.rank for o in result.ranked] == list(range(1, len(result.ranked) + 1))
    assert all(o.reason.startswith(f"#{o.rank}: ") for o in result.ranked)


def test_requests_per_s_demand_is_converted_to_output_tokens(catalog):
    a = recommend(workload(tokens_per_s=None, requests_per_s=100), catalog=catalog).best
    b = recommend(workload(tokens_per_s=10_000), catalog=catalog).best
    assert a.usd_per_hour == b.usd_per_hour  # 100 req/s * 100 output tokens = 10,000 tok/s


def test_missing_kv_shape_is_a_clear_error(catalog):
    with pytest.raises(RecommendError, match="kv_bytes_per_token"):
        recommend(workload(kv_bytes_per_token=None), catalog=catalog)


def test_mixed_request_sizes_get_a_cheaper_mix_of_gpu_types():
    # SMALL: 24 GB at 1,000 GB/s for $0.15/h; BIG: 80 GB at 2,000 GB/s for $4/h; TPOT SLO 40 ms.
    # Short requests (100/100, 99 % of 1,000 req/s = 99,000 tok/s): SMALL holds 80 sequences,
    #   step (20e9 + 80*1.51e7) / 7e11 = 30.30 ms -> 2,640 tok/s = 17,600 tok/s per $ (BIG: 14,900).
    # Long requests (8,000/500, 1 % = 5,000 tok/s): SMALL holds one sequence -> 33.6 tok/s = 224 per $;
    #   BIG batch 43 -> 1,083.8 tok/s = 271 per $.
    # Mix: ceil(99,000 / 2,640 = 37.5) SMALL + ceil(5,000 / 1,083.8 = 4.61) BIG = 38*0.15 + 5*4 = $25.70/h;
    # BIG alone: ceil(1.66 + 4.61) = 7 instances = $28/h; 8.2 % cheaper.
    cat = PriceCatalog([row("big.1", "BIG", 1, 4.0), row("small.1", "SMALL", 1, 0.15)],
                       [spec("BIG", 80, 2000), spec("SMALL", 24, 1000)])
    mix = (RequestClass(prompt_tokens=100, output_tokens=100, share=0.99),
           RequestClass(prompt_tokens=8000, output_tokens=500, share=0.01))
    w = workload(tokens_per_s=None, requests_per_s=1000, request_mix=mix, slo_tpot_ms=40)
    result = recommend(w, catalog=cat)
    assert result.mix is not None
    short, long_ = result.mix.assignments
    assert short["gpu_model"] == "SMALL" and long_["gpu_model"] == "BIG"
    assert short["instance_load"] == pytest.approx(37.49, rel=1e-3)
    assert long_["instance_load"] == pytest.approx(4.613, rel=1e-3)
    assert result.mix.usd_per_hour == pytest.approx(25.70)
    assert result.mix.best_single_usd_per_hour == pytest.approx(28.0)
    assert result.mix.savings_pct == pytest.approx(8.21, rel=1e-3)
    assert "8% cheaper" in result.mix.reason


def test_no_mix_when_one_type_is_cheapest_for_every_class(catalog):
    mix = (RequestClass(100, 100, 0.5), RequestClass(200, 100, 0.5))
    assert recommend(workload(tokens_per_s=None, requests_per_s=100, request_mix=mix),
                     catalog=catalog).mix is None


def test_shipped_catalog_recommendation_runs_end_to_end():
    # Llama-3-8B-like: 8e9 params bf16, 32 layers x 8 KV heads x 128 dims -> 131,072 B per token.
    w = Workload(params=8e9, precision="bf16", prompt_tokens=1024, output_tokens=256,
                 n_layers=32, n_kv_heads=8, head_dim=128, tokens_per_s=5000, slo_tpot_ms=60)
    assert w.kv_token_bytes == 131072
    result = recommend(w, limit=5)
    assert len(result.ranked) == 5 and result.best.usd_per_million_tokens > 0
    assert any("does not fit" in o.reason for o in result.rejected)  # 16 GB T4s are too small


def test_cheapest_region_only_keeps_one_row_per_instance_type():
    cat = PriceCatalog([row("big.1", "BIG", 1, 4.0),
                        CatalogRow("test", "r2", "big.1", "BIG", 1, 0, 8, 64, 3.0, None, "test", "2026-01-01")],
                       [spec("BIG", 80, 2000)])
    result = recommend(workload(), catalog=cat, cheapest_region_only=True)
    assert [(o.region, o.usd_per_gpu_hour) for o in result.ranked] == [("r2", 3.0)]
