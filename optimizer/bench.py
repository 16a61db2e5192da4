"""Benchmark runs: build a variant, pass it through the accuracy gate, measure it.

A `Variant` is a combination of the deployment techniques (precision, weight quantization, KV
cache kind, sliding window, layer offload, decode mode); its name reads like
"bf16+int8-weight-only+kv-int8+compile+cudagraph". `run_matrix` measures a list of variants
side by side in one process and returns `RunMetrics` rows with the first one as the baseline;
`results_document` is the JSON file `gpucost bench` writes."""

from __future__ import annotations

import asyncio
import copy
import gc
import platform
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from optimizer.accuracy import Reference, gate, random_workload, reference, text_workload
from optimizer.batcher import DynamicBatcher, run_load
from optimizer.generate import Decoder, ensure_caches, generate
from optimizer.measure import (
    Instance, PeakMemory, RunMetrics, cost_per_million_tokens, decode_step_bytes, device_description,
    gpu_model_name, kv_cache_bytes, latency_summary_ms, peak_bandwidth_bytes_s, usd_per_gpu_hour,
    weight_bytes,
)
from optimizer.model import PRESETS, Transformer, build_model, load_gguf, model_parameters, set_precision
from optimizer.offload import offload_layers
from optimizer.quantize import SCHEMES, quantize_model

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("eager", "compile", "cudagraph", "compile+cudagraph")
SMOLLM2 = "smollm2-135m"
RESULTS_SCHEMA = "gpucost.optimizer.bench/1"


@dataclass(frozen=True)
class Variant:
    precision: str = "fp32"
    quantization: str = "none"
    kv_cache: str = "full"
    window: int | None = None
    offload: bool = False
    decode_mode: str = "eager"
    fused: bool = False  # decode steps through fused_decode.py (GEMV schemes)
    graph_steps: int | None = None  # greedy steps a CUDA graph replay runs (None: generate.GRAPH_STEPS)
    greedy_kernel: bool = True  # a fused step's greedy tail as one kernel ("tail-torch": torch ops)

    @property
    def name(self) -> str:
        parts = [self.precision]
        if self.quantization != "none":
            parts.append(self.quantization)
        if self.fused:
            parts.append("fused")
        if self.kv_cache != "full":
            parts.append(f"kv-{self.kv_cache}")
        if self.window is not None:
            parts.append(f"window-{self.window}")
        if self.offload:
            parts.append("offload")
        if self.decode_mode != "eager":
            parts.append(self.decode_mode)
        if self.graph_steps is not None:
            parts.append(f"graph-steps-{self.graph_steps}")
        if not self.greedy_kernel:
            parts.append("tail-torch")
        return "+".join(parts)

    @classmethod
    def parse(cls, text: str) -> Variant:
        """Inverse of `name`: "bf16+int8-weight-only+kv-int4+window-256+compile+cudagraph"."""
        fields: dict = {}
        modes = []
        for part in filter(None, text.strip().split("+")):
            if part in PRECISIONS:
                fields["precision"] = part
            elif part in SCHEMES:
                fields["quantization"] = part
            elif part.startswith("kv-"):
                fields["kv_cache"] = part[3:]
            elif part.startswith("window-"):
                fields["window"] = int(part[7:])
            elif part == "offload":
                fields["offload"] = True
            elif part == "fused":
                fields["fused"] = True
            elif part in ("compile", "cudagraph"):
                modes.append(part)
            elif part.startswith("graph-steps-"):
                fields["graph_steps"] = int(part[12:])
            elif part == "tail-torch":
                fields["greedy_kernel"] = False
            else:
                raise ValueError(f"unknown variant part {part!r} in {text!r}")
        if modes:
            fields["decode_mode"] = "+".join(sorted(modes))
        return cls(**fields)

    def check(self, device: torch.device) -> None:
        if self.decode_mode not in MODES:
            raise ValueError(f"unknown decode mode {self.decode_mode!r}")
        if "cudagraph" in self.decode_mode and device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        if self.quantization == "int8-dynamic" and (device.type != "cpu" or self.precision != "fp32"):
            raise ValueError("int8-dynamic is fp32 on the CPU only")
        if self.graph_steps is not None and (self.graph_steps < 1 or "cudagraph" not in self.decode_mode):
            raise ValueError("graph-steps-N takes N >= 1 and CUDA graphs")
        if self.offload and "cudagraph" in self.decode_mode:
            raise ValueError("offload streams weights between steps: no CUDA graphs")
        if self.fused and (self.quantization not in ("gemv", "int8-weight-only") or self.kv_cache != "full"
                           or self.offload):
            raise ValueError("fused decode needs GEMV weights (gemv or int8-weight-only) and the full KV cache")


