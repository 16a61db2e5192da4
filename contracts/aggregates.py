"""The records the stream writes and the API reads: the aggregate key, a pane's durable record
(`cost.panes`), a window aggregate (`cost.aggregates`) and an alert (`cost.alerts`). Each is
defined once here; the worker builds them, the API validates what it reads against them and serves
them (its OpenAPI schema comes from these models).

Keys have one encoding: the names joined by the ASCII unit separator, which validated names never
contain (`contracts/events.py` rejects control characters). The fifth part, the model version, is
written only when there is one: a key without a version reads and writes exactly as the four-part
keys written before model_version was a key part, so records on the compacted topics (`cost.panes`,
the alert totals' changelog) from before stay readable and their tombstones still replace them."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

SEP = "\x1f"


class AggregateKey(NamedTuple):
    """What every aggregate is grouped by. `model_version` is "" for events that carry none."""

    tenant: str
    service: str
    region: str
    gpu_model: str
    model_version: str

    def encode(self) -> str:
        return SEP.join(self) if self.model_version else SEP.join(self[:4])

    @classmethod
    def decode(cls, raw: str) -> AggregateKey:
        return cls.from_parts(raw.split(SEP), raw)

    @classmethod
    def from_parts(cls, parts: list[str], raw: str) -> AggregateKey:
        # Four parts: no model version (and every key written before there was one). A fifth
        # part is never empty: one key, one encoding.
        if len(parts) == 4:
            return cls(*parts, "")
        if len(parts) == 5 and parts[4]:
            return cls(*parts)
        raise ValueError(f"not an aggregate key: {raw!r}")

    @classmethod
    def of(cls, record: Any) -> AggregateKey:
        """The key of a record or mapping that carries the key fields (no model_version: "")."""
        if isinstance(record, dict):
            return cls(record["tenant"], record["service"], record["region"], record["gpu_model"],
                       record.get("model_version") or "")
        return cls(record.tenant, record.service, record.region, record.gpu_model,
                   getattr(record, "model_version", None) or "")


KEY_FIELDS: tuple[str, ...] = AggregateKey._fields


class _Record(BaseModel):
    # Unknown fields are kept, as for events: a newer writer must not break an older reader.
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class PaneSums(_Record):
    """A pane's absolute sums: one step of event time, one key, one source partition."""

    spend_usd: float
    gpu_seconds: float
    util_seconds: float
    idle_usd: float
    events: int
    tokens: int
    requests: int
    fallback_priced: int = 0
    last_offset: int = Field(description="the last source offset folded in (exactly-once on replay)")
    watermark: float = Field(0.0, description="the writer's watermark for this source partition")
    every_version_upto: int = Field(
        -1, description="the source offset up to which this pane holds the events of every model version of "
        "its key (a pane written before model_version was a key part, whose key has none); -1: only its own")

    @model_validator(mode="after")
    def _from_before_model_versions(self):
        # A record without the field was written by a meter that did not key panes by model
        # version: it holds every version's events up to its last offset (streaming/panes.py
        # skips them when replayed, whatever their version).
        if "every_version_upto" not in self.model_fields_set:
            self.every_version_upto = self.last_offset
        return self


class PaneRecordKey(NamedTuple):
    """The key of a pane's record on the compacted `cost.panes` topic."""

    partition: int
    key: AggregateKey
    pane_start: int

    def encode(self) -> str:
        return SEP.join((str(self.partition), self.key.encode(), str(self.pane_start)))

    @classmethod
    def decode(cls, raw: str) -> PaneRecordKey:
        parts = raw.split(SEP)
        if len(parts) not in (6, 7):
            raise ValueError(f"not a pane record key: {raw!r}")
        return cls(int(parts[0]), AggregateKey.from_parts(parts[1:-1], raw), int(parts[-1]))


def pane_record_key_bytes(partition: int, key: tuple[str, ...], pane_start: int) -> bytes:
    """`PaneRecordKey(partition, AggregateKey(*key), pane_start).encode().encode()` from the
    plain tuple the meter keys its panes by (the same encoding, without building the tuples)."""
    # One key, one encoding: the model version is a fifth part only when there is one.
    return SEP.join((str(partition), *(key if len(key) > 4 and key[4] else key[:4]), str(pane_start))).encode()


class WindowAggregate(_Record):
    """One hopping window of one key (DESIGN.md, Aggregates): an event counts wholly in every
    window whose [window_start, window_end) holds its ts."""

    kind: Literal["usage"] = "usage"
    window_start: int = Field(description="epoch seconds")
    window_end: int = Field(description="epoch seconds, exclusive")
    window_s: int
    tenant: str
    service: str
    region: str
    gpu_model: str
    model_version: str = Field("", description="the model version the events carried (canary against stable); "
                               "empty for events without one")
    spend_usd: float
    spend_rate_usd_h: float = Field(description="spend_usd * 3600 / window_s")
    gpu_seconds: float
    util_avg: float = Field(description="utilization weighted by GPU-seconds")
    idle_usd: float = Field(description="sum of each event's metered cost times (1 - util)")
    events: int
    tokens: int = 0
    requests: int = 0
    fallback_priced_events: int = Field(0, description="events priced at the GPU model's fallback price")
    revision: int = Field(0, ge=0, description="0 for a window's first record, n for its n-th correction "
                          "(a late event or another worker's panes arrived); the newest record of a "
                          "window replaces the older ones")

    @property
    def key(self) -> AggregateKey:
        return AggregateKey(self.tenant, self.service, self.region, self.gpu_model, self.model_version)


class AlertEvent(_Record):
    """An alert transition: one record when a fingerprint (rule + group + level) starts firing and
    one when it resolves."""

    fingerprint: str
    state: Literal["firing", "resolved"]
    rule_id: str
    rule_kind: str
    rule_name: str
    rule_version: int = 1
    level: str = ""
    severity: str
    group: dict[str, str]
    tenant: str | None = None
    service: str | None = None
    region: str | None = None
    gpu_model: str | None = None
    model_version: str | None = None
    value: float
    threshold: float
    summary: str
    starts_at: float
    ends_at: float | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    emitted_at: float


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC (how alert times appear in webhook payloads)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")
