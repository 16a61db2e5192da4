"""The pricing catalog: cloud GPU instance prices shipped as data (catalog.csv) and the GPU spec
table (gpu_specs.csv), with the one price lookup every metered usage event goes through.

A lookup is a dict hit: quotes are precomputed per (cloud, region, instance_type, pricing) and per
(gpu_model, pricing) for the fallback when the instance is not in the catalog."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

Pricing = Literal["on_demand", "spot"]
PRICINGS: tuple[str, ...] = ("on_demand", "spot")

CATALOG_COLUMNS: tuple[str, ...] = (
    "cloud", "region", "instance_type", "gpu_model", "gpu_count", "gpu_mem_gb", "vcpus",
    "ram_gb", "on_demand_usd_h", "spot_usd_h", "source", "as_of",
)
SPEC_COLUMNS: tuple[str, ...] = (
    "gpu_model", "memory_gb", "mem_bandwidth_gb_s", "bf16_tflops", "fp8_tflops", "int8_tops",
    "source",
)

# Names that clouds, SkyPilot and people use for the same part, mapped to the catalog's names.
# Keys are lower case; lookups lower-case their input.
GPU_MODEL_ALIASES: dict[str, str] = {
    "h100": "H100-80GB", "h100-sxm": "H100-80GB", "h100-sxm5": "H100-80GB",
    "h100-80gb-hbm3": "H100-80GB", "h100-mega": "H100-80GB", "h100-nvlink": "H100-80GB",
    "h200": "H200-141GB", "h200-sxm": "H200-141GB",
    "a100": "A100-40GB", "a100-sxm4-40gb": "A100-40GB",
    "a100-80gb-sxm": "A100-80GB", "a100-sxm4-80gb": "A100-80GB", "a100-80gb-pcie": "A100-80GB",
    "l40s": "L40S", "l4": "L4", "a10g": "A10G", "t4": "T4", "a10": "A10",
}


class PricingError(Exception):
    """Base class of the pricing catalog's errors."""


class UnknownGPUModel(PricingError, KeyError):
    """A GPU model the catalog has no price or spec for; the message names the known ones."""

    def __init__(self, gpu_model: str, known: Iterable[str]):
        self.gpu_model = gpu_model
        self.known = sorted(known)
        super().__init__(gpu_model)

    def __str__(self) -> str:
        return (f"unknown GPU model {self.gpu_model!r}: the pricing catalog knows "
                f"{', '.join(self.known)}")


class CatalogFormatError(PricingError, ValueError):
    """A catalog or spec file that does not have the expected columns or values."""


@dataclass(frozen=True, slots=True)
class CatalogRow:
    """One instance type in one region: the columns of catalog.csv."""

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

    def usd_per_gpu_hour(self, pricing: str = "on_demand") -> float | None:
        price = self.on_demand_usd_h if pricing == "on_demand" else self.spot_usd_h
        return None if price is None else price / self.gpu_count

    @property
    def key(self) -> tuple[str, str, str]:
        return _key(self.cloud, self.region, self.instance_type)


@dataclass(frozen=True, slots=True)
class GPUSpec:
    """Per-GPU figures the recommender projects throughput with (dense, no sparsity)."""

    gpu_model: str
    memory_gb: float
    mem_bandwidth_gb_s: float
    bf16_tflops: float
    fp8_tflops: float | None
    int8_tops: float | None
    source: str


@dataclass(frozen=True, slots=True)
class PriceQuote:
    """The price one GPU of an instance costs per hour, and where the figure came from.

    `fallback` is True when the instance was not in the catalog (or had no price of the asked
    kind) and the GPU model's cheapest on-demand price stood in for it."""

    usd_per_gpu_hour: float
    fallback: bool
    source: str
    as_of: str
    gpu_model: str
    pricing: str
    cloud: str = ""
    region: str = ""
    instance_type: str = ""
    override: bool = False


def _key(cloud: str, region: str, instance_type: str) -> tuple[str, str, str]:
    instance = instance_type.strip().lower()
    if instance.startswith("standard_"):  # Azure's API names carry it, its price pages do not
        instance = instance[len("standard_"):]
    return (cloud.strip().lower(), region.strip().lower(), instance)


def canonical_gpu_model(name: str) -> str:
    """The catalog's name for a GPU model (`H100` -> `H100-80GB`); unknown names pass through."""
    return GPU_MODEL_ALIASES.get(name.strip().lower(), name.strip())