@dataclass
class BenchConfig:
    model: str = "test"
    device: str = "cpu"
    batch_size: int = 1
    prompt_tokens: int = 32
    new_tokens: int = 32
    repeats: int = 3
    seed: int = 0
    gate_new_tokens: int = 32
    min_agreement: float = 0.95
    max_ppl_increase: float = 0.02
    instance: Instance = field(default_factory=Instance)


# -- building ------------------------------------------------------------------------------

_SMOLLM2_CACHE: dict[str, Transformer] = {}


def base_model(name: str, device: torch.device | str = "cpu", seed: int = 0,
               dtype: torch.dtype = torch.float32) -> Transformer:
    """A fresh model a variant starts from: SmolLM2-135M from its GGUF file (parsed once per
    device, then copied), or a seeded preset drawn at `dtype` (the fp32 draw, rounded)."""
    if name == SMOLLM2:
        key = str(device)
        if key not in _SMOLLM2_CACHE:
            _SMOLLM2_CACHE[key] = load_gguf(device=device)
        model = copy.deepcopy(_SMOLLM2_CACHE[key])
        model.clear_caches()
        return set_precision(model, dtype)
    if name in PRESETS:
        return build_model(name, seed=seed, device=device, dtype=dtype)
    raise ValueError(f"unknown model {name!r}; expected {SMOLLM2!r} or one of {list(PRESETS)}")


def build_variant(name: str, variant: Variant, device: torch.device | str, seed: int = 0
                  ) -> tuple[Transformer, Decoder]:
    device = torch.device(device)
    variant.check(device)
    # Offloaded variants are prepared on the host, where their blocks stay.
    build_on = torch.device("cpu") if variant.offload else device
    model = base_model(name, build_on, seed, PRECISIONS[variant.precision])
    model.n_params = model_parameters(model)
    model = quantize_model(model, variant.quantization)
    if variant.window is not None:
        model.set_sliding_window(variant.window)
    model.kv_cache_kind = variant.kv_cache
    model.fused_decode = variant.fused
    if variant.offload:
        model = offload_layers(model, device)
    steps = {} if variant.graph_steps is None else {"graph_steps": variant.graph_steps}
    decoder = Decoder(model, compile="compile" in variant.decode_mode,
                      cuda_graphs="cudagraph" in variant.decode_mode, greedy_kernel=variant.greedy_kernel, **steps)
    return model, decoder


def random_prompts(vocab_size: int, batch_size: int, length: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab_size) for _ in range(length)] for _ in range(batch_size)]


def gate_reference(name: str, device: torch.device | str, seed: int = 0,
                   new_tokens: int = 32) -> Reference:
    """The fp32 baseline's answers: real prompts and text for SmolLM2, seeded ones otherwise."""
    baseline = base_model(name, device, seed)
    if name == SMOLLM2:
        from optimizer.tokenizer import BPETokenizer

        prompts, text = text_workload(BPETokenizer.from_gguf())
    else:
        prompts, text = random_workload(baseline, seed=seed)
    ref = reference(baseline, prompts, text, new_tokens)
    del baseline
    gc.collect()  # a 7B fp32 baseline is 29 GB: gone before the variants are measured
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return ref


# -- measuring -----------------------------------------------------------------------------

