"""A realistic FOCUS 1.2 billing export for the simulator's fleet (ingest/simulator.py), so that a
first run has a bill to reconcile against what the fleet's usage meters.

Hourly usage lines per host (prorated where the span starts or ends inside an hour), at the
catalog's on-demand price as `ListCost`; spot hosts bill at their spot price (`PricingCategory`
Dynamic); an AWS savings plan covers a share of the on-demand AWS hosts (`Committed`, `BilledCost` 0, `EffectiveCost`
the discounted rate) and is billed by an hourly `Purchase` line; a `Credit` line per day (in every
export that covers part of the day: the same line, so a re-import overwrites it).
`SkuPriceDetails` names the instance type and GPU count, `Tags` the tenant and service.

`HourlyExport` is how the simulator bills as it runs (`gpucost simulate`, and so `gpucost up`):
each time an hour closes, a file with the hours closed since the last one, written to a folder
and imported through the real importer onto `gpu.billing`, as a cloud's export arrives late."""

from __future__ import annotations

import csv
import gzip
import json
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.pricing import default_catalog

COLUMNS = ["BillingAccountId", "SubAccountId", "ProviderName", "ServiceProviderName", "InvoiceIssuerName",
           "BillingCurrency", "BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd",
           "ChargeCategory", "ChargeClass", "ChargeDescription", "PricingCategory", "CommitmentDiscountId",
           "CommitmentDiscountStatus", "BilledCost", "EffectiveCost", "ListCost", "ResourceId", "RegionId",
           "ServiceName", "SkuId", "SkuPriceDetails", "Tags"]
PROVIDER = {"aws": "AWS", "gcp": "Google Cloud", "azure": "Microsoft", "lambda": "Lambda", "oci": "Oracle"}
ACCOUNT = "000000000001"


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def focus_rows(fleet, start_ts: float, end_ts: float, savings_plan_share: float = 0.25,
               savings_plan_discount: float = 0.3, credit_usd_per_day: float = 25.0, seed: int = 11) -> Iterator[dict]:
    """FOCUS rows for every host of `fleet` over [start_ts, end_ts)."""
    catalog = default_catalog()
    rng = random.Random(seed)
    # An AWS compute savings plan covers a share of the on-demand AWS hosts (at least one, if any).
    eligible = [h.host for h in fleet.hosts if h.pricing == "on_demand" and h.cloud == "aws"]
    k = min(len(eligible), max(1, round(savings_plan_share * len(eligible)))) if eligible and savings_plan_share else 0
    covered = set(rng.sample(eligible, k))
    plan_id = "arn:aws:savingsplans::000000000001:savingsplan/sim-compute-sp"
    hour = first_hour = math.floor(start_ts / 3600) * 3600
    while hour < end_ts:
        lo, hi = max(hour, start_ts), min(hour + 3600, end_ts)
        share = (hi - lo) / 3600.0
        committed_usd = 0.0
        for h in fleet.hosts:
            row = catalog.row(h.cloud, h.region, h.instance_type)
            list_usd = (row.on_demand_usd_h if row else h.usd_h) * share
            base = {
                "BillingAccountId": ACCOUNT, "SubAccountId": f"{h.tenant}-account", "ProviderName": PROVIDER.get(h.cloud, h.cloud),
                "ServiceProviderName": PROVIDER.get(h.cloud, h.cloud), "InvoiceIssuerName": PROVIDER.get(h.cloud, h.cloud),
                "BillingCurrency": "USD", "ChargePeriodStart": _iso(lo), "ChargePeriodEnd": _iso(hi),
                "ChargeCategory": "Usage", "ChargeClass": "", "ResourceId": h.host, "RegionId": h.region,
                "ServiceName": "Compute", "SkuId": f"{h.cloud}:{h.instance_type}",
                "SkuPriceDetails": json.dumps({"InstanceType": h.instance_type, "GpuCount": h.gpu_count}),
                "Tags": json.dumps({"team": h.tenant, "service": h.service}), "ListCost": f"{list_usd:.10f}",
                "ChargeDescription": f"{h.instance_type} instance hour", "CommitmentDiscountId": "",
                "CommitmentDiscountStatus": "",
            }
            if h.host in covered:
                effective = list_usd * (1 - savings_plan_discount)
                committed_usd += effective
                yield {**base, "PricingCategory": "Committed", "CommitmentDiscountId": plan_id,
                       "CommitmentDiscountStatus": "Used", "BilledCost": "0", "EffectiveCost": f"{effective:.10f}"}
            else:
                billed = h.usd_h * share  # the host's own rate: on-demand, or spot
                yield {**base, "PricingCategory": "Dynamic" if h.pricing == "spot" else "Standard",
                       "BilledCost": f"{billed:.10f}", "EffectiveCost": f"{billed:.10f}"}
        if committed_usd:
            yield {c: "" for c in COLUMNS} | {
                "BillingAccountId": ACCOUNT, "SubAccountId": ACCOUNT, "ProviderName": "AWS", "ServiceProviderName": "AWS",
                "InvoiceIssuerName": "AWS", "BillingCurrency": "USD", "ChargePeriodStart": _iso(lo), "ChargePeriodEnd": _iso(hi),
                "ChargeCategory": "Purchase", "ChargeDescription": "Compute savings plan, hourly commitment",
                "PricingCategory": "Committed", "CommitmentDiscountId": plan_id, "BilledCost": f"{committed_usd:.10f}",
                "EffectiveCost": "0", "ListCost": "0", "ResourceId": plan_id, "ServiceName": "Savings Plans"}
        if (hour % 86400 == 0 or hour == first_hour) and credit_usd_per_day:
            day = hour - hour % 86400
            yield {c: "" for c in COLUMNS} | {
                "BillingAccountId": ACCOUNT, "SubAccountId": ACCOUNT, "ProviderName": "AWS", "ServiceProviderName": "AWS",
                "InvoiceIssuerName": "AWS", "BillingCurrency": "USD", "ChargePeriodStart": _iso(day),
                "ChargePeriodEnd": _iso(day + 86400), "ChargeCategory": "Credit", "ChargeDescription": "Promotional credit",
                "BilledCost": f"{-credit_usd_per_day:.2f}", "EffectiveCost": f"{-credit_usd_per_day:.2f}", "ListCost": "0",
                "ServiceName": "Credits"}
        hour += 3600


