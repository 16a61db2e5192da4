"""What a run is worth: throughput, latency percentiles, memory, bandwidth share and cost.

Memory is the CUDA allocator's peak on a GPU and the process's resident set (sampled) on a
CPU. Achieved bandwidth counts the bytes a decode step must read (all weights once, plus the
KV cache up to the current position) over the measured step time, as a share of the device's
spec-sheet peak from the pricing catalog. Cost per 1M tokens prices the GPU-hour from the
catalog: `usd_per_gpu_hour / (tokens_per_s * 3600) * 1e6`."""

from __future__ import annotations

import math
import re
import threading
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from optimizer.devices import device_slug, gpu_model_name  # noqa: F401  (re-exported: callers import them here)
from optimizer.model import Transformer, model_bytes


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100] (numpy's default method)."""
    if not values:
        return math.nan
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def latency_summary_ms(latencies_s: list[float]) -> dict[str, float]:
    return {f"p{q}_ms": percentile(latencies_s, q) * 1e3 for q in (50, 95, 99)}


class PeakMemory:
    """Peak memory over a `with` block: CUDA allocator peak, or sampled process RSS on a CPU."""

    def __init__(self, device: torch.device | str, sample_interval_s: float = 0.002):
        self.device = torch.device(device)
        self.interval = sample_interval_s
        self.peak_bytes = 0
        self.source = "cuda_allocator" if self.device.type == "cuda" else "process_rss"

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                import psutil  # CPU runs only: a bare GPU machine needs nothing but torch
            except ImportError:  # the process's lifetime peak instead of this block's
                import resource

                self.source = "process_maxrss"
                self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                self._thread = None
                return self
            self._proc = psutil.Process()
            self._stop = threading.Event()
            self.peak_bytes = self._proc.memory_info().rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is None:
            import resource

            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, self._proc.memory_info().rss)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights as stored, including torch.ao dynamic-quantized packed weights."""
    total = model_bytes(model)
    for module in model.modules():
        packed = getattr(module, "_packed_params", None)
        if packed is not None and hasattr(module, "weight") and callable(module.weight):
            w = module.weight()
            total += w.numel() * w.element_size()
    return total


def kv_cache_bytes(model: Transformer) -> int:
    """Bytes the allocated KV caches hold (all layers, all slots, scales included)."""
    return 0 if model.caches is None else sum(c.nbytes() for c in model.caches)


def kv_bytes_per_token(model: Transformer) -> float:
    """KV-cache bytes one token occupies across all layers (one batch row)."""
    if model.caches is None:
        return 0.0
    rows, slots = model.slot_pos.shape
    return kv_cache_bytes(model) / (rows * slots)


def decode_step_bytes(model: Transformer, batch_size: int, context_len: float) -> float:
    """The fewest bytes one decode step must read: every weight once and the cached context."""
    return weight_bytes(model) + batch_size * context_len * kv_bytes_per_token(model)


# -- device facts and prices from the catalog ---------------------------------------------

def device_description(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import os
    import platform

    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} threads"


def peak_bandwidth_bytes_s(gpu_model: str) -> float | None:
    """Spec-sheet memory bandwidth from the catalog's GPU table; None for a CPU or unknown GPU."""
    if gpu_model == "cpu":
        return None
    from core.pricing import PricingError, default_catalog

    try:
        return default_catalog().spec(gpu_model).mem_bandwidth_gb_s * 1e9
    except PricingError:
        return None


@dataclass(frozen=True)
class Instance:
    """Where a run is priced: the catalog row of the instance it ran on (or stands for)."""

    cloud: str = "aws"
    region: str = "us-east-1"
    instance_type: str = "p5.48xlarge"


# The instance a GPU's runs are priced on when none is named: each part's own 8-GPU AWS instance.
DEFAULT_INSTANCE_TYPES = {"H100-80GB": "p5.48xlarge", "H200-141GB": "p5en.48xlarge"}


def instance_for_gpu(gpu_model: str, cloud: str = "aws", region: str = "us-east-1") -> Instance:
    """The catalog instance that holds this GPU: the default above, else the first catalog row of
    that GPU in `cloud`/`region`, else in any region or cloud; a CPU (or unpriced GPU) gets the
    plain default, whose price the CPU runs do not use."""
    from core.pricing import default_catalog

    catalog = default_catalog()
    preferred = DEFAULT_INSTANCE_TYPES.get(gpu_model)
    if preferred and catalog.row(cloud, region, preferred) is not None:
        return Instance(cloud, region, preferred)
    rows = [r for r in catalog.rows if r.gpu_model == gpu_model]
    rows.sort(key=lambda r: (r.cloud != cloud, r.region != region, r.cloud, r.region, r.instance_type))
    if not rows:
        return Instance()
    return Instance(rows[0].cloud, rows[0].region, rows[0].instance_type)


def parse_instance(text: str, default: Instance | None = None) -> Instance:
    """"p5en.48xlarge", "aws/us-east-2/p5en.48xlarge" or "gcp:us-central1:a3-ultragpu-8g"."""
    default = default or Instance()
    parts = [p for p in re.split(r"[/:]", text.strip()) if p]
    if len(parts) == 1:
        return Instance(default.cloud, default.region, parts[0])
    if len(parts) == 3:
        return Instance(*parts)
    raise ValueError(f"instance {text!r}: expected TYPE or CLOUD/REGION/TYPE")


def usd_per_gpu_hour(instance: Instance, gpu_model: str) -> tuple[float | None, bool]:
    """(price, fallback) from the catalog; (None, False) for CPU runs, which it does not price."""
    if gpu_model == "cpu":
        return None, False
    from core.pricing import PricingError, default_catalog

    try:
        quote = default_catalog().gpu_hour_price(instance.cloud, instance.region, instance.instance_type,
                                                 gpu_model)
    except PricingError:
        return None, False
    return quote.usd_per_gpu_hour, quote.fallback


def cost_per_million_tokens(usd_per_hour: float | None, tokens_per_s: float) -> float | None:
    if usd_per_hour is None or tokens_per_s <= 0:
        return None
    return usd_per_hour / (tokens_per_s * 3600.0) * 1e6


@dataclass
class RunMetrics:
    """One measured run of one variant: the row of `gpucost bench` and of the benchmark_runs table."""

    variant: str
    model: str
    params: int
    device: str
    gpu_model: str
    precision: str
    quantization: str
    kv_cache: str
    window: int | None
    decode_mode: str
    batch_size: int
    concurrency: int
    prompt_tokens: int
    new_tokens: int
    requests: int
    tokens_per_s: float
    requests_per_s: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    ttft_p50_ms: float
    peak_memory_bytes: int
    peak_memory_source: str
    model_bytes: int
    kv_cache_bytes: int
    bandwidth_gb_s: float | None = None
    bandwidth_share: float | None = None
    usd_per_gpu_hour: float | None = None
    price_fallback: bool = False
    cost_per_million_tokens_usd: float | None = None
    wall_s: float = 0.0
    gate: dict | None = None
    accepted: bool | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)
