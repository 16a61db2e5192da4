"""Pricing: the catalog, per-GPU-hour quotes, GPU specs, and user price overrides (admin keys
only), which every lookup then applies. Overrides are global, not per tenant: the meter prices
one fleet. They reach the stream worker the way rules do, through Kafka: a background publisher
puts the whole stored set on the compacted `cost.prices` topic whenever it differs from what this
process last published (at start, right after a change, and on a 5 s check), so the topic
converges on the database and the worker needs no database."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.auth import Principal, principal
from contracts.prices import PRICES_KEY, PriceOverrides, PriceRow
from core import kafka
from core.db import session_scope
from core.pricing import PricingError, UnknownGPUModel, default_catalog
from core.pricing.effective import effective_catalog, invalidate
from core.pricing.overrides import OverrideRequest, delete_override, list_overrides, override_row, set_override
from core.settings import Settings

log = logging.getLogger("gpucost.api.pricing")
router = APIRouter(prefix="/api/pricing", tags=["pricing"])


class PricePublisher:
    """Keeps `cost.prices` equal to the stored overrides (contracts/prices.py)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.producer = None
        self.published: bytes | None = None  # what this process last put on the topic
        self.lock = asyncio.Lock()  # one read-and-send at a time: never a stale set after a newer one
        self.task: asyncio.Task | None = None

    def _current(self) -> bytes:
        base = default_catalog()
        with session_scope(self.settings) as session:
            rows = [PriceRow(**asdict(override_row(o, base))) for o in list_overrides(session)]
        return PriceOverrides(rows=rows).model_dump_json().encode()

    async def publish_if_changed(self) -> None:
        async with self.lock:
            try:
                value = await run_in_threadpool(self._current)
                if value == self.published:
                    return
                if self.producer is None:
                    p = kafka.producer(self.settings)
                    await p.start()
                    self.producer = p
                await self.producer.send_and_wait(self.settings.prices_topic, key=PRICES_KEY, value=value)
                self.published = value
            except Exception as exc:  # broker or database away: the next round retries
                log.warning("publishing price overrides to %s failed: %r", self.settings.prices_topic, exc)

    async def run(self) -> None:
        while True:
            await self.publish_if_changed()
            await asyncio.sleep(5.0)

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass
        if self.producer is not None:
            await self.producer.stop()


async def start(app) -> None:
    await kafka.ensure_topics(app.state.settings)
    publisher = app.state.price_publisher = PricePublisher(app.state.settings)
    publisher.task = asyncio.create_task(publisher.run(), name="price-publisher")


async def stop(app) -> None:
    await app.state.price_publisher.stop()


async def _changed(request: Request) -> None:
    """After a stored change: this process's catalog now, the worker's as soon as it is published
    (a failed publish is retried by the publisher's loop)."""
    invalidate()
    publisher = getattr(request.app.state, "price_publisher", None)
    if publisher is not None:
        await publisher.publish_if_changed()


class CatalogRowOut(BaseModel):
    cloud: str
    region: str
    instance_type: str
    gpu_model: str
    gpu_count: int
    gpu_mem_gb: float
    vcpus: int
    ram_gb: float
    on_demand_usd_h: float
    spot_usd_h: float | None
    source: str
    as_of: str
    on_demand_usd_per_gpu_hour: float


class QuoteOut(BaseModel):
    usd_per_gpu_hour: float
    fallback: bool
    override: bool
    source: str
    as_of: str
    gpu_model: str
    pricing: str
    cloud: str
    region: str
    instance_type: str


class GPUSpecOut(BaseModel):
    gpu_model: str
    memory_gb: float
    mem_bandwidth_gb_s: float
    bf16_tflops: float
    fp8_tflops: float | None
    int8_tops: float | None
    source: str


class OverrideIn(BaseModel):
    cloud: str = Field(min_length=1, max_length=64)
    region: str = Field(min_length=1, max_length=64)
    instance_type: str = Field(min_length=1, max_length=128)
    on_demand_usd_h: float = Field(gt=0, le=1e6, description="price of the whole instance per hour")
    spot_usd_h: float | None = Field(None, gt=0, le=1e6)
    gpu_model: str | None = Field(None, min_length=1, max_length=64,
                                  description="needed for an instance the catalog lacks")
    gpu_count: int | None = Field(None, ge=1, le=1024)
    note: str = Field("", max_length=512)


