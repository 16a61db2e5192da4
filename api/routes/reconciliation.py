"""Billed against metered cost per tenant and day (DESIGN.md's cost model), with the gap explained
(api/reconcile.py says how), and per metered key with the instances billed under it: metered is
what the stream worker priced from usage, billed is what the cloud's line items say (effective
cost, commitments amortised), which arrive late.

Metered spend comes from the 1-minute windows while they are kept (`history_retention_s`), then
from the hourly rollups, then from the daily ones: a day is read whole from one of them."""

from __future__ import annotations

import datetime as dt
import time

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import func, literal_column, select

from api.auth import Principal, principal
from api.reconcile import COMPONENTS, DAY, HOUR, Line, MeteredSlot, by_tenant_day, explain
from core.db import session_scope
from core.tables.history import AggregateRow, BilledLineItem

router = APIRouter(prefix="/api", tags=["reconciliation"])


class Breakdown(BaseModel):
    """Signed contributions to `billed - metered`; they sum to it."""

    commitment_discount_usd: float = Field(description="-(list - effective) of usage lines under a commitment")
    spot_discount_usd: float = Field(description="-(list - effective) of spot usage lines")
    negotiated_discount_usd: float = Field(description="-(list - effective) of on-demand usage lines")
    credits_usd: float = Field(description="credit lines (negative), spread over the days they cover")
    tax_and_adjustments_usd: float = Field(description="tax and adjustment lines (and purchase lines, where a "
                                                       "producer sends them), spread over the days they cover")
    usage_without_bill_usd: float = Field(description="-metered of hours no usage line covers, before billed_through")
    awaiting_bill_usd: float = Field(description="-metered of hours after billed_through: the bill is not in yet")
    bill_without_usage_usd: float = Field(description="+list of usage lines with no metered usage in their period")
    partial_hours_usd: float = Field(description="+list of billed GPU time that usage did not cover")
    unexplained_usd: float = Field(description="the rest, on covered time: list price against catalog price")


class DayReconciliation(BaseModel):
    tenant: str
    day: dt.date
    metered_usd: float
    billed_usd: float = Field(description="effective cost of every stored line: GPU usage lines (commitments "
                                          "amortised) plus credit, tax and adjustment lines")
    difference_usd: float  # billed - metered
    billed_over_metered: float | None
    list_usd: float = Field(description="the usage lines at list price (what metered is comparable to)")
    effective_usd: float = Field(description="the usage lines at effective cost")
    invoiced_usd: float = Field(description="what the invoice says (BilledCost), every line")
    list_over_metered: float | None
    metered_from: str = Field(description="1-minute windows, hourly rollups or daily rollups")
    breakdown: Breakdown


class InstanceBill(BaseModel):
    cloud: str
    instance_id: str
    instance_type: str
    pricing: str
    lines: int
    billed_gpu_hours: float
    list_usd: float
    effective_usd: float
    invoiced_usd: float


class KeyReconciliation(BaseModel):
    """One metered key's day: the stream meters per (tenant, service, region, GPU model), so the
    instances billed under one key are reconciled together and listed in `instances`."""

    tenant: str
    service: str
    region: str
    gpu_model: str
    day: dt.date
    metered_usd: float
    metered_gpu_hours: float
    billed_usd: float
    list_usd: float
    effective_usd: float
    invoiced_usd: float
    difference_usd: float
    breakdown: Breakdown
    instances: list[InstanceBill]


