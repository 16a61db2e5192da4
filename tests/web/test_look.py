"""The look: a light and a dark theme (kept across reloads, charts redrawn in its colours), every
control reachable with the keyboard, and an empty dashboard that says what to do."""

from __future__ import annotations

import pytest

from tests.web.browser import browser_page, real_errors

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.one_database]


async def test_theme_keyboard_and_empty_states(stack):
    stack.start_api()
    async with browser_page() as (page, errors):
        await page.emulate_media(color_scheme="dark")
        await page.goto(stack.url + f"/?api_key={stack.admin_key}")
        await page.wait_for_function("() => document.getElementById('conn').textContent === 'live'", timeout=30000)
        assert await page.evaluate("document.documentElement.dataset.theme") == "dark"
        dark_bg = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        # Keyboard: Tab from the top reaches the navigation, every filter, the range and the theme toggle.
        reached = set()
        for _ in range(40):
            await page.keyboard.press("Tab")
            reached.add(await page.evaluate("document.activeElement.id || document.activeElement.textContent.trim()"))
        for control in ("Overview", "Manage", "Webhook log", "f-tenant", "f-service", "f-region", "f-gpu_model",
                        "f-range", "f-clear", "theme-toggle"):
            assert control in reached, (control, reached)
        # The theme toggle by keyboard: light, kept across a reload, charts redrawn in its colours.
        await page.focus("#theme-toggle")
        await page.keyboard.press("Enter")
        assert await page.evaluate("document.documentElement.dataset.theme") == "light"
        assert await page.evaluate("getComputedStyle(document.body).backgroundColor") != dark_bg
        await page.reload()
        await page.wait_for_function("() => document.getElementById('conn').textContent === 'live'", timeout=30000)
        assert await page.evaluate("document.documentElement.dataset.theme") == "light"
        await page.wait_for_timeout(1500)
        font = await page.evaluate("document.getElementById('chart-tenant').layout.font.color")
        assert font == await page.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--fg').trim()")
        # Nothing has run yet: the charts and panels say what to do.
        note = await page.evaluate("document.getElementById('chart-tenant').layout.annotations[0].text")
        assert "start the simulator" in note
        assert "no live services" in await page.text_content("#recommendations")
        assert "set them under Manage" in await page.text_content("#budgets")
        assert real_errors(errors) == [], errors
