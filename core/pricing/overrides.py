"""User price overrides: stored with SQLAlchemy (core.tables.pricing), applied on top of the
shipped catalog. An override replaces the catalog row of the same (cloud, region, instance type);
one for an instance the catalog lacks adds it. Quotes from an override carry `override=True` and a
source starting with "override:"."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.pricing.catalog import (
    CatalogRow,
    PriceCatalog,
    PricingError,
    UnknownGPUModel,
    _key,
    canonical_gpu_model,
    default_catalog,
)
from core.tables.pricing import PriceOverride


@dataclass(frozen=True, slots=True)
class OverrideRequest:
    cloud: str
    region: str
    instance_type: str
    on_demand_usd_h: float
    spot_usd_h: float | None = None
    gpu_model: str | None = None  # taken from the catalog row when omitted
    gpu_count: int | None = None
    note: str = ""


def _check_price(name: str, value: float | None) -> None:
    if value is None:
        return
    if not math.isfinite(value) or value <= 0:
        raise PricingError(f"{name} must be a positive, finite number of USD per hour, got {value!r}")


def set_override(session: Session, request: OverrideRequest,
                 base: PriceCatalog | None = None) -> PriceOverride:
    """Create or replace the override for (cloud, region, instance_type)."""
    base = base or default_catalog()
    _check_price("on_demand_usd_h", request.on_demand_usd_h)
    _check_price("spot_usd_h", request.spot_usd_h)
    cloud, region, instance = _key(request.cloud, request.region, request.instance_type)
    row = base.row(cloud, region, instance)
    gpu_model = request.gpu_model or (row.gpu_model if row else None)
    gpu_count = request.gpu_count or (row.gpu_count if row else None)
    if gpu_model is None or gpu_count is None:
        raise PricingError(
            f"{request.cloud}/{request.region}/{request.instance_type} is not in the catalog: "
            "give gpu_model and gpu_count for it")
    gpu_model = canonical_gpu_model(gpu_model)
    if gpu_model not in base.specs and gpu_model not in base.gpu_models:
        raise UnknownGPUModel(gpu_model, set(base.specs) | set(base.gpu_models))
    if gpu_count < 1:
        raise PricingError("gpu_count must be >= 1")
    existing = session.scalars(select(PriceOverride).where(
        PriceOverride.cloud == cloud, PriceOverride.region == region,
        PriceOverride.instance_type == instance)).one_or_none()
    override = existing or PriceOverride(cloud=cloud, region=region, instance_type=instance)
    override.gpu_model = gpu_model
    override.gpu_count = gpu_count
    override.gpu_mem_gb = row.gpu_mem_gb if row else (base.specs[gpu_model].memory_gb
                                                       if gpu_model in base.specs else 0.0)
    override.on_demand_usd_h = request.on_demand_usd_h
    override.spot_usd_h = request.spot_usd_h
    override.note = request.note
    if existing is None:
        session.add(override)
    session.flush()
    return override


def delete_override(session: Session, cloud: str, region: str, instance_type: str) -> bool:
    cloud, region, instance = _key(cloud, region, instance_type)
    existing = session.scalars(select(PriceOverride).where(
        PriceOverride.cloud == cloud, PriceOverride.region == region,
        PriceOverride.instance_type == instance)).one_or_none()
    if existing is None:
        return False
    session.delete(existing)
    session.flush()
    return True


def list_overrides(session: Session) -> list[PriceOverride]:
    return list(session.scalars(select(PriceOverride).order_by(
        PriceOverride.cloud, PriceOverride.region, PriceOverride.instance_type)))


def override_row(override: PriceOverride, base: PriceCatalog) -> CatalogRow:
    row = base.row(override.cloud, override.region, override.instance_type)
    stamp = override.updated_at or override.created_at
    return CatalogRow(
        cloud=row.cloud if row else override.cloud, region=row.region if row else override.region,
        instance_type=row.instance_type if row else override.instance_type,
        gpu_model=override.gpu_model, gpu_count=override.gpu_count,
        gpu_mem_gb=override.gpu_mem_gb, vcpus=row.vcpus if row else 0,
        ram_gb=row.ram_gb if row else 0.0, on_demand_usd_h=override.on_demand_usd_h,
        spot_usd_h=override.spot_usd_h,
        source=f"override: {override.note}".rstrip(": ") if override.note else "override",
        as_of=stamp.date().isoformat() if stamp else "")


def catalog_with_overrides(session: Session, base: PriceCatalog | None = None) -> PriceCatalog:
    """The catalog every lookup should use: `base` (the shipped one by default) with the stored
    overrides applied. Cheap enough to rebuild every few seconds in a long-running process."""
    base = base or default_catalog()
    overrides = list_overrides(session)
    if not overrides:
        return base
    return base.with_rows(override_row(o, base) for o in overrides)