class Reconciled:
    """What one request reads: metered slots and line items of [first_day, end), explained."""

    def __init__(self, settings, first_day: int, end: int, tenant: str | None, now: float | None = None):
        size = settings.window_size_s
        if DAY % size:
            raise HTTPException(409, f"window size {size}s does not tile a day; reconciliation needs one that does")
        now = time.time() if now is None else now
        # The first whole day each resolution still holds.
        self.windows_from = -(-int(now - settings.history_retention_s) // DAY) * DAY
        self.hourly_from = -(-int(now - settings.history_hourly_retention_s) // DAY) * DAY
        with session_scope(settings) as s:
            slots = self._metered(s, settings, first_day, end, tenant)
            lines = self._lines(s, first_day, end, tenant)
            through = s.execute(select(func.max(BilledLineItem.period_end))
                                .where(BilledLineItem.charge_category == "usage")).scalar()
        self.billed_through = float(through) if through is not None else None
        self.by_key = {k: v for k, v in explain(slots, lines, self.billed_through, self.slot_s).items()
                       if first_day <= k[1] < end}
        self.by_day = by_tenant_day(self.by_key)

    def slot_s(self, day_start: int) -> int:
        return HOUR if day_start >= self.hourly_from else DAY

    def source(self, day_start: int) -> str:
        if day_start >= self.windows_from:
            return "1-minute windows"
        return "hourly rollups" if day_start >= self.hourly_from else "daily rollups"

    def _metered(self, s, settings, first_day: int, end: int, tenant: str | None) -> list[MeteredSlot]:
        A = AggregateRow
        size = settings.window_size_s
        parts = [(max(first_day, self.windows_from), end, size, HOUR),
                 (max(first_day, self.hourly_from), min(end, self.windows_from), HOUR, HOUR),
                 (first_day, min(end, self.hourly_from), DAY, DAY)]
        out = []
        for lo, hi, window_s, slot_s in parts:
            if lo >= hi:
                continue
            # A literal, not a bound parameter: PostgreSQL must see the same expression in GROUP BY.
            slot = (A.window_start - A.window_start % literal_column(str(slot_s))).label("slot")
            q = (select(A.tenant, A.service, A.region, A.gpu_model, slot, func.sum(A.spend_usd), func.sum(A.gpu_seconds))
                 # Windows that start on a multiple of their size tile the timeline: each event once.
                 .where(A.window_s == window_s, A.window_start % window_s == 0,
                        A.window_start >= lo, A.window_start < hi)
                 .group_by(A.tenant, A.service, A.region, A.gpu_model, slot))
            if tenant is not None:
                q = q.where(A.tenant == tenant)
            out += [MeteredSlot(t, sv, r, g, int(b), slot_s, float(usd or 0.0), float(gpu_s or 0.0))
                    for t, sv, r, g, b, usd, gpu_s in s.execute(q)]
        return out

    @staticmethod
    def _lines(s, first_day: int, end: int, tenant: str | None) -> list[Line]:
        B = BilledLineItem
        q = select(B.tenant, B.service, B.region, B.gpu_model, B.cloud, B.instance_id, B.instance_type,
                   B.period_start, B.period_end, B.gpu_count, B.charge_category, B.pricing, B.cost_usd,
                   B.list_cost_usd, B.billed_cost_usd).where(B.period_end > first_day, B.period_start < end)
        if tenant is not None:
            q = q.where(B.tenant == tenant)
        return [Line(*row) for row in s.execute(q)]


def _date(day_start: int) -> dt.date:
    return dt.datetime.fromtimestamp(day_start, dt.timezone.utc).date()


def _parts(e) -> dict:
    return {k: e.parts[k] for k in COMPONENTS}


@router.get("/reconciliation", response_model=list[DayReconciliation])
def reconciliation(
    request: Request,
    tenant: str | None = None,
    days: int = Query(7, ge=1, le=366, description="the last N UTC days, today included"),
    p: Principal = Depends(principal),
) -> list[dict]:
    scoped = p.scope_tenant(tenant)
    first_day = (int(time.time()) // DAY - days + 1) * DAY
    r = Reconciled(request.app.state.settings, first_day, first_day + days * DAY, scoped)
    out = []
    for (t, d), e in sorted(r.by_day.items()):
        out.append({"tenant": t, "day": _date(d), "metered_usd": e.metered_usd, "billed_usd": e.billed_usd,
                    "difference_usd": e.difference_usd,
                    "billed_over_metered": e.billed_usd / e.metered_usd if e.metered_usd else None,
                    "list_usd": e.list_usd, "effective_usd": e.effective_usd, "invoiced_usd": e.invoiced_usd,
                    "list_over_metered": e.list_usd / e.metered_usd if e.metered_usd else None,
                    "metered_from": r.source(d), "breakdown": _parts(e)})
    return out


@router.get("/reconciliation/instances", response_model=list[KeyReconciliation])
def reconciliation_instances(
    request: Request,
    day: dt.date = Query(..., description="a UTC day, YYYY-MM-DD"),
    tenant: str | None = None,
    p: Principal = Depends(principal),
) -> list[dict]:
    scoped = p.scope_tenant(tenant)
    day_start = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp())
    if day_start < 0:
        raise HTTPException(400, f"day {day.isoformat()} is before 1970-01-01: times are stored as Unix seconds")
    if day_start > time.time():
        raise HTTPException(400, f"day {day.isoformat()} is in the future (UTC): nothing is metered or billed yet")
    r = Reconciled(request.app.state.settings, day_start, day_start + DAY, scoped)
    out = []
    for (group, d), e in sorted(r.by_key.items()):
        t, service, region, gpu_model = group
        instances = sorted(e.instances.values(), key=lambda i: (i.cloud, i.instance_id))
        out.append({"tenant": t, "service": service, "region": region, "gpu_model": gpu_model, "day": _date(d),
                    "metered_usd": e.metered_usd, "metered_gpu_hours": e.metered_gpu_hours,
                    "billed_usd": e.billed_usd, "list_usd": e.list_usd, "effective_usd": e.effective_usd,
                    "invoiced_usd": e.invoiced_usd, "difference_usd": e.difference_usd,
                    "breakdown": _parts(e), "instances": [vars(i) for i in instances]})
    return out
