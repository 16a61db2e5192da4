"""REST history of aggregates (persisted by the hub) and the recent alerts, always limited to the
key's tenant, served in their contract models (contracts/aggregates.py).

`window_s` picks the resolution: the stream's window size (default, 60 s: kept for
`history_retention_s`), 3600 (hourly rollups) or 86400 (daily rollups), each the exact sum of the
aligned 1-minute windows it covers (core/rollups.py). Rows come oldest first; `limit` keeps the
newest."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from sqlalchemy import Text, cast, func, literal, literal_column, select, text

from api.auth import Principal, principal
from contracts.aggregates import AlertEvent, WindowAggregate
from core.tables.history import AggregateRow
from core.db import get_engine
from core.rollups import ROLLUP_SIZES_S

router = APIRouter(prefix="/api", tags=["history"])
INT32_MAX = 2**31 - 1


@router.get("/history", response_model=list[WindowAggregate])
def history(
    request: Request,
    tenant: str | None = None,
    service: str | None = None,
    region: str | None = None,
    gpu_model: str | None = None,
    model_version: str | None = Query(None, max_length=200,
                                      description='only this model version ("": events that carry none)'),
    # Upper bounds: the columns are 32-bit integers; a larger value must be a 422, not a driver error.
    window_s: int | None = Query(None, gt=0, le=INT32_MAX,
                                 description="resolution: the window size (default), 3600 (hourly) or 86400 (daily)"),
    since: int | None = Query(None, ge=0, le=INT32_MAX, description="window_start >= since (epoch s)"),
    until: int | None = Query(None, ge=0, le=INT32_MAX, description="window_start < until (epoch s)"),
    limit: int = Query(5000, gt=0, le=50000),
    p: Principal = Depends(principal),
) -> Response:
    if since is not None and until is not None and until <= since:
        raise HTTPException(422, "until must be greater than since")
    settings = request.app.state.settings
    sizes = (settings.window_size_s, *ROLLUP_SIZES_S)
    if window_s is not None and window_s not in sizes:
        raise HTTPException(422, f"window_s must be one of {', '.join(map(str, sizes))}")
    A = AggregateRow
    # Plain columns, not ORM objects and response-model validation: a tenant's month of daily
    # rollups at 1,000 keys is 30,000 rows (bench/history.py).
    q = select(*(getattr(A, f) for f in A.FIELDS))
    scoped = p.scope_tenant(tenant)
    for col, val in (("tenant", scoped), ("service", service), ("region", region), ("gpu_model", gpu_model),
                     ("model_version", model_version)):
        if val is not None:
            q = q.where(getattr(A, col) == val)
    q = q.where(A.window_s == (window_s or settings.window_size_s))
    if since is not None:
        q = q.where(A.window_start >= since)
    if until is not None:
        q = q.where(A.window_start < until)
    # Newest `limit` rows, returned oldest first; ties in key order, so the order is stable.
    q = q.order_by(A.window_start.desc(), A.tenant, A.service, A.region, A.gpu_model, A.model_version).limit(limit)
    engine = get_engine(settings)
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            # PostgreSQL writes the JSON itself (json_agg): Python only passes the bytes on.
            from sqlalchemy.dialects.postgresql import aggregate_order_by

            t = q.add_columns(literal("usage").label("kind")).subquery("t")
            body = conn.execute(select(cast(func.coalesce(
                func.json_agg(aggregate_order_by(literal_column("t"), t.c.window_start, t.c.tenant, t.c.service,
                                                 t.c.region, t.c.gpu_model, t.c.model_version)),
                text("'[]'::json")), Text)
            ).select_from(t)).scalar_one()  # as text: psycopg would parse json into Python objects
            return Response(body, media_type="application/json")
        rows = [{"kind": "usage", **m} for m in conn.execute(q).mappings()]
    rows.sort(key=lambda r: (r["window_start"], r["tenant"], r["service"], r["region"], r["gpu_model"],
                             r["model_version"]))
    return Response(json.dumps(rows, separators=(",", ":")), media_type="application/json")


@router.get("/latest", response_model=list[WindowAggregate])
def latest(request: Request, tenant: str | None = None, service: str | None = None, region: str | None = None,
           gpu_model: str | None = None,
           model_version: str | None = Query(None, max_length=200,
                                             description='only this model version ("": events that carry none)'),
           p: Principal = Depends(principal)) -> list[dict]:
    """The newest window of every live key (what a WebSocket snapshot holds), filtered like
    /api/history."""
    hub = request.app.state.hub
    want = {k: v for k, v in (("tenant", p.scope_tenant(tenant)), ("service", service), ("region", region),
                              ("gpu_model", gpu_model), ("model_version", model_version)) if v is not None}
    return [r for r in hub.latest.values() if all(r.get(k) == v for k, v in want.items())]


@router.get("/alerts", response_model=list[AlertEvent])
def alerts(request: Request, tenant: str | None = None, p: Principal = Depends(principal)) -> list[dict]:
    """The latest transition of each recent alert fingerprint (what a WebSocket alerts snapshot
    holds), oldest first."""
    hub = request.app.state.hub
    scoped = p.scope_tenant(tenant)
    return [a for a in hub.recent_alerts.values() if scoped is None or a.get("tenant") == scoped]
