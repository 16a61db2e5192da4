"""Property-based tests of event decoding: whatever bytes arrive, `decode_usage` / `decode_billing`
never raise; every valid event survives a round trip unchanged; in a batch each member is either
an event or a reject with its own index and reason, in order, with nothing lost; and an event that
breaks the contract on meaning (range, finiteness, type, future time) is rejected, naming the field."""

from __future__ import annotations

import json
import math
import time

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from contracts.events import BillingEvent, UsageEvent, decode_billing, decode_usage, encode, encode_batch

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=40)
finite = dict(allow_nan=False, allow_infinity=False)
NOW_S = time.time()  # fixed, so the strategies do not depend on the clock between draws
past_ts = st.floats(min_value=1.0, max_value=NOW_S, **finite)


@st.composite
def usage_events(draw) -> UsageEvent:
    mem_total = draw(st.floats(min_value=0.001, max_value=4096, **finite))
    return UsageEvent(
        ts=draw(past_ts), tenant=draw(names), service=draw(names), cloud=draw(names), region=draw(names),
        instance_type=draw(names), gpu_model=draw(names), host=draw(names),
        gpu_index=draw(st.integers(0, 1024)),
        interval_s=draw(st.floats(min_value=1e-6, max_value=3600, **finite)),
        util=draw(st.floats(min_value=0, max_value=1, **finite)),
        mem_used_gb=draw(st.floats(min_value=0, max_value=mem_total, **finite)), mem_total_gb=mem_total,
        power_w=draw(st.floats(min_value=0, max_value=1e4, **finite)),
        tokens=draw(st.none() | st.integers(0, 2**53)), requests=draw(st.none() | st.integers(0, 2**53)),
        model_version=draw(st.none() | names),
    )