class OverrideOut(BaseModel):
    cloud: str
    region: str
    instance_type: str
    gpu_model: str
    gpu_count: int
    on_demand_usd_h: float
    spot_usd_h: float | None
    note: str
    updated_at: str


def _catalog(request: Request):
    return effective_catalog(request.app.state.settings)


def _admin(p: Principal) -> None:
    if not p.is_admin:
        raise HTTPException(403, "price overrides need an admin key")


def _override_out(o) -> dict:
    return {"cloud": o.cloud, "region": o.region, "instance_type": o.instance_type,
            "gpu_model": o.gpu_model, "gpu_count": o.gpu_count, "on_demand_usd_h": o.on_demand_usd_h,
            "spot_usd_h": o.spot_usd_h, "note": o.note,
            "updated_at": (o.updated_at or o.created_at).isoformat()}


@router.get("/catalog", response_model=list[CatalogRowOut])
def catalog_rows(request: Request, cloud: str | None = None, region: str | None = None,
                 gpu_model: str | None = None, p: Principal = Depends(principal)) -> list[dict]:
    """Catalog rows (with overrides applied), filtered by cloud, region and GPU model."""
    catalog = _catalog(request)
    model = None
    if gpu_model:
        try:
            model = catalog.canonical(gpu_model)
        except UnknownGPUModel as exc:
            raise HTTPException(404, str(exc)) from exc
    out = []
    for r in catalog.rows:
        if cloud and r.cloud.lower() != cloud.lower():
            continue
        if region and r.region.lower() != region.lower():
            continue
        if model and r.gpu_model != model:
            continue
        out.append({**{f: getattr(r, f) for f in CatalogRowOut.model_fields if hasattr(r, f)},
                    "on_demand_usd_per_gpu_hour": r.on_demand_usd_h / r.gpu_count})
    return out


@router.get("/quote", response_model=QuoteOut)
def quote(request: Request, cloud: str, region: str, instance_type: str, gpu_model: str,
          pricing: str = Query("on_demand", pattern="^(on_demand|spot)$"),
          p: Principal = Depends(principal)) -> dict:
    """What one GPU-hour costs on this instance: the lookup the stream worker meters with."""
    try:
        q = _catalog(request).gpu_hour_price(cloud, region, instance_type, gpu_model, pricing)
    except UnknownGPUModel as exc:
        raise HTTPException(404, str(exc)) from exc
    return {f: getattr(q, f) for f in QuoteOut.model_fields}


@router.get("/gpus", response_model=list[GPUSpecOut])
def gpus(p: Principal = Depends(principal)) -> list[dict]:
    return [{f: getattr(s, f) for f in GPUSpecOut.model_fields}
            for s in sorted(default_catalog().specs.values(), key=lambda s: s.gpu_model)]


@router.get("/overrides", response_model=list[OverrideOut])
def overrides(request: Request, p: Principal = Depends(principal)) -> list[dict]:
    with session_scope(request.app.state.settings) as session:
        return [_override_out(o) for o in list_overrides(session)]


@router.put("/overrides", response_model=OverrideOut)
async def put_override(body: OverrideIn, request: Request, p: Principal = Depends(principal)) -> dict:
    """Create or replace the price of (cloud, region, instance_type)."""
    _admin(p)

    def write() -> dict:
        with session_scope(request.app.state.settings) as session:
            return _override_out(set_override(session, OverrideRequest(**body.model_dump())))

    try:
        out = await run_in_threadpool(write)
    except PricingError as exc:  # UnknownGPUModel included
        raise HTTPException(422, str(exc)) from exc
    await _changed(request)
    return out


@router.delete("/overrides/{cloud}/{region}/{instance_type}", status_code=204)
async def remove_override(cloud: str, region: str, instance_type: str, request: Request,
                          p: Principal = Depends(principal)) -> None:
    _admin(p)

    def delete() -> bool:
        with session_scope(request.app.state.settings) as session:
            return delete_override(session, cloud, region, instance_type)

    if not await run_in_threadpool(delete):
        raise HTTPException(404, f"no override for {cloud}/{region}/{instance_type}")
    await _changed(request)
