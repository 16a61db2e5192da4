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


async def test_the_bill_is_a_focus_export_per_closed_hour_imported_once_per_line(tmp_path):
    """Hours are billed once they close, each host once per hour, through the real importer; a
    line exported twice (the day's credit is in every export of its day) keeps its id."""
    from ingest.billing.synthetic import HourlyExport

    fleet = Fleet.build(seed=4, hosts=3)
    start = 3600 * 400_000.0
    export = HourlyExport(fleet, tmp_path / "billing", start)
    assert await export.due(start + 10, None) is None and not list((tmp_path / "billing").glob("*"))
    report = await export.due(start + 3 * 3600 + 5, None)
    assert report.rows_rejected == 0 and report.gpu_lines == 3 * 3
    assert len(list((tmp_path / "billing").glob("focus-*.csv"))) == 1
    assert await export.due(start + 3 * 3600 + 20, None) is None
    again = await export.due(start + 4 * 3600, None)
    assert again.gpu_lines == 3 and export.billed_upto == start + 4 * 3600
    first, second = export.reports
    assert first.totals[("aws", "credit")][:2] == second.totals[("aws", "credit")][:2] == [1, -25.0]


async def test_a_real_time_run_backfills_from_the_previous_hour_and_bills_it(tmp_path):
    from ingest.billing.synthetic import HourlyExport
    from ingest.simulator import backfill_start, run

    class Producer:
        def __init__(self):
            self.usage, self.billing = [], []

        async def send_usage(self, events, wait=True):
            self.usage += events
            return []

        async def send_billing(self, events, wait=True):
            self.billing += events
            return []

    now = 3600 * 400_000.0 + 1800
    assert backfill_start(now) == now - 1800 - 3600
    assert backfill_start(now, simulated_upto=now - 60) == now - 60
    fleet = Fleet.build(seed=4, hosts=3, interval_s=60.0)
    producer = Producer()
    start = backfill_start(now)
    export = HourlyExport(fleet, tmp_path, start)
    n = await run(producer, fleet, duration_s=5400, realtime=False, start_ts=start, billing=export)
    assert n == len(producer.usage) == 90 * fleet.gpus
    # The previous hour, whole, is billed: one line per host, and nothing of the open hour; beside
    # them the day's account-wide credit.
    assert sorted((b.instance_id, b.period_start, b.period_end) for b in producer.billing
                  if b.charge_category == "usage") == sorted((h.host, start, start + 3600) for h in fleet.hosts)
    day = start - start % 86400
    assert [(b.charge_category, b.cost_usd, b.period_start, b.period_end) for b in producer.billing
            if b.charge_category != "usage"] == [("credit", -25.0, day, day + 86400)]
