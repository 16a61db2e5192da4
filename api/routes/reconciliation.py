"""Billed against metered cost per tenant and day (DESIGN.md's cost model): metered is what the
stream worker priced from usage, billed is what the cloud's line items say, which arrive late."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel
from sqlalchemy import func, select

from api.auth import Principal, principal
from core.tables.history import AggregateRow, BilledLineItem
from core.db import session_scope

router = APIRouter(prefix="/api", tags=["reconciliation"])
DAY = 86400


class DayReconciliation(BaseModel):
    tenant: str
    day: dt.date
    metered_usd: float
    billed_usd: float
    difference_usd: float  # billed - metered
    billed_over_metered: float | None


@router.get("/reconciliation", response_model=list[DayReconciliation])
def reconciliation(
    request: Request,
    tenant: str | None = None,
    days: int = Query(7, ge=1, le=366, description="the last N UTC days, today included"),
    p: Principal = Depends(principal),
) -> list[dict]:
    settings = request.app.state.settings
    size = settings.window_size_s
    if DAY % size:
        raise HTTPException(409, f"window size {size}s does not tile a day; reconciliation needs one that does")
    scoped = p.scope_tenant(tenant)
    first_day = (int(dt.datetime.now(dt.timezone.utc).timestamp()) // DAY - days + 1) * DAY
    # Windows that start on a multiple of their size tile the timeline: their sum is the metered
    # spend of the period, each event counted once.
    metered_q = (select(AggregateRow.tenant, (AggregateRow.window_start // DAY).label("d"), func.sum(AggregateRow.spend_usd))
                 .where(AggregateRow.window_s == size, AggregateRow.window_start % size == 0,
                        AggregateRow.window_start >= first_day)
                 .group_by(AggregateRow.tenant, "d"))
    billed_q = (select(BilledLineItem.tenant, (BilledLineItem.period_start // DAY).label("d"), func.sum(BilledLineItem.cost_usd))
                .where(BilledLineItem.period_start >= first_day)
                .group_by(BilledLineItem.tenant, "d"))
    if scoped is not None:
        metered_q = metered_q.where(AggregateRow.tenant == scoped)
        billed_q = billed_q.where(BilledLineItem.tenant == scoped)
    days_seen: dict[tuple[str, int], list[float]] = {}
    with session_scope(settings) as s:
        for t, d, v in s.execute(metered_q):
            days_seen.setdefault((t, int(d)), [0.0, 0.0])[0] = float(v)
        for t, d, v in s.execute(billed_q):
            days_seen.setdefault((t, int(d)), [0.0, 0.0])[1] = float(v)
    out = []
    for (t, d), (metered, billed) in sorted(days_seen.items()):
        out.append({"tenant": t, "day": dt.datetime.fromtimestamp(d * DAY, dt.timezone.utc).date(),
                    "metered_usd": metered, "billed_usd": billed, "difference_usd": billed - metered,
                    "billed_over_metered": billed / metered if metered else None})
    return out
