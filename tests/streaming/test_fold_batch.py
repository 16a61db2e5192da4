"""The meter's batch fold (`PaneStore.fold_messages`: runs of events skip the lookups, the pane
being filled is summed in locals, the run carries over from one message to the next) against a
plain reference that folds event by event into the pane lists: the same panes to the last bit,
the same dirty set, the same rejections in the same order, the same counters, with replays
(restored panes), late events, unpriceable ones and several partitions per batch."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.aggregates import AggregateKey, PaneRecordKey, PaneSums
from contracts.events import UsageEvent, UsageRow
from core.pricing import PricingError
from streaming.panes import (EVENTS, FALLBACK, GPU_S, IDLE, LAST_OFFSET, REQUESTS, RESTORED_OFFSET, SPEND, TOKENS,
                             UTIL_S, PaneStore, WindowSpec, new_sums)

T0 = 1_790_000_000
PRICES = {"H100": (3.7, False), "L4": (0.81, True)}


def price(ev):
    """Depends on every part of the price key, as the catalog's does."""
    try:
        usd_h, fallback = PRICES[ev.gpu_model]
    except KeyError:
        raise PricingError(f"no price for {ev.gpu_model}") from None
    return usd_h * (1.5 if ev.cloud == "gcp" else 1.0) * (2.0 if ev.instance_type == "i2" else 1.0) \
        * (1.25 if ev.region == "r2" else 1.0), fallback


def reference_fold(store: PaneStore, partition: int, messages) -> list[tuple[int, str]]:
    """The specification, one event at a time (what PaneStore.add did before the batch fold)."""
    spec = store.spec
    horizon = store.watermark - spec.allowed_lateness_s
    rejected = []
    newest = 0.0
    for position, (offset, events) in enumerate(messages):
        for ev in events:
            pane_start = int(ev.ts // spec.step_s) * spec.step_s
            key = (ev.tenant, ev.service, ev.region, ev.gpu_model, ev.model_version or "")
            sums = store.panes.get(key, {}).get(pane_start, {}).get(partition)
            if sums is not None and offset <= sums[RESTORED_OFFSET]:
                store.replayed_events += 1
                continue
            if sums is None and offset <= store.every_version_upto.get(((*key[:4], ""), pane_start, partition), -1):
                store.replayed_events += 1  # in a pane restored from before versions were keyed apart
                continue
            if pane_start + spec.step_s <= horizon:
                rejected.append((position, "late"))
                store.late_events += 1
                continue
            try:
                usd_h, fallback = price(ev)
            except PricingError:
                rejected.append((position, "unpriceable"))
                continue
            if sums is None:
                sums = store.panes.setdefault(key, {}).setdefault(pane_start, {})[partition] = new_sums()
            store.dirty.add((key, pane_start, partition))
            cost = usd_h * ev.interval_s / 3600.0
            sums[SPEND] += cost
            sums[GPU_S] += ev.interval_s
            sums[UTIL_S] += ev.util * ev.interval_s
            sums[IDLE] += cost * (1.0 - ev.util)
            sums[EVENTS] += 1
            if ev.tokens:
                sums[TOKENS] += ev.tokens
            if ev.requests:
                sums[REQUESTS] += ev.requests
            if fallback:
                sums[FALLBACK] += 1
            sums[LAST_OFFSET] = offset
            store.accepted_events += 1
            newest = max(newest, ev.ts)
    if newest > store.partition_watermarks.get(partition, 0.0):
        store.partition_watermarks[partition] = newest
    return rejected


event_fields = st.fixed_dictionaries({
    "ts": st.floats(min_value=T0 - 150, max_value=T0 + 100, allow_nan=False),
    "tenant": st.sampled_from(["a", "b"]), "service": st.just("s"), "cloud": st.sampled_from(["aws", "gcp"]),
    "region": st.sampled_from(["r1", "r2"]), "instance_type": st.sampled_from(["i1", "i2"]),
    "gpu_model": st.sampled_from(["H100", "H100", "L4", "nope"]), "host": st.just("h"), "gpu_index": st.just(0),
    "interval_s": st.sampled_from([10.0, 0.1, 7.3, 3600.0]), "util": st.floats(0, 1),
    "mem_used_gb": st.just(1.0), "mem_total_gb": st.just(2.0), "power_w": st.just(1.0),
    "tokens": st.none() | st.integers(0, 10**20), "requests": st.none() | st.integers(0, 5),
    "model_version": st.sampled_from([None, None, "v2"])})


def make(fields: dict, kind: str):
    return UsageEvent(**fields) if kind == "pydantic" else UsageRow(**fields)


@st.composite
def batches(draw):
    """Per step, per partition: messages (offset, events) in growing offsets; a message is often
    a run (one host: the same key, pane and price for every event)."""
    steps = []
    offsets = {0: 0, 1: 0}
    for step in range(draw(st.integers(1, 6))):
        per_partition = {}
        for p in (0, 1):
            msgs = []
            for _ in range(draw(st.integers(0, 4))):
                base = draw(event_fields)
                base["ts"] += step * 20
                n = draw(st.integers(0, 6))
                if draw(st.booleans()):  # a host's GPUs: one run
                    events = [{**base, "util": draw(st.floats(0, 1)), "gpu_index": i} for i in range(n)]
                else:
                    events = [draw(event_fields) for _ in range(n)]
                    if draw(st.booleans()):  # the same key and pane, another price key
                        events = [{**base, "cloud": e["cloud"], "instance_type": e["instance_type"]} for e in events]
                offsets[p] += draw(st.integers(1, 3))
                msgs.append((offsets[p], events))
            per_partition[p] = msgs
        steps.append(per_partition)
    return steps


def fresh(lateness: int, restored: list) -> PaneStore:
    s = PaneStore(WindowSpec(60, 10, lateness), price)
    for record_key, value in restored:
        s.restore(record_key, value, mark_windows=False)
    return s


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches(), st.sampled_from([0, 30, 120]), st.sampled_from(["pydantic", "row"]),
       st.lists(st.tuples(st.sampled_from([0, 1]), st.sampled_from(["a", "b"]), st.integers(-15, 10), st.integers(0, 12),
                          st.sampled_from(["", "v2", "before-versions"])), max_size=6))