class PriceCatalog:
    """Catalog rows plus precomputed quote tables; immutable once built."""

    def __init__(self, rows: Iterable[CatalogRow], specs: Iterable[GPUSpec] = ()):
        self.rows: list[CatalogRow] = list(rows)
        self.specs: dict[str, GPUSpec] = {s.gpu_model: s for s in specs}
        self._exact: dict[tuple[str, str, str, str], PriceQuote] = {}
        self._rows_by_key: dict[tuple[str, str, str], CatalogRow] = {}
        self._cheapest: dict[str, PriceQuote] = {}
        self._models: dict[str, str] = {}  # lower-case name or alias -> catalog name
        for row in self.rows:
            self._add(row)
        for alias, model in GPU_MODEL_ALIASES.items():
            if model in self._models.values():
                self._models.setdefault(alias, model)

    def _add(self, row: CatalogRow) -> None:
        # Later rows win: a refreshed or overriding row replaces the shipped one for its key.
        self._rows_by_key[row.key] = row
        self._models[row.gpu_model.lower()] = row.gpu_model
        for pricing in PRICINGS:
            price = row.usd_per_gpu_hour(pricing)
            if price is None:
                continue
            self._exact[row.key + (pricing,)] = PriceQuote(
                usd_per_gpu_hour=price, fallback=False, source=row.source, as_of=row.as_of,
                gpu_model=row.gpu_model, pricing=pricing, cloud=row.cloud, region=row.region,
                instance_type=row.instance_type, override=row.source.startswith("override"))
        on_demand = row.on_demand_usd_h / row.gpu_count
        if row.spot_usd_h is None:
            # No public spot price: the instance's own on-demand price is a closer stand-in
            # than the model's cheapest price elsewhere, and it is flagged all the same.
            self._exact[row.key + ("spot",)] = PriceQuote(
                usd_per_gpu_hour=on_demand, fallback=True,
                source=f"fallback: no spot price, on-demand ({row.source})", as_of=row.as_of,
                gpu_model=row.gpu_model, pricing="on_demand", cloud=row.cloud,
                region=row.region, instance_type=row.instance_type)
        best = self._cheapest.get(row.gpu_model)
        if best is None or on_demand < best.usd_per_gpu_hour:
            self._cheapest[row.gpu_model] = PriceQuote(
                usd_per_gpu_hour=on_demand, fallback=True,
                source=(f"fallback: cheapest on-demand {row.gpu_model} in the catalog "
                        f"({row.cloud} {row.region} {row.instance_type}; {row.source})"),
                as_of=row.as_of, gpu_model=row.gpu_model, pricing="on_demand",
                cloud=row.cloud, region=row.region, instance_type=row.instance_type)

    # -- lookups -------------------------------------------------------------------------

    def gpu_hour_price(self, cloud: str, region: str, instance_type: str, gpu_model: str,
                       pricing: str = "on_demand") -> PriceQuote:
        """Price of one GPU-hour on this instance.

        Exact (cloud, region, instance_type) match: the row's price divided by its GPU count
        (case-insensitive; Azure's `Standard_` prefix optional). Spot asked for on a row without
        a spot price: that row's on-demand price, `fallback=True`. No match: the GPU model's
        cheapest on-demand per-GPU price in the catalog, `fallback=True`. Raises UnknownGPUModel
        when a fallback is needed and the model is not in the catalog."""
        quote = self._exact.get((cloud.lower(), region.lower(), instance_type.lower(), pricing))
        if quote is not None:
            return quote
        quote = self._exact.get(_key(cloud, region, instance_type) + (pricing,))
        if quote is not None:
            return quote
        if pricing not in PRICINGS:
            raise PricingError(f"unknown pricing {pricing!r}: expected one of {PRICINGS}")
        return self.cheapest(gpu_model)

    def cheapest(self, gpu_model: str) -> PriceQuote:
        """The GPU model's cheapest on-demand per-GPU-hour quote across the catalog."""
        name = self._models.get(gpu_model.lower())
        if name is None:
            raise UnknownGPUModel(gpu_model, self.gpu_models)
        return self._cheapest[name]

    def row(self, cloud: str, region: str, instance_type: str) -> CatalogRow | None:
        return self._rows_by_key.get(_key(cloud, region, instance_type))

    def spec(self, gpu_model: str) -> GPUSpec:
        """The GPU's spec-sheet figures; raises UnknownGPUModel for a model without a spec."""
        name = self._models.get(gpu_model.lower(), canonical_gpu_model(gpu_model))
        spec = self.specs.get(name)
        if spec is None:
            raise UnknownGPUModel(gpu_model, self.specs)
        return spec

    def canonical(self, gpu_model: str) -> str:
        name = self._models.get(gpu_model.lower())
        if name is None:
            raise UnknownGPUModel(gpu_model, self.gpu_models)
        return name

    @property
    def gpu_models(self) -> list[str]:
        return sorted(self._cheapest)

    # -- building new catalogs -----------------------------------------------------------

    def with_rows(self, rows: Iterable[CatalogRow]) -> PriceCatalog:
        """A new catalog where `rows` replace the rows of the same (cloud, region, instance)."""
        merged = dict(self._rows_by_key)
        for row in rows:
            merged[row.key] = row
        return PriceCatalog(merged.values(), self.specs.values())


