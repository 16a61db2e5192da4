"""The fleet simulator: deterministic for a seed and start time, valid events, billing that adds up."""

from contracts.events import UsageEvent
from ingest.simulator import TENANTS, Fleet

T0 = 1_790_000_000.0


def run(seed, steps=30):
    fleet = Fleet.build(seed=seed, hosts=12, interval_s=10.0)
    return [e.model_dump() for i in range(steps) for e in fleet.sample(T0 + 10 * i)]


def test_same_seed_same_events_other_seed_other_events():
    assert run(5) == run(5)
    assert run(5) != run(6)


def test_every_gpu_of_every_host_reports_each_interval_with_valid_values():
    fleet = Fleet.build(seed=1, hosts=12)
    events = fleet.sample(T0)
    assert len(events) == fleet.gpus
    assert len({(e.host, e.gpu_index) for e in events}) == fleet.gpus
    assert all(isinstance(e, UsageEvent) and 0 <= e.util <= 1 for e in events)
    assert {e.tenant for e in events} <= set(TENANTS)
    assert len({(e.cloud, e.gpu_model) for e in events}) > 3


def test_fleet_has_idle_stretches_and_busy_periods_over_a_day():
    fleet = Fleet.build(seed=2, hosts=24)
    utils = [e.util for h in range(0, 24) for e in fleet.sample(T0 + h * 3600)]
    assert min(utils) < 0.06 and max(utils) > 0.8


def test_billing_line_items_cover_each_closed_hour_once():
    fleet = Fleet.build(seed=4, hosts=3)
    start = 3600 * 400_000.0
    assert fleet.billing_due(start + 10) == []
    items = fleet.billing_due(start + 3 * 3600 + 5)
    assert len(items) == 3 * 3
    assert {(b.instance_id, b.period_start) for b in items} == {
        (h.host, start + k * 3600) for h in fleet.hosts for k in range(3)}
    assert fleet.billing_due(start + 3 * 3600 + 20) == []
    assert all(b.cost_usd > 0 and b.period_end - b.period_start == 3600 for b in items)
