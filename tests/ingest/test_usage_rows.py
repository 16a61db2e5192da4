"""The worker's fast decoder (`decode_usage_rows`, msgspec) is only a shortcut for the contract's
`decode_usage` (pydantic): whatever bytes arrive, a message it accepts is one the contract accepts
whole, with the same values; everything else it hands back (None) for `decode_usage` to decide.
And the messages real producers send take the shortcut (else the worker is silently slow)."""

from __future__ import annotations

import json
import math
import time

import msgspec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from contracts.events import (UsageEvent, UsageRow, decode_usage, decode_usage_rows, encode, encode_batch,
                             max_future_skew_s)
from tests.ingest.test_events_property import BAD_FIELDS, json_values, usage_events

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def limit() -> float:
    return time.time() + max_future_skew_s()


def agrees(raw: bytes) -> list[UsageRow] | None:
    """The shortcut's answer, checked against the contract's."""
    rows = decode_usage_rows(raw, limit())
    if rows is not None:
        events, rejects = decode_usage(raw)
        assert rejects == [], (raw, rejects)
        assert len(rows) == len(events)
        for row, ev in zip(rows, events):
            for field in UsageRow.__struct_fields__:
                a, b = getattr(row, field), getattr(ev, field)
                assert a == b and (a is None) == (b is None), (field, a, b)
                assert math.copysign(1, a) == math.copysign(1, b) if isinstance(a, float) else True  # -0.0
    return rows


NAME_PATTERN = "^[^\\x00-\\x1f\\x7f]+$"  # what decode_usage_rows checks on the raw bytes instead


def _constraints(schema: dict) -> dict:
    """Each property's JSON-schema constraints, titles and descriptions left out."""
    out = {}
    for name, prop in schema["properties"].items():
        def strip(p):
            return {k: v for k, v in p.items() if k not in ("title", "description")}
        prop = strip(prop)
        if "anyOf" in prop:
            prop["anyOf"] = [strip(p) for p in prop["anyOf"]]
        out[name] = prop
    return out


def test_the_row_has_the_contracts_fields_defaults_and_constraints():
    """Drift guard: a field or constraint changed in UsageEvent must be changed in UsageRow."""
    contract = UsageEvent.model_json_schema()
    row_schema = msgspec.json.schema(UsageRow)
    row = row_schema["$defs"]["UsageRow"]
    assert set(row["required"]) == set(contract["required"])
    theirs, ours = _constraints(contract), _constraints(row)
    for name, prop in theirs.items():  # names: the pattern is checked on the raw bytes
        for p in [prop, *prop.get("anyOf", ())]:
            if p.pop("pattern", NAME_PATTERN) != NAME_PATTERN:
                raise AssertionError(f"{name}: a new pattern for decode_usage_rows to check")
    assert ours == theirs


def test_producer_messages_take_the_fast_path():
    from bench.stream import make_messages

    for batch in (1, 8):
        for _, value, n in make_messages(64, batch):
            rows = agrees(value)
            assert rows is not None and len(rows) == n


@FAST
@given(usage_events())
def test_a_valid_event_takes_the_fast_path_with_its_values(ev):
    raw = encode(ev)
    rows = agrees(raw)
    escaped = b"\\" in raw or b"\x7f" in raw  # names with escapes or DEL: decode_usage decides
    assert rows is not None or escaped


@FAST
@given(st.lists(usage_events(), min_size=0, max_size=8))
def test_a_valid_batch_takes_the_fast_path(evs):
    raw = encode_batch(evs)
    rows = agrees(raw)
    assert rows is not None or b"\\" in raw or b"\x7f" in raw


@FAST
@given(usage_events(), st.sampled_from(BAD_FIELDS + [("tokens", 1.0), ("gpu_index", True), ("ts", 0), ("ts", -1.0),
                                                     ("mem_total_gb", -0.0), ("interval_s", 3600.0001), ("host", ""),
                                                     ("schema_version", None), ("tokens", 2**70), ("requests", -(2**70)),
                                                     ("model_version", ""), ("model_version", None), ("util", 1e-400),
                                                     ("power_w", 1e308), ("gpu_index", 1025), ("region", "x" * 200)]),
       st.integers(0, 3), st.integers(0, 8))
