"""Where measured runs go: usage events on `gpu.usage` (service "optimizer/<variant>") through
the one producer, and rows in the `benchmark_runs` table through the one database session.

A run on a CPU still reports the GPU instance it is priced as (the catalog prices GPUs), and
says so with the extra event field `measured_on="cpu"`, which the event schema keeps."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable

from optimizer.measure import Instance, RunMetrics


def service_name(variant: str) -> str:
    return f"optimizer/{variant}"


def _default_gpu_for(instance: Instance) -> str:
    from core.pricing import default_catalog

    row = default_catalog().row(instance.cloud, instance.region, instance.instance_type)
    return row.gpu_model if row is not None else "H100-80GB"


def _gpu_memory_gb(gpu_model: str) -> float:
    from core.pricing import PricingError, default_catalog

    try:
        return float(default_catalog().spec(gpu_model).memory_gb)
    except PricingError:
        return 80.0


def usage_event(*, variant: str, instance: Instance, gpu_model: str, interval_s: float, util: float,
                mem_used_gb: float, tokens: int, requests: int, tenant: str = "optimizer",
                host: str | None = None, gpu_index: int = 0, power_w: float = 0.0,
                measured_on: str = "gpu", ts: float | None = None, mem_total_gb: float | None = None):
    """One usage sample for the optimizer's own workload over `interval_s` seconds ending at `ts`."""
    from contracts.events import UsageEvent

    if gpu_model == "cpu":
        gpu_model, measured_on = _default_gpu_for(instance), "cpu"
    total = mem_total_gb or _gpu_memory_gb(gpu_model)
    return UsageEvent(
        ts=ts or time.time(), tenant=tenant, service=service_name(variant), cloud=instance.cloud,
        region=instance.region, instance_type=instance.instance_type, gpu_model=gpu_model,
        host=host or socket.gethostname(), gpu_index=gpu_index, interval_s=max(interval_s, 1e-3),
        util=min(max(util, 0.0), 1.0), mem_used_gb=min(mem_used_gb, total), mem_total_gb=total,
        power_w=power_w, tokens=int(tokens), requests=int(requests), model_version=variant[:200],
        measured_on=measured_on,
    )


def run_usage_event(row: RunMetrics, instance: Instance, tenant: str = "optimizer"):
    """A whole measured run as one sample: the device was busy (util 1) for the run's wall time."""
    requests = row.requests or row.batch_size
    return usage_event(variant=row.variant, instance=instance, gpu_model=row.gpu_model,
                       interval_s=min(max(row.wall_s, 1e-3), 3600.0), util=1.0,
                       mem_used_gb=row.peak_memory_bytes / 1e9,
                       tokens=round(row.tokens_per_s * row.wall_s), requests=requests, tenant=tenant)


async def publish_runs(rows: Iterable[RunMetrics], instance: Instance, settings=None,
                       tenant: str = "optimizer") -> int:
    """Send one usage event per run to Kafka; returns how many were sent."""
    from ingest.producer import EventProducer

    events = [run_usage_event(r, instance, tenant) for r in rows]
    async with EventProducer(settings) as producer:
        await producer.send_usage(events)
    return len(events)


def store_runs(rows: Iterable[RunMetrics], settings=None, source: str = "bench") -> list[int]:
    """Insert the runs into `benchmark_runs` (creating the tables first); returns their ids."""
    from core.db import init_db, session_scope
    from core.tables.benchmarks import BenchmarkRun

    init_db(settings)
    records = []
    for r in rows:
        gate = r.gate or {}
        records.append(BenchmarkRun(
            source=source, gpu_model=r.gpu_model, device=r.device, model=r.model, params=r.params,
            variant=r.variant, precision=r.precision, quantization=r.quantization, kv_cache=r.kv_cache,
            window=r.window, decode_mode=r.decode_mode, batch_size=r.batch_size, concurrency=r.concurrency,
            prompt_tokens=r.prompt_tokens, new_tokens=r.new_tokens, tokens_per_s=r.tokens_per_s,
            decode_tokens_per_s=r.extra.get("decode_tokens_per_s"), requests_per_s=r.requests_per_s,
            latency_p50_ms=r.latency_p50_ms, latency_p95_ms=r.latency_p95_ms,
            latency_p99_ms=r.latency_p99_ms, ttft_p50_ms=r.ttft_p50_ms,
            peak_memory_bytes=r.peak_memory_bytes, peak_memory_source=r.peak_memory_source,
            model_bytes=r.model_bytes, kv_cache_bytes=r.kv_cache_bytes, bandwidth_share=r.bandwidth_share,
            accepted=r.accepted, top1_agreement=gate.get("agreement"), ppl_increase=gate.get("ppl_increase"),
            usd_per_gpu_hour=r.usd_per_gpu_hour, cost_per_million_tokens_usd=r.cost_per_million_tokens_usd,
            result=r.as_dict()))
    with session_scope(settings) as session:
        session.add_all(records)
        session.flush()
        return [rec.id for rec in records]
