"""The spend forecast (api/routes/forecast.py): Holt-Winters with daily seasonality learns a daily
pattern, its bounds hold the truth, the back-test forecasts each past day from the hours before it,
and short histories fall back to the recent rate, saying so."""

from __future__ import annotations

import numpy as np
import pytest

from api.routes.forecast import backtest, forecast_paths, hourly_spend, spend_forecast

DAY0 = 1_799_971_200  # a UTC midnight


def _series(days: int, noise: float = 0.3, seed: int = 1) -> np.ndarray:
    """Hourly USD: 10 + 6 sin(daily), a peak in the afternoon, plus noise."""
    h = np.arange(days * 24)
    rng = np.random.default_rng(seed)
    return 10 + 6 * np.sin(2 * np.pi * (h % 24 - 8) / 24) + rng.normal(0, noise, len(h))


def test_holt_winters_learns_the_daily_season():
    y = _series(7)
    method, mean, sims = forecast_paths(y, 24)
    assert method.startswith("Holt-Winters")
    truth = 10 + 6 * np.sin(2 * np.pi * (np.arange(24) - 8) / 24)
    # Hour by hour, not just the day's total: a flat forecast would miss by up to 6 USD an hour.
    assert np.max(np.abs(mean - truth)) < 1.5
    low, high = np.percentile(sims.sum(axis=0), [2.5, 97.5])
    assert low < truth.sum() < high
    assert abs(mean.sum() - 240) / 240 < 0.03


def test_backtest_forecasts_each_past_day_from_the_hours_before_it():
    y = _series(6)
    now = DAY0 + 6 * 86400 - 1  # the last hour of day 6 is the current one
    first_h, got = hourly_spend([{"window_start": DAY0 + i * 3600, "window_s": 3600, "spend_usd": v}
                                 for i, v in enumerate(y)], now)
    assert first_h == DAY0 and np.allclose(got, y)
    bt = backtest(first_h, got)
    # The 3rd to 5th days have two days before them and are whole (the 6th is still running).
    assert [b["day"] for b in bt] == ["2027-01-17", "2027-01-18", "2027-01-19"]
    for b in bt:
        assert b["actual_usd"] == pytest.approx(got[(np.datetime64(b["day"]) - np.datetime64("2027-01-15")).astype(int) * 24:][:24].sum())
        assert abs(b["error_pct"]) < 5


def test_the_day_projection_is_spent_so_far_plus_the_rest_of_the_day():
    y = _series(5)[:4 * 24 + 12 + 1]  # four days, then 12 whole hours and the running 13th
    now = DAY0 + (4 * 24 + 12) * 3600 + 1800  # half way through 12:00-13:00 UTC
    f = spend_forecast(DAY0, y, now)
    spent_today = float(y[4 * 24:].sum())
    assert f["day"]["spent_usd"] == pytest.approx(spent_today)
    truth_rest = 0.5 * (10 + 6 * np.sin(2 * np.pi * (12 - 8) / 24)) + sum(
        10 + 6 * np.sin(2 * np.pi * (h - 8) / 24) for h in range(13, 24))
    assert f["day"]["projected_usd"] == pytest.approx(spent_today + truth_rest, rel=0.05)
    assert f["day"]["low_usd"] < f["day"]["projected_usd"] < f["day"]["high_usd"]
    assert f["month"]["projected_usd"] > f["day"]["projected_usd"]


def test_a_short_history_uses_the_recent_rate_and_says_so():
    method, mean, _ = forecast_paths(np.full(10, 4.0), 5)
    assert "only 10 h of history" in method
    assert np.allclose(mean, 4.0)


def test_with_minutes_only_the_projection_holds_the_last_hours_rate():
    from api.routes.forecast import recent_rate

    now = DAY0 + 10 * 3600 + 1800  # 10:30 UTC
    # 30 aligned minutes at $0.10 each (= $6/h), plus overlapping hopping windows that must not count.
    rows = [{"window_start": now - 1800 + i * 60 + off, "window_s": 60, "spend_usd": 0.10}
            for i in range(30) for off in (0, 10, 20)]
    rate = recent_rate(rows, 60, now)
    assert rate[0] == pytest.approx(6.0) and rate[2] == 30
    first_h, y = hourly_spend(rows, now)
    f = spend_forecast(first_h, y, now, rate)
    assert "the last 30 min's mean rate held" in f["method"]
    # By hand: $3.00 spent since 10:00, then 13.5 h at $6/h: 3 + 81 = $84 for the day.
    assert f["day"]["spent_usd"] == pytest.approx(3.0)
    assert f["day"]["projected_usd"] == pytest.approx(84.0)


def test_a_flat_history_is_projected_flat_not_fitted():
    method, mean, sims = forecast_paths(np.full(72, 2.0), 24)
    assert "mean rate held" in method
    assert np.allclose(mean, 2.0) and np.isfinite(sims).all()
