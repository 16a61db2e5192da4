"""The batchers section's driver (bench/optimizer_gpu.py --sections batchers) end to end on the CPU."""

from optimizer.batcher_compare import BEST, INFLIGHT_CONFIGS, main


def test_the_comparison_runs_end_to_end_on_the_cpu():
    out = main(["--clients", "4", "--requests", "8", "--rounds", "2", "--seq", "96", "--prompt-max", "40",
                "--answer-max", "12", "--chunk", "8"])
    assert out["best"] == "inflight_chunked" and len(out["rounds"]) == 2
    for rnd in out["rounds"]:
        assert set(rnd) == {"dynamic", "inflight_chunked", "inflight_join8_eager"}
        assert len({x["tokens"] for x in rnd.values()}) == 1  # every batcher generated the same tokens count
        assert rnd["inflight_chunked"]["mixed_steps"] > 0  # the chunked path ran
        assert rnd["inflight_join8_eager"]["mixed_steps"] == 0
    assert out["goal"] in ("met", "not met", "not met (spread crosses the goal)")
    assert out["throughput_ratio"] == out["inflight_chunked_throughput_ratio"]


def test_the_gpu_section_measures_the_best_form_and_the_old_one():
    assert BEST in INFLIGHT_CONFIGS and INFLIGHT_CONFIGS[BEST]["chunk"] > 0
    assert any(c.get("chunk") == 0 and c.get("min_join") == 8 for c in INFLIGHT_CONFIGS.values())
