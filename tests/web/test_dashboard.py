"""The dashboard in a real browser (Debian's headless Chromium through Playwright): it loads with
Plotly served locally, subscribes over /ws, and draws live points as events arrive."""

from __future__ import annotations

import asyncio
import time

import pytest

from ingest.producer import EventProducer
from ingest.simulator import Fleet
from tests.support import async_wait_for

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.one_database]  # one backend is enough for the browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]




async def test_dashboard_shows_live_points_arriving(stack, tmp_path):
    from playwright.async_api import async_playwright

    stack.start_worker()
    stack.start_api()
    fleet = Fleet.build(seed=3, hosts=6, interval_s=10.0)
    async with EventProducer(stack.settings) as producer:
        # Ten minutes of history, ending now, so there are complete windows to draw.
        now = time.time()
        for i in range(60):
            await producer.send_usage(fleet.sample(now - 600 + i * 10))

        key = getattr(stack, "admin_key", None)
        url = stack.url + "/" + (f"?api_key={key}" if key else "")
        requests_outside = []
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda r: None if r.url.startswith(stack.url) or r.url.startswith("ws://127.0.0.1")
                    else requests_outside.append(r.url))
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            await page.goto(url)
            assert await page.evaluate("typeof Plotly") == "object"
            await page.wait_for_function("() => document.getElementById('conn').textContent === 'live'", timeout=30000)
            await page.wait_for_function("() => window.gpucost.points > 0", timeout=60000)
            before = await page.evaluate("window.gpucost.points")
            messages_before = await page.evaluate("window.gpucost.messages")
            # New samples, stamped now: new windows must appear live, without a reload.
            for i in range(4):
                await producer.send_usage(fleet.sample(time.time() + i))
                await asyncio.sleep(0.5)
            await page.wait_for_function(f"() => window.gpucost.points > {before}", timeout=30000)
            assert await page.evaluate("window.gpucost.messages") > messages_before
            # Something is drawn: the tenant chart has traces with points.
            n_points = await page.evaluate(
                "document.getElementById('chart-tenant').data.reduce((n, t) => n + t.x.length, 0)")
            assert n_points > 0
            assert not await page.is_visible("#auth"), "the key prompt shows although the key is good"
            rate = await page.text_content("#kpi-rate")
            assert rate.startswith("$") and rate != "$0"
            await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            await browser.close()
    stats = stack.get("/api/stats")
    assert stats["deadletters_total"] == 0, stats
    assert errors == [], errors
    assert requests_outside == [], f"the dashboard reached outside the server: {requests_outside}"


async def test_without_a_key_the_dashboard_asks_for_one_instead_of_retrying(stack):
    from playwright.async_api import async_playwright

    stack.start_api()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = await browser.new_context()  # one profile, several tabs
        page = await context.new_page()
        await page.goto(stack.url + "/?api_key=gpc_not_a_real_key")
        await page.wait_for_selector("#auth:not([hidden])", timeout=15000)
        assert "not accepted" in await page.text_content("#auth-why")
        assert await page.text_content("#conn") == "no key"
        assert await page.is_visible("#auth")
        # Pasting a good key makes it live; it stays in this tab only.
        await page.fill("#auth-key", stack.admin_key)
        await page.click("#auth-form button")
        await page.wait_for_function("() => document.getElementById('conn').textContent === 'live'", timeout=30000)
        assert not await page.is_visible("#auth")
        assert await page.evaluate("localStorage.getItem('gpucost_api_key')") is None
        assert await page.evaluate("sessionStorage.getItem('gpucost_api_key')") == stack.admin_key
        # A new tab (same browser profile) needs the key again, unless the user asked to be remembered.
        other = await context.new_page()
        await other.goto(stack.url + "/")
        await other.wait_for_selector("#auth:not([hidden])", timeout=15000)
        await other.fill("#auth-key", stack.admin_key)
        await other.check("#auth-remember")
        await other.click("#auth-form button")
        await other.wait_for_function("() => document.getElementById('conn').textContent === 'live'", timeout=30000)
        assert await other.evaluate("localStorage.getItem('gpucost_api_key')") == stack.admin_key
        third = await context.new_page()
        await third.goto(stack.url + "/")
        await third.wait_for_function("() => document.getElementById('conn').textContent === 'live'", timeout=30000)
        await browser.close()


