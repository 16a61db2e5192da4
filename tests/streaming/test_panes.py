"""The aggregation as a specification: hopping windows from panes, the cost model, lateness,
and idempotent replay (the basis of exactly-once results on at-least-once delivery)."""

import pytest

from contracts.events import UsageEvent
from streaming.panes import PaneStore, WindowSpec

T0 = 1_790_000_000  # a multiple of 10 and of 60


def ev(ts, util=0.5, interval_s=10.0, tenant="acme", service="chat", region="us-east-1",
       gpu_model="H100-80GB", tokens=None, **kw):
    return UsageEvent(ts=ts, tenant=tenant, service=service, cloud="aws", region=region,
                      instance_type="p5.48xlarge", gpu_model=gpu_model, host="h", gpu_index=0,
                      interval_s=interval_s, util=util, mem_used_gb=1.0, mem_total_gb=80.0,
                      power_w=100.0, tokens=tokens, **kw)


PRICE = 3.6  # USD per GPU-hour: 10 s costs exactly 0.01


def store(size=60, step=10, lateness=120, partitions=None):
    return PaneStore(WindowSpec(size, step, lateness), lambda e: (PRICE, False),
                     expected_partitions=frozenset(partitions) if partitions is not None else None)


def test_window_spec_rejects_size_not_multiple_of_step():
    with pytest.raises(ValueError):
        WindowSpec(60, 7)


def window_stage(*stage1_stores):
    """The window stage: a store fed only the durable pane records the stage-1 stores wrote."""
    w = store()
    for s in stage1_stores:
        for record_key, value in s.take_dirty():
            w.restore(record_key, value)
    return w


def test_event_counts_wholly_in_every_window_containing_its_ts():
    s = store()
    s.add([ev(T0 + 25)], partition=0, offset=0)
    recs = window_stage(s).take_pending_windows()
    # windows [T0-30, T0+30) ... [T0+20, T0+80) contain T0+25: starts T0-30..T0+20 step 10
    assert sorted(r.window_start for r in recs) == [T0 - 30, T0 - 20, T0 - 10, T0, T0 + 10, T0 + 20]
    assert all(r.events == 1 and r.spend_usd == pytest.approx(0.01) for r in recs)


def test_spend_idle_util_follow_the_cost_model():
    s = store()
    s.add([ev(T0 + 1, util=0.25, interval_s=10), ev(T0 + 2, util=1.0, interval_s=30)], 0, 0)
    w = window_stage(s).window(("acme", "chat", "us-east-1", "H100-80GB", ""), T0)
    assert w.spend_usd == pytest.approx(0.01 + 0.03)
    assert w.spend_rate_usd_h == pytest.approx(0.04 * 3600 / 60)
    assert w.gpu_seconds == pytest.approx(40)
    assert w.util_avg == pytest.approx((0.25 * 10 + 1.0 * 30) / 40)
    assert w.idle_usd == pytest.approx(0.01 * 0.75 + 0.03 * 0.0)


def test_keys_are_aggregated_separately():
    s = store()
    s.add([ev(T0, tenant="a"), ev(T0, tenant="b"), ev(T0, tenant="b", gpu_model="L4")], 0, 0)
    assert set(s.panes) == {("a", "chat", "us-east-1", "H100-80GB", ""), ("b", "chat", "us-east-1", "H100-80GB", ""),
                            ("b", "chat", "us-east-1", "L4", "")}


def test_panes_of_one_key_from_two_workers_sum_into_one_window():
    worker_a, worker_b = store(), store()  # each owns one source partition
    worker_a.add([ev(T0 + 1)], 0, 5)
    worker_b.add([ev(T0 + 2), ev(T0 + 3)], 1, 9)
    w = window_stage(worker_a, worker_b).window(("acme", "chat", "us-east-1", "H100-80GB", ""), T0)
    assert w.events == 3 and w.spend_usd == pytest.approx(0.03)


def test_the_window_stage_reading_a_record_twice_changes_nothing():
    s = store()
    s.add([ev(T0 + 1), ev(T0 + 2)], 0, 0)
    records = s.take_dirty()
    w = store()
    for r in records + records:
        w.restore(r[0], r[1])
    assert w.window(("acme", "chat", "us-east-1", "H100-80GB", ""), T0).events == 2


