"""The event contract: `UsageEvent` (what a GPU did over an interval) and `BillingEvent` (a priced
line item from a cloud bill). JSON on the wire, one event or a JSON array of them per message.

Validation is strict on meaning (ranges, finiteness, no far-future timestamps, no type coercion);
unknown extra fields are kept so newer producers do not break older consumers."""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Annotated, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticKnownError

SCHEMA_VERSION = 1


@lru_cache(maxsize=1)
def max_future_skew_s() -> float:
    """How far ahead of the receiver's clock an event's `ts` may be (`GPUCOST_MAX_FUTURE_SKEW_S`,
    read once per process: the check runs per event on the worker's hot path)."""
    from core.settings import get_settings

    return get_settings().max_future_skew_s

# Names carry no control characters: PostgreSQL cannot store NUL, and the worker's pane record
# keys join names with the unit separator (streaming/panes.py).
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
NonNegative = Annotated[float, Field(ge=0)]
EpochSeconds = Annotated[float, Field(gt=0)]


class _Event(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False, frozen=False)

    schema_version: int = SCHEMA_VERSION
    ts: EpochSeconds
    tenant: Name
    service: Name
    cloud: Name
    region: Name
    instance_type: Name
    gpu_model: Name

    # One after-validator per model (each is a Python call per event on the worker's hot path):
    # it checks what field constraints cannot, here and in the subclass's _check_fields.
    @model_validator(mode="after")
    def _meaningful(self):
        skew_s = max_future_skew_s()
        if self.ts > time.time() + skew_s:
            raise ValueError(f"ts {self.ts} is more than {skew_s:.0f}s in the future")
        self._check_fields()
        return self

    def _check_fields(self) -> None:
        pass


class UsageEvent(_Event):
    """One GPU's activity over `interval_s` seconds ending at `ts`. Kafka key: "{host}/{gpu_index}"."""

    host: Name
    gpu_index: Annotated[int, Field(ge=0, le=1024)]
    interval_s: Annotated[float, Field(gt=0, le=3600)]
    util: Annotated[float, Field(ge=0, le=1)]
    mem_used_gb: NonNegative
    mem_total_gb: Annotated[float, Field(gt=0)]
    power_w: NonNegative
    tokens: Annotated[int, Field(ge=0)] | None = None
    requests: Annotated[int, Field(ge=0)] | None = None
    model_version: Name | None = None

    def _check_fields(self) -> None:
        # 1 % slack: drivers report used and total from different counters.
        if self.mem_used_gb > self.mem_total_gb * 1.01:
            raise ValueError(f"mem_used_gb {self.mem_used_gb} exceeds mem_total_gb {self.mem_total_gb}")

    @property
    def kafka_key(self) -> str:
        return f"{self.host}/{self.gpu_index}"


#: What a billing line charges for (FOCUS ChargeCategory). Only `usage` lines are GPU time.
ChargeCategory = Literal["usage", "credit", "tax", "adjustment", "purchase"]
#: The `gpu_model` / `instance_type` of a charge that names no GPU instance (an account's credit).
NO_GPU = "none"


class BillingEvent(_Event):
    """A priced line item from a billing export. Kafka key: "{cloud}/{instance_id}".

    A `usage` line (the default) is GPU instance time: `gpu_count` >= 1 and `cost_usd` >= 0. Any
    other `charge_category` is a charge beside the usage (a credit, tax, an adjustment): it bills
    no GPU time, so `gpu_count` may be 0 and `gpu_model` / `instance_type` `"none"` (`NO_GPU`)
    where it names no GPU instance, and `cost_usd` may be negative (a credit)."""

    # Declared first: the cost and GPU count checks below read it.
    charge_category: ChargeCategory = "usage"
    instance_id: Name
    period_start: EpochSeconds
    period_end: EpochSeconds
    gpu_count: Annotated[int, Field(ge=0, le=1024, description="GPUs billed; at least 1 on a usage line, "
                                                              "0 on a charge that bills no GPU time")]
    cost_usd: float = Field(description="effective cost in USD (commitments amortised): at least 0 on a usage "
                                        "line, either sign on a credit, tax, adjustment or purchase line")
    pricing: Literal["on_demand", "spot", "reserved"]
    source: Name

    @field_validator("gpu_count", "cost_usd")
    @classmethod
    def _usage_bounds(cls, value, info: ValidationInfo):
        # A usage line keeps the bounds (and the very errors) of `gpu_count >= 1`, `cost_usd >= 0`.
        # A charge_category that failed its own check counts as usage: strictest.
        if info.data.get("charge_category", "usage") == "usage":
            floor = 1 if info.field_name == "gpu_count" else 0
            if value < floor:
                raise PydanticKnownError("greater_than_equal", {"ge": floor})
        return value

    def _check_fields(self) -> None:
        if self.period_end <= self.period_start:
            raise ValueError("period_end must be after period_start")

    @property
    def kafka_key(self) -> str:
        return f"{self.cloud}/{self.instance_id}"


class InvalidEvent(ValueError):
    """An event that breaks the contract; `reason` says how, for the dead-letter topic."""

    def __init__(self, reason: str, raw: bytes):
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


_usage_one = TypeAdapter(UsageEvent)
_billing_one = TypeAdapter(BillingEvent)
_usage_many = TypeAdapter(list[UsageEvent])
_billing_many = TypeAdapter(list[BillingEvent])


