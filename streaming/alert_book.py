"""What the alert evaluator knows of the windows: per aggregate key, the recent 60 s windows and,
for budgets, closed per-period spend totals (UTC hour, day, calendar month).

Long budget windows are derived exactly from the emitted windows: windows whose start is a
multiple of their size tile time without overlap, and every hour/day/month boundary is a multiple
of 60 s, so a period's spend is the sum of its aligned windows. Each record carries a window's
absolute value (latest wins), so re-emission is harmless. Once the watermark has closed a window's
first pane (window_end <= watermark - allowed lateness) the worker can no longer emit it complete,
so at that point its value is folded into per-period totals and later records for it are ignored;
until then it is summed from its latest record. Pure Python; streaming/alerts.py persists it."""

from __future__ import annotations

import calendar
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone

from contracts.aggregates import AggregateKey, WindowAggregate
from contracts.rules import PERIODS

def period_bounds(period: str, ts: float) -> tuple[int, int]:
    """[start, end) of the UTC hour, day or calendar month containing ts."""
    if period == "1h":
        start = int(ts // 3600) * 3600
        return start, start + 3600
    if period == "1d":
        start = int(ts // 86400) * 86400
        return start, start + 86400
    d = datetime.fromtimestamp(ts, tz=timezone.utc)
    start = calendar.timegm((d.year, d.month, 1, 0, 0, 0))
    y, m = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return start, calendar.timegm((y, m, 1, 0, 0, 0))


SPEND, IDLE, GPU_S = range(3)


@dataclass
class WindowBook:
    """Per aggregate key: recent windows (start -> (spend_usd, idle_usd, gpu_seconds)) and, for
    budgets, closed per-period spend totals folded from the aligned windows. The closed totals are
    the only state panes cannot rebuild, so each key's totals (with the fold point they hold up to)
    are written to a compacted topic and restored on start (`state_records` / `restore_state`)."""

    size_s: int
    step_s: int
    allowed_lateness_s: int
    windows: dict[tuple, dict[int, tuple[float, float, float]]] = field(default_factory=dict)
    closed: dict[tuple, dict[tuple[str, int], float]] = field(default_factory=dict)
    frozen_upto: float = -math.inf  # aligned windows starting at or before this are folded
    frozen_key: dict[tuple, float] = field(default_factory=dict)  # restored fold points, per key
    dirty: set[tuple] = field(default_factory=set)  # keys whose closed totals changed
    retain_s: int = 3600
    max_ws: int = 0  # newest window start seen

    def _frozen(self, key: tuple) -> float:
        return max(self.frozen_upto, self.frozen_key.get(key, -math.inf))

    def add(self, rec: WindowAggregate) -> None:
        ws = rec.window_start
        if rec.window_s != self.size_s:
            return
        key = rec.key
        if ws % self.size_s == 0 and ws <= self._frozen(key):
            return  # already folded: the worker can no longer emit it complete
        self.windows.setdefault(key, {})[ws] = (rec.spend_usd, rec.idle_usd, rec.gpu_seconds)
        if ws > self.max_ws:
            self.max_ws = ws

    def advance(self, watermark: float) -> None:
        """Fold aligned windows whose first pane the worker has closed; drop old windows."""
        frozen = watermark - self.allowed_lateness_s - self.size_s
        if frozen <= self.frozen_upto:
            return
        prune_before = watermark - self.retain_s - self.allowed_lateness_s - 2 * self.size_s
        for key, wins in self.windows.items():
            totals = self.closed.setdefault(key, {})
            done = self._frozen(key)
            for ws in [w for w in wins if w % self.size_s == 0 and done < w <= frozen]:
                for p in PERIODS:
                    pk = (p, period_bounds(p, ws)[0])
                    totals[pk] = totals.get(pk, 0.0) + wins[ws][SPEND]
                self.dirty.add(key)
            for ws in [w for w in wins if w < prune_before and (w % self.size_s or w <= frozen)]:
                del wins[ws]
        for key, totals in self.closed.items():
            for pk in [pk for pk in totals if period_bounds(pk[0], pk[1])[1] < prune_before]:
                del totals[pk]
                self.dirty.add(key)
        for key in [k for k, w in self.windows.items() if not w]:
            del self.windows[key]
        for key in [k for k, t in self.closed.items() if not t and k not in self.windows]:
            del self.closed[key]
            self.dirty.add(key)
        self.frozen_key = {k: f for k, f in self.frozen_key.items() if f > frozen}
        self.frozen_upto = frozen

    def state_records(self) -> list[tuple[str, dict | None]]:
        """(record key, value or None for a tombstone) for every key whose totals changed."""
        out = []
        for key in self.dirty:
            totals = self.closed.get(key)
            value = None if not totals else {
                "frozen_upto": self._frozen(key), "totals": [[p, start, v] for (p, start), v in totals.items()]}
            out.append((AggregateKey(*key).encode(), value))
        self.dirty.clear()
        return out

    def restore_state(self, record_key: str, value: dict | None) -> None:
        key = AggregateKey.decode(record_key)
        if value is None:
            self.closed.pop(key, None)
            self.frozen_key.pop(key, None)
            return
        frozen = float(value["frozen_upto"])
        self.closed[key] = {(p, int(start)): float(v) for p, start, v in value["totals"]}
        self.frozen_key[key] = frozen
        for ws in [w for w in self.windows.get(key, {}) if w % self.size_s == 0 and w <= frozen]:
            del self.windows[key][ws]  # counted in the restored totals already

    def period_spend(self, keys: list[tuple], period: str, ts: float) -> float:
        start, end = period_bounds(period, ts)
        total = 0.0
        for key in keys:
            total += self.closed.get(key, {}).get((period, start), 0.0)
            wins = self.windows.get(key)
            if not wins:
                continue
            done = self._frozen(key)
            if done == -math.inf:  # nothing folded yet: scan
                total += sum(v[SPEND] for ws, v in wins.items() if start <= ws < end and ws % self.size_s == 0)
                continue
            # only the few aligned windows past the fold point are open
            first = max(start, (math.floor(done / self.size_s) + 1) * self.size_s)
            for ws in range(first, min(end, self.max_ws + 1), self.size_s):
                v = wins.get(ws)
                if v is not None:
                    total += v[SPEND]
        return total

    def group_window(self, keys: list[tuple], ws: int) -> tuple[float, float, float] | None:
        out = None
        for key in keys:
            v = self.windows.get(key, {}).get(ws)
            if v is not None:
                out = v if out is None else (out[0] + v[0], out[1] + v[1], out[2] + v[2])
        return out

    def next_data_window(self, keys: list[tuple], after: int, upto: int) -> int | None:
        return min((ws for key in keys for ws in self.windows.get(key, {}) if after < ws <= upto), default=None)
