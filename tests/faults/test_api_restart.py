"""Restart the API under connected clients: a Python WebSocket client and the dashboard in
headless Chromium both reconnect and resubscribe on their own, and receive updates published
after the restart (which only a resubscribed connection gets)."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from bench.fault_harness import ReconnectingClient, aggregate_record, publish_aggregates
from tests.support import async_wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

NOW = int(time.time()) // 60 * 60
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


async def restart_api(stack, sig=signal.SIGKILL) -> float:
    stack.kill("api", sig)
    started = time.monotonic()
    await asyncio.sleep(1.0)  # clients notice and start retrying
    await asyncio.to_thread(stack.start_api)
    return time.monotonic() - started


async def test_websocket_client_reconnects_and_resubscribes_after_api_restart(stack):
    stack.start_api()
    await publish_aggregates(stack.settings, [aggregate_record("acme", "train", NOW - 120, 1.0)])
    client = ReconnectingClient(stack.ws_url, stack.admin_key)
    task = asyncio.create_task(client.run())
    try:
        await async_wait_for(lambda: client.saw(1.0), 20, what="first record")
        down_s = await restart_api(stack)
        await async_wait_for(lambda: client.connections >= 2 and len(client.snapshots) >= 2, 30, what="reconnect")
        assert any(r["spend_usd"] == 1.0 for r in client.snapshots[-1])  # state survived the restart
        await publish_aggregates(stack.settings, [aggregate_record("acme", "train", NOW - 60, 2.0)])
        await async_wait_for(lambda: any(r["spend_usd"] == 2.0 for r in client.updates), 20, what="live after restart")
        print(f"\nAPI restart: down {down_s:.1f}s, client reconnected (connections={client.connections}) and resubscribed")
    finally:
        task.cancel()


@pytest.mark.browser
@pytest.mark.one_database
async def test_dashboard_reconnects_and_resubscribes_after_api_restart(stack):
    from playwright.async_api import async_playwright

    stack.start_api()
    await publish_aggregates(stack.settings, [aggregate_record("acme", "train", NOW - 120, 1.0)])
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, headless=True)
        try:
            page = await browser.new_page()
            await page.goto(f"{stack.url}/?api_key={stack.admin_key}")
            await page.wait_for_function("() => document.getElementById('conn').textContent === 'live'", timeout=20000)
            # functions, not expressions: the page's CSP forbids eval, which expressions need
            has = "(spend) => [...window.gpucost.live.values()].some(w => [...w.values()].some(r => r.spend_usd === spend))"
            await page.wait_for_function(has, arg=1.0, timeout=20000)

            stack.kill("api", signal.SIGKILL)
            await page.wait_for_function("() => document.getElementById('conn').textContent !== 'live'", timeout=20000)
            await asyncio.to_thread(stack.start_api)
            await page.wait_for_function("() => document.getElementById('conn').textContent === 'live'", timeout=30000)
            # Published after the restart: only a resubscribed socket receives it.
            await publish_aggregates(stack.settings, [aggregate_record("acme", "train", NOW - 60, 2.0)])
            await page.wait_for_function(has, arg=2.0, timeout=20000)
            assert await page.evaluate("() => window.gpucost.messages") >= 2
        finally:
            await browser.close()