def describe_error(exc: ValidationError) -> str:
    """A short human-readable reason: first errors with their field paths."""
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "event"
        parts.append(f"{loc}: {err.get('msg')}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def _decode(raw: bytes, one: TypeAdapter, many: TypeAdapter, kind: str):
    """Decode a message into (events, rejects). A batch with bad members keeps the good ones;
    each reject is an InvalidEvent holding that member's own JSON bytes."""
    stripped = raw.lstrip()
    try:
        if stripped[:1] == b"[":
            return many.validate_json(raw), []
        return [one.validate_json(raw)], []
    except ValidationError as exc:
        if stripped[:1] != b"[":
            return [], [InvalidEvent(f"invalid {kind} event: {describe_error(exc)}", raw)]
    except (UnicodeDecodeError, ValueError) as exc:  # pragma: no cover - validate_json wraps these
        return [], [InvalidEvent(f"undecodable {kind} message: {exc}", raw)]
    # Slow path, only for batches with at least one bad member: validate member by member.
    import json

    try:
        members = json.loads(raw)
        # Re-encoding a member can exceed the recursion limit where decoding just fit.
        member_raws = [json.dumps(m, separators=(",", ":")).encode() for m in members]
    except (UnicodeDecodeError, ValueError) as exc:
        return [], [InvalidEvent(f"malformed JSON in {kind} batch: {exc}", raw)]
    except RecursionError:  # a poison message must be dead-lettered, never crash the worker
        return [], [InvalidEvent(f"malformed JSON in {kind} batch: nested too deeply", raw)]
    events, rejects = [], []
    for index, member_raw in enumerate(member_raws):
        try:
            events.append(one.validate_json(member_raw))
        except ValidationError as exc:
            rejects.append(InvalidEvent(f"invalid {kind} event at batch index {index}: {describe_error(exc)}", member_raw))
    return events, rejects


def decode_usage(raw: bytes) -> tuple[list[UsageEvent], list[InvalidEvent]]:
    return _decode(raw, _usage_one, _usage_many, "usage")


# -- the worker's fast path ------------------------------------------------------------------
# The meter (streaming/meter.py) decodes a message with msgspec straight into slot structs, the
# field constraints checked in C: about 5x faster than `validate_json` (bench.meter_cpu). It is a
# shortcut only: a message it accepts is one `decode_usage` accepts whole, with the same values;
# any other message (a reject, a JSON escape, a DEL byte, a NaN token anywhere) answers None and
# goes through `decode_usage`, so every rejection and its reason is the contract's own.
# tests/ingest/test_usage_rows.py checks that the two agree and that the fields stay in step.
# What Meta cannot say is checked in `decode_usage_rows`: the clock and used <= total memory.
# Non-finite numbers need no check: msgspec refuses NaN/Infinity tokens and out-of-range floats.
# Names carry no control characters: raw ones are invalid JSON for both decoders, escaped ones
# (a backslash) and DEL (0x7f, legal raw in JSON) send the message to `decode_usage`.
_RowName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
_RowNonNegative = Annotated[float, msgspec.Meta(ge=0)]


class UsageRow(msgspec.Struct, kw_only=True, gc=False):
    """A `UsageEvent` as the meter folds it (no extra fields kept: the meter reads none)."""

    schema_version: int = SCHEMA_VERSION
    ts: Annotated[float, msgspec.Meta(gt=0)]
    tenant: _RowName
    service: _RowName
    cloud: _RowName
    region: _RowName
    instance_type: _RowName
    gpu_model: _RowName
    host: _RowName
    gpu_index: Annotated[int, msgspec.Meta(ge=0, le=1024)]
    interval_s: Annotated[float, msgspec.Meta(gt=0, le=3600)]
    util: Annotated[float, msgspec.Meta(ge=0, le=1)]
    mem_used_gb: _RowNonNegative
    mem_total_gb: Annotated[float, msgspec.Meta(gt=0)]
    power_w: _RowNonNegative
    tokens: Annotated[int, msgspec.Meta(ge=0)] | None = None
    requests: Annotated[int, msgspec.Meta(ge=0)] | None = None
    model_version: _RowName | None = None


_rows_decode = msgspec.json.Decoder(list[UsageRow] | UsageRow).decode
_BACKSLASH, _DEL = ord("\\"), 0x7F
_RowsError = msgspec.DecodeError  # ValidationError is a DecodeError


def decode_usage_rows(raw: bytes, ts_limit: float) -> list[UsageRow] | None:
    """A message's events if the contract accepts every one of them, else None (then
    `decode_usage` decides, with the reasons). ts_limit: time.time() + max_future_skew_s(), taken
    by the caller at most a batch earlier (an older limit only sends more messages the slow way)."""
    if _BACKSLASH in raw or _DEL in raw:  # byte values: `int in bytes` is a memchr
        return None
    try:
        rows = _rows_decode(raw)
    except _RowsError:
        return None
    if rows.__class__ is not list:
        rows = [rows]
    for row in rows:  # UsageEvent._meaningful and _check_fields, the same comparisons
        if row.ts > ts_limit or row.mem_used_gb > row.mem_total_gb * 1.01:
            return None
    return rows


def decode_billing(raw: bytes) -> tuple[list[BillingEvent], list[InvalidEvent]]:
    return _decode(raw, _billing_one, _billing_many, "billing")


def encode_batch(events: list[BaseModel]) -> bytes:
    """One Kafka message value holding several events (a host's GPUs for one interval)."""
    return b"[" + b",".join(e.model_dump_json(exclude_none=True).encode() for e in events) + b"]"


def encode(event: BaseModel) -> bytes:
    return event.model_dump_json(exclude_none=True).encode()