def test_batch_fold_equals_the_event_by_event_reference(steps, lateness, kind, restores):
    # Restored panes (a restart): events at or before their offset are replays. "before-versions":
    # a record written before model_version was a key part (no every_version_upto field): it holds
    # every version's events of its key up to its offset.
    def sums(off, version):
        fields = dict(spend_usd=0.5, gpu_seconds=10.0, util_seconds=5.0, idle_usd=0.25, events=1, tokens=0,
                      requests=0, fallback_priced=0, last_offset=off, watermark=T0 - 100.0)
        return PaneSums(**fields) if version == "before-versions" else PaneSums(**fields, every_version_upto=-1)

    restored = [(PaneRecordKey(p, AggregateKey(t, "s", "r1", "H100", "" if v == "before-versions" else v),
                               T0 + 10 * pane), sums(off, v)) for p, t, pane, off, v in restores]
    ours, ref = fresh(lateness, restored), fresh(lateness, restored)
    for per_partition in steps:
        for p, msgs in per_partition.items():
            batch = [(off, [make(f, kind) for f in events]) for off, events in msgs]
            got = [(pos, rej.reason.split(":")[0]) for pos, rej in ours.fold_messages(p, batch)]
            assert got == reference_fold(ref, p, batch)
        ours.advance_watermark(per_partition)
        ref.advance_watermark(per_partition)
        assert ours.panes == ref.panes  # floats compared exactly: the same additions in the same order
        assert ours.dirty == ref.dirty
        assert (ours.accepted_events, ours.late_events, ours.replayed_events) == \
               (ref.accepted_events, ref.late_events, ref.replayed_events)
        assert ours.partition_watermarks == ref.partition_watermarks and ours.watermark == ref.watermark


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches(), st.sampled_from(["pydantic", "row"]))
def test_encoded_pane_records_are_the_models_bytes(steps, kind):
    """The meter sends take_dirty_encoded(); the contract is take_dirty()'s models, encoded."""
    a, b = fresh(120, []), fresh(120, [])
    for per_partition in steps:
        for p, msgs in per_partition.items():
            batch = [(off, [make(f, kind) for f in events]) for off, events in msgs]
            a.fold_messages(p, batch)
            b.fold_messages(p, batch)
        a.advance_watermark(per_partition)
        b.advance_watermark(per_partition)
        models = sorted((k.key.tenant, k.encode().encode(), v.model_dump_json().encode()) for k, v in a.take_dirty())
        assert sorted(b.take_dirty_encoded()) == models
        assert all(PaneSums.model_validate_json(v) is not None for _, _, v in models)


def test_a_non_finite_pane_is_refused_as_the_model_refuses_it():
    import pytest
    from pydantic import ValidationError

    from streaming.panes import pane_sums_json

    sums = new_sums()
    sums[SPEND] = float("inf")
    with pytest.raises(ValidationError):
        pane_sums_json(sums, 1.0)
    sums[SPEND] = 1e308
    sums[IDLE] = 1e308  # each finite, their sum is not: the model decides (and accepts)
    assert pane_sums_json(sums, 1.0) == PaneSums.model_validate_json(pane_sums_json(sums, 1.0)).model_dump_json().encode()
