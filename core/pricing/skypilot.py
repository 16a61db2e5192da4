"""Refresh prices from SkyPilot-catalog-format CSVs (github.com/skypilot-org/skypilot-catalog).

In: a `vms.csv` with the columns InstanceType, AcceleratorName, AcceleratorCount, vCPUs, MemoryGiB,
Price, SpotPrice, Region (AvailabilityZone and GpuInfo optional). Out: CatalogRow objects, one per
(region, instance type), ready for `PriceCatalog.with_rows`. SkyPilot lists one row per availability
zone: the on-demand price is the zone rows' lowest and the spot price their median, because spot
prices differ by zone and the median is what a fleet spread over zones pays."""

from __future__ import annotations

import ast
import csv
import io
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable
from datetime import date
from pathlib import Path

from core.pricing.catalog import CatalogFormatError, CatalogRow, canonical_gpu_model

REQUIRED_COLUMNS = ("InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs", "MemoryGiB",
                    "Price", "SpotPrice", "Region")

# Nominal per-GPU memory, for files without GpuInfo.
_GPU_MEM_GB = {"H100-80GB": 80, "H200-141GB": 141, "A100-80GB": 80, "A100-40GB": 40, "L40S": 48,
               "L4": 24, "A10G": 24, "A10": 24, "T4": 16}

# GCP prices accelerator-optimized machines as a VM row plus an accelerator row (empty
# InstanceType); these patterns say which accelerator, and how many, each machine carries.
_GCP_MACHINES = [
    (re.compile(r"^a2-highgpu-(\d+)g$"), "A100", None),
    (re.compile(r"^a2-megagpu-(16)g$"), "A100", None),
    (re.compile(r"^a2-ultragpu-(\d+)g$"), "A100-80GB", None),
    (re.compile(r"^a3-highgpu-(\d+)g$"), "H100", None),
    (re.compile(r"^a3-megagpu-(8)g$"), "H100-MEGA", None),
    (re.compile(r"^a3-ultragpu-(8)g$"), "H200", None),
    (re.compile(r"^g2-standard-(\d+)$"), "L4", {4: 1, 8: 1, 12: 1, 16: 1, 32: 1, 24: 2, 48: 4, 96: 8}),
]


def _num(value: str | None) -> float | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _gpu_mem_gb(gpu_info: str | None, model: str) -> float:
    if gpu_info:
        try:
            info = ast.literal_eval(gpu_info)
            mib = info["Gpus"][0]["MemoryInfo"]["SizeInMiB"]
            return round(mib / 1024, 1)
        except (ValueError, SyntaxError, KeyError, IndexError, TypeError):
            pass
    return float(_GPU_MEM_GB.get(model, 0))


def _is_path(source) -> bool:
    if isinstance(source, Path):
        return True
    return isinstance(source, str) and "\n" not in source and Path(source).exists()


def _read_records(source: str | Path | Iterable[str]) -> list[dict[str, str]]:
    if _is_path(source):
        with open(source, newline="", encoding="utf-8") as f:
            records = list(csv.DictReader(f))
    elif isinstance(source, str):
        records = list(csv.DictReader(io.StringIO(source)))
    else:
        records = list(csv.DictReader(source))
    if records:
        missing = [c for c in REQUIRED_COLUMNS if c not in records[0]]
        if missing:
            raise CatalogFormatError(f"not a SkyPilot catalog CSV: missing columns {missing}")
    return records


def _gcp_machine_gpus(instance_type: str) -> tuple[str, int] | None:
    for pattern, accelerator, count_by_vcpu in _GCP_MACHINES:
        m = pattern.match(instance_type)
        if m:
            n = int(m.group(1))
            if count_by_vcpu is not None:
                if n not in count_by_vcpu:
                    return None
                n = count_by_vcpu[n]
            return accelerator, n
    return None


def load_skypilot_csv(source: str | Path | Iterable[str], cloud: str, *, as_of: str | None = None,
                      source_label: str | None = None) -> list[CatalogRow]:
    """CatalogRows for the GPU instances in a SkyPilot catalog CSV.

    `source` is a path, the CSV text, or an iterable of lines; `cloud` names the cloud the file
    is for (SkyPilot keeps one file per cloud). Rows without a GPU or without a price are left
    out. `as_of` defaults to today (the day the prices were read)."""
    as_of = as_of or date.today().isoformat()
    label = source_label or (f"SkyPilot catalog {Path(source).name}" if _is_path(source)
                             else "SkyPilot catalog CSV")
    records = _read_records(source)
    cloud = cloud.strip().lower()

    # GCP: accelerator price per (name, count, region), from the rows without an InstanceType.
    accelerator_prices: dict[tuple[str, int, str], list[tuple[float | None, float | None]]] = \
        defaultdict(list)
    if cloud == "gcp":
        for r in records:
            if not r["InstanceType"].strip() and r["AcceleratorName"].strip():
                count = _num(r["AcceleratorCount"])
                if count:
                    key = (r["AcceleratorName"].strip(), int(count), r["Region"].strip())
                    accelerator_prices[key].append((_num(r["Price"]), _num(r["SpotPrice"])))

    grouped: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        instance = r["InstanceType"].strip()
        if not instance:
            continue
        price, spot = _num(r["Price"]), _num(r["SpotPrice"])
        accelerator, count = r["AcceleratorName"].strip(), _num(r["AcceleratorCount"])
        if cloud == "gcp" and not accelerator:
            machine = _gcp_machine_gpus(instance)
            if machine is None:
                continue
            accelerator, n = machine
            count = float(n)
            gpu = accelerator_prices.get((accelerator, n, r["Region"].strip()))
            if not gpu or price is None or gpu[0][0] is None:
                continue
            gpu_price, gpu_spot = gpu[0]
            price = price + gpu_price
            spot = spot + gpu_spot if spot is not None and gpu_spot is not None else None
        if not accelerator or not count or price is None or price <= 0:
            continue
        grouped[(r["Region"].strip(), instance)].append(
            {"accelerator": accelerator, "count": int(count), "price": price, "spot": spot,
             "vcpus": _num(r["vCPUs"]) or 0, "ram": _num(r["MemoryGiB"]) or 0,
             "gpu_info": r.get("GpuInfo")})

    rows = []
    for (region, instance), zone_rows in sorted(grouped.items()):
        first = zone_rows[0]
        model = canonical_gpu_model(first["accelerator"])
        on_demand = min(z["price"] for z in zone_rows)
        spots = [z["spot"] for z in zone_rows if z["spot"] is not None and z["spot"] > 0]
        spot = statistics.median(spots) if spots else None
        if spot is not None and spot >= on_demand:
            spot = None  # no discount: treat as not offered
        rows.append(CatalogRow(
            cloud=cloud, region=region, instance_type=instance, gpu_model=model,
            gpu_count=first["count"], gpu_mem_gb=_gpu_mem_gb(first["gpu_info"], model),
            vcpus=int(first["vcpus"]), ram_gb=float(first["ram"]), on_demand_usd_h=on_demand,
            spot_usd_h=spot, source=label, as_of=as_of))
    return rows
