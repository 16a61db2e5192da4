"""The event contract: strict on meaning, tolerant of extra fields, batches keep good members."""

import json
import time

import pytest

from contracts.events import BillingEvent, UsageEvent, decode_billing, decode_usage, encode, encode_batch


def usage(**kw):
    base = dict(ts=time.time(), tenant="acme", service="chat", cloud="aws", region="us-east-1",
                instance_type="p5.48xlarge", gpu_model="H100-80GB", host="h1", gpu_index=0, interval_s=10.0,
                util=0.5, mem_used_gb=10.0, mem_total_gb=80.0, power_w=300.0)
    base.update(kw)
    return base


def test_valid_event_round_trips_and_keeps_unknown_fields():
    raw = json.dumps(usage(future_field="x")).encode()
    events, rejects = decode_usage(raw)
    assert rejects == [] and events[0].future_field == "x" and events[0].schema_version == 1
    assert decode_usage(encode(events[0]))[0][0] == events[0]


@pytest.mark.parametrize("field,value,needle", [
    ("util", 1.5, "util"),
    ("util", -0.1, "util"),
    ("interval_s", 0, "interval_s"),
    ("power_w", -1, "power_w"),
    pytest.param("ts", time.time() + 3600, "future", id="ts-an-hour-ahead"),  # a stable id: xdist compares them
    ("util", "0.5", "util"),          # no type coercion
    ("gpu_index", 1.5, "gpu_index"),
    ("tenant", "", "tenant"),
    ("mem_used_gb", 90.0, "exceeds"),
])
def test_invalid_values_are_rejected_with_the_field_named(field, value, needle):
    events, rejects = decode_usage(json.dumps(usage(**{field: value})).encode())
    assert events == [] and len(rejects) == 1
    assert needle in rejects[0].reason


def test_non_finite_numbers_are_rejected():
    raw = json.dumps(usage()).replace('"util": 0.5', '"util": NaN').encode()
    events, rejects = decode_usage(raw)
    assert events == [] and "finite" in rejects[0].reason


def test_malformed_json_is_rejected_with_raw_bytes_kept():
    events, rejects = decode_usage(b'{"ts": 1,')
    assert events == [] and rejects[0].raw == b'{"ts": 1,' and "JSON" in rejects[0].reason


def test_batch_keeps_good_members_and_rejects_bad_ones_individually():
    good = [UsageEvent(**usage(gpu_index=i)) for i in range(3)]
    batch = json.loads(encode_batch(good))
    batch[1]["util"] = 7
    events, rejects = decode_usage(json.dumps(batch).encode())
    assert [e.gpu_index for e in events] == [0, 2]
    assert len(rejects) == 1 and "batch index 1" in rejects[0].reason
    assert json.loads(rejects[0].raw)["util"] == 7


def test_billing_period_must_be_ordered_and_cost_non_negative():
    now = time.time()
    base = dict(ts=now, period_start=now - 3600, period_end=now, tenant="a", service="s", cloud="aws",
                region="r", instance_type="p5.48xlarge", gpu_model="H100-80GB", gpu_count=8, cost_usd=55.04,
                pricing="on_demand", source="cur", instance_id="i-1")
    assert decode_billing(json.dumps(base).encode())[0][0] == BillingEvent(**base)
    assert "period_end" in decode_billing(json.dumps({**base, "period_end": now - 7200}).encode())[1][0].reason
    assert decode_billing(json.dumps({**base, "cost_usd": -1}).encode())[1]
    assert decode_billing(json.dumps({**base, "pricing": "free"}).encode())[1]


def test_a_charge_line_may_be_negative_and_bill_no_gpu_but_a_usage_line_may_not():
    now = time.time()
    usage = dict(ts=now, period_start=now - 3600, period_end=now, tenant="a", service="s", cloud="aws",
                 region="r", instance_type="p5.48xlarge", gpu_model="H100-80GB", gpu_count=8, cost_usd=55.04,
                 pricing="on_demand", source="cur", instance_id="i-1")
    assert BillingEvent(**usage).charge_category == "usage"  # the default
    credit = {**usage, "charge_category": "credit", "cost_usd": -25.0, "gpu_count": 0, "gpu_model": "none",
              "instance_type": "none"}
    events, rejects = decode_billing(json.dumps(credit).encode())
    assert rejects == [] and (events[0].charge_category, events[0].cost_usd, events[0].gpu_count) == ("credit", -25.0, 0)
    assert decode_billing(encode(events[0]))[0] == events  # round trip
    for category in ("tax", "adjustment", "purchase"):
        assert decode_billing(json.dumps({**credit, "charge_category": category}).encode())[1] == []
    # A usage line keeps its bounds, with the same reasons as before charges existed.
    for bad, reason in (({"cost_usd": -1}, "cost_usd: Input should be greater than or equal to 0"),
                        ({"gpu_count": 0}, "gpu_count: Input should be greater than or equal to 1"),
                        ({"charge_category": "usage", "cost_usd": -25.0}, "cost_usd: Input should be greater than or equal to 0")):
        rejects = decode_billing(json.dumps({**usage, **bad}).encode())[1]
        assert [r.reason for r in rejects] == [f"invalid billing event: {reason}"]
    # An unknown category is refused, and its line held to the usage bounds; a charge's count is >= 0
    # and its cost finite.
    rejects = decode_billing(json.dumps({**credit, "charge_category": "refund"}).encode())[1]
    assert "charge_category" in rejects[0].reason and "cost_usd" in rejects[0].reason
    assert "gpu_count" in decode_billing(json.dumps({**credit, "gpu_count": -1}).encode())[1][0].reason
    assert "cost_usd" in decode_billing(json.dumps({**credit, "cost_usd": "-25"}).encode())[1][0].reason