async def test_first_run_shows_billed_and_metered_bars_and_the_gap_explained(stack, tmp_path):
    """What `gpucost simulate` does on a first run (back-fill from the start of the previous hour,
    its FOCUS export imported as each hour closes), then the dashboard: both bars of the
    billed-vs-metered chart have data for every tenant and day, and the breakdown table names the
    savings plan's discount and the bill's daily credit (the "unassigned" tenant's: it is
    account-wide), with no console error."""
    from ingest.billing.synthetic import HourlyExport
    from ingest.simulator import backfill_start, run
    from tests.web.browser import browser_page

    stack.start_worker()
    stack.start_api()
    fleet = Fleet.build(seed=7, hosts=4, interval_s=60.0)
    now = time.time()
    start = backfill_start(now)
    export = HourlyExport(fleet, tmp_path / "billing", start)
    async with EventProducer(stack.settings) as producer:
        await run(producer, fleet, duration_s=(now - start) // 60 * 60, realtime=False, start_ts=start, billing=export)
    assert export.billed_upto == start + 3600 and export.reports[0].gpu_lines == len(fleet.hosts)
    tenants = {h.tenant for h in fleet.hosts}
    await async_wait_for(lambda: {r["tenant"] for r in stack.get("/api/reconciliation") if r["billed_usd"] > 0} == tenants
                         and any(r["breakdown"]["credits_usd"] for r in stack.get("/api/reconciliation")),
                         90, what="billed line items of every tenant, and the credit")

    async with browser_page() as (page, errors):
        await page.goto(stack.url + "/" + f"?api_key={stack.admin_key}")
        await page.wait_for_function(
            "() => { const d = document.getElementById('chart-reconcile').data;"
            " return d && d.length >= 2 && d[0].y.length > 0 && d[1].y.some((v) => v > 0); }", timeout=60000)
        traces = await page.evaluate(
            "document.getElementById('chart-reconcile').data.map((t) => ({name: t.name, x: t.x, y: t.y}))")
        metered, billed = traces[0], traces[1]
        assert metered["name"].startswith("metered") and billed["name"].startswith("billed")
        assert {x.split(" ")[0] for x in metered["x"]} == tenants | {"unassigned"} and metered["x"] == billed["x"]
        # Every tenant's billed day has both bars; the newest rows also meter the open, unbilled hour.
        days_billed = [i for i, v in enumerate(billed["y"]) if v > 0]
        assert {metered["x"][i].split(" ")[0] for i in days_billed} == tenants
        assert all(metered["y"][i] > 0 for i in days_billed)
        head = await page.eval_on_selector_all("#reconcile-breakdown th", "ths => ths.map((t) => t.textContent)")
        assert head[:5] == ["tenant", "day", "metered", "billed", "billed − metered"]
        assert "commitment discount" in head and "awaiting the bill" in head and "credits" in head
        cells = await page.eval_on_selector_all("#reconcile-breakdown tbody tr", "trs => trs.length")
        assert cells == len(metered["x"])
        rows = await page.eval_on_selector_all(
            "#reconcile-breakdown tbody tr", "trs => trs.map((tr) => [...tr.cells].map((td) => td.textContent))")
        credits = head.index("credits")
        unassigned = [r for r in rows if r[0] == "unassigned"]
        assert unassigned and all(r[2:5] == ["$0", "-$25", "-$25"] and r[credits] == "-$25" for r in unassigned), rows
        assert all(r[credits] == "$0" for r in rows if r[0] != "unassigned"), rows
        await page.locator("#reconcile-breakdown").locator("..").screenshot(path=str(tmp_path / "reconcile.png"))
    assert errors == [], errors
