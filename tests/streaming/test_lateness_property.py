"""Lateness as a property: whatever the arrival order, lateness setting and watermark advances,
every event either lands in every window that holds it (the window's last emitted record counts
it) or is rejected as late and counted; nothing is lost silently. Checked against the brute-force
reference of tests/support.py over the accepted events (keyed by model version too)."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming.panes import PaneStore, WindowSpec
from tests.streaming.test_panes import PRICE, T0, ev
from tests.support import expected_windows


def flush(stage1: PaneStore, windows: PaneStore, emitted: dict) -> None:
    """What the worker does each flush: persist changed panes, tombstone closed ones, emit."""
    for record_key, value in stage1.take_dirty():
        windows.restore(record_key, value)
    for record_key in stage1.evict_closed():
        windows.restore(record_key, None)
    for rec in windows.take_pending_windows():
        emitted[(*rec.key, rec.window_start)] = rec  # latest wins, as in the API and history


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_event_lands_in_every_window_holding_it_or_is_counted_late(data):
    size, step = data.draw(st.sampled_from([(60, 10), (30, 10), (20, 5), (10, 10)]), label="size, step")
    lateness = data.draw(st.integers(0, 200), label="allowed lateness")
    spec = WindowSpec(size, step, lateness)
    stage1 = PaneStore(spec, lambda e: (PRICE, False))
    windows = PaneStore(spec, lambda e: (PRICE, False))
    arrivals = data.draw(st.lists(st.tuples(st.integers(0, 600), st.sampled_from(["chat", "embed"]),
                                            st.sampled_from([None, "v1", "v2-canary"]), st.booleans()),
                                  min_size=1, max_size=80), label="arrivals")
    emitted: dict = {}
    accepted, late = [], 0
    for offset, (t, service, version, flush_after) in enumerate(arrivals):
        e = ev(T0 + t + 0.5, service=service, model_version=version)
        rejected = stage1.add([e], 0, offset)
        if rejected:
            assert rejected[0].reason.startswith("late:")
            late += 1
        else:
            accepted.append(e)
        if flush_after:
            flush(stage1, windows, emitted)
    flush(stage1, windows, emitted)
    stage1.watermark += 10 * (size + lateness) + 1000  # the stream moves on: every window closes
    flush(stage1, windows, emitted)

    assert late == stage1.late_events and len(accepted) + late == len(arrivals)
    expected = expected_windows(accepted, {"H100-80GB": PRICE}, size=size, step=step)
    assert set(emitted) == set(expected)
    for k, want in expected.items():
        got = emitted[k]
        assert got.events == want["events"], (k, got, want)
        assert got.spend_usd == pytest.approx(want["spend_usd"], rel=1e-9)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_with_two_meters_every_event_lands_in_every_window_holding_it_or_is_counted_late(data):
    """Two workers' meters, each with its own watermark over its own source partition, flushing
    at their own pace into one window stage."""
    size, step = data.draw(st.sampled_from([(60, 10), (30, 10), (20, 5)]), label="size, step")
    lateness = data.draw(st.integers(0, 150), label="allowed lateness")
    spec = WindowSpec(size, step, lateness)
    meters = [PaneStore(spec, lambda e: (PRICE, False)) for _ in range(2)]
    # the window stage's watermark waits for every source partition (streaming/windows.py)
    windows = PaneStore(spec, lambda e: (PRICE, False), expected_partitions=frozenset({0, 1}))
    arrivals = data.draw(st.lists(st.tuples(st.integers(0, 600), st.integers(0, 1), st.booleans()),
                                  min_size=1, max_size=80), label="arrivals (ts, partition, flush after)")
    emitted: dict = {}
    accepted, late = [], 0
    for offset, (t, partition, flush_after) in enumerate(arrivals):
        e = ev(T0 + t + 0.5)
        if meters[partition].add([e], partition, offset):
            late += 1
        else:
            accepted.append(e)
        if flush_after:
            flush(meters[partition], windows, emitted)
    for meter in meters:
        flush(meter, windows, emitted)
    windows.watermark += 10 * (size + lateness) + 1000
    flush(meters[0], windows, emitted)

    assert late == sum(m.late_events for m in meters) and len(accepted) + late == len(arrivals)
    assert windows.late_after_close == 0
    expected = expected_windows(accepted, {"H100-80GB": PRICE}, size=size, step=step)
    assert set(emitted) == set(expected)
    for k, want in expected.items():
        assert emitted[k].events == want["events"], (k, emitted[k], want)
        assert emitted[k].spend_usd == pytest.approx(want["spend_usd"], rel=1e-9)
