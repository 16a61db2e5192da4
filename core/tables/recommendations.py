"""Stored recommendations: each POST /api/recommendations is kept with its workload and result,
so the dashboard and `gpucost recommend --history` can show what was advised and when."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, DateTime, Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from core.tables.base import Base


def _now() -> datetime:
    return datetime.now(timezone.utc)


class RecommendationRecord(Base):
    __tablename__ = "recommendations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, index=True)
    tenant: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    service: Mapped[str | None] = mapped_column(String(200), nullable=True)
    workload: Mapped[dict] = mapped_column(JSON)
    best_instance: Mapped[str | None] = mapped_column(String(300), nullable=True)
    best_usd_per_million_tokens: Mapped[float | None] = mapped_column(Float, nullable=True)
    best_usd_per_hour: Mapped[float | None] = mapped_column(Float, nullable=True)
    result: Mapped[dict] = mapped_column(JSON)
