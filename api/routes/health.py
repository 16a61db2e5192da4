"""Liveness and the pipeline's counters."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from api.auth import Principal, principal

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(request: Request) -> dict:
    hub = request.app.state.hub
    return {"status": "ok", "aggregates_received": hub.records_in, "clients": len(hub.clients)}


@router.get("/api/stats")
def stats(request: Request, p: Principal = Depends(principal)) -> dict:
    hub = request.app.state.hub
    out = {"aggregates_received": hub.records_in, "keys_live": len(hub.latest), "clients": len(hub.clients),
           "invalid_records": hub.invalid_records}
    if p.is_admin:
        out["deadletters_by_reason"] = dict(hub.deadletters)
        out["deadletters_total"] = sum(hub.deadletters.values())
        out["ws_dropped"] = sum(c.dropped + c.overflow for c in hub.clients)
    return out
