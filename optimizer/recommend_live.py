"""Recommendations for the services that are live now, without anyone posting a workload.

A service's workload comes from what the stream already knows about it (its aligned 60 s windows:
spend, tokens, GPU-seconds, utilization, GPU models) plus the model it serves, from the services
file the simulator ships (ingest/services.json) or a per-service setting (api/routes/services.py).
Where the model is unknown, the answer says so and asks for it instead of guessing.

"Saves / month" compares the same demand on both fleets: the current fleet's metered cost while it
served the measured demand (tokens/s over the period), against the recommended fleet sized by
optimizer.recommend for exactly that demand. Every figure says where it comes from."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from optimizer.recommend import HOURS_PER_MONTH, Measurement, RecommendError, Workload, recommend

SERVICES_FILE = Path(__file__).resolve().parent.parent / "ingest" / "services.json"
MODEL_FIELDS = ("params", "precision", "prompt_tokens", "output_tokens", "n_layers", "n_kv_heads",
                "head_dim", "kv_bytes_per_token")


def load_services(path: Path = SERVICES_FILE) -> dict[str, dict]:
    """service name -> model description (params, precision, request shape, attention shape)."""
    try:
        return dict(json.loads(Path(path).read_text()).get("services", {}))
    except (OSError, ValueError):
        return {}


@dataclass
class ServiceUsage:
    """A service's aligned windows summed over a period."""

    tenant: str
    service: str
    spend_usd: float = 0.0
    tokens: int = 0
    gpu_seconds: float = 0.0
    util_gpu_seconds: float = 0.0
    windows: set = field(default_factory=set)
    gpu_models: set = field(default_factory=set)
    regions: set = field(default_factory=set)
    model_versions: set = field(default_factory=set)  # "" for usage without one

    def covered_s(self, window_s: int) -> int:
        return len(self.windows) * window_s


def service_usage(rows: Iterable[dict], window_s: int) -> dict[tuple[str, str], ServiceUsage]:
    """Sum the windows that tile time (start a multiple of their size): hopping windows overlap."""
    out: dict[tuple[str, str], ServiceUsage] = {}
    for r in rows:
        if r["window_s"] != window_s or r["window_start"] % window_s:
            continue
        u = out.setdefault((r["tenant"], r["service"]), ServiceUsage(r["tenant"], r["service"]))
        u.spend_usd += r["spend_usd"]
        u.tokens += r.get("tokens") or 0
        u.gpu_seconds += r["gpu_seconds"]
        u.util_gpu_seconds += r["util_avg"] * r["gpu_seconds"]
        u.windows.add(r["window_start"])
        u.gpu_models.add(r["gpu_model"])
        u.regions.add(r["region"])
        u.model_versions.add(r.get("model_version") or "")
    return out


def _basis(option, local_labels: set[str]) -> str:
    """Where the recommended fleet's throughput comes from, in words."""
    if option.throughput_source == "measured":
        return "measured on this machine" if option.projected_from in local_labels else "measured elsewhere"
    if "calibrated on measured" in option.projected_from:
        label = option.projected_from.split("calibrated on measured ", 1)[1].split(" (")[0]
        where = "this machine" if any(label.startswith(x) for x in local_labels) else "elsewhere"
        return f"projected from specs, calibrated on a run measured {where}"
    return "projected from specs"


def live_recommendation(usage: ServiceUsage, model: dict | None, window_s: int,
                        measurements: Sequence[Measurement] = (), local_labels: set[str] = frozenset(),
                        catalog=None) -> dict:
    covered = usage.covered_s(window_s)
    rate = usage.spend_usd * 3600 / covered if covered else 0.0
    out = {
        "tenant": usage.tenant, "service": usage.service, "gpu_models": sorted(usage.gpu_models),
        "model_versions": sorted(usage.model_versions),
        "regions": sorted(usage.regions), "period_s": covered, "spend_usd": usage.spend_usd,
        "tokens": usage.tokens, "spend_rate_usd_h": rate, "current_usd_per_month": rate * HOURS_PER_MONTH,
        "gpus_in_use": usage.gpu_seconds / covered if covered else 0.0,
        "util_avg": usage.util_gpu_seconds / usage.gpu_seconds if usage.gpu_seconds else 0.0,
        "demand_tokens_per_s": usage.tokens / covered if covered else 0.0,
        "current_usd_per_million_tokens": usage.spend_usd / usage.tokens * 1e6 if usage.tokens else None,
        "current_basis": f"metered: live usage x catalog price over the last {covered // 60} min",
        "model": model, "status": "ok", "message": "",
        "best_alternative": None, "best_usd_per_hour": None, "best_usd_per_month": None,
        "best_usd_per_million_tokens": None, "best_basis": None, "best_reason": None,
        "savings_usd_per_month": None,
    }
    if not usage.tokens:
        out.update(status="no_tokens", message="no token counts in its usage events: demand unknown, "
                                                "so no fleet can be sized for it")
        return out
    if not model or not model.get("params"):
        out.update(status="model_unknown", message="model size unknown: set the model it serves "
                                                    "(parameters and precision) to get a recommendation")
        return out
    fields = {k: model[k] for k in MODEL_FIELDS if model.get(k) is not None}
    try:
        w = Workload(**fields, tokens_per_s=out["demand_tokens_per_s"])
        result = recommend(w, measurements, catalog=catalog, limit=5, cheapest_region_only=True)
    except (RecommendError, TypeError) as exc:
        out.update(status="error", message=str(exc))
        return out
    best = result.best
    if best is None:
        out.update(status="no_fit", message="no catalog instance serves this model within its SLO")
        return out
    out.update(best_alternative=best.name, best_usd_per_hour=best.usd_per_hour,
               best_usd_per_month=best.usd_per_month, best_usd_per_million_tokens=best.usd_per_million_tokens,
               best_basis=_basis(best, local_labels), best_reason=best.reason,
               best_instances=best.instances, best_gpu_model=best.gpu_model,
               savings_usd_per_month=(rate - best.usd_per_hour) * HOURS_PER_MONTH)
    return out


