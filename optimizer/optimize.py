"""`gpucost optimize`: the automatic compression pipeline. Starting from the baseline, try one
technique at a time (precision, weight quantization, KV cache, decode mode), keep a step only
if it improves the goal and passes the accuracy gate, and report every try with its verdict.

Goals: "latency" (batch-1 p50 latency), "cost" (cost per 1M tokens at the configured batch,
i.e. the highest tokens/s when no price is known), "memory" (peak memory)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from optimizer.bench import BenchConfig, Variant, gate_reference, run_variant
from optimizer.measure import RunMetrics

GOALS = ("latency", "cost", "memory")


def search_space(device: torch.device | str) -> tuple[Variant, list[tuple[str, list]]]:
    """The baseline and, per dimension, the values to try (in order)."""
    if torch.device(device).type == "cuda":
        from optimizer.quantize import torchao_available

        quants = ["none", "int8-weight-only", "fp8"] + (
            ["torchao-int8-weight-only", "torchao-fp8"] if torchao_available() else [])
        return Variant(precision="bf16", decode_mode="cudagraph"), [
            ("precision", ["bf16", "fp16"]),
            ("decode_mode", ["cudagraph", "compile+cudagraph"]),
            ("quantization", quants),
            ("kv_cache", ["full", "int8", "int4"]),
        ]
    return Variant(), [
        ("precision", ["fp32", "bf16"]),
        ("quantization", ["none", "int8-dynamic", "int8-weight-only", "fp8"]),
        ("kv_cache", ["full", "int8", "int4"]),
    ]


def score(row: RunMetrics, goal: str) -> float:
    """Lower is better."""
    if goal == "latency":
        return row.latency_p50_ms
    if goal == "cost":
        return row.cost_per_million_tokens_usd if row.cost_per_million_tokens_usd is not None \
            else 1.0 / row.tokens_per_s
    if goal == "memory":
        return float(row.peak_memory_bytes if row.peak_memory_source == "cuda_allocator"
                     else row.model_bytes + row.kv_cache_bytes)
    raise ValueError(f"unknown goal {goal!r}; expected one of {GOALS}")


@dataclass
class Trial:
    variant: str
    row: RunMetrics | None  # None when the variant could not run here
    score: float
    kept: bool
    why: str


@dataclass
class OptimizeResult:
    goal: str
    baseline: RunMetrics
    best: RunMetrics
    trials: list[Trial] = field(default_factory=list)

    @property
    def improvement(self) -> float:
        """Baseline score over best score (> 1 is better)."""
        return score(self.baseline, self.goal) / score(self.best, self.goal)


def optimize(cfg: BenchConfig, goal: str, min_gain: float = 0.02,
             progress: Callable[[str], None] | None = None) -> OptimizeResult:
    """Greedy search, one dimension at a time; a step must pass the gate and beat the best so far
    by `min_gain` (a 2 % default keeps timing noise from choosing)."""
    if goal not in GOALS:
        raise ValueError(f"unknown goal {goal!r}; expected one of {GOALS}")
    ref = gate_reference(cfg.model, cfg.device, cfg.seed, cfg.gate_new_tokens)
    current, dims = search_space(cfg.device)
    # The latency goal is batch-1 latency, whatever batch the cost goal would use.
    run_cfg = replace(cfg, batch_size=1) if goal == "latency" else cfg
    if progress:
        progress(current.name)
    baseline = run_variant(run_cfg, current, ref)
    best, best_score = baseline, score(baseline, goal)
    trials = [Trial(current.name, baseline, best_score, True, "baseline")]
    for dim, values in dims:
        for value in values:
            candidate = replace(current, **{dim: value})
            if candidate == current or (candidate.quantization == "int8-dynamic" and candidate.precision != "fp32"):
                continue
            if progress:
                progress(candidate.name)
            try:
                row = run_variant(run_cfg, candidate, ref)
            except Exception as exc:  # a scheme this device cannot run is a rejected try
                trials.append(Trial(candidate.name, None, float("inf"), False, f"failed: {exc}"))
                continue
            s = score(row, goal)
            if not row.accepted:
                trials.append(Trial(candidate.name, row, s, False, f"rejected by the gate: {row.gate['reason']}"))
            elif s < best_score * (1 - min_gain):
                trials.append(Trial(candidate.name, row, s, True, f"{best_score / s:.2f}x better {goal}"))
                best, best_score, current = row, s, candidate
            else:
                trials.append(Trial(candidate.name, row, s, False, f"no gain in {goal} ({best_score / s:.2f}x)"))
    return OptimizeResult(goal=goal, baseline=baseline, best=best, trials=trials)