# -- reading the CSV files -------------------------------------------------------------------

def _float(value: str, column: str, line: int, optional: bool = False) -> float | None:
    value = (value or "").strip()
    if not value:
        if optional:
            return None
        raise CatalogFormatError(f"line {line}: {column} is empty")
    try:
        number = float(value)
    except ValueError:
        raise CatalogFormatError(f"line {line}: {column}={value!r} is not a number") from None
    if not math.isfinite(number) or number < 0:
        raise CatalogFormatError(f"line {line}: {column}={value!r} must be finite and >= 0")
    return number


def row_from_mapping(record: Mapping[str, str], line: int = 0) -> CatalogRow:
    """One CatalogRow from a CSV record with the catalog's columns (strings)."""
    missing = [c for c in CATALOG_COLUMNS if c not in record]
    if missing:
        raise CatalogFormatError(f"line {line}: missing columns {missing}")
    gpu_count = int(_float(record["gpu_count"], "gpu_count", line))
    if gpu_count < 1:
        raise CatalogFormatError(f"line {line}: gpu_count must be >= 1")
    on_demand = _float(record["on_demand_usd_h"], "on_demand_usd_h", line)
    if on_demand <= 0:
        raise CatalogFormatError(f"line {line}: on_demand_usd_h must be > 0")
    for column in ("cloud", "region", "instance_type", "gpu_model", "source", "as_of"):
        if not record[column].strip():
            raise CatalogFormatError(f"line {line}: {column} is empty")
    return CatalogRow(
        cloud=record["cloud"].strip(), region=record["region"].strip(),
        instance_type=record["instance_type"].strip(),
        gpu_model=canonical_gpu_model(record["gpu_model"]), gpu_count=gpu_count,
        gpu_mem_gb=_float(record["gpu_mem_gb"], "gpu_mem_gb", line),
        vcpus=int(_float(record["vcpus"], "vcpus", line)),
        ram_gb=_float(record["ram_gb"], "ram_gb", line), on_demand_usd_h=on_demand,
        spot_usd_h=_float(record["spot_usd_h"], "spot_usd_h", line, optional=True),
        source=record["source"].strip(), as_of=record["as_of"].strip())


def read_catalog_csv(path: str | Path) -> list[CatalogRow]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return [row_from_mapping(r, i) for i, r in enumerate(reader, start=2)]


def read_specs_csv(path: str | Path) -> list[GPUSpec]:
    specs = []
    with open(path, newline="", encoding="utf-8") as f:
        for line, r in enumerate(csv.DictReader(f), start=2):
            specs.append(GPUSpec(
                gpu_model=r["gpu_model"].strip(),
                memory_gb=_float(r["memory_gb"], "memory_gb", line),
                mem_bandwidth_gb_s=_float(r["mem_bandwidth_gb_s"], "mem_bandwidth_gb_s", line),
                bf16_tflops=_float(r["bf16_tflops"], "bf16_tflops", line),
                fp8_tflops=_float(r["fp8_tflops"], "fp8_tflops", line, optional=True),
                int8_tops=_float(r["int8_tops"], "int8_tops", line, optional=True),
                source=r["source"].strip()))
    return specs


def write_catalog_csv(rows: Iterable[CatalogRow], path: str | Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CATALOG_COLUMNS)
        for row in rows:
            writer.writerow(["" if getattr(row, c) is None else getattr(row, c)
                             for c in (fl.name for fl in fields(CatalogRow))])


def _data_path(name: str):
    return resources.files("core.pricing").joinpath(name)


@lru_cache(maxsize=1)
def default_catalog() -> PriceCatalog:
    """The catalog shipped with the package (catalog.csv + gpu_specs.csv), built once."""
    with resources.as_file(_data_path("catalog.csv")) as catalog_path, \
            resources.as_file(_data_path("gpu_specs.csv")) as specs_path:
        return PriceCatalog(read_catalog_csv(catalog_path), read_specs_csv(specs_path))
