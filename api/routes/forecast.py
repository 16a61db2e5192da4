"""Spend forecast: this UTC day's and this month's projected spend with bounds, from Holt-Winters
exponential smoothing with daily seasonality (statsmodels, additive, 24 hourly seasons) fitted on the
stored hourly spend, and back-tested on the past days it has: each of them forecast from the hours
before it alone, its error shown beside the projection.

Hourly spend comes from the hourly rollups (window_s=3600) where the store has them, else from the
aligned 1-minute windows summed per hour (windows whose start is a multiple of 60 s tile time).
With less than two days of hours there is no season to learn: the projection is the last hours'
mean rate, and the answer says so."""

from __future__ import annotations

import calendar
import math
import time
import warnings
from datetime import datetime, timezone

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select

from api.auth import Principal, principal
from core.db import session_scope
from core.tables.history import AggregateRow

router = APIRouter(prefix="/api", tags=["history"])
SEASON_H = 24
MIN_SEASONAL_H = 2 * SEASON_H
BOUNDS = (2.5, 97.5)  # percentiles of simulated paths: a 95 % interval
PATHS = 400


def hourly_spend(rows, now: float) -> tuple[int, np.ndarray]:
    """(first hour's start, spend per hour up to the current hour inclusive) from aggregate rows of
    one resolution; hours with no data are 0 (nothing ran)."""
    by_hour: dict[int, float] = {}
    for r in rows:
        if r["window_start"] % r["window_s"]:
            continue  # hopping windows overlap: only the aligned ones tile time
        h = int(r["window_start"] // 3600) * 3600
        by_hour[h] = by_hour.get(h, 0.0) + r["spend_usd"]
    if not by_hour:
        return int(now // 3600) * 3600, np.zeros(0)
    first, last = min(by_hour), int(now // 3600) * 3600
    return first, np.array([by_hour.get(first + i * 3600, 0.0) for i in range((last - first) // 3600 + 1)])


def _fit(y: np.ndarray):
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on short series
        return ExponentialSmoothing(y, trend=None, seasonal="add", seasonal_periods=SEASON_H,
                                    initialization_method="estimated").fit()


def recent_rate(rows, window_s: int, now: float, span_s: int = 3600) -> tuple[float, float, int] | None:
    """(USD per hour, its standard error, minutes seen) over the last `span_s` of aligned windows."""
    rates: dict[int, float] = {}
    for r in rows:
        if r["window_start"] % window_s == 0 and r["window_start"] >= now - span_s:
            rates[r["window_start"]] = rates.get(r["window_start"], 0.0) + r["spend_usd"] * 3600 / window_s
    if not rates:
        return None
    v = np.array(list(rates.values()))
    return float(v.mean()), float(v.std() / math.sqrt(len(v))), len(v)


def forecast_paths(y: np.ndarray, horizon_h: int, seed: int = 7,
                   fallback: tuple[float, float, int] | None = None) -> tuple[str, np.ndarray, np.ndarray]:
    """(method, mean hourly path, simulated paths: horizon_h x PATHS) for the next hours; spend
    cannot be negative, so paths are floored at 0."""
    horizon_h = max(horizon_h, 1)
    # A constant series (nothing ran, or a flat price) has no season to fit: the optimiser returns
    # NaN there, so it takes the plain rate below.
    if len(y) >= MIN_SEASONAL_H and np.ptp(y) > 1e-9:
        fit = _fit(y)
        mean = np.maximum(np.asarray(fit.forecast(horizon_h)), 0.0)
        np.random.seed(seed)  # the same data gives the same bounds
        sims = np.maximum(np.asarray(fit.simulate(horizon_h, repetitions=PATHS, error="add", anchor="end"))
                          .reshape(horizon_h, -1), 0.0)
        if np.isfinite(mean).all() and np.isfinite(sims).all():
            return "Holt-Winters (additive, daily seasonality, statsmodels)", mean, sims
    if fallback is not None:
        rate, sd, minutes = fallback
        basis = f"the last {minutes} min's mean rate"
    else:
        recent = y[-6:] if len(y) else np.zeros(1)
        rate, sd, basis = float(recent.mean()), float(recent.std()), f"the last {min(len(y), 6)} h's mean rate"
    rng = np.random.default_rng(seed)
    sims = np.maximum(rate + rng.normal(0.0, sd, size=(horizon_h, PATHS)), 0.0)
    return (f"{basis} held: only {len(y)} h of history, a daily season needs {MIN_SEASONAL_H} h",
            np.full(horizon_h, rate), sims)


def _interval(values: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(values, BOUNDS)
    return float(low), float(high)


def backtest(first_h: int, y: np.ndarray, max_days: int = 7) -> list[dict]:
    """Each past whole UTC day with two days of hours before it, forecast from those hours alone."""
    out = []
    end_h = first_h + len(y) * 3600 - 3600  # the current hour is not whole yet
    day = -(-first_h // 86400) * 86400  # the first whole UTC day
    days = []
    while day + 86400 <= end_h:
        days.append(day)
        day += 86400
    for day in days[-max_days:]:
        i = (day - first_h) // 3600
        if i < MIN_SEASONAL_H:
            continue
        _, mean, sims = forecast_paths(y[:i], SEASON_H)
        actual, predicted = float(y[i:i + SEASON_H].sum()), float(mean.sum())
        low, high = _interval(sims.sum(axis=0))
        out.append({"day": datetime.fromtimestamp(day, tz=timezone.utc).date().isoformat(), "actual_usd": actual,
                    "forecast_usd": predicted, "low_usd": low, "high_usd": high,
                    "error_pct": (predicted - actual) / actual * 100 if actual else None})
    return out


def spend_forecast(first_h: int, y: np.ndarray, now: float, fallback=None) -> dict:
    """Spent so far plus the forecast of the rest of this UTC day and month, with 95 % bounds from
    the simulated paths (the current hour counts what it spent plus its remaining share)."""
    hour = int(now // 3600) * 3600
    fit_y, current = (y[:-1], float(y[-1])) if len(y) else (y, 0.0)
    day_start = int(now // 86400) * 86400
    dt = datetime.fromtimestamp(now, tz=timezone.utc)
    month_start = int(datetime(dt.year, dt.month, 1, tzinfo=timezone.utc).timestamp())
    month_end = month_start + calendar.monthrange(dt.year, dt.month)[1] * 86400
    spent = lambda start: float(y[max(0, (start - first_h) // 3600):].sum()) if len(y) else 0.0  # noqa: E731
    spent_day, spent_month = spent(day_start), spent(month_start)
    left_day_h, left_month_h = (day_start + 86400 - hour) // 3600, (month_end - hour) // 3600
    method, mean, sims = forecast_paths(fit_y, int(left_month_h), fallback=fallback)
    rest = 1 - (now - hour) / 3600
    weights = np.ones(len(mean))
    weights[0] = rest  # of the current hour, only what is left of it is still to come
    day_w = weights.copy()
    day_w[left_day_h:] = 0.0
    day_paths, month_paths = (sims * day_w[:, None]).sum(axis=0), (sims * weights[:, None]).sum(axis=0)
    d_low, d_high = _interval(day_paths)
    m_low, m_high = _interval(month_paths)
    return {
        "method": method, "history_hours": int(len(fit_y)), "now": now,
        "day": {"spent_usd": spent_day, "projected_usd": spent_day + float((mean * day_w).sum()),
                "low_usd": spent_day + d_low, "high_usd": spent_day + d_high},
        "month": {"spent_usd": spent_month, "projected_usd": spent_month + float((mean * weights).sum()),
                  "low_usd": spent_month + m_low, "high_usd": spent_month + m_high},
        "hourly": {"history_from": first_h + max(0, len(fit_y) - 72) * 3600, "history_usd": fit_y[-72:].tolist(),
                   "current_hour_usd": current, "forecast_from": hour,
                   "forecast_usd": mean[:max(left_day_h, 24)].tolist(),
                   "forecast_low_usd": np.percentile(sims[:max(left_day_h, 24)], BOUNDS[0], axis=1).tolist(),
                   "forecast_high_usd": np.percentile(sims[:max(left_day_h, 24)], BOUNDS[1], axis=1).tolist()},
    }


@router.get("/forecast")
def forecast(request: Request, tenant: str | None = None, service: str | None = None, region: str | None = None,
             gpu_model: str | None = None, model_version: str | None = Query(None, max_length=200),
             days: int = Query(28, ge=1, le=92),
             p: Principal = Depends(principal)) -> dict:
    """This day's and month's projected spend (UTC) with 95 % bounds, and the back-test."""
    settings = request.app.state.settings
    now = time.time()
    since = int(now // 3600) * 3600 - days * 86400
    scoped = p.scope_tenant(tenant)

    def rows(window_s: int) -> list[dict]:
        q = select(AggregateRow).where(AggregateRow.window_s == window_s, AggregateRow.window_start >= since)
        for col, val in (("tenant", scoped), ("service", service), ("region", region), ("gpu_model", gpu_model),
                         ("model_version", model_version)):
            if val is not None:
                q = q.where(getattr(AggregateRow, col) == val)
        with session_scope(settings) as s:
            return [{"window_start": r.window_start, "window_s": r.window_s, "spend_usd": r.spend_usd}
                    for r in s.scalars(q)]

    hourly = rows(3600)
    source = "hourly rollups"
    minute = rows(settings.window_size_s) if len(hourly) < MIN_SEASONAL_H else []
    if minute and len({r["window_start"] for r in minute if r["window_start"] % r["window_s"] == 0}) / 60 >= len(hourly):
        hourly, source = minute, "1-minute windows summed per hour"
    first_h, y = hourly_spend(hourly, now)
    fallback = recent_rate(minute, settings.window_size_s, now) if minute else None
    out = spend_forecast(first_h, y, now, fallback)
    out["source"] = source
    out["backtest"] = backtest(first_h, y)
    errs = [abs(b["error_pct"]) for b in out["backtest"] if b["error_pct"] is not None]
    out["backtest_mape_pct"] = float(np.mean(errs)) if errs else None
    return out
