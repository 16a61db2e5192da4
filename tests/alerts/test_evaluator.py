"""The alert state machines: every rule kind fires exactly once when its condition starts to hold
and resolves exactly once when it stops, fed through the real pane aggregation."""

from __future__ import annotations

import pytest

from contracts.rules import RuleSpec
from streaming.alert_book import period_bounds
from streaming.alert_eval import AlertEvaluator
from tests.alerts.feed import DAY0, Feed, rule, usage


def test_budget_warns_at_each_share_then_fires_at_the_limit_once_and_resolves_when_the_hour_rolls():
    feed = Feed(rule("budget", period="1h", limit_usd=1.0))
    # 2 GPUs: $0.02 per 10 s, $1 after 500 s; keep spending well past the limit
    feed.run(DAY0, 900, gpus=2)
    levels = [(a["level"], a["state"]) for a in feed.alerts]
    assert levels == [("50%", "firing"), ("75%", "firing"), ("90%", "firing"), ("100%", "firing")]
    critical = feed.alerts[-1]
    assert critical["severity"] == "critical" and critical["value"] >= 1.0 and critical["threshold"] == 1.0
    assert critical["details"]["period_start"] == DAY0
    # the next hour: a little spend, far under every share
    feed.run(DAY0 + 3600, 60, gpus=1)
    assert all(states == ["firing", "resolved"] for states in feed.by_fingerprint().values())
    assert len(feed.by_fingerprint()) == 4


def test_budget_spend_is_exact_across_folded_and_open_windows():
    feed = Feed(rule("budget", period="1d", limit_usd=1000.0))
    feed.run(DAY0 + 7200, 1800, gpus=3)  # 180 steps x 3 GPUs x $0.01
    ev = feed.evaluator
    keys = list(ev.book.windows)
    assert ev.book.frozen_upto > DAY0 + 7200  # most windows already folded into period totals
    assert ev.book.period_spend(keys, "1d", ev.watermark) == pytest.approx(5.40, abs=1e-9)
    assert ev.book.period_spend(keys, "1h", ev.watermark) == pytest.approx(5.40, abs=1e-9)
    assert feed.alerts == []


def test_month_period_is_the_utc_calendar_month():
    start, end = period_bounds("month", DAY0 + 5)
    assert start == 1_761_955_200 and end == 1_764_547_200  # 2025-11-01 .. 2025-12-01


def test_burn_rate_fires_on_the_projection_and_resolves_once_spending_stops():
    feed = Feed(rule("burn_rate", horizon="day", limit_usd=20.0, lookback_s=300))
    noon = DAY0 + 12 * 3600
    # 1 GPU at $3.60/h: 12 h left -> ~$43 projected against $20
    feed.run(noon, 600, gpus=1)
    assert feed.transitions() == ["firing"]
    fired = feed.alerts[0]
    d = fired["details"]
    assert d["projected_low_usd"] <= d["projected_usd"] <= d["projected_high_usd"]
    assert d["projected_usd"] == pytest.approx(d["spent_usd"] + d["rate_usd_h"] * (d["period_end"] - fired["starts_at"]) / 3600)
    # acme stops; another tenant keeps the watermark moving
    feed.run(noon + 600, 900, gpus=1, tenant="other")
    assert feed.transitions() == ["firing", "resolved"]
    assert feed.alerts[1]["value"] <= 20.0


def test_idle_waste_fires_after_the_duration_and_resolves_when_utilisation_returns():
    feed = Feed(rule("idle_waste", threshold=0.5, for_s=180))
    feed.run(DAY0, 120, util=0.1)
    assert feed.transitions() == []  # idle, but not yet for 180 s
    feed.run(DAY0 + 120, 300, util=0.1)
    assert feed.transitions() == ["firing"]
    assert feed.alerts[0]["value"] == pytest.approx(0.9)
    feed.run(DAY0 + 420, 300, util=0.95)
    assert feed.transitions() == ["firing", "resolved"]


def test_idle_waste_resolves_when_the_group_stops_spending():
    feed = Feed(rule("idle_waste", threshold=0.5, for_s=60))
    feed.run(DAY0, 300, util=0.0)
    feed.run(DAY0 + 300, 600, tenant="other")
    assert feed.transitions() == ["firing", "resolved"]


def test_anomaly_fires_on_a_spike_over_its_own_baseline_and_resolves_after():
    feed = Feed(rule("anomaly", factor=3.0, baseline_s=900, min_baseline_windows=6))
    feed.run(DAY0, 900, gpus=1)  # baseline $3.60/h
    assert feed.transitions() == []
    feed.run(DAY0 + 900, 180, gpus=10)
    assert feed.transitions() == ["firing"]
    assert feed.alerts[0]["details"]["baseline_usd_h"] == pytest.approx(3.6, rel=0.05)
    feed.run(DAY0 + 1080, 600, gpus=1)
    assert feed.transitions() == ["firing", "resolved"]


