"""After a crash the worker replays messages it already folded into durable panes. Those events
are skipped by offset (counted once, tests/faults/test_worker_crash.py); they must also not be
reported as anything else: a replayed event older than the restored watermark's horizon is not
"late" (a dead letter saying so would tell operators an event was dropped that was counted)."""

from __future__ import annotations

from contracts.events import UsageEvent
from contracts.aggregates import AggregateKey, PaneRecordKey, PaneSums
from streaming.panes import PaneStore, WindowSpec

T0 = 1_790_000_000
KEY = ("acme", "chat", "us-east-1", "H100", "")


def ev(ts: float) -> UsageEvent:
    return UsageEvent(ts=ts, tenant=KEY[0], service=KEY[1], cloud="aws", region=KEY[2], instance_type="p5.48xlarge",
                      gpu_model=KEY[3], host="h", gpu_index=0, interval_s=10.0, util=0.5, mem_used_gb=1.0,
                      mem_total_gb=80.0, power_w=100.0)


def restored_store(last_offset: int, watermark: float) -> PaneStore:
    s = PaneStore(WindowSpec(60, 10, 120), lambda e: (3.6, False))
    s.restore(PaneRecordKey(0, AggregateKey(*KEY), T0), PaneSums(
        spend_usd=0.01, gpu_seconds=10.0, util_seconds=5.0, idle_usd=0.005, events=1,
        tokens=0, requests=0, fallback_priced=0, last_offset=last_offset, watermark=watermark))
    return s


def test_replayed_event_is_skipped_not_dead_lettered_as_late_when_the_watermark_moved_on():
    # The pane at T0 holds offset 10; the partition's watermark had moved 5 minutes past it when
    # the pane record was written (later messages), so the pane is past the lateness horizon.
    s = restored_store(last_offset=10, watermark=T0 + 300)
    rejected = s.add([ev(T0 + 5)], partition=0, offset=10)  # the replay of offset 10
    assert [r.reason for r in rejected] == []
    assert s.replayed_events == 1 and s.late_events == 0


def test_new_event_past_the_horizon_is_still_late():
    s = restored_store(last_offset=10, watermark=T0 + 300)
    rejected = s.add([ev(T0 + 5)], partition=0, offset=11)
    assert len(rejected) == 1 and rejected[0].reason.startswith("late")
