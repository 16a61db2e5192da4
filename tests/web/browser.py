"""Browser helpers for the dashboard tests: Debian's headless Chromium through Playwright, with
every console error, page error and CSP violation collected so a test can assert there were none."""

from __future__ import annotations

from contextlib import asynccontextmanager

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@asynccontextmanager
async def browser_page(viewport=None):
    """(page, errors): errors collects console errors and uncaught exceptions of the page."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport=viewport or {"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}")
                    if m.type == "error" else None)
            yield page, errors
        finally:
            await browser.close()


def real_errors(errors: list[str], allow: tuple[str, ...] = ()) -> list[str]:
    """Console errors apart from the ones a test provokes on purpose: a refused key answers 401
    (logged by Chromium as a failed resource load) and a refused WebSocket handshake."""
    return [e for e in errors if "401" not in e and "WebSocket connection" not in e
            and not any(a in e for a in allow)]
