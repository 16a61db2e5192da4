"""Webhook delivery on the real broker and a real HTTP receiver on 127.0.0.1: an alert on
cost.alerts is stored in the outbox, signed per Standard Webhooks, retried with the same
webhook-id until acknowledged, survives the API being killed mid-delivery, expires to a visible
dead status, and is delivered once however often it is read."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from core.kafka import producer
from tests.alerts.receiver import Receiver
from tests.support import Stack, wait_for

pytestmark = pytest.mark.integration

FAST = dict(GPUCOST_WEBHOOK_ALLOW_PRIVATE="true", GPUCOST_WEBHOOK_BACKOFF_BASE_S="0.2",
            GPUCOST_WEBHOOK_BACKOFF_MAX_S="1", GPUCOST_WEBHOOK_POLL_S="0.1", GPUCOST_WEBHOOK_TIMEOUT_S="2",
            GPUCOST_TOPIC_PARTITIONS="1")


@pytest.fixture
def hook_stack(kafka_broker, tmp_path, database_url, request):
    overrides = {**FAST, **getattr(request, "param", {})}
    s = Stack(tmp_path, database_url=database_url, **overrides)
    try:
        yield s
    finally:
        s.stop(graceful=False)  # teardown: nothing is checked about the shutdown


@pytest.fixture
def receiver(request):
    r = Receiver(**getattr(request, "param", {}))
    yield r
    r.close()


def an_alert(state="firing", tenant="acme", fingerprint=None, starts_at=1_764_000_000.0) -> dict:
    return {"fingerprint": fingerprint or uuid.uuid4().hex[:20], "state": state, "rule_id": "r-1",
            "rule_kind": "budget", "rule_name": "acme daily budget", "rule_version": 1, "level": "100%",
            "severity": "critical", "group": {"tenant": tenant}, "tenant": tenant, "service": None,
            "region": None, "gpu_model": None, "model_version": None, "value": 123.4, "threshold": 100.0,
            "summary": "1d spend $123.40 reached 100% of the $100.00 budget", "starts_at": starts_at,
            "ends_at": None if state == "firing" else starts_at + 600, "details": {}, "emitted_at": time.time()}


def publish(stack: Stack, *alerts: dict) -> None:
    async def go():
        p = producer(stack.settings)
        await p.start()
        try:
            for a in alerts:
                await p.send_and_wait(stack.settings.alerts_topic, key=a["fingerprint"].encode(), value=json.dumps(a).encode())
        finally:
            await p.stop()
    asyncio.run(go())


def create_hook(stack: Stack, url: str, fmt: str = "gpucost", headers=None, **extra) -> dict:
    r = httpx.post(stack.url + "/api/webhooks", json={"name": "ops", "url": url, "format": fmt, **extra},
                   headers=headers or stack.headers, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()


def deliveries(stack: Stack, headers=None, **params) -> list[dict]:
    r = httpx.get(stack.url + "/api/deliveries", params=params, headers=headers or stack.headers, timeout=10)
    r.raise_for_status()
    return r.json()


@pytest.mark.parametrize("receiver", [{"statuses": [500, 500, 500, 200]}], indirect=True)
def test_a_receiver_failing_three_times_gets_the_alert_with_the_same_webhook_id(hook_stack, receiver):
    hook_stack.start_api()
    hook = create_hook(hook_stack, receiver.url)
    alert = an_alert()
    publish(hook_stack, alert, alert)  # read twice, delivered once

    wait_for(lambda: receiver.acknowledged(), 30, what="an acknowledged delivery")
    time.sleep(1.0)
    assert [r.status for r in receiver.requests] == [500, 500, 500, 200]
    ids = {r.headers["webhook-id"] for r in receiver.requests}
    assert len(ids) == 1
    for r in receiver.requests:  # each attempt is signed afresh and verifies with the library
        assert Webhook(hook["secret"]).verify(r.body, r.headers)["data"] == alert
    gaps = [b.at - a.at for a, b in zip(receiver.requests, receiver.requests[1:])]
    assert all(g >= 0.09 for g in gaps), gaps  # backoff with jitter: never immediately

    [d] = deliveries(hook_stack)
    assert d["status"] == "delivered" and d["attempts"] == 4 and d["webhook_id_header"] in ids
    detail = httpx.get(f"{hook_stack.url}/api/deliveries/{d['id']}", headers=hook_stack.headers, timeout=10).json()
    assert [a["status_code"] for a in detail["attempt_log"]] == [500, 500, 500, 200]


def test_the_signature_fails_when_the_body_is_altered(hook_stack, receiver):
    hook_stack.start_api()
    hook = create_hook(hook_stack, receiver.url)
    publish(hook_stack, an_alert())
    wait_for(lambda: receiver.acknowledged(), 30, what="a delivery")
    got = receiver.requests[0]
    wh = Webhook(hook["secret"])
    assert wh.verify(got.body, got.headers)["type"] == "alert.firing"
    altered = got.body.replace(b'"value":123.4', b'"value":1.0')
    assert altered != got.body
    with pytest.raises(WebhookVerificationError):
        wh.verify(altered, got.headers)
    with pytest.raises(WebhookVerificationError):  # another webhook's secret does not verify either
        Webhook(create_hook(hook_stack, receiver.url)["secret"]).verify(got.body, got.headers)


def test_a_rotated_secret_signs_alongside_the_old_one_during_the_grace_period(hook_stack, receiver):
    hook_stack.start_api()
    hook = create_hook(hook_stack, receiver.url)
    rotated = httpx.post(f"{hook_stack.url}/api/webhooks/{hook['id']}/rotate-secret", json={"grace_s": 3600},
                         headers=hook_stack.headers, timeout=10).json()
    assert rotated["secret"] != hook["secret"]
    publish(hook_stack, an_alert())
    wait_for(lambda: receiver.acknowledged(), 30, what="a delivery")
    got = receiver.requests[0]
    assert len(got.headers["webhook-signature"].split()) == 2
    Webhook(hook["secret"]).verify(got.body, got.headers)
    Webhook(rotated["secret"]).verify(got.body, got.headers)


@pytest.mark.parametrize("receiver", [{"statuses": [200], "delay_s": 6.0}], indirect=True)
def test_the_api_killed_mid_delivery_still_delivers_after_a_restart(hook_stack, receiver):
    hook_stack.start_api()
    create_hook(hook_stack, receiver.url)
    publish(hook_stack, an_alert(fingerprint="mid-delivery"))
    wait_for(lambda: receiver.requests, 30, what="the first attempt to arrive")
    hook_stack.kill("api")  # SIGKILL while the receiver is still answering

    publish(hook_stack, an_alert(fingerprint="while-down"))  # arrives while no API runs at all
    receiver.delay_s = 0.0
    hook_stack.start_api()
    wait_for(lambda: len({d["fingerprint"] for d in deliveries(hook_stack, status="delivered")}) == 2, 40,
             what="both alerts delivered after the restart")
    first_id = receiver.requests[0].headers["webhook-id"]
    assert [r.headers["webhook-id"] for r in receiver.requests].count(first_id) >= 2  # the retry kept its id
    assert {r.json()["data"]["fingerprint"] for r in receiver.requests} == {"mid-delivery", "while-down"}


@pytest.mark.parametrize("receiver", [{"statuses": [500, 500, 200]}], indirect=True)
def test_a_resolution_waits_for_its_firing_to_be_delivered_first(hook_stack, receiver):
    hook_stack.start_api()
    create_hook(hook_stack, receiver.url)
    publish(hook_stack, an_alert(fingerprint="fp"), an_alert(state="resolved", fingerprint="fp"))
    wait_for(lambda: len(receiver.acknowledged()) == 2, 30, what="both transitions")
    assert [(r.json()["data"]["state"], r.status) for r in receiver.requests] == [
        ("firing", 500), ("firing", 500), ("firing", 200), ("resolved", 200)]


@pytest.mark.parametrize("receiver", [{"statuses": [429, 200], "headers": {"Retry-After": "2"}}], indirect=True)
def test_retry_after_is_honoured(hook_stack, receiver):
    hook_stack.start_api()
    create_hook(hook_stack, receiver.url)
    publish(hook_stack, an_alert())
    wait_for(lambda: receiver.acknowledged(), 30, what="a delivery")
    assert receiver.requests[1].at - receiver.requests[0].at >= 1.9


@pytest.mark.parametrize("hook_stack", [{"GPUCOST_WEBHOOK_EXPIRE_S": "1.5"}], indirect=True)
@pytest.mark.parametrize("receiver", [{"statuses": [503]}], indirect=True)
def test_an_expired_delivery_is_dead_and_can_be_retried_by_hand(hook_stack, receiver):
    hook_stack.start_api()
    create_hook(hook_stack, receiver.url)
    publish(hook_stack, an_alert())
    [dead] = wait_for(lambda: deliveries(hook_stack, status="dead"), 30, what="a dead delivery")
    assert dead["attempts"] >= 2 and "HTTP 503" in dead["last_error"] and dead["next_attempt_at"] is None
    n = len(receiver.requests)
    receiver.statuses = [200]
    r = httpx.post(f"{hook_stack.url}/api/deliveries/{dead['id']}/retry", headers=hook_stack.headers, timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "pending"
    wait_for(lambda: deliveries(hook_stack, status="delivered"), 30, what="the retried delivery")
    assert receiver.requests[n].headers["webhook-id"] == receiver.requests[0].headers["webhook-id"]


def test_webhooks_and_deliveries_are_limited_to_the_keys_tenant(hook_stack, receiver):
    hook_stack.start_api()
    acme = {"Authorization": f"Bearer {hook_stack.create_key('acme')}"}
    other = {"Authorization": f"Bearer {hook_stack.create_key('other')}"}
    acme_hook = create_hook(hook_stack, receiver.url, headers=acme)
    assert acme_hook["tenant"] == "acme"
    r = httpx.post(hook_stack.url + "/api/webhooks", json={"name": "x", "url": receiver.url, "tenant": "acme"},
                   headers=other, timeout=10)
    assert r.status_code == 403
    publish(hook_stack, an_alert(tenant="other"), an_alert(tenant="acme"))
    wait_for(lambda: receiver.acknowledged(), 30, what="a delivery")
    time.sleep(1.5)
    assert [r.json()["data"]["tenant"] for r in receiver.requests] == ["acme"]
    assert len(deliveries(hook_stack, headers=acme)) == 1
    assert deliveries(hook_stack, headers=other) == []
    assert httpx.get(f"{hook_stack.url}/api/webhooks/{acme_hook['id']}", headers=other, timeout=10).status_code == 404
    assert httpx.get(hook_stack.url + "/api/webhooks", headers=other, timeout=10).json() == []
    assert httpx.delete(f"{hook_stack.url}/api/webhooks/{acme_hook['id']}", headers=other, timeout=10).status_code == 404
    assert httpx.delete(f"{hook_stack.url}/api/webhooks/{acme_hook['id']}", headers=acme, timeout=10).status_code == 204
    assert deliveries(hook_stack) == []  # its deliveries and their attempt log go with it


@pytest.mark.parametrize("hook_stack", [{"GPUCOST_WEBHOOK_ALLOW_PRIVATE": "false"}], indirect=True)
def test_private_and_loopback_urls_are_refused_by_default(hook_stack):
    hook_stack.start_api()
    for url in ("http://127.0.0.1:9/hook", "http://10.0.0.1/x", "http://[::1]/x", "http://169.254.169.254/latest",
                "ftp://example.com/x", "file:///etc/passwd", "http://user:pw@93.184.216.34/"):
        r = httpx.post(hook_stack.url + "/api/webhooks", json={"name": "x", "url": url}, headers=hook_stack.headers, timeout=10)
        assert r.status_code == 422, (url, r.text)