@st.composite
def billing_events(draw) -> BillingEvent:
    start = draw(st.floats(min_value=1.0, max_value=NOW_S - 10, **finite))
    return BillingEvent(
        ts=draw(past_ts), period_start=start, period_end=start + draw(st.floats(min_value=1, max_value=1e6, **finite)),
        tenant=draw(names), service=draw(names), cloud=draw(names), region=draw(names),
        instance_type=draw(names), gpu_model=draw(names), instance_id=draw(names),
        gpu_count=draw(st.integers(1, 1024)), cost_usd=draw(st.floats(min_value=0, max_value=1e9, **finite)),
        pricing=draw(st.sampled_from(["on_demand", "spot", "reserved"])), source=draw(names),
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


def _check_shape(raw: bytes, events: list, rejects: list) -> None:
    for r in rejects:
        assert r.reason and isinstance(r.reason, str)
        assert isinstance(r.raw, bytes)
    if raw.lstrip()[:1] != b"[":
        assert len(events) + len(rejects) == 1  # one message, one outcome


@FAST
@given(st.binary(max_size=300))
@example(b"[" * 100_000)                                   # nesting past the recursion limit
@example(b"[" + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"]")
@example(b"\xff\xfe[")
@example(b"[1] trailing")
@example(b'[{"ts": NaN}]')
def test_decoding_any_bytes_never_raises(raw):
    for decode in (decode_usage, decode_billing):
        events, rejects = decode(raw)
        _check_shape(raw, events, rejects)


@FAST
@given(json_values)
def test_decoding_any_json_never_raises_and_rejects_with_a_reason(value):
    raw = json.dumps(value).encode()
    for decode in (decode_usage, decode_billing):
        events, rejects = decode(raw)
        _check_shape(raw, events, rejects)


@FAST
@given(usage_events())
def test_valid_usage_event_round_trips_unchanged(ev):
    events, rejects = decode_usage(encode(ev))
    assert rejects == [] and events == [ev]


@FAST
@given(billing_events())
def test_valid_billing_event_round_trips_unchanged(ev):
    events, rejects = decode_billing(encode(ev))
    assert rejects == [] and events == [ev]


@FAST
@given(st.lists(st.tuples(usage_events(), st.sampled_from(["ok", "util", "nan", "type", "missing", "future", "junk"])),
                min_size=1, max_size=12))
def test_batch_keeps_good_members_in_order_and_rejects_each_bad_one_by_index(members):
    docs, expected_good, expected_bad = [], [], []
    for index, (ev, how) in enumerate(members):
        doc = json.loads(encode(ev))
        if how == "util":
            doc["util"] = 1.5
        elif how == "nan":
            doc["power_w"] = math.nan
        elif how == "type":
            doc["gpu_index"] = "zero"
        elif how == "missing":
            del doc["tenant"]
        elif how == "future":
            doc["ts"] = time.time() + 3600
        elif how == "junk":
            doc = [doc]
        if how == "ok":
            expected_good.append(ev)
        else:
            expected_bad.append(index)
        docs.append(doc)
    raw = json.dumps(docs).encode()  # NaN is written as the bare token NaN, as a sloppy producer would
    events, rejects = decode_usage(raw)
    assert events == expected_good
    assert [int(r.reason.split("batch index ")[1].split(":")[0]) for r in rejects] == expected_bad
    for r in rejects:
        json.loads(r.raw)  # each reject carries its own member, not the whole batch


def test_encoded_batch_decodes_to_the_same_events():
    evs = [UsageEvent(ts=time.time() - 1, tenant="t", service="s", cloud="aws", region="r", instance_type="i",
                      gpu_model="H100", host="h", gpu_index=i, interval_s=10, util=0.5, mem_used_gb=1,
                      mem_total_gb=80, power_w=100) for i in range(8)]
    assert decode_usage(encode_batch(evs)) == (evs, [])


BAD_FIELDS = [
    ("util", -0.01), ("util", 1.01), ("interval_s", 0), ("interval_s", -5), ("mem_total_gb", 0),
    ("power_w", -1), ("gpu_index", -1), ("gpu_index", 1.5), ("util", "0.5"), ("ts", "yesterday"),
    ("ts", time.time() + 3600), ("tenant", ""), ("tenant", "x" * 201), ("tenant", 7), ("tokens", -1),
    ("mem_used_gb", 1e6), ("interval_s", True),
]


@FAST
@given(usage_events(), st.sampled_from(BAD_FIELDS))
def test_usage_breaking_the_contract_on_meaning_is_rejected_naming_the_field(ev, bad):
    field, value = bad
    doc = json.loads(encode(ev))
    doc[field] = value
    events, rejects = decode_usage(json.dumps(doc).encode())
    assert events == [] and len(rejects) == 1
    reason = rejects[0].reason
    assert field in reason or (field == "ts" and "future" in reason) or "mem_" in reason, reason


@FAST
@given(billing_events(), st.sampled_from([("cost_usd", -0.01), ("cost_usd", math.inf), ("pricing", "free"),
                                          ("gpu_count", 0), ("period_end", 0.5)]))
def test_billing_breaking_the_contract_on_meaning_is_rejected(ev, bad):
    field, value = bad
    doc = json.loads(encode(ev))
    doc[field] = value
    events, rejects = decode_billing(json.dumps(doc).encode())
    assert events == [] and len(rejects) == 1


@FAST
@given(usage_events(), st.dictionaries(st.text(min_size=1, max_size=10).filter(lambda k: k not in UsageEvent.model_fields),
                                       json_values.filter(lambda v: json.dumps(v).find("NaN") < 0 and "Infinity" not in json.dumps(v)),
                                       max_size=3))
def test_unknown_extra_fields_are_kept(ev, extra):
    doc = {**json.loads(encode(ev)), **extra}
    events, rejects = decode_usage(json.dumps(doc).encode())
    assert rejects == []
    for k, v in extra.items():
        assert events[0].model_extra[k] == v


NAME_FIELDS = ["tenant", "service", "cloud", "region", "instance_type", "gpu_model", "host"]


@FAST
@given(usage_events(), st.sampled_from(NAME_FIELDS), st.sampled_from([chr(c) for c in range(32)] + ["\x7f"]),
       st.integers(0, 5))
def test_names_with_control_characters_are_rejected(ev, field, control, at):
    # NUL cannot be stored by PostgreSQL; the unit separator would split the worker's pane keys.
    doc = json.loads(encode(ev))
    doc[field] = doc[field][:at] + control + doc[field][at:]
    events, rejects = decode_usage(json.dumps(doc).encode())
    assert events == [] and field in rejects[0].reason
