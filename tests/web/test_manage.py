"""Managing in the browser against the real stack: a webhook and an alert rule made in the forms
(a bad value answered beside its field), the rule fires on live usage, its signed delivery reaches
the built-in receiver after a retry and shows in the webhook log with its attempts; a test delivery;
enable/disable and delete; a budget setting backed by its rule; an API key created and revoked."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from contracts.events import UsageEvent
from ingest.producer import EventProducer
from tests.support import Stack, async_wait_for
from tests.web.browser import browser_page, real_errors

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.one_database]


@pytest.fixture
def receiving_stack(kafka_broker, tmp_path, database_url):
    # The built-in receiver is this API on 127.0.0.1: loopback webhooks allowed, as `gpucost up` does.
    # All of acme's usage comes from one host, so one partition of gpu.usage: the other three stop
    # holding the watermark back after 2 s instead of the default 30 s.
    s = Stack(tmp_path, database_url=database_url, GPUCOST_WEBHOOK_ALLOW_PRIVATE="true",
              GPUCOST_WEBHOOK_BACKOFF_BASE_S="1", GPUCOST_IDLE_PARTITION_S="2")
    try:
        yield s
    finally:
        s.stop(graceful=False)  # teardown: nothing is checked about the shutdown


def _usage(ts: float, gpu: int) -> UsageEvent:
    return UsageEvent(ts=ts, tenant="acme", service="chat-api", cloud="aws", region="us-east-1",
                      instance_type="g5.xlarge", gpu_model="A10G", host="h1", gpu_index=gpu, interval_s=1.0,
                      util=0.5, mem_used_gb=10, mem_total_gb=24, power_w=200, tokens=100, requests=1)


async def _fill(form, **values):
    for name, value in values.items():
        await form.locator(f"[name='{name}']").fill(str(value))


async def test_a_rule_made_in_the_form_fires_and_its_delivery_shows_in_the_log(receiving_stack):
    stack = receiving_stack
    stack.start_worker()
    stack.start_api()
    h = stack.headers
    async with browser_page() as (page, errors):
        await page.goto(stack.url + f"/?view=manage&api_key={stack.admin_key}")
        await page.wait_for_selector("#rule-form")

        # A webhook: created with a placeholder URL, then edited to point at the built-in receiver.
        hook_form = page.locator("#hook-form")
        await _fill(hook_form, name="ops receiver", url=stack.url + "/api/receiver/pending")
        await hook_form.locator("button[type=submit]").click()
        await page.wait_for_selector("#hook-secret code")
        hook = httpx.get(stack.url + "/api/webhooks", headers=h).json()[0]
        await page.locator("#hooks-list tr", has_text="ops receiver").locator("button", has_text="edit").click()
        await _fill(page.locator("#hook-form"), url=f"{stack.url}/api/receiver/{hook['id']}?fail_first=1")
        await page.locator("#hook-form button[type=submit]").click()
        await page.wait_for_selector(f"#hooks-list td:has-text('/api/receiver/{hook['id']}')")

        # A bad rule: the API's schema answers, beside the field it names.
        form = page.locator("#rule-form")
        await form.locator("[name=kind]").select_option("gpu_quota")
        await _fill(form, **{"name": "acme GPUs", "tenant": "acme", "params.max_gpus": "-1", "params.for_s": "0"})
        await form.locator("button[type=submit]").click()
        err = form.locator(".field-error[data-field='params.max_gpus']")
        await err.wait_for(state="visible")
        assert "greater than 0" in await err.text_content()
        assert httpx.get(stack.url + "/api/rules", headers=h).json() == []
        # Fixed: created, listed.
        await _fill(form, **{"params.max_gpus": "1.5"})
        await form.locator("button[type=submit]").click()
        await page.wait_for_selector("#rules-list td:has-text('acme GPUs')")
        rule = httpx.get(stack.url + "/api/rules", headers=h).json()[0]
        assert rule["kind"] == "gpu_quota" and rule["params"]["max_gpus"] == 1.5 and rule["tenant"] == "acme"
        await async_wait_for(lambda: httpx.get(stack.url + f"/api/rules/{rule['id']}", headers=h).json()["published"], 30,
                             what="rule published")

        # Two GPUs of acme, live: above the quota of 1.5 -> fires, is delivered (after one 503), logged.
        # Each GPU reports a 1 s sample for every second, as an exporter does, starting with the last
        # 70 s (busy before the rule existed): the newest completed 60 s window holds 2 GPUs at once.
        sent_upto = int(time.time()) - 70
        async with EventProducer(stack.settings) as producer:
            async def delivered():
                nonlocal sent_upto
                now = int(time.time())
                await producer.send_usage([_usage(float(ts), g) for ts in range(sent_upto + 1, now + 1) for g in (0, 1)])
                sent_upto = max(sent_upto, now)
                ds = httpx.get(stack.url + "/api/deliveries", headers=h).json()
                return [d for d in ds if d["alert"].get("rule_id") == rule["id"] and d["status"] == "delivered"]
            await async_wait_for(delivered, 120, interval=1.0, what="the rule's delivery")

        await page.click("nav a[data-view=webhooks]")
        assert page.url.endswith("/webhooks/log")
        row = page.locator("#deliveries tbody tr", has_text="acme GPUs")
        await row.first.wait_for(timeout=15000)
        cells = await row.first.locator("td").all_text_contents()
        assert cells[4] == "delivered" and cells[5] == "2" and cells[6] == "HTTP 204", cells
        await row.first.locator("button", has_text="attempts").click()
        attempts = row.first.locator(".attempts tbody tr")
        await attempts.nth(1).wait_for()
        assert "HTTP 503" in await attempts.nth(0).text_content()
        assert "HTTP 204" in await attempts.nth(1).text_content()
        # The receiver checked the signature with the webhook's secret.
        await page.wait_for_selector("#received td:has-text('valid ✓')")

        # A test delivery from the webhook's row reaches the log too.
        await page.goto(stack.url + "/?view=manage")
        await page.locator("#hooks-list tr", has_text="ops receiver").locator("button.test").click()
        await page.wait_for_selector("#hooks-list button.test:has-text('queued')")
        await async_wait_for(lambda: any(d["alert"]["rule_kind"] == "test" and d["status"] == "delivered"
                                         for d in httpx.get(stack.url + "/api/deliveries", headers=h).json()), 30,
                             what="the test delivery")

        # Disable, then delete the rule.
        await page.wait_for_selector("#rules-list td:has-text('acme GPUs')")
        await page.locator("#rules-list tr", has_text="acme GPUs").locator("input[type=checkbox]").uncheck()
        await async_wait_for(lambda: not httpx.get(stack.url + f"/api/rules/{rule['id']}", headers=h).json()["enabled"],
                             10, what="rule disabled")
        page.once("dialog", lambda d: asyncio.ensure_future(d.accept()))
        await page.locator("#rules-list tr", has_text="acme GPUs").locator("button.danger").click()
        await async_wait_for(lambda: httpx.get(stack.url + "/api/rules", headers=h).json() == [], 10, what="rule deleted")

        # A monthly budget for acme: stored as its budget rule, shown against use on the overview.
        bform = page.locator("#budget-form")
        await _fill(bform, tenant="acme", limit="0")
        await bform.locator("button[type=submit]").click()
        await bform.locator(".field-error[data-field=limit]").wait_for(state="visible")
        await _fill(bform, limit="5000")
        await bform.locator("button[type=submit]").click()
        await async_wait_for(lambda: [r for r in httpx.get(stack.url + "/api/rules", headers=h).json()
                                      if r["kind"] == "budget" and r["params"] == {"period": "month", "limit_usd": 5000.0,
                                                                                  "warn_at": [0.5, 0.75, 0.9]}],
                             10, what="budget rule")
        await page.click("nav a[data-view=overview]")
        await page.wait_for_selector("#budgets td:has-text('monthly budget')")
        assert "$5,000" in await page.text_content("#budgets")

        # An API key for a tenant: shown once, then revoked.
        await page.click("nav a[data-view=manage]")
        kform = page.locator("#key-form")
        await _fill(kform, tenant="globex", name="from the dashboard")
        await kform.locator("button[type=submit]").click()
        key = await page.locator("#new-key code").text_content()
        assert httpx.get(stack.url + "/api/keys/me", headers={"Authorization": f"Bearer {key}"}).json()["tenant"] == "globex"
        page.once("dialog", lambda d: asyncio.ensure_future(d.accept()))
        await page.locator("#keys-list tr", has_text="from the dashboard").locator("button.danger").click()
        await page.wait_for_selector("#keys-list tr:has-text('from the dashboard') td:has-text('revoked')")
        await async_wait_for(lambda: httpx.get(stack.url + "/api/keys/me", timeout=5,
                                               headers={"Authorization": f"Bearer {key}"}).status_code == 401, 15,
                             what="the revoked key refused")
        # Two 422s were provoked on purpose (the bad quota and the bad budget).
        assert real_errors(errors, allow=("status of 422",)) == [], errors