def test_the_window_stage_drops_a_pane_when_its_own_watermark_closes_it():
    """A meter's tombstone alone does not close windows (another meter may lag); the window
    stage's watermark, the minimum over every meter's partitions, does."""
    s = store(lateness=0)
    s.add([ev(T0)], 0, 0)
    w = store(lateness=0)
    for record_key, value in s.take_dirty():
        w.restore(record_key, value)
    s.add([ev(T0 + 120)], 0, 1)
    for record_key in s.evict_closed():
        w.restore(record_key, None)
    w.take_pending_windows()
    assert w.window(("acme", "chat", "us-east-1", "H100-80GB", ""), T0) is not None  # w's watermark: T0
    for record_key, value in s.take_dirty():
        w.restore(record_key, value)  # the pane record of T0+120 carries the watermark on
    w.take_pending_windows()
    assert w.window(("acme", "chat", "us-east-1", "H100-80GB", ""), T0) is None


def test_replayed_messages_are_not_counted_twice_after_restore():
    s = store()
    s.add([ev(T0 + 1), ev(T0 + 11)], 0, 0)
    s.add([ev(T0 + 2)], 0, 1)
    durable = s.take_dirty()
    # A new worker restores the durable pane records, then Kafka redelivers offsets 0..2.
    t = store()
    for key, value in durable:
        t.restore(key, value)
    t.add([ev(T0 + 1), ev(T0 + 11)], 0, 0)
    t.add([ev(T0 + 2)], 0, 1)
    t.add([ev(T0 + 3)], 0, 2)  # new
    w = t.window(("acme", "chat", "us-east-1", "H100-80GB", ""), T0)
    assert w.events == 4
    assert w.spend_usd == pytest.approx(0.04)
    assert t.replayed_events == 3


def test_a_pane_not_yet_durable_takes_the_replay():
    """Pane B's record was never written before the crash: the replay must fill it."""
    s = store()
    s.add([ev(T0 + 1)], 0, 0)
    durable = s.take_dirty()
    s.add([ev(T0 + 1), ev(T0 + 15)], 0, 1)  # crash before this batch was persisted
    t = store()
    for key, value in durable:
        t.restore(key, value)
    t.add([ev(T0 + 1), ev(T0 + 15)], 0, 1)
    w = t.window(("acme", "chat", "us-east-1", "H100-80GB", ""), T0)
    assert w.events == 3


def test_late_events_are_rejected_with_a_reason_not_dropped():
    s = store(size=60, step=10, lateness=30)
    s.add([ev(T0 + 1000)], 0, 0)
    late = s.add([ev(T0 + 1000 - 60 - 30 - 1)], 0, 1)  # its last window ended 31 s before
    assert len(late) == 1 and late[0].reason.startswith("late:")
    assert s.late_events == 1
    # 60 s behind: its last window is open, but its first, [T0+890, T0+950), closed at T0+980
    # (issue 12: an event counts in every window that holds it, or is late)
    late = s.add([ev(T0 + 1000 - 60)], 0, 2)
    assert len(late) == 1 and "[1790000890, 1790000950) holding" in late[0].reason
    ok = s.add([ev(T0 + 1000 - 30)], 0, 3)  # its first window, [T0+920, T0+980), is still open
    assert ok == [] and s.late_events == 2


def test_watermark_is_the_slowest_partition_so_backfill_is_not_late():
    s = store(size=60, step=10, lateness=30, partitions={0, 1})
    s.add([ev(T0 + 5000)], 0, 0)   # partition 0 read far ahead
    assert s.watermark == 0.0      # partition 1 has not spoken yet
    s.add([ev(T0 + 100)], 1, 0)    # partition 1 still in the past
    assert s.add([ev(T0 + 110)], 1, 1) == []
    assert s.watermark == T0 + 110


def test_closed_panes_are_evicted_with_tombstones():
    s = store(size=60, step=10, lateness=0)
    s.add([ev(T0)], 0, 0)
    s.add([ev(T0 + 10)], 0, 1)
    s.take_dirty()
    s.add([ev(T0 + 60)], 0, 2)  # the pane at T0 is in no open window now; T0+10 still is
    tombs = s.evict_closed()
    assert [k.pane_start for k in tombs] == [T0]
    assert s.window(("acme", "chat", "us-east-1", "H100-80GB", ""), T0 - 50) is None  # held only pane T0
    assert s.window(("acme", "chat", "us-east-1", "H100-80GB", ""), T0).events == 1  # pane T0+10 only