def test_a_broken_member_is_never_taken_by_the_shortcut(ev, bad, where, size):
    field, value = bad
    docs = [json.loads(encode(ev)) for _ in range(size)]
    doc = json.loads(encode(ev))
    doc[field] = value
    docs.insert(min(where, size), doc)
    agrees(json.dumps(docs, ensure_ascii=False).encode())
    agrees(json.dumps(doc, ensure_ascii=False).encode())
    good = json.dumps(docs[:min(where, size)] + docs[min(where, size) + 1:], ensure_ascii=False).encode()
    assert agrees(good) is not None or b"\\" in good or b"\x7f" in good  # the rest take the shortcut


@FAST
@given(usage_events(), st.sampled_from(["util", "power_w", "mem_used_gb", "ts", "x"]),
       st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e-999", "-0", "-0.0", "0e5", "1E2"]))
def test_number_spellings(ev, field, spelling):
    raw = json.dumps({**json.loads(encode(ev)), field: "@@"}, ensure_ascii=False).replace('"@@"', spelling).encode()
    agrees(raw)


@FAST
@given(usage_events(), st.sampled_from(["tenant", "host", "model_version", "gpu_model"]),
       st.sampled_from(["\\u0000", "\\n", "\\u001f", "\\u007f", "\x7f", "\\\\", "\\/", "\\ud800", "\\u00e9", "\\t"]),
       st.integers(0, 3))
def test_escapes_and_control_characters_in_names(ev, field, piece, at):
    doc = json.loads(encode(ev))
    name = doc.get(field) or "m"
    doc[field] = name[:at] + "@@" + name[at:]
    raw = json.dumps(doc, ensure_ascii=False).replace("@@", piece).encode()
    assert agrees(raw) is None if "\\" in piece or "\x7f" in piece else True


@FAST
@given(st.binary(max_size=300))
@example(b"[" * 100_000)
@example(b"\xef\xbb\xbf{}")
@example(b"[] ")
@example(b"[{}]")
@example(b"null")
def test_any_bytes(raw):
    agrees(raw)


@FAST
@given(json_values)
def test_any_json(value):
    agrees(json.dumps(value, ensure_ascii=False).encode())


@FAST
@given(usage_events(), st.dictionaries(st.text(min_size=1, max_size=10), json_values, max_size=3), st.booleans())
def test_extra_fields_and_repeated_keys(ev, extra, repeat):
    doc = {**json.loads(encode(ev)), **extra}
    raw = json.dumps(doc, ensure_ascii=False).encode()
    if repeat:  # a key given twice: both decoders keep the last
        raw = raw[:-1] + b', "util": 0.25, "tenant": "late"}'
    agrees(raw)


@FAST
@given(usage_events(), st.floats(min_value=0.0, max_value=2.0, allow_nan=False)
       | st.sampled_from([1.0, 1.005, 1.01, 1.0100000001, 1.015, 1.02]))
def test_the_memory_check_is_the_contracts(ev, ratio):
    doc = {**json.loads(encode(ev)), "mem_total_gb": 80.0, "mem_used_gb": 80.0 * ratio}
    agrees(json.dumps(doc, ensure_ascii=False).encode())


def test_an_event_in_the_future_is_left_to_the_contract():
    doc = json.loads(encode(UsageEvent(ts=time.time(), tenant="t", service="s", cloud="aws", region="r",
                                       instance_type="i", gpu_model="g", host="h", gpu_index=0, interval_s=10,
                                       util=0.5, mem_used_gb=1, mem_total_gb=80, power_w=100)))
    doc["ts"] = time.time() + max_future_skew_s() + 5
    assert decode_usage_rows(json.dumps(doc, ensure_ascii=False).encode(), limit()) is None
    assert decode_usage_rows(json.dumps([doc], ensure_ascii=False).encode(), limit()) is None
    doc["ts"] = time.time() + max_future_skew_s() - 5
    assert agrees(json.dumps(doc, ensure_ascii=False).encode()) is not None


def test_undecodable_messages_are_left_to_the_contract():
    for raw in (b"", b"{", b"[1] trailing", b'{"ts": NaN}', b"\xff", b"[{}, 5]", msgspec.json.encode([1, 2])):
        assert decode_usage_rows(raw, limit()) is None
