"""The alert rule contract: what a user writes (`RuleSpec`, validated by the API with these models),
what the API publishes on the compacted `cost.rules` topic (`Rule`, keyed by id) and what the
worker's evaluator reads back. Kinds and their parameters are documented on each model."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contracts.aggregates import KEY_FIELDS

RuleKind = Literal["budget", "burn_rate", "idle_waste", "anomaly", "gpu_quota"]
KeyField = Literal["tenant", "service", "region", "gpu_model", "model_version"]
Period = Literal["1h", "1d", "month"]
PERIODS: tuple[str, ...] = ("1h", "1d", "month")


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class BudgetParams(_Params):
    """Spend over the current UTC hour / day / calendar month; a warning at each `warn_at` share
    of the limit and a critical alert at the limit itself."""

    period: Period = "1d"
    limit_usd: float = Field(gt=0)
    warn_at: list[float] = Field(default_factory=lambda: [0.5, 0.75, 0.9])

    @model_validator(mode="after")
    def _shares(self):
        if any(not 0 < w < 1 for w in self.warn_at):
            raise ValueError("warn_at shares must lie strictly between 0 and 1")
        self.warn_at = sorted(set(self.warn_at))
        return self


class BurnRateParams(_Params):
    """Projected end-of-day (or end-of-month) spend: spent so far plus the rate of the last
    `lookback_s` held until the period ends; bounds: nothing more spent / the peak 60 s rate held."""

    horizon: Literal["day", "month"] = "day"
    limit_usd: float = Field(gt=0)
    lookback_s: int = Field(3600, ge=60, le=7 * 86400)
    hysteresis: float = Field(0.05, ge=0, lt=1, description="resolves once the projection is this share under the limit")


class IdleWasteParams(_Params):
    """Idle share (idle_usd / spend_usd) above `threshold` in every window for `for_s` seconds."""

    threshold: float = Field(gt=0, lt=1)
    for_s: int = Field(600, ge=0, le=7 * 86400)
    min_spend_usd: float = Field(0.0, ge=0)


class AnomalyParams(_Params):
    """Spend rate more than `factor` times the mean of its own non-anomalous windows over the
    preceding `baseline_s` (at least `min_baseline_windows` of them), and at least `min_rate_usd_h`."""

    factor: float = Field(3.0, gt=1)
    baseline_s: int = Field(3600, ge=60, le=7 * 86400)
    min_baseline_windows: int = Field(6, ge=1)
    min_rate_usd_h: float = Field(0.0, ge=0)


class GpuQuotaParams(_Params):
    """GPUs in use (gpu_seconds / window_s, summed over the group) above `max_gpus` for `for_s`."""

    max_gpus: float = Field(gt=0)
    for_s: int = Field(0, ge=0, le=7 * 86400)


PARAMS: dict[str, type[_Params]] = {
    "budget": BudgetParams, "burn_rate": BurnRateParams, "idle_waste": IdleWasteParams,
    "anomaly": AnomalyParams, "gpu_quota": GpuQuotaParams,
}
DEFAULT_GROUP_BY: dict[str, list[str]] = {
    "budget": ["tenant"], "burn_rate": ["tenant"], "gpu_quota": ["tenant"],
    "idle_waste": ["tenant", "service"], "anomaly": ["tenant", "service"],
}


class RuleSpec(BaseModel):
    """What a user writes: a kind, its parameters, which aggregates it watches (tenant and the
    optional filters) and what it groups them by (one alert state per group)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    kind: RuleKind
    tenant: str | None = Field(None, description="None (admin only): every tenant, grouped by tenant")
    service: str | None = None
    region: str | None = None
    gpu_model: str | None = None
    model_version: str | None = Field(None, description='only this model version ("": events without one)')
    group_by: list[KeyField] | None = None
    params: dict = Field(default_factory=dict)
    enabled: bool = True

    @model_validator(mode="after")
    def _normalise(self):
        self.params = PARAMS[self.kind].model_validate(self.params).model_dump()
        group_by = list(dict.fromkeys(self.group_by or DEFAULT_GROUP_BY[self.kind]))
        if self.tenant is None and "tenant" not in group_by:
            group_by.insert(0, "tenant")  # every alert belongs to exactly one tenant
        self.group_by = [f for f in KEY_FIELDS if f in group_by]
        return self


class Rule(RuleSpec):
    """A stored rule as published on cost.rules (key: id)."""

    id: str
    version: int = 1

    def matches(self, key: tuple) -> bool:
        for i, f in enumerate(KEY_FIELDS):
            want = getattr(self, f)
            if want is not None and key[i] != want:
                return False
        return True

    def group_of(self, key: tuple) -> tuple:
        return tuple(key[KEY_FIELDS.index(f)] for f in self.group_by)

    def definition(self) -> dict:
        return self.model_dump(exclude={"version", "name", "enabled"})


def fingerprint(rule_id: str, group: dict, level: str = "") -> str:
    raw = json.dumps([rule_id, sorted(group.items()), level], separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()[:20]
