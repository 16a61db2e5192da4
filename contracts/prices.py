"""Price overrides as they travel to the worker: the API publishes the whole set of stored
overrides as one record (key `overrides`) on the compacted `cost.prices` topic whenever it may have
changed, and the worker meters with the shipped catalog plus the newest set. One record holding
the whole set makes a change atomic and needs no tombstones."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

PRICES_KEY = b"overrides"


class PriceRow(BaseModel):
    """A catalog row that replaces (or adds) the shipped row of (cloud, region, instance_type)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    cloud: str
    region: str
    instance_type: str
    gpu_model: str
    gpu_count: int = Field(ge=1)
    gpu_mem_gb: float = Field(ge=0)
    vcpus: int = Field(0, ge=0)
    ram_gb: float = Field(0.0, ge=0)
    on_demand_usd_h: float = Field(gt=0)
    spot_usd_h: float | None = Field(None, gt=0)
    source: str = "override"
    as_of: str = ""


class PriceOverrides(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rows: list[PriceRow]