def model_for(service: str, model_versions: Iterable[str], services: dict[str, dict],
              overrides: dict[str, dict]) -> dict | None:
    """A per-service setting wins over the services file; a model_version entry refines it."""
    model = overrides.get(service) or services.get(service)
    if model is None:
        return None
    model = {k: v for k, v in model.items() if k != "model_versions"}
    for version in model_versions:
        model.update((services.get(service, {}).get("model_versions") or {}).get(version, {}))
    return model


def usage_model(usage: ServiceUsage, services: dict[str, dict], overrides: dict[str, dict]) -> dict | None:
    """The model the usage was served with: one model version's own (a canary picked in the
    dashboard's filter, or a service running one version); several versions at once are sized on
    the service's model."""
    versions = usage.model_versions if len(usage.model_versions) == 1 else ()
    return model_for(usage.service, versions, services, overrides)


# -- from the store --------------------------------------------------------------------------------
def overrides_path(settings) -> Path:
    return Path(settings.data_dir) / "service_models.json"


def load_overrides(settings) -> dict[str, dict]:
    """Per-service settings made in the dashboard: "tenant/service" -> model description."""
    try:
        return json.loads(overrides_path(settings).read_text())
    except (OSError, ValueError):
        return {}


def _optimizer_run(session, service: str):
    """The optimizer's latest benchmark run of this service's variant: what it ran on and which
    model it served (its usage events are priced as a GPU instance, whatever the hardware)."""
    if not service.startswith("optimizer/"):
        return None
    from sqlalchemy import select

    from core.tables.benchmarks import BenchmarkRun

    try:
        return session.scalars(select(BenchmarkRun).where(BenchmarkRun.variant == service.split("/", 1)[1])
                               .order_by(BenchmarkRun.id.desc()).limit(1)).first()
    except Exception:  # noqa: BLE001 - table not there yet
        return None


def _hardware(run) -> str | None:
    if run is None:
        return None
    return f"CPU ({run.device})" if run.gpu_model == "cpu" else run.device


def _run_model(run) -> dict | None:
    if run is None or not run.params:
        return None
    slots = max(1, run.batch_size) * (run.prompt_tokens + run.new_tokens)
    model = {"model": f"{run.model} ({run.variant})", "params": float(run.params), "prompt_tokens": run.prompt_tokens,
             "output_tokens": run.new_tokens, "precision": run.precision if run.precision in
             ("fp32", "bf16", "fp16", "fp8", "int8", "int4") else "bf16"}
    if run.kv_cache_bytes:
        model["kv_bytes_per_token"] = run.kv_cache_bytes / slots
    return model if "kv_bytes_per_token" in model else None


def live_services(settings, hours: float = 1.0, tenant: str | None = None, service: str | None = None,
                  region: str | None = None, gpu_model: str | None = None,
                  model_version: str | None = None) -> list[dict]:
    """A live recommendation for every service with aggregates in the last `hours`."""
    import time

    from sqlalchemy import select

    from core.db import session_scope
    from core.tables.history import AggregateRow
    from optimizer.recommend_data import load_measurements

    size = settings.window_size_s
    since = int(time.time() - hours * 3600)
    services, overrides = load_services(), load_overrides(settings)
    with session_scope(settings) as session:
        q = select(AggregateRow).where(AggregateRow.window_s == size, AggregateRow.window_start >= since)
        for col, val in (("tenant", tenant), ("service", service), ("region", region), ("gpu_model", gpu_model),
                         ("model_version", model_version)):
            if val is not None:
                q = q.where(getattr(AggregateRow, col) == val)
        usage = service_usage((r.to_dict() for r in session.scalars(q)), size)
        local = load_measurements(data_dir=None, session=session).measurements
        runs = {k: _optimizer_run(session, k[1]) for k in usage}
        hardware = {k: _hardware(run) for k, run in runs.items()}
        run_models = {k: _run_model(run) for k, run in runs.items()}
    shipped = load_measurements().measurements
    try:
        from core.pricing.effective import effective_catalog

        catalog = effective_catalog(settings)
    except Exception:  # noqa: BLE001 - no database overrides: the shipped catalog
        catalog = None
    out = []
    for key, u in sorted(usage.items()):
        mine = {k.split("/", 1)[1]: v for k, v in overrides.items() if k.split("/", 1)[0] == u.tenant}
        model = usage_model(u, services, mine) or run_models.get(key)
        rec = live_recommendation(u, model, size, [*local, *shipped],
                                  {m.label for m in local}, catalog)
        rec["hardware"] = hardware.get(key)
        out.append(rec)
    return out