def test_tokens_and_requests_are_summed():
    s = store()
    s.add([ev(T0, tokens=100, requests=2), ev(T0 + 1, tokens=50)], 0, 0)
    w = s.window(("acme", "chat", "us-east-1", "H100-80GB", ""), T0)
    assert (w.tokens, w.requests) == (150, 2)


def test_a_window_closed_by_an_eviction_is_emitted_whole_once_and_never_partial():
    """Catch-up: the tombstone of a window's first pane reaches the window stage before the emit
    timer. The window goes out complete, and a later update of its other panes does not re-emit
    it without the evicted pane."""
    s = store(lateness=0)
    s.add([ev(T0), ev(T0 + 10)], 0, 0)
    w = window_stage(s)
    s.add([ev(T0 + 200)], 0, 1)
    for record_key in s.evict_closed():
        w.restore(record_key, None)
    recs = {r.window_start: r for r in w.take_pending_windows()}
    assert recs[T0].events == 2  # [T0, T0+60) held both panes
    assert T0 - 50 in recs and recs[T0 - 50].events == 1
    # A straggler for pane T0+10 (still open in stage 1's eyes in a slower partition):
    s.add([ev(T0 + 11)], 1, 0)
    for record_key, value in s.take_dirty():
        w.restore(record_key, value)
    later = {r.window_start for r in w.take_pending_windows()}
    assert T0 not in later and T0 - 50 not in later


def test_an_allowed_late_event_corrects_emitted_windows_as_revisions():
    s = store(size=60, step=10, lateness=120)
    w = store()

    def emit():
        for record_key, value in s.take_dirty():
            w.restore(record_key, value)
        return {r.window_start: r for r in w.take_pending_windows()}

    s.add([ev(T0 + 5)], 0, 0)
    first = emit()
    assert first[T0].revision == 0 and first[T0].events == 1
    s.add([ev(T0 + 100)], 0, 1)   # the watermark moves on 95 s
    emit()
    s.add([ev(T0 + 6)], 0, 2)     # late, but every window holding it is still open
    again = emit()
    assert again[T0].revision == 1 and again[T0].events == 2  # a correction of the emitted record
    assert set(again) == {T0 - 50, T0 - 40, T0 - 30, T0 - 20, T0 - 10, T0}


def test_a_lagging_meters_event_lands_in_every_window_the_fast_meter_already_tombstoned():
    """Two meters: the fast one's tombstone of pane T0 does not close its windows while the slow
    one (its watermark behind) can still fold events into pane T0 of its own partition."""
    fast, slow = store(lateness=0), store(lateness=0)
    w = store(lateness=0, partitions={0, 1})  # the window stage waits for every source partition
    fast.add([ev(T0 + 1)], 0, 0)
    slow.add([ev(T0 + 2)], 1, 0)
    fast.add([ev(T0 + 200)], 0, 1)  # fast's watermark moves on: pane T0 closes there
    for s in (fast, slow):
        for record_key, value in s.take_dirty():
            w.restore(record_key, value)
    for record_key in fast.evict_closed():
        w.restore(record_key, None)
    w.take_pending_windows()
    assert slow.add([ev(T0 + 3)], 1, 1) == []  # slow's watermark is T0+2: still open there
    for record_key, value in slow.take_dirty():
        w.restore(record_key, value)
    recs = {r.window_start: r for r in w.take_pending_windows()}
    assert recs[T0].events == 3 and recs[T0 - 50].events == 3  # every window holding it
    assert w.late_after_close == 0


def test_model_versions_are_summed_apart_in_every_window():
    """Canary against stable (issue 11): one key per model version, events without one under ""."""
    s = store()
    s.add([ev(T0 + 1, model_version="v1"), ev(T0 + 2, model_version="v2-canary", tokens=10),
           ev(T0 + 3, model_version="v1", util=1.0), ev(T0 + 12)], 0, 0)
    w = window_stage(s)
    recs = {(r.model_version, r.window_start): r for r in w.take_pending_windows()}
    base = ("acme", "chat", "us-east-1", "H100-80GB")
    v1, canary, none = (w.window((*base, v), T0) for v in ("v1", "v2-canary", ""))
    assert (v1.events, v1.model_version, v1.spend_usd, v1.idle_usd) == (2, "v1", pytest.approx(0.02), pytest.approx(0.005))
    assert (canary.events, canary.tokens, canary.spend_usd) == (1, 10, pytest.approx(0.01))
    assert (none.events, none.model_version) == (1, "")
    assert recs[("v2-canary", T0)].key == (*base, "v2-canary")
    # Six windows hold each event of pane T0; the unversioned event's pane T0+10 is in six too.
    assert sorted(ws for v, ws in recs if v == "v1") == list(range(T0 - 50, T0 + 1, 10))
    assert sorted(ws for v, ws in recs if v == "") == list(range(T0 - 40, T0 + 11, 10))


