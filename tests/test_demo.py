"""The first run's demo (`gpucost up`): one alert rule of each kind for the simulated tenants, tuned
from the fleet's own prices, accepted by the real API, made once however often `up` runs, and a demo
webhook whose signed deliveries reach the built-in receiver."""

from __future__ import annotations

import pytest

from ingest.simulator import Fleet, demo_rules, tenant_rates
from tests.support import Stack, wait_for


def test_demo_rules_are_one_of_each_kind_tuned_from_the_fleet():
    fleet = Fleet.build(hosts=24)
    now = 1_800_000_000 + 1800  # half past the hour, 30 min + 8 h 30 min into the UTC day
    rules = {r["kind"]: r for r in demo_rules(fleet, now)}
    assert sorted(rules) == ["anomaly", "budget", "burn_rate", "gpu_quota", "idle_waste"]
    rates = tenant_rates(fleet)
    assert set(r["tenant"] for r in rules.values()) <= set(rates)
    # By hand: the budget is 10 minutes of the tenant's list-price spend (fires at 50 % after ~5).
    b = rules["budget"]
    assert b["params"]["limit_usd"] == pytest.approx(round(rates[b["tenant"]][0] / 6, 2))
    # The quota is half the tenant's GPUs: exceeded as soon as all of them report.
    q = rules["gpu_quota"]
    assert q["params"]["max_gpus"] == rates[q["tenant"]][1] / 2
    # The burn-rate limit is 80 % of the rest of the day at the current rate.
    br = rules["burn_rate"]
    day_left_h = (86400 - now % 86400) / 3600
    assert br["params"]["limit_usd"] == pytest.approx(round(rates[br["tenant"]][0] * day_left_h * 0.8, 2))


@pytest.mark.integration
@pytest.mark.one_database
def test_demo_setup_through_the_api_is_idempotent_and_its_webhook_delivers(kafka_broker, tmp_path, database_url):
    import httpx

    from gpucost.cli import demo_setup

    stack = Stack(tmp_path, database_url=database_url, GPUCOST_WEBHOOK_ALLOW_PRIVATE="true",
                  GPUCOST_WEBHOOK_BACKOFF_BASE_S="1")
    try:
        stack.start_api()
        fleet = Fleet.build(hosts=24)
        assert demo_setup(stack.url, stack.admin_key, fleet) == {"rules": 5}
        assert demo_setup(stack.url, stack.admin_key, fleet) == {"rules": 0}  # a second `up`
        rules = stack.get("/api/rules")
        assert sorted(r["kind"] for r in rules) == ["anomaly", "budget", "burn_rate", "gpu_quota", "idle_waste"]
        hooks = stack.get("/api/webhooks")
        assert len(hooks) == 1 and hooks[0]["url"] == f"{stack.url}/api/receiver/{hooks[0]['id']}?fail_first=1"
        r = httpx.post(f"{stack.url}/api/webhooks/{hooks[0]['id']}/test", headers=stack.headers)
        assert r.status_code == 201
        delivered = wait_for(lambda: [d for d in stack.get("/api/deliveries") if d["status"] == "delivered"], 30,
                             what="the test delivery")
        assert delivered[0]["attempts"] == 2 and delivered[0]["last_status_code"] == 204  # a 503 first
        log = stack.get("/api/receiver/log")
        assert [e["answered"] for e in reversed(log)] == [503, 204]
        assert all(e["verified"] for e in log)
        assert {e["webhook_id_header"] for e in log} == {delivered[0]["webhook_id_header"]}
        # A forged delivery is refused and logged as such.
        forged = httpx.post(f"{stack.url}/api/receiver/{hooks[0]['id']}", content=b'{"type":"x"}',
                            headers={"webhook-id": "msg_forged", "webhook-timestamp": "1",
                                     "webhook-signature": "v1,AAAA"})
        assert forged.status_code == 401
        assert stack.get("/api/receiver/log")[0]["verified"] is False
    finally:
        stack.stop()