def test_anomaly_needs_a_baseline_first():
    feed = Feed(rule("anomaly", factor=2.0, min_baseline_windows=6))
    feed.run(DAY0, 300, gpus=8)
    assert feed.transitions() == []


def test_gpu_quota_fires_when_the_tenant_uses_more_gpus_than_its_quota():
    feed = Feed(rule("gpu_quota", max_gpus=4))
    feed.run(DAY0, 300, gpus=2)
    feed.run(DAY0 + 300, 180, gpus=6)
    assert feed.transitions() == ["firing"]
    assert feed.alerts[0]["value"] > 4
    feed.run(DAY0 + 480, 300, gpus=2)
    assert feed.transitions() == ["firing", "resolved"]


def test_gpu_quota_sums_every_service_of_the_tenant():
    feed = Feed(rule("gpu_quota", max_gpus=3))
    for ts in range(DAY0, DAY0 + 300, 10):
        feed.send([usage(ts, service="train", gpu_index=i) for i in range(2)]
                  + [usage(ts, service="serve", gpu_index=i, host="h2") for i in range(2)])
    assert feed.transitions() == ["firing"]
    assert feed.alerts[0]["tenant"] == "acme" and feed.alerts[0]["group"] == {"tenant": "acme"}


def test_groups_have_their_own_fingerprints():
    feed = Feed(rule("idle_waste", threshold=0.5, for_s=0))
    for ts in range(DAY0, DAY0 + 200, 10):
        feed.send([usage(ts, service="a", util=0.0), usage(ts, service="b", util=0.0, host="h2")])
    fps = feed.by_fingerprint()
    assert len(fps) == 2 and all(s == ["firing"] for s in fps.values())
    assert {a["service"] for a in feed.alerts} == {"a", "b"}


def test_deleting_a_firing_rule_resolves_its_alerts_and_a_restored_alert_does_not_fire_twice():
    feed = Feed(rule("gpu_quota", max_gpus=1))
    feed.run(DAY0, 200, gpus=2)
    assert feed.transitions() == ["firing"]
    firing = feed.alerts[0]

    fresh = AlertEvaluator(clock=lambda: 0.0)  # a restarted worker: firing alerts from cost.alerts
    fresh.restore_alert(firing)
    fresh.set_rule(rule("gpu_quota", max_gpus=1))
    fresh.ready = True
    feed.evaluator = fresh
    feed.run(DAY0 + 200, 200, gpus=2)
    assert feed.transitions() == ["firing"]
    resolved = fresh.delete_rule("r1")
    assert [a["state"] for a in resolved] == ["resolved"] and resolved[0]["fingerprint"] == firing["fingerprint"]


def test_changing_a_rule_resolves_and_re_evaluates_but_renaming_keeps_state():
    feed = Feed(rule("gpu_quota", max_gpus=1))
    feed.run(DAY0, 200, gpus=2)
    renamed = rule("gpu_quota", max_gpus=1).model_copy(update={"name": "quota", "version": 2})
    assert feed.evaluator.set_rule(renamed) == []
    changed = rule("gpu_quota", max_gpus=5).model_copy(update={"version": 3})
    assert [a["state"] for a in feed.evaluator.set_rule(changed)] == ["resolved"]
    feed.run(DAY0 + 200, 200, gpus=2)
    assert feed.transitions() == ["firing"]  # 2 GPUs are within the new quota of 5


def test_rule_spec_validates_params_per_kind_and_groups_admin_rules_by_tenant():
    spec = RuleSpec(name="b", kind="budget", params={"limit_usd": 10, "period": "month"})
    assert spec.params["warn_at"] == [0.5, 0.75, 0.9] and spec.group_by == ["tenant"]
    with pytest.raises(ValueError):
        RuleSpec(name="b", kind="budget", params={"limit_usd": -1})
    with pytest.raises(ValueError):
        RuleSpec(name="b", kind="idle_waste", params={"threshold": 0.5, "bogus": 1})
    spec = RuleSpec(name="a", kind="anomaly", group_by=["service"])
    assert spec.group_by == ["tenant", "service"]


