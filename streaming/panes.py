"""Exact, idempotent hopping-window aggregation over per-step panes.

A hopping window of size S and step T is the sum of S/T consecutive panes of width T, so each event
updates exactly one pane (not S/T windows) and a window is summed when it is emitted. Panes are kept
per source partition with the last source offset folded into them: a pane's durable record
(`cost.panes`, compacted) is an absolute value, and after a crash a replayed message is folded into a
pane only if its offset is past the offset that pane was restored with. That makes the aggregation
exactly-once on top of Faust's at-least-once delivery (faust issue #502), with no transactions.

Panes and windows are keyed by (tenant, service, region, GPU model, model version), the version
"" for events without one, so canary and stable versions of a service are summed apart.

Two stages use it: the meter (streaming/meter.py) folds events of the source partitions it owns
into panes and writes each changed pane's absolute record to `cost.panes`, partitioned by tenant;
the window stage (streaming/windows.py) holds every pane of its keys, whichever worker wrote them,
and sums windows from them. With one worker or many, each key's windows are summed in one place.

Cost model (DESIGN.md): metered cost = price_per_gpu_hour * interval_s / 3600; idle waste =
metered cost * (1 - util); util_avg is weighted by GPU-seconds."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from pydantic_core import to_json

from contracts.aggregates import AggregateKey, PaneRecordKey, PaneSums, WindowAggregate, pane_record_key_bytes
from contracts.events import UsageEvent
from core.pricing import PricingError

# The hot path keys panes by plain tuples (an AggregateKey compares and hashes equal to one, and is
# built only where a record leaves this module).
AggKey = tuple[str, str, str, str, str]  # (tenant, service, region, gpu_model, model_version or "")

# Slots of a pane's running sums (a list, for speed on the hot path).
SPEND, GPU_S, UTIL_S, IDLE, EVENTS, TOKENS, REQUESTS, FALLBACK, LAST_OFFSET, RESTORED_OFFSET = range(10)
_N_SUMS = 8  # the additive slots
assert LAST_OFFSET == _N_SUMS and RESTORED_OFFSET == _N_SUMS + 1  # fold_messages writes slots 0..8 at once


def new_sums(restored_offset: int = -1) -> list:
    return [0.0, 0.0, 0.0, 0.0, 0, 0, 0, 0, restored_offset, restored_offset]


@dataclass
class WindowSpec:
    size_s: int = 60
    step_s: int = 10
    allowed_lateness_s: int = 120

    def __post_init__(self):
        if self.size_s <= 0 or self.step_s <= 0 or self.size_s % self.step_s:
            raise ValueError(f"window size {self.size_s}s must be a positive multiple of step {self.step_s}s")

    @property
    def panes_per_window(self) -> int:
        return self.size_s // self.step_s

    def pane_start(self, ts: float) -> int:
        return math.floor(ts / self.step_s) * self.step_s

    def window_starts(self, pane_start: int) -> range:
        """Starts of every window that contains the pane (and so every event in it)."""
        return range(pane_start - self.size_s + self.step_s, pane_start + 1, self.step_s)


@dataclass
class Rejected:
    reason: str
    event: UsageEvent


PriceFn = Callable[[UsageEvent], tuple[float, bool]]  # -> (usd per GPU-hour, is_fallback)


@dataclass
class PaneStore:
    """All panes a worker holds: key -> pane_start -> source partition -> sums."""

    spec: WindowSpec
    price: PriceFn
    panes: dict[AggKey, dict[int, dict[int, list]]] = field(default_factory=dict)
    dirty: set[tuple[AggKey, int, int]] = field(default_factory=set)  # (key, pane_start, partition)
    pending_windows: set[tuple[AggKey, int]] = field(default_factory=set)
    ready_windows: list[WindowAggregate] = field(default_factory=list)  # completed by an eviction, to emit
    evicted_upto: dict[AggKey, int] = field(default_factory=dict)  # newest evicted pane per key
    emitted: dict[tuple[AggKey, int], int] = field(default_factory=dict)  # records sent per open window
    # Event-time watermark: the minimum over source partitions of the newest event time each has
    # delivered (a partition read ahead of the others must not make their events look late).
    # Partitions silent for idle_partition_s of wall time stop holding it back.
    watermark: float = 0.0
    partition_watermarks: dict[int, float] = field(default_factory=dict)
    partition_seen: dict[int, float] = field(default_factory=dict)
    idle_partition_s: float = 30.0
    #: Source partitions this store consumes; until each has delivered (or stayed silent for
    #: idle_partition_s) the watermark waits for it. None: only partitions seen so far count.
    expected_partitions: frozenset[int] | None = None
    created: float = field(default_factory=time.monotonic)
    #: Panes restored from records written before model_version was a key part: (key, pane_start,
    #: partition) -> the offset up to which such a pane holds the events of every model version
    #: of its key. A replayed event of a versioned key at or below it is already counted there.
    #: Empty once those panes are evicted (a few minutes after an upgrade).
    every_version_upto: dict[tuple[AggKey, int, int], int] = field(default_factory=dict)
    late_events: int = 0
    late_after_close: int = 0  # window stage: events that reached a pane after one of its windows closed
    replayed_events: int = 0
    accepted_events: int = 0

    # -- hot path ---------------------------------------------------------------------------
    def add(self, events: Iterable[UsageEvent], partition: int, offset: int, advance: bool = True) -> list[Rejected]:
        """Fold one message's events in; returns those it cannot count (late, or no price for
        their GPU model) with the reason, for the dead-letter topic: never silently dropped."""
        events = events if isinstance(events, (list, tuple)) else list(events)
        rejected = [rej for _, rej in self.fold_messages(partition, ((offset, events),))]
        if advance:  # the worker advances once per batch of messages instead (advance_watermark)
            self.partition_seen[partition] = time.monotonic()
            self._advance_watermark()
        return rejected

    def fold_messages(self, partition: int, messages: Iterable[tuple[int, Sequence]]) -> list[tuple[int, Rejected]]:
        """Fold a batch of one source partition's messages, (offset, events) in offset order;
        returns (position of the message in the batch, Rejected) for each event it cannot count.
        The watermark does not move here (advance_watermark does, per batch). Events are
        `UsageEvent`s or anything with their attributes (the meter's `UsageRow`s).

        One long function on purpose: it is the worker's per-event loop, and every helper call
        inside it would be paid per event (bench.meter_cpu, bench.stream measure it). The pane
        being filled is summed in local variables, in the same order as one addition per event
        into its list (the same floats), and written back when the next event goes elsewhere."""
        spec = self.spec
        step = spec.step_s
        # The rule for lateness: an event is counted only if every window that holds it is still
        # open. A window closes when its first pane is evicted (evict_closed: the window ends at or
        # before the horizon), so the oldest window holding pane p, [p - size + step, p + step),
        # is open while p + step > horizon. Later events are dead-lettered and counted, never
        # folded into a pane whose older windows are already out.
        horizon = self.watermark - spec.allowed_lateness_s
        rejected: list[tuple[int, Rejected]] = []
        panes = self.panes
        dirty_add = self.dirty.add
        price = self.price
        newest = self.partition_watermarks.get(partition, 0.0)
        replayed = late = n_total = 0
        # The pane being filled: its list, key and start, and its running sums in locals. Events
        # come in runs (a message is usually one host's GPUs for one interval: same key, pane and
        # price), and an event of the run (its time inside the pane, the same key and price key
        # as the event before) goes straight to the sums. Carrying the pane from one message to
        # the next is exact: offsets grow within a partition, so an event past a pane's restored
        # offset is followed only by such events, and the horizon does not move within the batch.
        cur = new_sums()  # a scratch pane before the first (written back to, then dropped)
        cur_key = None
        cur_pane = pane_end = 0  # [cur_pane, pane_end): the pane's event times
        spend = gpu_s = util_s = idle = 0.0
        n_events = tokens = requests = n_fallback = cur_offset = 0
        last_pkey = usd_h = fallback = None
        before_versions = self.every_version_upto
        for position, (offset, events) in enumerate(messages):
            n_total += len(events)
            for ev in events:
                ts = ev.ts
                key = (ev.tenant, ev.service, ev.region, ev.gpu_model, ev.model_version or "")  # AggKey
                pkey = (ev.cloud, ev.region, ev.instance_type, ev.gpu_model)  # what the price depends on
                if not (cur_pane <= ts < pane_end and key == cur_key and pkey == last_pkey):
                    # Not the run: find the pane and the price, or reject the event.
                    pane_start = int(ts // step) * step
                    if pane_start != cur_pane or key != cur_key:
                        by_start = panes.get(key)
                        by_partition = by_start.get(pane_start) if by_start is not None else None
                        sums = by_partition.get(partition) if by_partition is not None else None
                        # A replay first: an event already in the pane's durable state is neither
                        # late nor unpriceable now, whatever the restored watermark or prices say.
                        if sums is not None and offset <= sums[RESTORED_OFFSET]:
                            replayed += 1
                            continue
                        if before_versions and sums is None and offset <= before_versions.get(
                                ((*key[:4], ""), pane_start, partition), -1):
                            replayed += 1  # in a pane from before versions were keyed apart
                            continue
                        if pane_start + step <= horizon:
                            rejected.append((position, Rejected(
                                f"late: the window [{pane_start + step - spec.size_s}, {pane_start + step}) holding "
                                f"event time {ts:.3f} is closed (watermark {self.watermark:.3f}, allowed lateness "
                                f"{spec.allowed_lateness_s}s)", ev)))
                            late += 1
                            continue
                    else:
                        sums = cur
                    if pkey != last_pkey:
                        try:
                            usd_h, fallback = price(ev)
                        except PricingError as exc:
                            rejected.append((position, Rejected(f"unpriceable: {exc}", ev)))
                            last_pkey = None
                            continue
                        last_pkey = pkey
                    if sums is not cur:
                        cur[:LAST_OFFSET + 1] = (spend, gpu_s, util_s, idle, n_events, tokens, requests, n_fallback,
                                                 cur_offset)
                        if sums is None:
                            if by_start is None:
                                by_start = panes[key] = {}
                            if by_partition is None:
                                by_partition = by_start[pane_start] = {}
                            sums = by_partition[partition] = new_sums()
                        dirty_add((key, pane_start, partition))
                        cur, cur_key, cur_pane, pane_end = sums, key, pane_start, pane_start + step
                        spend, gpu_s, util_s, idle, n_events, tokens, requests, n_fallback, _, _ = sums
                interval = ev.interval_s
                cost = usd_h * interval / 3600.0
                util = ev.util
                spend += cost
                gpu_s += interval
                util_s += util * interval
                idle += cost * (1.0 - util)
                n_events += 1
                n = ev.tokens
                if n:
                    tokens += n
                n = ev.requests
                if n:
                    requests += n
                if fallback:
                    n_fallback += 1
                cur_offset = offset
                if ts > newest:
                    newest = ts
        cur[:LAST_OFFSET + 1] = spend, gpu_s, util_s, idle, n_events, tokens, requests, n_fallback, cur_offset
        if newest > self.partition_watermarks.get(partition, 0.0):
            self.partition_watermarks[partition] = newest
        self.late_events += late
        self.accepted_events += n_total - replayed - len(rejected)
        self.replayed_events += replayed
        return rejected

    def advance_watermark(self, partitions: Iterable[int]) -> None:
        """After a batch folded with advance=False: these partitions just delivered."""
        now = time.monotonic()
        for p in partitions:
            self.partition_seen[p] = now
        self._advance_watermark()

    def _advance_watermark(self) -> None:
        now = time.monotonic()
        partitions = set(self.partition_watermarks)
        if self.expected_partitions is not None:
            partitions |= self.expected_partitions
        active = [self.partition_watermarks.get(p, 0.0) for p in partitions
                  if now - self.partition_seen.get(p, self.created) <= self.idle_partition_s]
        candidate = min(active) if active else max(self.partition_watermarks.values(), default=0.0)
        if candidate > self.watermark:  # never moves back
            self.watermark = candidate

    # -- durable state ----------------------------------------------------------------------
    def take_dirty(self) -> list[tuple[PaneRecordKey, PaneSums]]:
        """Pane records to persist for every pane changed since the last call. Windows are summed
        from these records (see `restore`), not from here, so that the panes of one key held by
        several workers meet in one place."""
        out = []
        before_versions = self.every_version_upto
        for key, pane_start, partition in self.dirty:
            sums = self.panes[key][pane_start][partition]
            out.append((PaneRecordKey(partition, AggregateKey(*key), pane_start),
                        pane_sums(sums, self.partition_watermarks.get(partition, 0.0),
                                  before_versions.get((key, pane_start, partition), -1) if before_versions else -1)))
        self.dirty.clear()
        return out

    def take_dirty_encoded(self) -> list[tuple[str, bytes, bytes]]:
        """`take_dirty` for the wire, as the meter sends it: (tenant, record key, record value),
        the same bytes as encoding take_dirty's records, built without the models (a flush writes
        thousands; pydantic's model and its validation were ~13 µs of the ~15 µs a record)."""
        out = []
        panes = self.panes
        watermarks = self.partition_watermarks
        before_versions = self.every_version_upto
        for key, pane_start, partition in self.dirty:
            out.append((key[0], pane_record_key_bytes(partition, key, pane_start),
                        pane_sums_json(panes[key][pane_start][partition], watermarks.get(partition, 0.0),
                                       before_versions.get((key, pane_start, partition), -1) if before_versions else -1)))
        self.dirty.clear()
        return out

    def restore(self, record_key: PaneRecordKey, value: PaneSums | None, mark_windows: bool = True) -> None:
        """Load one durable pane record (None = tombstone): a stage-1 store restores its own
        partitions' panes before folding; the window stage applies every record of its keys
        (absolute values: a record read twice changes nothing) and marks their windows."""
        partition, key, pane_start = record_key
        if value is None:
            if mark_windows:
                # The window stage closes windows by its own watermark (the minimum over every
                # meter's partitions), not by one meter's tombstone: another meter, its watermark
                # behind, may still fold events into this pane's other partitions or neighbours.
                return
            self.every_version_upto.pop((key, pane_start, partition), None)
            by_start = self.panes.get(key, {})
            by_start.get(pane_start, {}).pop(partition, None)
            if pane_start in by_start and not by_start[pane_start]:
                del by_start[pane_start]
            if key in self.panes and not by_start:
                del self.panes[key]
            return
        sums = [value.spend_usd, value.gpu_seconds, value.util_seconds, value.idle_usd, value.events,
                value.tokens, value.requests, value.fallback_priced, value.last_offset, value.last_offset]
        by_partition = self.panes.setdefault(key, {}).setdefault(pane_start, {})
        if mark_windows and pane_start - self.spec.size_s + self.spec.step_s <= self.evicted_upto.get(key, -1):
            # Events folded into a pane after one of its windows closed here: every meter's rule
            # (the oldest window open by its own watermark, never behind this stage's) prevents
            # it, so this counts a broken invariant (a record from before a rebuild, a clock
            # jump), never silently.
            old = by_partition.get(partition)
            self.late_after_close += value.events - (old[EVENTS] if old else 0)
        by_partition[partition] = sums
        if not mark_windows:  # the meter: what a pane from before versions were keyed apart holds
            if value.every_version_upto >= 0 and not key.model_version:
                # Kept across a re-persist (take_dirty), so a second restart still skips it.
                self.every_version_upto[(key, pane_start, partition)] = value.every_version_upto
            elif self.every_version_upto:
                self.every_version_upto.pop((key, pane_start, partition), None)
        wm = value.watermark
        if wm > self.partition_watermarks.get(partition, 0.0):
            self.partition_watermarks[partition] = wm
            self.partition_seen[partition] = time.monotonic()
        self._advance_watermark()
        if mark_windows:  # the window stage; stage 1 only needs the sums and offsets back
            for ws in self.spec.window_starts(pane_start):
                self.pending_windows.add((key, ws))

    def evict_closed(self) -> list[PaneRecordKey]:
        """Drop panes no open window needs; returns the keys of their records, to tombstone."""
        horizon = self.watermark - self.spec.allowed_lateness_s
        tombstones = []
        for key in list(self.panes):
            by_start = self.panes[key]
            for pane_start in [s for s in by_start if s + self.spec.size_s <= horizon]:
                for partition in by_start.pop(pane_start):
                    tombstones.append(PaneRecordKey(partition, AggregateKey(*key), pane_start))
                    if self.every_version_upto:
                        self.every_version_upto.pop((key, pane_start, partition), None)
            if not by_start:
                del self.panes[key]
        return tombstones

    def drop_partitions(self, partitions: set[int]) -> None:
        """Forget the panes of source partitions this worker no longer owns (after a rebalance
        the new owner restores them from their durable records)."""
        for key in list(self.panes):
            by_start = self.panes[key]
            for pane_start in list(by_start):
                for p in partitions:
                    by_start[pane_start].pop(p, None)
                if not by_start[pane_start]:
                    del by_start[pane_start]
            if not by_start:
                del self.panes[key]
        self.dirty = {d for d in self.dirty if d[2] not in partitions}
        self.every_version_upto = {k: v for k, v in self.every_version_upto.items() if k[2] not in partitions}
        for p in partitions:
            self.partition_watermarks.pop(p, None)
            self.partition_seen.pop(p, None)

    # -- windows ----------------------------------------------------------------------------
    def window(self, key: AggKey, window_start: int) -> WindowAggregate | None:
        spec = self.spec
        by_start = self.panes.get(key)
        if not by_start:
            return None
        total = [0.0] * _N_SUMS
        found = False
        for pane_start in range(window_start, window_start + spec.size_s, spec.step_s):
            for sums in by_start.get(pane_start, {}).values():
                found = True
                for i in range(_N_SUMS):
                    total[i] += sums[i]
        if not found:
            return None
        return window_record(key, window_start, spec.size_s, total)

    def take_pending_windows(self) -> list[WindowAggregate]:
        """Window records to emit: those completed by an eviction first, then every window marked
        since the last call, except windows that lost a pane to eviction (closed and emitted)."""
        self._close_by_watermark()
        records, self.ready_windows = self.ready_windows, []
        for key, ws in sorted(self.pending_windows, key=lambda kw: (kw[1], kw[0])):
            if ws <= self.evicted_upto.get(key, -1):
                continue
            rec = self.window(key, ws)
            if rec is not None:
                records.append(self._revised(rec))
        self.pending_windows.clear()
        return records

    def _close_by_watermark(self) -> None:
        """The window stage: drop the panes no open window needs (by this stage's watermark, the
        minimum over every meter's partitions), oldest first. A pane's windows that are pending
        go out now, whole (every later pane they hold is still here), and never again."""
        horizon = self.watermark - self.spec.allowed_lateness_s
        size = self.spec.size_s
        for key in list(self.panes):
            by_start = self.panes[key]
            for pane_start in sorted(s for s in by_start if s + size <= horizon):
                closed_upto = self.evicted_upto.get(key, -1)
                for ws in self.spec.window_starts(pane_start):
                    if (key, ws) in self.pending_windows:
                        self.pending_windows.discard((key, ws))
                        rec = self.window(key, ws) if ws > closed_upto else None
                        if rec is not None:
                            self.ready_windows.append(self._revised(rec))
                    self.emitted.pop((key, ws), None)  # closed: no record of it follows
                self.evicted_upto[key] = max(closed_upto, pane_start)
                del by_start[pane_start]
            if not by_start:
                del self.panes[key]

    def _revised(self, rec: WindowAggregate) -> WindowAggregate:
        """Number the records of each open window: a record after the first is a correction."""
        k = (rec.key, rec.window_start)
        rec.revision = self.emitted.get(k, 0)
        self.emitted[k] = rec.revision + 1
        return rec

    def forget_closed_pending(self) -> None:
        """After a rebuild from the compacted topic, whose tombstones may be gone: drop pending
        windows already closed (they were emitted whole before; now some panes may be missing)."""
        horizon = self.watermark - self.spec.allowed_lateness_s
        self.pending_windows = {(k, ws) for k, ws in self.pending_windows if ws + self.spec.size_s > horizon}


def window_record(key: AggKey, window_start: int, window_s: int, total: list) -> WindowAggregate:
    tenant, service, region, gpu_model, model_version = key
    gpu_seconds = total[GPU_S]
    spend = total[SPEND]
    return WindowAggregate(
        window_start=window_start, window_end=window_start + window_s, window_s=window_s,
        tenant=tenant, service=service, region=region, gpu_model=gpu_model, model_version=model_version,
        spend_usd=spend, spend_rate_usd_h=spend * 3600.0 / window_s, gpu_seconds=gpu_seconds,
        util_avg=total[UTIL_S] / gpu_seconds if gpu_seconds else 0.0, idle_usd=total[IDLE],
        events=int(total[EVENTS]), tokens=int(total[TOKENS]), requests=int(total[REQUESTS]),
        fallback_priced_events=int(total[FALLBACK]))


def pane_sums(sums: list, watermark: float, every_version_upto: int = -1) -> PaneSums:
    """A pane's durable record from its running sums."""
    return PaneSums(spend_usd=sums[SPEND], gpu_seconds=sums[GPU_S], util_seconds=sums[UTIL_S],
                    idle_usd=sums[IDLE], events=sums[EVENTS], tokens=sums[TOKENS], requests=sums[REQUESTS],
                    fallback_priced=sums[FALLBACK], last_offset=sums[LAST_OFFSET], watermark=watermark,
                    every_version_upto=every_version_upto)


def pane_sums_json(sums: list, watermark: float, every_version_upto: int = -1) -> bytes:
    """`pane_sums(sums, watermark, every_version_upto).model_dump_json().encode()`, the same bytes (pydantic-core's
    serializer, the fields in PaneSums' order) without the model. A non-finite sum goes through
    the model, which refuses it as before (tests/streaming/test_fold_batch.py compares the two)."""
    spend, gpu_s, util_s, idle = float(sums[SPEND]), float(sums[GPU_S]), float(sums[UTIL_S]), float(sums[IDLE])
    watermark = float(watermark)
    if not math.isfinite(spend + gpu_s + util_s + idle + watermark):
        return pane_sums(sums, watermark, every_version_upto).model_dump_json().encode()
    return to_json({"spend_usd": spend, "gpu_seconds": gpu_s, "util_seconds": util_s, "idle_usd": idle,
                    "events": sums[EVENTS], "tokens": sums[TOKENS], "requests": sums[REQUESTS],
                    "fallback_priced": sums[FALLBACK], "last_offset": sums[LAST_OFFSET], "watermark": watermark,
                    "every_version_upto": every_version_upto})