def _before_versions_record(last_offset: int, events: int):
    """A pane record as a meter from before model versions wrote it: a four-part key and no
    `every_version_upto`."""
    from contracts.aggregates import PaneRecordKey, PaneSums

    raw_key = "\x1f".join(("0", "acme", "chat", "us-east-1", "H100-80GB", str(T0)))
    raw_value = (f'{{"spend_usd": {0.01 * events}, "gpu_seconds": {10.0 * events}, "util_seconds": {5.0 * events}, '
                 f'"idle_usd": {0.005 * events}, "events": {events}, "tokens": 0, "requests": 0, '
                 f'"fallback_priced": 0, "last_offset": {last_offset}, "watermark": {T0 + 5}}}')
    return raw_key, PaneRecordKey.decode(raw_key), PaneSums.model_validate_json(raw_value)


def test_a_pane_from_before_model_versions_counts_each_replayed_event_once():
    """Upgrade after a crash: the old meter folded offsets 0..2 (versions v1 and v2-canary) into one
    four-part pane and made it durable, but did not commit. The new meter replays 0..2: those are
    in the old pane already, whatever their version; offset 3 is new and counts under its version.
    The old pane keeps saying so when it is written again, so a second crash replays exactly too."""
    raw_key, key, value = _before_versions_record(last_offset=2, events=3)
    assert key.key.model_version == "" and value.every_version_upto == 2
    replay = [[ev(T0 + 1, model_version="v1")], [ev(T0 + 2, model_version="v2-canary")], [ev(T0 + 3)],
              [ev(T0 + 4, model_version="v1")]]

    def meter_after_restore(records):
        m = store()
        for k, v in records:
            m.restore(k, v, mark_windows=False)
        return m

    m = meter_after_restore([(key, value)])
    for offset, events in enumerate(replay):
        assert m.add(events, 0, offset) == []
    assert (m.replayed_events, m.accepted_events) == (3, 1)
    durable = dict(m.take_dirty())
    assert set(durable) == {version_pane_key("v1")}  # the old pane did not change
    totals = window_stage_of([(key, value), *durable.items()])
    assert totals == {"": 3, "v1": 1}

    # Offset 4 makes the unversioned pane change: written again, it still holds every version up to 2.
    m.add([ev(T0 + 5)], 0, 4)
    again = dict(m.take_dirty())
    assert again[key].every_version_upto == 2 and again[key].last_offset == 4
    assert key.encode() == raw_key  # written under the old key's bytes: compaction replaces the old record
    # A second crash before the commit: everything from offset 0 comes again, and counts once.
    m2 = meter_after_restore([(key, again[key]), (version_pane_key("v1"), durable[version_pane_key("v1")])])
    for offset, events in enumerate([*replay, [ev(T0 + 5)]]):
        assert m2.add(events, 0, offset) == []
    assert (m2.replayed_events, m2.accepted_events) == (5, 0)
    # Evicted: the tombstone has the old key's bytes, and nothing of the old pane is kept.
    m2.watermark = T0 + 1000
    assert [k.encode() for k in m2.evict_closed() if k.key.model_version == ""] == [raw_key]
    assert m2.every_version_upto == {}


def version_pane_key(version: str):
    from contracts.aggregates import AggregateKey, PaneRecordKey

    return PaneRecordKey(0, AggregateKey("acme", "chat", "us-east-1", "H100-80GB", version), T0)


def window_stage_of(records) -> dict[str, int]:
    """Events per model version in the window [T0, T0 + 60) summed from these pane records."""
    w = store()
    for k, v in records:
        w.restore(k, v)
    return {r.model_version: r.events for r in w.take_pending_windows() if r.window_start == T0}
