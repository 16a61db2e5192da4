"""The spend forecast panel against the real API: with four days of hourly rollups in the store it
shows this day's and month's projection with bounds, from Holt-Winters, and the back-test error."""

from __future__ import annotations

import math
import time

import pytest

from tests.web.browser import browser_page, real_errors

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.one_database]


def _store_hourly(settings, days: int = 4) -> float:
    from core.db import init_db, session_scope
    from core.tables.history import AggregateRow

    init_db(settings)
    now_h = int(time.time() // 3600) * 3600
    total = 0.0
    with session_scope(settings) as s:
        for i in range(days * 24, -1, -1):
            start = now_h - i * 3600
            spend = 10 + 6 * math.sin(2 * math.pi * ((start // 3600) % 24 - 8) / 24)
            total += spend
            s.add(AggregateRow(tenant="acme", service="chat-api", region="us-east-1", gpu_model="A10G",
                               window_start=start, window_end=start + 3600, window_s=3600, spend_usd=spend,
                               spend_rate_usd_h=spend, gpu_seconds=3600 * 4, util_avg=0.5, idle_usd=spend / 2,
                               events=360, tokens=0, requests=0, fallback_priced_events=0))
    return total


async def test_the_forecast_panel_shows_projections_bounds_and_backtest(stack):
    _store_hourly(stack.settings)
    stack.start_api()
    api = stack.get("/api/forecast", tenant="acme")
    assert api["method"].startswith("Holt-Winters") and api["source"] == "hourly rollups"
    assert len(api["backtest"]) >= 1 and api["backtest_mape_pct"] < 5
    async with browser_page() as (page, errors):
        await page.goto(stack.url + f"/?tenant=acme&api_key={stack.admin_key}")
        await page.wait_for_selector("#forecast .kpi")
        text = await page.text_content("#forecast")
        assert "Holt-Winters" in text and "95 % bounds" in text and "mean absolute error" in text
        assert "today (UTC)" in text and "this month (UTC)" in text
        n = await page.evaluate("document.getElementById('chart-forecast').data.find(t => t.name === 'forecast').x.length")
        assert n >= 1
        hist = await page.evaluate("document.getElementById('chart-forecast').data[0].y.length")
        assert hist == 72
        assert real_errors(errors) == [], errors
