"""Billed against metered cost, with the gap explained: pure functions over what the API stores
(metered spend per key and slot, from the stream's windows or their rollups; billing line items,
from `cost.billed`), called by api/routes/reconciliation.py.

The stream meters per (tenant, service, region, GPU model), so that is the unit bills are matched
on: a line item names the same four (the importer maps tags to tenant and service), and is spread
over the slots (hours, or days where only daily rollups are left) its charge period overlaps.
Every figure below is a signed contribution to `billed - metered`, and they sum to it:

- `commitment_discount_usd`, `spot_discount_usd`, `negotiated_discount_usd`: `-(list - effective)`
  of usage lines priced reserved, spot and on demand (a line without a list cost shows none).
- `credits_usd`: credit lines; `tax_and_adjustments_usd`: tax, adjustment and purchase lines. These
  charges bill no GPU time and match no metered slot: each is spread over the UTC days its charge
  period covers, by time (a credit for one day lands whole on that day), on its own key (the GPU
  model of the instance it names, else "none"; an account-wide charge with no tenant is on the
  tenant its account maps to, else "unassigned").
- `usage_without_bill_usd`: `-metered` of slots no usage line covers, before the newest billed
  period end (`billed_through`); `awaiting_bill_usd`: the same after it (the bill is not in yet).
- `bill_without_usage_usd`: `+list` of usage lines whose slots have no metered usage at all.
- `partial_hours_usd`: `+list` of the billed GPU time that usage did not cover, slot by slot:
  `list * (1 - min(1, metered GPU-seconds / billed GPU-seconds))` (an instance billed for the
  hour that ran part of it).
- `unexplained_usd`: what is left on covered time, `list - partial - metered`: a catalog price
  that differs from the list price, or metering that differs from the bill."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

DAY = 86400
HOUR = 3600
DISCOUNTS = {"reserved": "commitment_discount_usd", "spot": "spot_discount_usd", "on_demand": "negotiated_discount_usd"}
COMPONENTS = ("commitment_discount_usd", "spot_discount_usd", "negotiated_discount_usd", "credits_usd",
              "tax_and_adjustments_usd", "usage_without_bill_usd", "awaiting_bill_usd", "bill_without_usage_usd",
              "partial_hours_usd", "unexplained_usd")

Group = tuple[str, str, str, str]  # (tenant, service, region, gpu_model): what the stream meters by


@dataclass(frozen=True, slots=True)
class MeteredSlot:
    tenant: str
    service: str
    region: str
    gpu_model: str
    slot_start: int
    slot_s: int
    spend_usd: float
    gpu_seconds: float


@dataclass(frozen=True, slots=True)
class Line:
    """A stored billing line item, as the reconciliation reads it."""

    tenant: str
    service: str
    region: str
    gpu_model: str
    cloud: str
    instance_id: str
    instance_type: str
    period_start: int
    period_end: int
    gpu_count: int
    charge_category: str
    pricing: str
    cost_usd: float                  # effective cost: what counts as billed
    list_cost_usd: float | None = None
    billed_cost_usd: float | None = None

    @property
    def list_usd(self) -> float:
        return self.list_cost_usd if self.list_cost_usd is not None else self.cost_usd

    @property
    def invoiced_usd(self) -> float:
        return self.billed_cost_usd if self.billed_cost_usd is not None else self.cost_usd


@dataclass
class InstanceBill:
    cloud: str
    instance_id: str
    instance_type: str
    pricing: str
    lines: int = 0
    billed_gpu_hours: float = 0.0
    list_usd: float = 0.0
    effective_usd: float = 0.0
    invoiced_usd: float = 0.0


@dataclass
class Explained:
    """One tenant, day and metered key (or the tenant's whole day, summed)."""

    metered_usd: float = 0.0
    metered_gpu_hours: float = 0.0
    billed_usd: float = 0.0       # every line's effective cost, credits and tax included
    list_usd: float = 0.0         # usage lines at list price
    effective_usd: float = 0.0    # usage lines at effective cost
    invoiced_usd: float = 0.0     # what the invoice says (BilledCost), every line
    parts: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COMPONENTS, 0.0))
    instances: dict[tuple[str, str], InstanceBill] = field(default_factory=dict)

    def add(self, other: Explained) -> None:
        for name in ("metered_usd", "metered_gpu_hours", "billed_usd", "list_usd", "effective_usd", "invoiced_usd"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for k, v in other.parts.items():
            self.parts[k] += v

    @property
    def difference_usd(self) -> float:
        return self.billed_usd - self.metered_usd


def _portions(line: Line, slot_s: int) -> Iterable[tuple[int, float, float]]:
    """(slot start, share of the line's cost, seconds) for each slot its charge period overlaps."""
    span = line.period_end - line.period_start
    s = math.floor(line.period_start / slot_s) * slot_s
    while s < line.period_end:
        seconds = min(line.period_end, s + slot_s) - max(line.period_start, s)
        yield s, seconds / span, seconds
        s += slot_s


def explain(slots: Iterable[MeteredSlot], lines: Iterable[Line], billed_through: float | None,
            slot_s_for_day=lambda day_start: HOUR) -> dict[tuple[Group, int], Explained]:
    """(metered key, day start) -> the reconciliation of that key's day. A line is spread over the
    slots of the size its start day is metered in (`slot_s_for_day`), each portion to its slot's day."""
    metered: dict[tuple[Group, int], list[float]] = {}
    size: dict[int, int] = {}
    for m in slots:
        cell = metered.setdefault(((m.tenant, m.service, m.region, m.gpu_model), m.slot_start), [0.0, 0.0])
        cell[0] += m.spend_usd
        cell[1] += m.gpu_seconds
        size[m.slot_start] = m.slot_s
    out: dict[tuple[Group, int], Explained] = defaultdict(Explained)
    # Usage line portions per (key, slot): (line index, share, seconds); a line is matched when any
    # of its slots has metered usage.
    by_slot: dict[tuple[Group, int], list[tuple[int, float, float]]] = defaultdict(list)
    usage_lines: list[Line] = []
    matched: list[bool] = []
    for line in lines:
        group = (line.tenant, line.service, line.region, line.gpu_model)
        usage = line.charge_category == "usage"
        # A charge (credit, tax, ...) matches no metered slot: spread over days, so that one for a
        # day lands on it whole (a share of exactly 1).
        slot_s = slot_s_for_day(line.period_start - line.period_start % DAY) if usage else DAY
        if usage:
            index = len(usage_lines)
            usage_lines.append(line)
            matched.append(False)
        for s, share, seconds in _portions(line, slot_s):
            e = out[(group, s - s % DAY)]
            e.billed_usd += line.cost_usd * share
            e.invoiced_usd += line.invoiced_usd * share
            if not usage:
                part = "credits_usd" if line.charge_category == "credit" else "tax_and_adjustments_usd"
                e.parts[part] += line.cost_usd * share
                continue
            e.list_usd += line.list_usd * share
            e.effective_usd += line.cost_usd * share
            e.parts[DISCOUNTS.get(line.pricing, "negotiated_discount_usd")] -= (line.list_usd - line.cost_usd) * share
            inst = e.instances.get((line.cloud, line.instance_id))
            if inst is None:
                inst = e.instances[(line.cloud, line.instance_id)] = InstanceBill(
                    line.cloud, line.instance_id, line.instance_type, line.pricing)
            inst.lines += 1 if s == math.floor(line.period_start / slot_s) * slot_s else 0
            inst.billed_gpu_hours += line.gpu_count * seconds / HOUR
            inst.list_usd += line.list_usd * share
            inst.effective_usd += line.cost_usd * share
            inst.invoiced_usd += line.invoiced_usd * share
            by_slot[(group, s)].append((index, share, seconds))
            m = metered.get((group, s))
            if m is not None and (m[0] > 0 or m[1] > 0):
                matched[index] = True
    for (group, s), (spend, gpu_s) in metered.items():
        e = out[(group, s - s % DAY)]
        e.metered_usd += spend
        e.metered_gpu_hours += gpu_s / HOUR
        if (group, s) not in by_slot and (spend or gpu_s):
            waiting = billed_through is None or s >= billed_through
            e.parts["awaiting_bill_usd" if waiting else "usage_without_bill_usd"] -= spend
    for (group, s), portions in by_slot.items():
        e = out[(group, s - s % DAY)]
        spend, gpu_s = metered.get((group, s), (0.0, 0.0))
        list_matched = billed_gpu_s = 0.0
        for index, share, seconds in portions:
            line = usage_lines[index]
            if not matched[index]:
                e.parts["bill_without_usage_usd"] += line.list_usd * share
            else:
                list_matched += line.list_usd * share
                billed_gpu_s += line.gpu_count * seconds
        if not list_matched and not spend:
            continue
        covered = min(1.0, gpu_s / billed_gpu_s) if billed_gpu_s else 1.0
        partial = list_matched * (1.0 - covered)
        e.parts["partial_hours_usd"] += partial
        e.parts["unexplained_usd"] += list_matched - partial - spend
    return dict(out)


def by_tenant_day(explained: dict[tuple[Group, int], Explained]) -> dict[tuple[str, int], Explained]:
    total: dict[tuple[str, int], Explained] = defaultdict(Explained)
    for (group, day), e in explained.items():
        total[(group[0], day)].add(e)
    return dict(total)
