"""The recommender: which cloud GPU instance serves a workload cheapest within its latency SLO.

In: a Workload (model size and precision, or a measured benchmark run; prompt and output lengths;
demand in output tokens/s or requests/s; latency SLO; whether spot is allowed), optional measured
runs, and the pricing catalog. Out: instances ranked by $ per 1M tokens at that demand, each with
its fleet size, $/h, the batch it runs at, whether its throughput was measured or projected, and the
reason for its rank; rejected instances with the reason; and, for a mix of request sizes, a mix of
GPU types when it is cheaper than any single type (Mélange, Griggs et al. 2024).

The performance model is a roofline per replica (k GPUs of one instance, tensor-parallel), with
continuous batching and chunked prefill (new prompts ride along in the decode steps, as in vLLM):
  decode only   t_dec  = max((W + B·L·kv) / (k·BW·e_bw), 2·P·B / (k·F·e_f))        L = S + O/2
  serving step  t_step = max((W + B·L·kv + (B/O)·S·kv) / (k·BW·e_bw), 2·P·B·(1 + S/O) / (k·F·e_f))
  throughput    B / t_step output tokens/s;  TPOT = t_step;  TTFT = prefill of one prompt + t_step
with W weight bytes, kv bytes per token, P parameters, B concurrent sequences, S prompt and O output
tokens (each step B/O sequences finish and B/O prompts are prefilled). A measured run calibrates the
efficiency of the bound it hit (e_bw when memory-bound, e_f when
compute-bound); a projection to another GPU or batch keeps that efficiency. Measured points are used
as measured and labelled so; everything else is labelled `projected`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from itertools import product

from core.pricing import GPUSpec, PriceCatalog, PricingError, default_catalog

HOURS_PER_MONTH = 730.0
MEMORY_HEADROOM = 0.90  # share of GPU memory usable for weights + KV (runtime, activations, fragmentation)
DEFAULT_BW_EFFICIENCY = 0.70  # share of spec-sheet bandwidth a decode step reaches without a measurement
DEFAULT_FLOPS_EFFICIENCY = 0.50  # share of dense spec-sheet FLOPS a prefill reaches without a measurement
TENSOR_PARALLEL_EFFICIENCY = 0.85  # per-GPU efficiency kept when a replica spans several GPUs
PREFER_MEASURED_WITHIN = 0.05  # a measured point within 5 % of the best projected one is chosen instead
BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}


class RecommendError(ValueError):
    """A workload the recommender cannot evaluate; the message says what is missing."""


# -- inputs --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Measurement:
    """One measured serving run on one GPU model: the numbers a projection starts from."""

    gpu_model: str
    precision: str
    params: float
    batch_size: int
    prompt_tokens: int
    output_tokens: int
    tokens_per_s: float  # output tokens per second, one replica
    gpus: int = 1
    model_bytes: float | None = None
    kv_bytes_per_token: float | None = None
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    decode_tokens_per_s: float | None = None  # decode steps alone (no prefill), when measured
    label: str = ""
    engine: str = ""  # how it decoded (eager, cudagraph, compile+cudagraph, vllm ...): informational

    @classmethod
    def from_run(cls, run) -> Measurement:
        """From an optimizer RunMetrics (or its dict): `gpucost bench` results feed the recommender."""
        r = run if isinstance(run, dict) else asdict(run)
        extra = r.get("extra") or {}
        batch = int(r.get("batch_size") or r.get("concurrency") or 1)
        prompt, output = int(r["prompt_tokens"]), int(r["new_tokens"])
        kv = extra.get("kv_bytes_per_token")
        if not kv and r.get("kv_cache_bytes") and r.get("kv_cache") in (None, "", "full", "bf16"):
            # the optimizer sizes its caches for exactly the run: batch x (prompt + output) slots
            kv = r["kv_cache_bytes"] / (batch * (prompt + output))
        return cls(
            gpu_model=r["gpu_model"], precision=_precision_of(r.get("precision", "bf16"),
                                                              r.get("quantization", "none")),
            params=float(r["params"]), batch_size=batch, prompt_tokens=prompt,
            output_tokens=output, tokens_per_s=float(r["tokens_per_s"]),
            model_bytes=float(r["model_bytes"]) if r.get("model_bytes") else None,
            kv_bytes_per_token=float(kv) if kv else None,
            ttft_ms=r.get("ttft_p50_ms"), tpot_ms=extra.get("decode_step_ms"),
            decode_tokens_per_s=extra.get("decode_tokens_per_s"), engine=r.get("decode_mode") or "",
            label=f"{r.get('variant', 'run')} on {r['gpu_model']} (batch {batch})")


def _precision_of(precision: str, quantization: str) -> str:
    q = (quantization or "none").lower()
    if q.startswith("int8"):
        return "int8"
    if q.startswith("int4"):
        return "int4"
    return (precision or "bf16").lower()


@dataclass(frozen=True)
class RequestClass:
    """A share of the traffic with its own request size (for mixed-size traffic)."""

    prompt_tokens: int
    output_tokens: int
    share: float


@dataclass(frozen=True)
class Workload:
    params: float  # model parameters
    precision: str = "bf16"  # weight precision: fp32 | bf16 | fp16 | fp8 | int8 | int4
    prompt_tokens: int = 512
    output_tokens: int = 256
    tokens_per_s: float | None = None  # demand, output tokens per second
    requests_per_s: float | None = None  # demand, requests per second (tokens_per_s wins if both)
    kv_bytes_per_token: float | None = None  # or give the attention shape below
    n_layers: int | None = None
    n_kv_heads: int | None = None
    head_dim: int | None = None
    kv_precision: str | None = None  # defaults to 2 bytes (bf16) unless int8/fp8
    slo_tpot_ms: float | None = None  # time per output token
    slo_ttft_ms: float | None = None  # time to first token
    slo_latency_ms: float | None = None  # whole request
    spot_allowed: bool = False
    max_batch_size: int | None = None  # the serving engine's cap on concurrent sequences
    clouds: tuple[str, ...] | None = None
    regions: tuple[str, ...] | None = None
    gpu_models: tuple[str, ...] | None = None
    request_mix: tuple[RequestClass, ...] | None = None
    model_bytes: float | None = None  # measured weight bytes (overrides params × precision)

    @classmethod
    def from_measurement(cls, m: Measurement, **overrides) -> Workload:
        """The workload a benchmark run served, at the demand and SLO given in `overrides`."""
        base = dict(params=m.params, precision=m.precision, prompt_tokens=m.prompt_tokens,
                    output_tokens=m.output_tokens, kv_bytes_per_token=m.kv_bytes_per_token,
                    model_bytes=m.model_bytes)
        base.update(overrides)
        return cls(**base)

    @property
    def weight_bytes(self) -> float:
        if self.model_bytes:
            return float(self.model_bytes)
        if self.precision not in BYTES_PER_PARAM:
            raise RecommendError(f"unknown precision {self.precision!r}: expected one of "
                                 f"{', '.join(BYTES_PER_PARAM)}")
        return self.params * BYTES_PER_PARAM[self.precision]

    @property
    def kv_token_bytes(self) -> float:
        if self.kv_bytes_per_token is not None:
            return float(self.kv_bytes_per_token)
        if self.n_layers and self.n_kv_heads and self.head_dim:
            per_elem = 1.0 if (self.kv_precision or "").lower() in ("int8", "fp8") else 2.0
            return 2.0 * self.n_layers * self.n_kv_heads * self.head_dim * per_elem  # K and V
        raise RecommendError("give kv_bytes_per_token, or n_layers, n_kv_heads and head_dim")

    def demand_tokens_per_s(self, output_tokens: int | None = None) -> float:
        if self.tokens_per_s is not None:
            return float(self.tokens_per_s)
        if self.requests_per_s is not None:
            return float(self.requests_per_s) * (output_tokens or self.output_tokens)
        raise RecommendError("give the demand: tokens_per_s or requests_per_s")


# -- outputs -------------------------------------------------------------------------------------

@dataclass
class Option:
    """One instance type in one region at one pricing, sized for the workload."""

    cloud: str
    region: str
    instance_type: str
    gpu_model: str
    gpu_count: int
    pricing: str
    usd_per_gpu_hour: float
    price_fallback: bool
    price_source: str
    fits: bool = False
    slo_ok: bool = False
    gpus_per_replica: int = 0
    replicas_per_instance: int = 0
    batch_size: int = 0
    max_batch_fit: int = 0
    tokens_per_s_per_replica: float = 0.0
    tpot_ms: float = 0.0
    ttft_ms: float = 0.0
    latency_ms: float = 0.0
    memory_per_gpu_gb: float = 0.0
    throughput_source: str = ""  # measured | projected
    projected_from: str = ""
    instances: int = 0
    replicas: int = 0
    fleet_tokens_per_s: float = 0.0
    usd_per_hour: float = 0.0
    usd_per_million_tokens: float = 0.0
    usd_per_month: float = 0.0
    rank: int = 0
    reason: str = ""

    @property
    def name(self) -> str:
        return f"{self.cloud}/{self.region}/{self.instance_type} ({self.pricing})"


@dataclass
class MixRecommendation:
    """Mélange-style allocation: each request class served by the GPU type cheapest for it."""

    assignments: list[dict]
    usd_per_hour: float
    best_single_usd_per_hour: float
    best_single: str
    savings_pct: float
    reason: str


@dataclass
class Recommendation:
    workload: Workload
    ranked: list[Option]
    rejected: list[Option]
    mix: MixRecommendation | None = None

    @property
    def best(self) -> Option | None:
        return self.ranked[0] if self.ranked else None


# -- the performance model -----------------------------------------------------------------------

def _compute_flops(spec: GPUSpec, precision: str) -> float:
    """Dense FLOP/s the matmuls run at: fp8 on fp8 hardware, TF32 (half of bf16) for fp32, else
    bf16 (weight-only int8/int4 dequantizes to bf16 before the matmul)."""
    if precision == "fp8" and spec.fp8_tflops:
        return spec.fp8_tflops * 1e12
    if precision == "fp32":
        return spec.bf16_tflops * 1e12 / 2
    return spec.bf16_tflops * 1e12


@dataclass(frozen=True)
class _Point:
    step_s: float
    tpot_ms: float
    ttft_ms: float
    latency_ms: float
    tokens_per_s: float
    memory_bound: bool


def _rates(w: Workload, spec: GPUSpec, gpus: int, e_bw: float, e_f: float) -> tuple[float, float]:
    scale = gpus * (1.0 if gpus == 1 else TENSOR_PARALLEL_EFFICIENCY)
    return (spec.mem_bandwidth_gb_s * 1e9 * scale * e_bw,
            _compute_flops(spec, w.precision) * scale * e_f)


def _decode_step(w: Workload, spec: GPUSpec, gpus: int, batch: int, prompt: int, output: int,
                 e_bw: float, e_f: float) -> tuple[float, bool]:
    """(seconds per decode-only step, memory-bound?): what a decode-step measurement checks."""
    bw, flops = _rates(w, spec, gpus, e_bw, e_f)
    mem_s = (w.weight_bytes + batch * (prompt + output / 2.0) * w.kv_token_bytes) / bw
    cmp_s = 2.0 * w.params * batch / flops
    return max(mem_s, cmp_s), mem_s >= cmp_s


def _roofline(w: Workload, spec: GPUSpec, gpus: int, batch: int, prompt: int, output: int,
              e_bw: float, e_f: float) -> _Point:
    P, W, kv = w.params, w.weight_bytes, w.kv_token_bytes
    bw, flops = _rates(w, spec, gpus, e_bw, e_f)
    context = prompt + output / 2.0
    prefills = batch / output  # prompts prefilled per step (as many as sequences finish)
    mem_s = (W + batch * context * kv + prefills * prompt * kv) / bw
    cmp_s = 2.0 * P * (batch + prefills * prompt) / flops
    step = max(mem_s, cmp_s)
    prefill_alone = max(2.0 * P * prompt / flops, (W + prompt * kv) / bw)
    ttft = prefill_alone + step
    return _Point(step_s=step, tpot_ms=step * 1e3, ttft_ms=ttft * 1e3,
                  latency_ms=(ttft + output * step) * 1e3, tokens_per_s=batch / step,
                  memory_bound=mem_s >= cmp_s)


def _max_batch(w: Workload, spec: GPUSpec, gpus: int, prompt: int, output: int) -> int:
    usable = spec.memory_gb * 1e9 * MEMORY_HEADROOM * gpus
    per_seq = (prompt + output) * w.kv_token_bytes
    if usable < w.weight_bytes + per_seq:
        return 0
    return int((usable - w.weight_bytes) // per_seq)


def _same_model(w: Workload, m: Measurement) -> bool:
    return abs(m.params - w.params) <= 0.05 * w.params and m.precision == w.precision


def _calibration(w: Workload, m: Measurement, catalog: PriceCatalog) -> tuple[float, float]:
    """Efficiencies (e_bw, e_f) that make the roofline reproduce the measured run: on the decode
    step alone when the run measured it, else on the whole serving step."""
    spec = catalog.spec(m.gpu_model)
    if m.decode_tokens_per_s:
        ideal_s, memory_bound = _decode_step(w, spec, m.gpus, m.batch_size, m.prompt_tokens,
                                             m.output_tokens, 1.0, 1.0)
        measured_s = m.batch_size / m.decode_tokens_per_s
    else:
        ideal = _roofline(w, spec, m.gpus, m.batch_size, m.prompt_tokens, m.output_tokens, 1.0, 1.0)
        ideal_s, memory_bound = ideal.step_s, ideal.memory_bound
        measured_s = m.batch_size / m.tokens_per_s
    efficiency = min(1.0, ideal_s / measured_s)
    if memory_bound:
        return efficiency, DEFAULT_FLOPS_EFFICIENCY
    return DEFAULT_BW_EFFICIENCY, efficiency


def _nearest(w: Workload, gpu_model: str, batch: int, prompt: int, output: int,
             measurements: Sequence[Measurement]) -> Measurement | None:
    """The measurement to project from: same model and precision; same GPU first, then the
    closest configuration (log distance in batch, prompt and output length)."""
    usable = [m for m in measurements if _same_model(w, m)]
    if not usable:
        return None

    def distance(m: Measurement) -> tuple:
        shape = abs(math.log(max(m.batch_size, 1) / max(batch, 1))) + \
            abs(math.log(max(m.prompt_tokens, 1) / max(prompt, 1))) + \
            abs(math.log(max(m.output_tokens, 1) / max(output, 1)))
        return (m.gpu_model != gpu_model, round(shape, 6), m.label)

    return min(usable, key=distance)


def project(w: Workload, gpu_model: str, gpus: int, batch: int, prompt: int, output: int,
            measurements: Sequence[Measurement] = (), catalog: PriceCatalog | None = None
            ) -> tuple[_Point, str, str]:
    """(performance point, "measured" | "projected", what it was projected from)."""
    catalog = catalog or default_catalog()
    spec = catalog.spec(gpu_model)
    for m in measurements:
        if (m.gpu_model == spec.gpu_model and m.gpus == gpus and m.batch_size == batch
                and m.prompt_tokens == prompt and m.output_tokens == output and _same_model(w, m)):
            point = _roofline(w, spec, gpus, batch, prompt, output, 1.0, 1.0)
            step = batch / m.tokens_per_s
            ttft = m.ttft_ms if m.ttft_ms is not None else point.ttft_ms * step / point.step_s
            tpot = m.tpot_ms if m.tpot_ms is not None else step * 1e3
            return (_Point(step_s=step, tpot_ms=tpot, ttft_ms=ttft,
                           latency_ms=ttft + output * tpot, tokens_per_s=m.tokens_per_s,
                           memory_bound=point.memory_bound), "measured", m.label)
    source = _nearest(w, spec.gpu_model, batch, prompt, output, measurements)
    if source is not None:
        e_bw, e_f = _calibration(w, source, catalog)
        origin = (f"roofline calibrated on measured {source.label} "
                  f"(bandwidth efficiency {e_bw:.2f}, compute efficiency {e_f:.2f})")
    else:
        e_bw, e_f = DEFAULT_BW_EFFICIENCY, DEFAULT_FLOPS_EFFICIENCY
        origin = (f"spec-sheet roofline (bandwidth efficiency {e_bw:.2f}, "
                  f"compute efficiency {e_f:.2f}); no measurement of this model")
    return _roofline(w, spec, gpus, batch, prompt, output, e_bw, e_f), "projected", origin


def _workload_of(m: Measurement) -> Workload:
    return Workload(params=m.params, precision=m.precision, prompt_tokens=m.prompt_tokens,
                    output_tokens=m.output_tokens, kv_bytes_per_token=m.kv_bytes_per_token,
                    model_bytes=m.model_bytes)


def projection_error(source: Measurement, target: Measurement,
                     catalog: PriceCatalog | None = None) -> dict:
    """Project `target`'s configuration (batch, lengths, GPU, model size) from `source` alone and
    compare with what was measured: the check that projections can be trusted (goal: within 15 %).
    Compares decode-step throughput when both runs measured it (what the roofline models most
    directly), else serving throughput."""
    catalog = catalog or default_catalog()
    source = replace(source, gpu_model=catalog.canonical(source.gpu_model))
    target = replace(target, gpu_model=catalog.canonical(target.gpu_model))
    e_bw, e_f = _calibration(_workload_of(source), source, catalog)
    w, spec = _workload_of(target), catalog.spec(target.gpu_model)
    if source.decode_tokens_per_s and target.decode_tokens_per_s:
        metric = "decode tokens/s"
        step_s, _ = _decode_step(w, spec, target.gpus, target.batch_size, target.prompt_tokens,
                                 target.output_tokens, e_bw, e_f)
        projected, measured = target.batch_size / step_s, target.decode_tokens_per_s
    else:
        metric = "serving tokens/s"
        projected = _roofline(w, spec, target.gpus, target.batch_size, target.prompt_tokens,
                              target.output_tokens, e_bw, e_f).tokens_per_s
        measured = target.tokens_per_s
    error = (projected - measured) / measured
    return {"source": source.label, "target": target.label, "metric": metric,
            "projected": projected, "measured": measured, "error": error,
            "abs_error_pct": abs(error) * 100, "within_15pct": abs(error) <= 0.15,
            "bandwidth_efficiency": e_bw, "compute_efficiency": e_f}


# -- evaluating one instance ---------------------------------------------------------------------

def _batch_candidates(limit: int, measurements: Sequence[Measurement]) -> list[int]:
    sizes = {1}
    b = 2
    while b <= limit:
        sizes.add(b)
        b *= 2
    sizes.add(limit)
    sizes.update(m.batch_size for m in measurements if m.batch_size <= limit)
    return sorted(s for s in sizes if 1 <= s <= limit)


def _slo_violation(w: Workload, p: _Point) -> str | None:
    if w.slo_tpot_ms is not None and p.tpot_ms > w.slo_tpot_ms:
        return f"time per output token {p.tpot_ms:.1f} ms > SLO {w.slo_tpot_ms:g} ms"
    if w.slo_ttft_ms is not None and p.ttft_ms > w.slo_ttft_ms:
        return f"time to first token {p.ttft_ms:.0f} ms > SLO {w.slo_ttft_ms:g} ms"
    if w.slo_latency_ms is not None and p.latency_ms > w.slo_latency_ms:
        return f"request latency {p.latency_ms:.0f} ms > SLO {w.slo_latency_ms:g} ms"
    return None


def _size_replica(w: Workload, option: Option, spec: GPUSpec, prompt: int, output: int,
                  measurements: Sequence[Measurement], catalog: PriceCatalog) -> Option:
    """Pick GPUs per replica and batch size: the most output tokens/s per dollar within the SLO."""
    best: tuple | None = None
    no_fit = slo_reason = None
    k = 1
    while k <= option.gpu_count:
        limit = _max_batch(w, spec, k, prompt, output)
        if limit < 1:
            need = (w.weight_bytes + (prompt + output) * w.kv_token_bytes) / 1e9
            no_fit = (f"does not fit: weights {w.weight_bytes / 1e9:.1f} GB + KV for one "
                      f"{prompt + output}-token sequence {(prompt + output) * w.kv_token_bytes / 1e9:.2f} GB"
                      f" = {need:.1f} GB > {MEMORY_HEADROOM:.0%} of {k}x{spec.memory_gb:g} GB")
            k *= 2
            continue
        if w.max_batch_size:
            limit = min(limit, w.max_batch_size)
        points = []
        feasible, infeasible = 0, None
        for batch in _batch_candidates(limit, [m for m in measurements
                                               if m.gpu_model == spec.gpu_model and m.gpus == k]):
            point, source, origin = project(w, spec.gpu_model, k, batch, prompt, output,
                                            measurements, catalog)
            violation = _slo_violation(w, point)
            if violation:
                if batch == 1:
                    slo_reason = f"SLO violated even at batch 1 on {k}x{spec.gpu_model}: {violation}"
                infeasible = batch if infeasible is None else min(infeasible, batch)
                continue
            feasible = max(feasible, batch)
            points.append((point, source, origin, batch))
        # The SLO binds between two candidates: find the largest batch that still meets it
        # (latency grows with the batch, so bisection applies).
        if points and infeasible is not None and infeasible > feasible + 1:
            lo, hi = feasible, infeasible
            while hi - lo > 1:
                mid = (lo + hi) // 2
                point, source, origin = project(w, spec.gpu_model, k, mid, prompt, output,
                                                measurements, catalog)
                if _slo_violation(w, point):
                    hi = mid
                else:
                    lo = mid
                    points.append((point, source, origin, mid))
        if points:
            top = max(p[0].tokens_per_s for p in points)
            measured = [p for p in points if p[1] == "measured"
                        and p[0].tokens_per_s >= (1 - PREFER_MEASURED_WITHIN) * top]
            point, source, origin, batch = max(measured or points, key=lambda p: p[0].tokens_per_s)
            per_gpu = point.tokens_per_s / k
            if best is None or per_gpu > best[0]:
                kv_gb = batch * (prompt + output) * w.kv_token_bytes / 1e9
                best = (per_gpu, k, batch, point, source, origin, limit,
                        (w.weight_bytes / 1e9 + kv_gb) / k)
        k *= 2
    if best is None:
        option.fits = no_fit is None or slo_reason is not None
        option.reason = slo_reason or no_fit or "no GPU count fits"
        return option
    _, k, batch, point, source, origin, limit, mem = best
    option.fits = option.slo_ok = True
    option.gpus_per_replica, option.replicas_per_instance = k, option.gpu_count // k
    option.batch_size, option.max_batch_fit = batch, limit
    option.tokens_per_s_per_replica = point.tokens_per_s
    option.tpot_ms, option.ttft_ms, option.latency_ms = point.tpot_ms, point.ttft_ms, point.latency_ms
    option.memory_per_gpu_gb = mem
    option.throughput_source, option.projected_from = source, origin
    return option


def _options(catalog: PriceCatalog, w: Workload) -> Iterable[Option]:
    clouds = {c.lower() for c in w.clouds} if w.clouds else None
    regions = {r.lower() for r in w.regions} if w.regions else None
    models = {catalog.canonical(g) for g in w.gpu_models} if w.gpu_models else None
    for row in catalog.rows:
        if clouds and row.cloud.lower() not in clouds:
            continue
        if regions and row.region.lower() not in regions:
            continue
        if models and row.gpu_model not in models:
            continue
        if row.gpu_model not in catalog.specs:
            continue
        pricings = ["on_demand"] + (["spot"] if w.spot_allowed and row.spot_usd_h else [])
        for pricing in pricings:
            quote = catalog.gpu_hour_price(row.cloud, row.region, row.instance_type,
                                           row.gpu_model, pricing)
            yield Option(cloud=row.cloud, region=row.region, instance_type=row.instance_type,
                         gpu_model=row.gpu_model, gpu_count=row.gpu_count, pricing=pricing,
                         usd_per_gpu_hour=quote.usd_per_gpu_hour, price_fallback=quote.fallback,
                         price_source=quote.source)


def _size_fleet(option: Option, demand_tps: float) -> Option:
    replicas = max(1, math.ceil(demand_tps / option.tokens_per_s_per_replica - 1e-9))
    instances = math.ceil(replicas / option.replicas_per_instance)
    option.replicas = instances * option.replicas_per_instance
    option.instances = instances
    option.fleet_tokens_per_s = option.replicas * option.tokens_per_s_per_replica
    option.usd_per_hour = instances * option.gpu_count * option.usd_per_gpu_hour
    option.usd_per_million_tokens = option.usd_per_hour / (demand_tps * 3600.0) * 1e6
    option.usd_per_month = option.usd_per_hour * HOURS_PER_MONTH
    return option


def _evaluate(w: Workload, catalog: PriceCatalog, measurements: Sequence[Measurement],
              prompt: int, output: int, demand_tps: float) -> tuple[list[Option], list[Option]]:
    ok, rejected = [], []
    for option in _options(catalog, w):
        spec = catalog.spec(option.gpu_model)
        option = _size_replica(w, option, spec, prompt, output, measurements, catalog)
        (ok if option.slo_ok else rejected).append(option)
    for option in ok:
        _size_fleet(option, demand_tps)
    # Cheapest first; at equal cost measured beats projected, on-demand beats spot.
    ok.sort(key=lambda o: (round(o.usd_per_hour, 6), o.throughput_source != "measured",
                           o.pricing != "on_demand", o.name))
    return ok, rejected


def _explain(ranked: list[Option], w: Workload, demand_tps: float) -> None:
    for i, o in enumerate(ranked, start=1):
        o.rank = i
        basis = ("measured" if o.throughput_source == "measured"
                 else f"projected: {o.projected_from}")
        parts = [f"#{i}: {o.instances}x {o.instance_type} ({o.gpu_count}x {o.gpu_model}, "
                 f"{o.cloud} {o.region}, {o.pricing.replace('_', '-')}) = {o.replicas} replica(s) of "
                 f"{o.gpus_per_replica} GPU at batch {o.batch_size}, "
                 f"{o.tokens_per_s_per_replica:,.0f} tok/s each ({basis}); serves {demand_tps:,.0f} tok/s "
                 f"for ${o.usd_per_hour:,.2f}/h = ${o.usd_per_million_tokens:.3f} per 1M tokens"]
        if o.tpot_ms:
            parts.append(f"TPOT {o.tpot_ms:.1f} ms, TTFT {o.ttft_ms:.0f} ms")
        if i > 1:
            first = ranked[0]
            parts.append(f"{(o.usd_per_hour / first.usd_per_hour - 1) * 100:.0f}% dearer than #1")
        elif len(ranked) > 1:
            parts.append(f"{(1 - o.usd_per_hour / ranked[1].usd_per_hour) * 100:.0f}% cheaper than #2")
        if o.pricing == "spot":
            parts.append("spot capacity can be reclaimed: keep headroom or an on-demand fallback")
        if o.price_fallback:
            parts.append("price is a fallback estimate (instance not in the catalog at this pricing)")
        if o.fleet_tokens_per_s > 1.5 * demand_tps:
            parts.append(f"fleet has {o.fleet_tokens_per_s / demand_tps - 1:.0%} spare capacity "
                         "(whole instances)")
        o.reason = "; ".join(parts)


def _melange(w: Workload, catalog: PriceCatalog, measurements: Sequence[Measurement],
             top_per_class: int = 4) -> MixRecommendation | None:
    """Serve each request class on the GPU type cheapest for it, and compare with the cheapest
    single type serving all classes. Capacity shares add up per instance type (Mélange's
    bin-packing relaxation); instance counts are rounded up per type."""
    classes = list(w.request_mix or ())
    if len(classes) < 2:
        return None
    total = sum(c.share for c in classes)
    if total <= 0:
        raise RecommendError("request_mix shares must add up to more than 0")
    rps = (w.requests_per_s if w.requests_per_s is not None else
           w.demand_tokens_per_s() / sum(c.share / total * c.output_tokens for c in classes))
    per_class: list[dict[str, tuple[Option, float]]] = []  # option name -> (option, instance load)
    for c in classes:
        demand = rps * c.share / total * c.output_tokens
        options, _ = _evaluate(w, catalog, measurements, c.prompt_tokens, c.output_tokens, demand)
        loads = {}
        for o in options:
            per_instance = o.tokens_per_s_per_replica * o.replicas_per_instance
            loads[o.name] = (o, demand / per_instance)
        per_class.append(loads)
    common = set.intersection(*(set(loads) for loads in per_class))
    if not common:
        return None

    def cost(assignment: Sequence[str]) -> float:
        load_by_type: dict[str, float] = {}
        price: dict[str, float] = {}
        for name, loads in zip(assignment, per_class):
            option, load = loads[name]
            load_by_type[name] = load_by_type.get(name, 0.0) + load
            price[name] = option.gpu_count * option.usd_per_gpu_hour
        return sum(math.ceil(load - 1e-9) * price[name] for name, load in load_by_type.items())

    single_name = min(common, key=lambda n: cost([n] * len(classes)))
    single_cost = cost([single_name] * len(classes))
    shortlists = []
    for loads in per_class:
        ranked = sorted(loads, key=lambda n: loads[n][1] * loads[n][0].gpu_count
                        * loads[n][0].usd_per_gpu_hour)
        shortlists.append(list(dict.fromkeys(ranked[:top_per_class] + [single_name])))
    best = min(product(*shortlists), key=cost)
    best_cost = cost(best)
    if best_cost >= single_cost * 0.99 or len(set(best)) < 2:
        return None
    assignments = []
    for c, name, loads in zip(classes, best, per_class):
        option, load = loads[name]
        assignments.append({"prompt_tokens": c.prompt_tokens, "output_tokens": c.output_tokens,
                            "share": c.share / total, "option": name, "gpu_model": option.gpu_model,
                            "instance_load": load, "batch_size": option.batch_size,
                            "throughput_source": option.throughput_source})
    savings = (1 - best_cost / single_cost) * 100
    mix_desc = ", ".join(f"{a['prompt_tokens']}/{a['output_tokens']}-token requests "
                         f"({a['share']:.0%}) on {a['option']}" for a in assignments)
    return MixRecommendation(
        assignments=assignments, usd_per_hour=best_cost, best_single_usd_per_hour=single_cost,
        best_single=single_name, savings_pct=savings,
        reason=(f"mixed fleet ${best_cost:,.2f}/h vs ${single_cost:,.2f}/h for the best single type "
                f"({single_name}): {savings:.0f}% cheaper; {mix_desc}"))


def _cheapest_region_only(options: list[Option]) -> list[Option]:
    seen, kept = set(), []
    for o in options:  # already cheapest first
        key = (o.cloud, o.instance_type, o.pricing)
        if key not in seen:
            seen.add(key)
            kept.append(o)
    return kept


def recommend(w: Workload, measurements: Sequence[Measurement] = (),
              catalog: PriceCatalog | None = None, limit: int | None = None,
              cheapest_region_only: bool = False) -> Recommendation:
    """Rank every catalog instance for the workload (cheapest $ per 1M tokens first).
    `cheapest_region_only` keeps one region per (cloud, instance type, pricing)."""
    catalog = catalog or default_catalog()
    if w.params <= 0:
        raise RecommendError("params must be > 0")
    if w.prompt_tokens < 1 or w.output_tokens < 1:
        raise RecommendError("prompt_tokens and output_tokens must be >= 1")
    demand = w.demand_tokens_per_s()
    if demand <= 0:
        raise RecommendError("demand must be > 0")
    w.kv_token_bytes  # noqa: B018  (raises early when the attention shape is missing)
    try:
        measurements = [replace(m, gpu_model=catalog.canonical(m.gpu_model)) for m in measurements]
    except PricingError as exc:
        raise RecommendError(f"measurement on a GPU the catalog does not know: {exc}") from exc
    ranked, rejected = _evaluate(w, catalog, measurements, w.prompt_tokens, w.output_tokens, demand)
    if cheapest_region_only:
        ranked = _cheapest_region_only(ranked)
        rejected = _cheapest_region_only(rejected)
    _explain(ranked, w, demand)
    mix = _melange(w, catalog, measurements)
    return Recommendation(workload=w, ranked=ranked[:limit] if limit else ranked,
                          rejected=rejected, mix=mix)
