"""The aggregate key's one encoding: five names, the model version written only when there is one,
so keys written before it was a key part (four names) read as "no version" and are written back
byte for byte; anything else is refused, never guessed."""

from __future__ import annotations

import pytest

from contracts.aggregates import AggregateKey, AlertEvent, PaneRecordKey, PaneSums, WindowAggregate

STABLE = AggregateKey("acme", "chat", "us-east-1", "H100-80GB", "v1")
NO_VERSION = AggregateKey("acme", "chat", "us-east-1", "H100-80GB", "")


def test_a_key_without_a_version_is_the_four_part_key_written_before():
    assert NO_VERSION.encode() == "acme\x1fchat\x1fus-east-1\x1fH100-80GB"
    assert AggregateKey.decode("acme\x1fchat\x1fus-east-1\x1fH100-80GB") == NO_VERSION
    assert STABLE.encode() == "acme\x1fchat\x1fus-east-1\x1fH100-80GB\x1fv1"
    for key in (STABLE, NO_VERSION):
        assert AggregateKey.decode(key.encode()) == key


@pytest.mark.parametrize("raw", ["acme\x1fchat\x1fus-east-1", "acme\x1fchat\x1fus-east-1\x1fH100-80GB\x1f",
                                 "a\x1fb\x1fc\x1fd\x1fe\x1ff"])
def test_other_shapes_are_refused(raw):
    with pytest.raises(ValueError, match="not an aggregate key"):
        AggregateKey.decode(raw)


def test_pane_record_keys_of_both_shapes_round_trip():
    old = "3\x1facme\x1fchat\x1fus-east-1\x1fH100-80GB\x1f1790000000"
    assert PaneRecordKey.decode(old) == PaneRecordKey(3, NO_VERSION, 1_790_000_000)
    assert PaneRecordKey.decode(old).encode() == old  # its tombstone replaces it on the compacted topic
    new = PaneRecordKey(3, STABLE, 1_790_000_000)
    assert PaneRecordKey.decode(new.encode()) == new
    with pytest.raises(ValueError, match="not a pane record key"):
        PaneRecordKey.decode("3\x1facme\x1f1790000000")


def test_records_from_before_read_as_no_version_and_old_panes_hold_every_version():
    window = WindowAggregate.model_validate({
        "window_start": 0, "window_end": 60, "window_s": 60, "tenant": "acme", "service": "chat",
        "region": "us-east-1", "gpu_model": "H100-80GB", "spend_usd": 1.0, "spend_rate_usd_h": 60.0,
        "gpu_seconds": 10.0, "util_avg": 0.5, "idle_usd": 0.5, "events": 1})
    assert window.model_version == "" and window.key == NO_VERSION and AggregateKey.of(window) == NO_VERSION
    assert AggregateKey.of({**window.model_dump(), "model_version": "v1"}) == STABLE
    sums = dict(spend_usd=1.0, gpu_seconds=10.0, util_seconds=5.0, idle_usd=0.5, events=1, tokens=0, requests=0,
                last_offset=41)
    assert PaneSums.model_validate(sums).every_version_upto == 41  # written before: every version up to 41
    assert PaneSums.model_validate({**sums, "every_version_upto": -1}).every_version_upto == -1
    alert = AlertEvent.model_validate({"fingerprint": "f", "state": "firing", "rule_id": "r", "rule_kind": "budget",
                                       "rule_name": "n", "severity": "warning", "group": {}, "value": 1.0,
                                       "threshold": 1.0, "summary": "s", "starts_at": 0.0, "emitted_at": 0.0})
    assert alert.model_version is None
