"""POST /api/recommendations: which instance serves a workload cheapest within its SLO, ranked with
a reason per rank (optimizer.recommend). Measured runs come from the request, from the optimizer's
stored benchmark runs and from optimizer/data/. Each answer is stored (table `recommendations`)."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import Path, APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import select

from api.auth import Principal, principal
from core.db import session_scope
from core.pricing.effective import effective_catalog
from optimizer.recommend import (
    Measurement,
    RecommendError,
    RequestClass,
    Workload,
    recommend,
)
from optimizer.recommend_data import load_measurements
from core.tables.recommendations import RecommendationRecord

router = APIRouter(prefix="/api", tags=["recommendations"])


class RequestClassIn(BaseModel):
    prompt_tokens: int = Field(ge=1, le=10_000_000)
    output_tokens: int = Field(ge=1, le=10_000_000)
    share: float = Field(gt=0, le=1e6)


class MeasurementIn(BaseModel):
    gpu_model: str = Field(min_length=1, max_length=64)
    precision: str = Field("bf16", pattern="^(fp32|bf16|fp16|fp8|int8|int4)$")
    params: float = Field(gt=0, le=1e13)
    batch_size: int = Field(ge=1, le=1_000_000)
    prompt_tokens: int = Field(ge=1, le=10_000_000)
    output_tokens: int = Field(ge=1, le=10_000_000)
    tokens_per_s: float = Field(gt=0, le=1e12)
    gpus: int = Field(1, ge=1, le=1024)
    model_bytes: float | None = Field(None, gt=0, le=1e14)
    kv_bytes_per_token: float | None = Field(None, gt=0, le=1e9)
    ttft_ms: float | None = Field(None, gt=0, le=1e9)
    tpot_ms: float | None = Field(None, gt=0, le=1e9)
    decode_tokens_per_s: float | None = Field(None, gt=0, le=1e12)
    label: str = Field("", max_length=200)


class RecommendationIn(BaseModel):
    params: float | None = Field(None, gt=0, le=1e13, description="model parameters (or give benchmark_run)")
    precision: str = Field("bf16", pattern="^(fp32|bf16|fp16|fp8|int8|int4)$")
    prompt_tokens: int = Field(512, ge=1, le=10_000_000)
    output_tokens: int = Field(256, ge=1, le=10_000_000)
    tokens_per_s: float | None = Field(None, gt=0, le=1e12, description="demand in output tokens/s")
    requests_per_s: float | None = Field(None, gt=0, le=1e9)
    kv_bytes_per_token: float | None = Field(None, gt=0, le=1e9)
    n_layers: int | None = Field(None, ge=1, le=10_000)
    n_kv_heads: int | None = Field(None, ge=1, le=10_000)
    head_dim: int | None = Field(None, ge=1, le=65_536)
    kv_precision: str | None = Field(None, pattern="^(fp32|bf16|fp16|fp8|int8)$")
    slo_tpot_ms: float | None = Field(None, gt=0, le=1e9)
    slo_ttft_ms: float | None = Field(None, gt=0, le=1e9)
    slo_latency_ms: float | None = Field(None, gt=0, le=1e12)
    spot_allowed: bool = False
    max_batch_size: int | None = Field(None, ge=1, le=1_000_000)
    clouds: list[str] | None = Field(None, max_length=50)
    regions: list[str] | None = Field(None, max_length=200)
    gpu_models: list[str] | None = Field(None, max_length=50)
    request_mix: list[RequestClassIn] | None = Field(None, max_length=16)
    benchmark_run: MeasurementIn | None = Field(
        None, description="a measured run: the workload is the model and request shape it served")
    measurements: list[MeasurementIn] = Field(default_factory=list, max_length=1000)
    use_stored_measurements: bool = True
    cheapest_region_only: bool = True
    limit: int = Field(10, ge=1, le=500)
    service: str | None = Field(None, max_length=200)

    @model_validator(mode="after")
    def _needs_model_and_demand(self):
        if self.params is None and self.benchmark_run is None:
            raise ValueError("give params or benchmark_run")
        if self.tokens_per_s is None and self.requests_per_s is None:
            raise ValueError("give the demand: tokens_per_s or requests_per_s")
        return self


class OptionOut(BaseModel):
    rank: int
    cloud: str
    region: str
    instance_type: str
    gpu_model: str
    gpu_count: int
    pricing: str
    usd_per_gpu_hour: float
    price_fallback: bool
    instances: int
    replicas: int
    gpus_per_replica: int
    batch_size: int
    max_batch_fit: int
    tokens_per_s_per_replica: float
    fleet_tokens_per_s: float
    tpot_ms: float
    ttft_ms: float
    latency_ms: float
    memory_per_gpu_gb: float
    throughput_source: str
    projected_from: str
    usd_per_hour: float
    usd_per_million_tokens: float
    usd_per_month: float
    reason: str


class RejectedOut(BaseModel):
    cloud: str
    region: str
    instance_type: str
    gpu_model: str
    gpu_count: int
    pricing: str
    fits: bool
    reason: str


class MixOut(BaseModel):
    assignments: list[dict]
    usd_per_hour: float
    best_single_usd_per_hour: float
    best_single: str
    savings_pct: float
    reason: str


class RecommendationOut(BaseModel):
    id: int | None
    created_at: str | None
    workload: dict
    measurements_used: int
    ranked: list[OptionOut]
    rejected: list[RejectedOut]
    mix: MixOut | None


def _workload(body: RecommendationIn) -> tuple[Workload, list[Measurement]]:
    extra = [Measurement(**m.model_dump()) for m in body.measurements]
    fields = body.model_dump(exclude={"benchmark_run", "measurements", "use_stored_measurements",
                                      "cheapest_region_only", "limit", "service", "request_mix",
                                      "clouds", "regions", "gpu_models"})
    fields["request_mix"] = tuple(RequestClass(**c.model_dump()) for c in body.request_mix) \
        if body.request_mix else None
    for name in ("clouds", "regions", "gpu_models"):
        value = getattr(body, name)
        fields[name] = tuple(value) if value else None
    if body.benchmark_run is not None:
        run = Measurement(**body.benchmark_run.model_dump())
        extra.append(run)
        shaped = {k: v for k, v in fields.items() if v is not None}
        for k in ("params", "precision", "prompt_tokens", "output_tokens", "kv_bytes_per_token"):
            if k in body.model_fields_set:
                continue
            shaped.pop(k, None)
        return Workload.from_measurement(run, **shaped), extra
    return Workload(**fields), extra


def _result_json(result, used: int) -> dict:
    return {
        "workload": {k: v for k, v in asdict(result.workload).items()},
        "measurements_used": used,
        "ranked": [{f: getattr(o, f) for f in OptionOut.model_fields} for o in result.ranked],
        "rejected": [{f: getattr(o, f) for f in RejectedOut.model_fields} for o in result.rejected],
        "mix": asdict(result.mix) if result.mix else None,
    }


@router.post("/recommendations", response_model=RecommendationOut)
def create_recommendation(body: RecommendationIn, request: Request,
                          p: Principal = Depends(principal)) -> dict:
    settings = request.app.state.settings
    try:
        workload, measurements = _workload(body)
    except (TypeError, RecommendError) as exc:
        raise HTTPException(422, str(exc)) from exc
    with session_scope(settings) as session:
        if body.use_stored_measurements:
            measurements += load_measurements(session=session).measurements
        try:
            result = recommend(workload, measurements, catalog=effective_catalog(settings),
                               limit=body.limit, cheapest_region_only=body.cheapest_region_only)
        except RecommendError as exc:
            raise HTTPException(422, str(exc)) from exc
        payload = _result_json(result, len(measurements))
        best = result.best
        record = RecommendationRecord(
            tenant=p.tenant, service=body.service, workload=payload["workload"],
            best_instance=best.name if best else None,
            best_usd_per_million_tokens=best.usd_per_million_tokens if best else None,
            best_usd_per_hour=best.usd_per_hour if best else None, result=payload)
        session.add(record)
        session.flush()
        payload.update(id=record.id, created_at=record.created_at.isoformat())
    return payload


@router.get("/recommendations", response_model=list[dict])
def list_recommendations(request: Request, limit: int = Query(20, ge=1, le=500),
                         p: Principal = Depends(principal)) -> list[dict]:
    with session_scope(request.app.state.settings) as session:
        q = select(RecommendationRecord).order_by(RecommendationRecord.id.desc()).limit(limit)
        if not p.is_admin:
            q = q.where(RecommendationRecord.tenant == p.tenant)
        return [{"id": r.id, "created_at": r.created_at.isoformat(), "tenant": r.tenant,
                 "service": r.service, "best_instance": r.best_instance,
                 "best_usd_per_million_tokens": r.best_usd_per_million_tokens,
                 "best_usd_per_hour": r.best_usd_per_hour} for r in session.scalars(q)]


class LiveServiceOut(BaseModel):
    tenant: str
    service: str
    gpu_models: list[str]
    regions: list[str]
    model_versions: list[str] = Field(default_factory=list, description='the model versions it served ("": none given)')
    period_s: int
    spend_usd: float
    tokens: int
    spend_rate_usd_h: float
    current_usd_per_month: float
    gpus_in_use: float
    util_avg: float
    demand_tokens_per_s: float
    current_usd_per_million_tokens: float | None
    current_basis: str
    hardware: str | None = Field(None, description="what the service really ran on, where it differs "
                                                   "from the GPU model it is priced as (the optimizer on a CPU)")
    model: dict | None
    status: str = Field(description="ok | model_unknown | no_tokens | no_fit | error")
    message: str
    best_alternative: str | None
    best_usd_per_hour: float | None
    best_usd_per_month: float | None
    best_usd_per_million_tokens: float | None
    best_basis: str | None
    best_reason: str | None
    savings_usd_per_month: float | None


@router.get("/recommendations/live", response_model=list[LiveServiceOut])
def live(request: Request, hours: float = Query(1.0, gt=0, le=24 * 31),
         tenant: str | None = None, service: str | None = None, region: str | None = None,
         gpu_model: str | None = None, model_version: str | None = Query(None, max_length=200),
         p: Principal = Depends(principal)) -> list[dict]:
    """Every live service, recommended automatically (optimizer.recommend_live): its demand and
    fleet from the stored aggregates of the last `hours`, its model from ingest/services.json or a
    per-service setting (PUT /api/services/model); the same demand priced on the current and the
    recommended fleet, each figure with its basis."""
    from optimizer.recommend_live import live_services

    return live_services(request.app.state.settings, hours, p.scope_tenant(tenant), service, region, gpu_model,
                         model_version)


@router.get("/recommendations/{rec_id}", response_model=RecommendationOut)
def get_recommendation(request: Request, rec_id: int = Path(ge=1, le=2**31 - 1), p: Principal = Depends(principal)) -> dict:
    with session_scope(request.app.state.settings) as session:
        r = session.get(RecommendationRecord, rec_id)
        if r is None or not p.allows(r.tenant or ""):
            raise HTTPException(404, f"no recommendation {rec_id}")
        return {**r.result, "id": r.id, "created_at": r.created_at.isoformat()}
