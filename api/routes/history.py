"""REST history of aggregates (persisted by the hub) and the recent alerts, always limited to the
key's tenant; both served in their contract models (contracts/aggregates.py)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from sqlalchemy import select

from api.auth import Principal, principal
from contracts.aggregates import AlertEvent, WindowAggregate
from core.tables.history import AggregateRow
from core.db import session_scope

router = APIRouter(prefix="/api", tags=["history"])
INT32_MAX = 2**31 - 1


@router.get("/history", response_model=list[WindowAggregate])
def history(
    request: Request,
    tenant: str | None = None,
    service: str | None = None,
    region: str | None = None,
    gpu_model: str | None = None,
    # Upper bounds: the columns are 32-bit integers; a larger value must be a 422, not a driver error.
    window_s: int | None = Query(None, gt=0, le=INT32_MAX),
    since: int | None = Query(None, ge=0, le=INT32_MAX, description="window_start >= since (epoch s)"),
    until: int | None = Query(None, ge=0, le=INT32_MAX, description="window_start < until (epoch s)"),
    limit: int = Query(5000, gt=0, le=50000),
    p: Principal = Depends(principal),
) -> list[dict]:
    if since is not None and until is not None and until <= since:
        raise HTTPException(422, "until must be greater than since")
    settings = request.app.state.settings
    q = select(AggregateRow)
    scoped = p.scope_tenant(tenant)
    for col, val in (("tenant", scoped), ("service", service), ("region", region), ("gpu_model", gpu_model)):
        if val is not None:
            q = q.where(getattr(AggregateRow, col) == val)
    q = q.where(AggregateRow.window_s == (window_s or settings.window_size_s))
    if since is not None:
        q = q.where(AggregateRow.window_start >= since)
    if until is not None:
        q = q.where(AggregateRow.window_start < until)
    q = q.order_by(AggregateRow.window_start.desc()).limit(limit)
    with session_scope(settings) as s:
        rows = [r.to_dict() for r in s.scalars(q)]
    rows.reverse()
    return rows


@router.get("/latest", response_model=list[WindowAggregate])
def latest(request: Request, tenant: str | None = None, p: Principal = Depends(principal)) -> list[dict]:
    """The newest window of every live key (what a WebSocket snapshot holds)."""
    hub = request.app.state.hub
    scoped = p.scope_tenant(tenant)
    return [r for r in hub.latest.values() if scoped is None or r["tenant"] == scoped]


@router.get("/alerts", response_model=list[AlertEvent])
def alerts(request: Request, tenant: str | None = None, p: Principal = Depends(principal)) -> list[dict]:
    """The latest transition of each recent alert fingerprint (what a WebSocket alerts snapshot
    holds), oldest first."""
    hub = request.app.state.hub
    scoped = p.scope_tenant(tenant)
    return [a for a in hub.recent_alerts.values() if scoped is None or a.get("tenant") == scoped]