def measure_decode(model: Transformer, decoder: Decoder, batch_size: int, prompt_tokens: int,
                   new_tokens: int, repeats: int = 3, seed: int = 0) -> dict:
    """Static-batch generation, `repeats` times after a warm-up: per-run latencies, TTFT, the
    decode-only step time (its median), tokens/s and the bandwidth that step time implies."""
    device = model.rope.device
    prompts = random_prompts(model.args.vocab_size, batch_size, prompt_tokens, seed)
    model.clear_caches()  # sized for exactly this run, so the KV bytes reported are this run's
    ensure_caches(model, batch_size, prompt_tokens + new_tokens)
    generate(model, prompts, min(new_tokens, 8), decoder=decoder)  # compile, capture, warm caches
    runs = []
    with PeakMemory(device) as mem:
        for _ in range(repeats):
            runs.append(generate(model, prompts, new_tokens, decoder=decoder))
    step_s = statistics.median((g.total_s - g.ttft_s) / max(g.decode_steps, 1) for g in runs)
    total_s = sum(g.total_s for g in runs)
    tokens = sum(g.new_tokens for g in runs)
    step_bytes = decode_step_bytes(model, batch_size, prompt_tokens + new_tokens / 2)
    return {
        "latencies_s": [g.total_s for g in runs], "ttfts_s": [g.ttft_s for g in runs],
        "tokens_per_s": tokens / total_s, "requests_per_s": batch_size * repeats / total_s,
        "decode_step_ms": step_s * 1e3, "decode_tokens_per_s": batch_size / step_s,
        "step_bytes": step_bytes, "bandwidth_bytes_s": step_bytes / step_s,
        "peak_memory_bytes": mem.peak_bytes, "peak_memory_source": mem.source, "wall_s": total_s,
    }


def measure_serving(model: Transformer, decoder: Decoder, concurrency: int, n_requests: int,
                    prompt_tokens: int, new_tokens: int, max_batch_size: int = 32,
                    max_queue_delay_ms: float = 5.0, arrival_rate_per_s: float | None = None,
                    seed: int = 0) -> dict:
    """Requests through the dynamic batcher from the load generator (after a warm-up round)."""
    device = model.rope.device
    prompts = random_prompts(model.args.vocab_size, max(concurrency, 8), prompt_tokens, seed)
    ensure_caches(model, max_batch_size, prompt_tokens + new_tokens)

    def run_batch(batch_prompts: list[list[int]], max_new: int):
        return generate(model, batch_prompts, max_new, decoder=decoder)

    async def drive(n: int):
        async with DynamicBatcher(run_batch, max_batch_size, max_queue_delay_ms) as batcher:
            result = await run_load(batcher.submit, prompts, n, new_tokens, concurrency,
                                    arrival_rate_per_s, seed)
            return result, batcher.batches

    asyncio.run(drive(min(n_requests, 2 * concurrency)))  # warm-up: graphs for the batch sizes seen
    with PeakMemory(device) as mem:
        result, batches = asyncio.run(drive(n_requests))
    return {
        "latencies_s": [c.latency_s for c in result.completions],
        "ttfts_s": [c.ttft_s for c in result.completions],
        "tokens_per_s": result.tokens_per_s, "requests_per_s": result.requests_per_s,
        "batch_sizes": [b.size for b in batches], "flush_reasons": [b.reason for b in batches],
        "peak_memory_bytes": mem.peak_bytes, "peak_memory_source": mem.source, "wall_s": result.wall_s,
    }


def to_metrics(model_name: str, model: Transformer, variant: Variant, measured: dict, *,
               batch_size: int, concurrency: int, prompt_tokens: int, new_tokens: int,
               instance: Instance, params: int, weights: int) -> RunMetrics:
    device = model.rope.device
    gpu = gpu_model_name(device)
    price, fallback = usd_per_gpu_hour(instance, gpu)
    peak = peak_bandwidth_bytes_s(gpu)
    bandwidth = measured.get("bandwidth_bytes_s")
    lat = latency_summary_ms(measured["latencies_s"])
    extra = {k: v for k, v in measured.items() if k in (
        "decode_step_ms", "decode_tokens_per_s", "step_bytes", "batch_sizes", "flush_reasons")}
    if variant.offload:
        extra["resident_weight_bytes"] = weight_bytes(model)
    return RunMetrics(
        variant=variant.name, model=model_name, params=params, device=device_description(device),
        gpu_model=gpu, precision=variant.precision, quantization=variant.quantization,
        kv_cache=variant.kv_cache, window=variant.window, decode_mode=variant.decode_mode,
        batch_size=batch_size, concurrency=concurrency, prompt_tokens=prompt_tokens,
        new_tokens=new_tokens, requests=len(measured["latencies_s"]) * (batch_size if concurrency == 0 else 1),
        tokens_per_s=measured["tokens_per_s"], requests_per_s=measured["requests_per_s"],
        latency_p50_ms=lat["p50_ms"], latency_p95_ms=lat["p95_ms"], latency_p99_ms=lat["p99_ms"],
        ttft_p50_ms=latency_summary_ms(measured["ttfts_s"])["p50_ms"],
        peak_memory_bytes=measured["peak_memory_bytes"], peak_memory_source=measured["peak_memory_source"],
        model_bytes=weights, kv_cache_bytes=kv_cache_bytes(model),
        bandwidth_gb_s=None if bandwidth is None else bandwidth / 1e9,
        bandwidth_share=None if bandwidth is None or peak is None else bandwidth / peak,
        usd_per_gpu_hour=price, price_fallback=fallback,
        cost_per_million_tokens_usd=cost_per_million_tokens(price, measured["tokens_per_s"]),
        wall_s=measured["wall_s"], extra=extra,
    )


