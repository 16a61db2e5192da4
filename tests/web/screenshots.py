"""Screenshots of the dashboard's main views for docs/ (and the README), taken from the real stack
with the simulated fleet and the demo rules of `gpucost up`:

    PYTHONPATH=$PWD python -m tests.web.screenshots docs/

Needs the Kafka broker on GPUCOST_KAFKA_BOOTSTRAP (as the tests do) and /usr/bin/chromium."""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from tests.support import Stack, wait_for
from tests.web.browser import browser_page

VIEWS = [
    ("dashboard-overview-dark.png", "/", "dark"),
    ("dashboard-overview-light.png", "/", "light"),
    ("dashboard-service.png", "/?view=service&tenant=acme&service=chat-api", "dark"),
    ("dashboard-manage.png", "/?view=manage", "dark"),
    ("dashboard-webhook-log.png", "/webhooks/log", "dark"),
]


async def main(out_dir: Path) -> None:
    from gpucost.cli import demo_setup
    from ingest.producer import EventProducer
    from ingest.billing.synthetic import HourlyExport
    from ingest.simulator import Fleet

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), GPUCOST_WEBHOOK_ALLOW_PRIVATE="true", GPUCOST_WEBHOOK_BACKOFF_BASE_S="1")
        try:
            stack.start_worker()
            stack.start_api()
            fleet = Fleet.build(seed=7, hosts=24, interval_s=10.0)
            demo_setup(stack.url, stack.admin_key, fleet)
            wait_for(lambda: all(r["published"] for r in stack.get("/api/rules")), 30, what="rules published")
            async with EventProducer(stack.settings) as producer:
                now = time.time()
                export = HourlyExport(fleet, Path(tmp) / "billing", now - 2400)
                for i in range(40 * 6):  # 40 minutes up to now
                    await producer.send_usage(fleet.sample(now - 2400 + i * 10))
                    await export.due(now - 2400 + i * 10, producer)
            wait_for(lambda: len(stack.get("/api/history", limit=50000)) > 1000, 120, what="history")
            hook = stack.get("/api/webhooks")[0]
            import httpx

            httpx.post(f"{stack.url}/api/webhooks/{hook['id']}/test", headers=stack.headers)
            wait_for(lambda: stack.get("/api/deliveries"), 60, what="deliveries")
            time.sleep(5)
            for name, path, theme in VIEWS:
                async with browser_page(viewport={"width": 1440, "height": 900}) as (page, errors):
                    await page.goto(stack.url + "/static/favicon.svg")
                    await page.evaluate(f"localStorage.setItem('gpucost_theme', '{theme}')")
                    sep = "&" if "?" in path else "?"
                    await page.goto(stack.url + path + f"{sep}api_key={stack.admin_key}")
                    await page.wait_for_function("() => document.getElementById('conn').textContent === 'live'",
                                                 timeout=30000)
                    await asyncio.sleep(6)  # charts, recommendations and the forecast arrive
                    await page.screenshot(path=str(out_dir / name), full_page=True)
                    if errors:
                        print(name, errors, file=sys.stderr)
                print(out_dir / name)
        finally:
            stack.stop()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs")))
