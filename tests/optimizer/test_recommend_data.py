"""Measured runs reach the recommender: RunMetrics dicts from the optimizer's results files, and the
projection check across them."""

import json
from pathlib import Path

import pytest

from optimizer.recommend import Measurement
from optimizer.recommend_check import check, comparable
from optimizer.recommend_data import load_measurements


def run(batch, tokens_per_s, decode_tokens_per_s, **kw):
    r = dict(variant="bf16+cudagraph", model="1b", params=1_100_000_000, device="NVIDIA H100 80GB HBM3",
             gpu_model="H100-80GB", precision="bf16", quantization="none", kv_cache="full", window=None,
             decode_mode="cudagraph", batch_size=batch, concurrency=0, prompt_tokens=128, new_tokens=128,
             tokens_per_s=tokens_per_s, model_bytes=2_200_000_000,
             kv_cache_bytes=batch * 256 * 32768, ttft_p50_ms=5.0,
             extra={"decode_step_ms": batch / decode_tokens_per_s * 1e3,
                    "decode_tokens_per_s": decode_tokens_per_s})
    r.update(kw)
    return r


def test_from_run_reads_kv_per_token_and_the_decode_rate():
    m = Measurement.from_run(run(8, 5000.0, 6000.0))
    assert m.kv_bytes_per_token == 32768  # kv_cache_bytes / (8 * (128 + 128))
    assert m.decode_tokens_per_s == 6000.0 and m.tpot_ms == pytest.approx(8 / 6000 * 1e3)
    assert (m.gpu_model, m.precision, m.batch_size, m.output_tokens) == ("H100-80GB", "bf16", 8, 128)


def test_int8_weight_quantized_run_counts_as_int8():
    assert Measurement.from_run(run(1, 100.0, 120.0, quantization="int8-wo")).precision == "int8"


def test_gpu_matrix_sections_file_is_read_and_cpu_runs_skipped(tmp_path):
    doc = {"sections": {"configs": {"rows": [run(1, 700.0, 800.0), run(8, 5000.0, 6000.0)]},
                        "precision": {"rows": [run(1, 10.0, 12.0, gpu_model="cpu")]},
                        "broken": {"error": "boom"}}}
    (tmp_path / "h100.json").write_text(json.dumps(doc))
    loaded = load_measurements(tmp_path)
    assert [m.batch_size for m in loaded.measurements] == [1, 8]
    assert loaded.skipped == 1 and loaded.sources == ["h100.json"]


def test_check_projects_each_configuration_from_the_others():
    rows = check(comparable([run(1, 700.0, 800.0), run(8, 5000.0, 6000.0)]))
    assert len(rows) == 2 and all(r["metric"] == "decode tokens/s" for r in rows)
    # Memory-bound both ways: projecting batch 8 from batch 1 scales by the bytes each step reads,
    # (W + 1*192*kv) / (W + 8*192*kv) * 8 with W = 2.2e9, kv = 32768, from 800 tok/s at batch 1.
    up = next(r for r in rows if r["target"].endswith("b8 128+128"))
    w, kv = 2.2e9, 32768
    assert up["projected"] == pytest.approx(800 * 8 * (w + 192 * kv) / (w + 8 * 192 * kv), rel=1e-6)


DATA = Path(__file__).resolve().parents[2] / "optimizer" / "data"


@pytest.mark.parametrize("name, gpu", [("h100_measurements.json", "H100-80GB"),
                                       ("h200_measurements.json", "H200-141GB")])
def test_projection_between_measured_configurations_is_within_15_percent(name, gpu):
    """Issues 4 and 13: on the committed GPU measurements (bench/optimizer_gpu.py), project every
    measured configuration of a model (batch 1/8/32, prompts 128-1792, outputs 128-256; CUDA graph
    and torch.compile + CUDA graph) from the others on the same GPU and engine, and compare with
    what was measured."""
    from optimizer.recommend_data import _runs_in

    measured = comparable(_runs_in(json.loads((DATA / name).read_text())))
    assert {m.gpu_model for m in measured} == {gpu}
    rows = check(measured)
    same_model = [r for r in rows if r["same_model"]]
    nearest = [r for r in rows if r["nearest"]]
    assert len(same_model) >= 20 and len(nearest) >= 10
    assert all(r["within_15pct"] for r in nearest), [(r["source"], r["target"], r["error"]) for r in nearest]
    assert all(r["within_15pct"] for r in same_model), \
        [(r["source"], r["target"], r["error"]) for r in same_model if not r["within_15pct"]]


def test_h200_instances_are_calibrated_on_h200_measurements():
    """The catalog's H200 instances are priced from what the H200 measured, not from the H100:
    the exact configuration measured there comes back as measured, others are projected from
    the nearest H200 run."""
    from optimizer.recommend import Workload, project

    ms = load_measurements(DATA).measurements
    h200 = [m for m in ms if m.gpu_model == "H200-141GB" and m.engine == "compile+cudagraph"
            and m.params > 7e9 and m.batch_size == 8]
    assert h200, "no 7B batch-8 compiled run in h200_measurements.json"
    m = h200[0]
    w = Workload(params=m.params, prompt_tokens=m.prompt_tokens, output_tokens=m.output_tokens,
                 kv_bytes_per_token=m.kv_bytes_per_token, model_bytes=m.model_bytes)
    point, kind, origin = project(w, "H200-141GB", 1, 8, m.prompt_tokens, m.output_tokens, ms)
    assert kind == "measured" and point.tokens_per_s == m.tokens_per_s
    _, kind, origin = project(w, "H200-141GB", 1, 16, m.prompt_tokens, m.output_tokens, ms)
    assert kind == "projected" and "on H200-141GB" in origin, origin


def test_stored_benchmark_runs_are_read_and_gate_rejected_ones_skipped():
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from core.tables.base import Base
    from core.tables.benchmarks import BenchmarkRun

    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine, tables=[BenchmarkRun.__table__])
    columns = {c.name for c in BenchmarkRun.__table__.columns} - {"id", "created_at"}
    with Session(engine) as s:
        for r, accepted in ((run(8, 5000.0, 6000.0), True), (run(1, 700.0, 800.0), False)):
            row = {k: v for k, v in r.items() if k in columns}
            s.add(BenchmarkRun(**row, accepted=accepted, source="bench", peak_memory_bytes=1,
                               peak_memory_source="cuda", requests_per_s=1.0, latency_p50_ms=1.0,
                               latency_p95_ms=1.0, latency_p99_ms=1.0, result=r))
        s.commit()
        loaded = load_measurements(None, session=s)
    assert [m.batch_size for m in loaded.measurements] == [8] and loaded.skipped == 1
    assert loaded.measurements[0].decode_tokens_per_s == 6000.0
