"""Stored benchmark runs: one row per measured variant, what the recommender reads back.

Written by `gpucost bench`, `gpucost optimize` and the optimizer service; a row holds the
workload (model, size, precision, variant, batch, lengths), the measured outcome (tokens/s,
latency percentiles, TTFT, memory), the accuracy gate's verdict and the priced cost."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, Boolean, DateTime, Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from core.tables.base import Base


def _now() -> datetime:
    return datetime.now(timezone.utc)


class BenchmarkRun(Base):
    __tablename__ = "benchmark_runs"
    __table_args__ = (Index("ix_benchmark_runs_gpu_variant", "gpu_model", "variant"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, index=True)
    source: Mapped[str] = mapped_column(String(50), default="bench")  # bench | optimize | service
    gpu_model: Mapped[str] = mapped_column(String(100), index=True)  # catalog name, or "cpu"
    device: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(100))
    params: Mapped[int] = mapped_column(Integer)
    variant: Mapped[str] = mapped_column(String(200))
    precision: Mapped[str] = mapped_column(String(20))
    quantization: Mapped[str] = mapped_column(String(50))
    kv_cache: Mapped[str] = mapped_column(String(20))
    window: Mapped[int | None] = mapped_column(Integer, nullable=True)
    decode_mode: Mapped[str] = mapped_column(String(50))
    batch_size: Mapped[int] = mapped_column(Integer)
    concurrency: Mapped[int] = mapped_column(Integer, default=0)  # 0: a static batch, no batcher
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    new_tokens: Mapped[int] = mapped_column(Integer)
    tokens_per_s: Mapped[float] = mapped_column(Float)
    decode_tokens_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    requests_per_s: Mapped[float] = mapped_column(Float)
    latency_p50_ms: Mapped[float] = mapped_column(Float)
    latency_p95_ms: Mapped[float] = mapped_column(Float)
    latency_p99_ms: Mapped[float] = mapped_column(Float)
    ttft_p50_ms: Mapped[float] = mapped_column(Float)
    peak_memory_bytes: Mapped[int] = mapped_column(Integer)
    peak_memory_source: Mapped[str] = mapped_column(String(30))
    model_bytes: Mapped[int] = mapped_column(Integer)
    kv_cache_bytes: Mapped[int] = mapped_column(Integer)
    bandwidth_share: Mapped[float | None] = mapped_column(Float, nullable=True)
    accepted: Mapped[bool | None] = mapped_column(Boolean, nullable=True)  # None: not gated
    top1_agreement: Mapped[float | None] = mapped_column(Float, nullable=True)
    ppl_increase: Mapped[float | None] = mapped_column(Float, nullable=True)
    usd_per_gpu_hour: Mapped[float | None] = mapped_column(Float, nullable=True)
    cost_per_million_tokens_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    result: Mapped[dict] = mapped_column(JSON)  # the whole RunMetrics, as in the JSON results file