def test_budget_totals_survive_a_worker_restart_exactly():
    from contracts.aggregates import AggregateKey, PaneRecordKey
    from streaming.panes import PaneStore, WindowSpec, pane_sums

    feed = Feed(rule("budget", period="1d", limit_usd=10.0))
    feed.run(DAY0 + 3600, 1200, gpus=2)  # $2.40 so far, most of it folded
    state = feed.evaluator.book.state_records()
    assert state and all(v["frozen_upto"] == feed.evaluator.book.frozen_upto for _, v in state)

    # the restarted worker: the window stage restored from the pane records (re-emitting their
    # windows), the evaluator from its table of totals
    old = feed.windows
    windows = PaneStore(WindowSpec(60, 10, 120), old.price)
    for key, by_start in old.panes.items():
        for pane_start, by_partition in by_start.items():
            for partition, sums in by_partition.items():
                value = pane_sums(sums, old.partition_watermarks[partition])
                windows.restore(PaneRecordKey(partition, AggregateKey(*key), pane_start), value)
    fresh = AlertEvaluator(clock=lambda: 0.0)
    fresh.observe(windows.take_pending_windows(), windows.watermark)  # records may come before the restore
    for k, v in state:
        fresh.book.restore_state(k, v)
    fresh.set_rule(rule("budget", period="1d", limit_usd=10.0))
    fresh.ready = True
    feed.windows, feed.evaluator = windows, fresh
    feed.run(DAY0 + 4800, 600, gpus=2)
    keys = list(fresh.book.windows)
    assert fresh.book.period_spend(keys, "1d", fresh.watermark) == pytest.approx(3.60, abs=1e-9)


def test_a_rule_added_later_looks_back_only_as_far_as_its_condition_needs():
    feed = Feed()
    feed.run(DAY0, 600, gpus=6)  # over the quota long ago...
    feed.run(DAY0 + 600, 600, gpus=1)  # ...but not for the last ten minutes
    feed.evaluator.set_rule(rule("gpu_quota", max_gpus=3))
    feed.run(DAY0 + 1200, 60, gpus=1)
    assert feed.alerts == []  # no fire-and-resolve pair for history


def test_burn_rate_resolves_only_clearly_under_the_limit():
    feed = Feed(rule("burn_rate", horizon="day", limit_usd=0.8, lookback_s=300, hysteresis=0.5))
    noon = DAY0 + 12 * 3600
    feed.run(noon, 600, gpus=1)  # $0.60 spent, ~$43 projected
    assert feed.transitions() == ["firing"]
    feed.run(noon + 600, 600, tenant="other")  # acme stops: projected = spent = $0.60, under $0.80
    assert feed.transitions() == ["firing"]  # but not under $0.40: no flapping around the limit
    feed.run(DAY0 + 86400, 120, tenant="other")  # a new day: nothing spent, nothing projected
    assert feed.transitions() == ["firing", "resolved"]


def _canary_and_stable(feed, start: int, seconds: int, canary_util: float, stable_util: float = 1.0) -> None:
    for ts in range(start, start + seconds, 10):
        feed.send([usage(ts, service="chat", model_version="v2-canary", util=canary_util),
                   usage(ts, service="chat", model_version="v1", util=stable_util, host="h2")])


def test_a_rule_grouped_by_model_version_fires_for_the_canary_alone():
    feed = Feed(rule("idle_waste", threshold=0.5, for_s=60, group_by=["tenant", "service", "model_version"]))
    _canary_and_stable(feed, DAY0, 300, canary_util=0.1)
    assert feed.transitions() == ["firing"]
    a = feed.alerts[0]
    assert a["group"] == {"tenant": "acme", "service": "chat", "model_version": "v2-canary"}
    assert (a["model_version"], a["service"]) == ("v2-canary", "chat")
    assert a["value"] == pytest.approx(0.9)  # the canary's own idle share, not the service's (0.45)
    _canary_and_stable(feed, DAY0 + 300, 300, canary_util=1.0)
    assert feed.transitions() == ["firing", "resolved"]


def test_a_rule_filtered_to_a_model_version_sums_only_that_version():
    # The canary spends $0.01 per 10 s, the stable version as much: $0.30 each in 300 s.
    feed = Feed(rule("budget", period="1h", limit_usd=0.5, warn_at=[0.5], model_version="v2-canary"))
    _canary_and_stable(feed, DAY0, 300, canary_util=1.0)
    assert [(a["level"], a["model_version"]) for a in feed.alerts] == [("50%", "v2-canary")]
    assert feed.alerts[0]["group"] == {"tenant": "acme"} and feed.alerts[0]["value"] < 0.5
    unfiltered = Feed(rule("budget", period="1h", limit_usd=0.5, warn_at=[0.5]))
    _canary_and_stable(unfiltered, DAY0, 300, canary_util=1.0)
    assert [a["level"] for a in unfiltered.alerts] == ["50%", "100%"]  # both versions: $0.60