def run_variant(cfg: BenchConfig, variant: Variant, ref: Reference | None = None) -> RunMetrics:
    """Build, gate (when a reference is given), and measure one variant at `cfg.batch_size`."""
    device = torch.device(cfg.device)
    model, decoder = build_variant(cfg.model, variant, device, cfg.seed)
    params = model.n_params
    weights = weight_bytes(model) if not variant.offload else _offloaded_weight_bytes(model)
    verdict = None
    if ref is not None:
        verdict = gate(model, ref, cfg.min_agreement, cfg.max_ppl_increase)
    measured = measure_decode(model, decoder, cfg.batch_size, cfg.prompt_tokens, cfg.new_tokens,
                              cfg.repeats, cfg.seed)
    row = to_metrics(cfg.model, model, variant, measured, batch_size=cfg.batch_size, concurrency=0,
                     prompt_tokens=cfg.prompt_tokens, new_tokens=cfg.new_tokens, instance=cfg.instance,
                     params=params, weights=weights)
    if verdict is not None:
        row.gate, row.accepted = verdict.as_dict(), verdict.accepted
    del model, decoder
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _offloaded_weight_bytes(model: Transformer) -> int:
    streamer = model.offload_streamer
    host = sum(t.numel() * t.element_size() for block in streamer.host for t in block)
    return weight_bytes(model) + host  # the staging blocks are not the model's modules


def run_matrix(cfg: BenchConfig, variants: list[Variant], gate_variants: bool = True,
               progress: Callable[[str], None] | None = None) -> list[RunMetrics]:
    """Every variant measured in this process; the first is the baseline the ratios use."""
    ref = gate_reference(cfg.model, cfg.device, cfg.seed, cfg.gate_new_tokens) if gate_variants else None
    rows = []
    for variant in variants:
        if progress:
            progress(variant.name)
        rows.append(run_variant(cfg, variant, ref))
    return rows


def ratios(rows: list[RunMetrics]) -> list[dict]:
    """Each row against the first: throughput, p50 latency, peak memory and model bytes."""
    base = rows[0]

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if not a or not b else a / b

    return [{
        "variant": r.variant,
        "speedup": ratio(r.tokens_per_s, base.tokens_per_s),
        "latency_ratio": ratio(r.latency_p50_ms, base.latency_p50_ms),
        "memory_ratio": ratio(r.peak_memory_bytes, base.peak_memory_bytes),
        "model_bytes_ratio": ratio(r.model_bytes, base.model_bytes),
        "kv_bytes_ratio": ratio(r.kv_cache_bytes, base.kv_cache_bytes),
    } for r in rows]


def results_document(rows: list[RunMetrics], command: str, **sections) -> dict:
    device = rows[0].device if rows else ""
    return {
        "schema": RESULTS_SCHEMA,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command,
        "device": device,
        "gpu_model": rows[0].gpu_model if rows else "",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "baseline": rows[0].variant if rows else None,
        "runs": [r.as_dict() for r in rows],
        "ratios": ratios(rows) if rows else [],
        **sections,
    }


def default_variants(device: torch.device | str) -> list[Variant]:
    """The matrix `gpucost bench` runs when none is named."""
    device = torch.device(device)
    if device.type == "cuda":
        return [Variant.parse(v) for v in (
            "bf16+cudagraph", "bf16+compile+cudagraph", "fp16+cudagraph", "fp32+cudagraph",
            "bf16+int8-weight-only+compile+cudagraph", "bf16+fp8+compile+cudagraph",
            "bf16+kv-int8+cudagraph", "bf16+kv-int4+cudagraph", "bf16+window-256+cudagraph",
            "bf16+offload")]
    return [Variant.parse(v) for v in (
        "fp32", "bf16", "fp16", "fp32+int8-dynamic", "fp32+int8-weight-only", "fp32+fp8",
        "fp32+kv-int8", "fp32+kv-int4", "fp32+window-64")]