def write_focus_export(path: str | Path, fleet, start_ts: float, end_ts: float, **kw) -> int:
    """Write the export (gzip when the name ends in .gz); returns the number of rows."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    n = 0
    with opener(path, "wt", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for row in focus_rows(fleet, start_ts, end_ts, **kw):
            w.writerow(row)
            n += 1
    return n


class HourlyExport:
    """The simulated fleet's bill as it runs: `due(ts)` writes the FOCUS lines of every hour closed
    since the last call (from `start_ts`) to one file in `directory` and imports it through the
    real importer (ingest/billing/importer.py) with `producer`, a fresh import each time, so a line
    exported twice keeps its id and overwrites itself. The open hour is billed once it closes."""

    def __init__(self, fleet, directory: str | Path, start_ts: float, **export_options: Any):
        self.fleet = fleet
        self.directory = Path(directory)
        self.billed_upto = float(start_ts)
        self.export_options = export_options
        self.reports: list = []

    async def due(self, ts: float, producer) -> Any:
        """Bill the hours closed by `ts`; returns the import's report, or None when none closed."""
        from ingest.billing.importer import Importer

        closed = math.floor(ts / 3600) * 3600
        if closed <= self.billed_upto:
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.billed_upto))
        path = self.directory / f"focus-{stamp}-{time.strftime('%Y%m%dT%H%MZ', time.gmtime(closed))}.csv"
        write_focus_export(path, self.fleet, self.billed_upto, closed, **self.export_options)
        importer = Importer(producer=producer, keep_sent=producer is None)
        await importer.import_file(path)
        self.billed_upto = closed
        self.reports.append(importer.report)
        return importer.report
