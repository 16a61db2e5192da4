"""Stored pricing data: user price overrides (negotiated rates, reserved pricing, private clouds),
one per (cloud, region, instance type), which replace the shipped catalog row in every lookup."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import DateTime, Float, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from core.tables.base import Base


def _now() -> datetime:
    return datetime.now(timezone.utc)


class PriceOverride(Base):
    __tablename__ = "pricing_overrides"
    __table_args__ = (UniqueConstraint("cloud", "region", "instance_type", name="uq_price_override_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Stored lower-case: the catalog's lookup keys are case-insensitive.
    cloud: Mapped[str] = mapped_column(String(64), index=True)
    region: Mapped[str] = mapped_column(String(64))
    instance_type: Mapped[str] = mapped_column(String(128))
    gpu_model: Mapped[str] = mapped_column(String(64))
    gpu_count: Mapped[int] = mapped_column(Integer)
    gpu_mem_gb: Mapped[float] = mapped_column(Float, default=0.0)
    on_demand_usd_h: Mapped[float] = mapped_column(Float)
    spot_usd_h: Mapped[float | None] = mapped_column(Float, nullable=True)
    note: Mapped[str] = mapped_column(String(512), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)
