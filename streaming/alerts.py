"""Alert rules evaluated in the stream: the worker feeds every aggregate it emits (and its event-time
watermark) to `AlertEvaluator`, which keeps one state per fingerprint (rule + group key) and returns
exactly one alert record when a fingerprint starts firing and one when it resolves.

In: rules from the compacted `cost.rules` topic (written by the API, `follow_rules`), window
aggregates. Out: alert records for `cost.alerts`. Pure Python apart from `follow_rules`.

Long budget windows (1 h, 1 day, calendar month, UTC) are derived exactly from the emitted 60 s
windows: the windows whose start is a multiple of their size tile time without overlap, and every
hour/day/month boundary is a multiple of 60 s, so a period's spend is the sum of its aligned windows.
Each record carries a window's absolute value (latest wins), so re-emission is harmless. Once the
watermark has closed a window's first pane (window_end <= watermark - allowed lateness) the worker can
no longer emit it complete, so at that point its value is folded into per-period totals and later
records for it are ignored; until then it is summed from its latest record."""

from __future__ import annotations

import calendar
import hashlib
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger("gpucost.alerts")

KEY_FIELDS = ("tenant", "service", "region", "gpu_model")
RuleKind = Literal["budget", "burn_rate", "idle_waste", "anomaly", "gpu_quota"]
KeyField = Literal["tenant", "service", "region", "gpu_model"]
Period = Literal["1h", "1d", "month"]
PERIODS: tuple[str, ...] = ("1h", "1d", "month")


# -- rule contract (the API validates with these, the worker reads them from cost.rules) -----------
class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class BudgetParams(_Params):
    """Spend over the current UTC hour / day / calendar month; a warning at each `warn_at` share
    of the limit and a critical alert at the limit itself."""

    period: Period = "1d"
    limit_usd: float = Field(gt=0)
    warn_at: list[float] = Field(default_factory=lambda: [0.5, 0.75, 0.9])

    @model_validator(mode="after")
    def _shares(self):
        if any(not 0 < w < 1 for w in self.warn_at):
            raise ValueError("warn_at shares must lie strictly between 0 and 1")
        self.warn_at = sorted(set(self.warn_at))
        return self


class BurnRateParams(_Params):
    """Projected end-of-day (or end-of-month) spend: spent so far plus the rate of the last
    `lookback_s` held until the period ends; bounds: nothing more spent / the peak 60 s rate held."""

    horizon: Literal["day", "month"] = "day"
    limit_usd: float = Field(gt=0)
    lookback_s: int = Field(3600, ge=60, le=7 * 86400)
    hysteresis: float = Field(0.05, ge=0, lt=1, description="resolves once the projection is this share under the limit")


class IdleWasteParams(_Params):
    """Idle share (idle_usd / spend_usd) above `threshold` in every window for `for_s` seconds."""

    threshold: float = Field(gt=0, lt=1)
    for_s: int = Field(600, ge=0, le=7 * 86400)
    min_spend_usd: float = Field(0.0, ge=0)


class AnomalyParams(_Params):
    """Spend rate more than `factor` times the mean of its own non-anomalous windows over the
    preceding `baseline_s` (at least `min_baseline_windows` of them), and at least `min_rate_usd_h`."""

    factor: float = Field(3.0, gt=1)
    baseline_s: int = Field(3600, ge=60, le=7 * 86400)
    min_baseline_windows: int = Field(6, ge=1)
    min_rate_usd_h: float = Field(0.0, ge=0)


class GpuQuotaParams(_Params):
    """GPUs in use (gpu_seconds / window_s, summed over the group) above `max_gpus` for `for_s`."""

    max_gpus: float = Field(gt=0)
    for_s: int = Field(0, ge=0, le=7 * 86400)


PARAMS: dict[str, type[_Params]] = {
    "budget": BudgetParams, "burn_rate": BurnRateParams, "idle_waste": IdleWasteParams,
    "anomaly": AnomalyParams, "gpu_quota": GpuQuotaParams,
}
DEFAULT_GROUP_BY: dict[str, list[str]] = {
    "budget": ["tenant"], "burn_rate": ["tenant"], "gpu_quota": ["tenant"],
    "idle_waste": ["tenant", "service"], "anomaly": ["tenant", "service"],
}


class RuleSpec(BaseModel):
    """What a user writes: a kind, its parameters, which aggregates it watches (tenant and the
    optional filters) and what it groups them by (one alert state per group)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    kind: RuleKind
    tenant: str | None = Field(None, description="None (admin only): every tenant, grouped by tenant")
    service: str | None = None
    region: str | None = None
    gpu_model: str | None = None
    group_by: list[KeyField] | None = None
    params: dict = Field(default_factory=dict)
    enabled: bool = True

    @model_validator(mode="after")
    def _normalise(self):
        self.params = PARAMS[self.kind].model_validate(self.params).model_dump()
        group_by = list(dict.fromkeys(self.group_by or DEFAULT_GROUP_BY[self.kind]))
        if self.tenant is None and "tenant" not in group_by:
            group_by.insert(0, "tenant")  # every alert belongs to exactly one tenant
        self.group_by = [f for f in KEY_FIELDS if f in group_by]
        return self


class Rule(RuleSpec):
    """A stored rule as published on cost.rules (key: id)."""

    id: str
    version: int = 1

    def matches(self, key: tuple) -> bool:
        for i, f in enumerate(KEY_FIELDS):
            want = getattr(self, f)
            if want is not None and key[i] != want:
                return False
        return True

    def group_of(self, key: tuple) -> tuple:
        return tuple(key[KEY_FIELDS.index(f)] for f in self.group_by)

    def definition(self) -> dict:
        return self.model_dump(exclude={"version", "name", "enabled"})


def fingerprint(rule_id: str, group: dict, level: str = "") -> str:
    raw = json.dumps([rule_id, sorted(group.items()), level], separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


# -- periods ---------------------------------------------------------------------------------------
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


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")


# -- the windows the evaluator has seen ------------------------------------------------------------
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

    def add(self, rec: dict) -> None:
        ws = int(rec["window_start"])
        if int(rec["window_s"]) != self.size_s:
            return
        key = tuple(rec[f] for f in KEY_FIELDS)
        if ws % self.size_s == 0 and ws <= self._frozen(key):
            return  # already folded: the worker can no longer emit it complete
        self.windows.setdefault(key, {})[ws] = (float(rec["spend_usd"]), float(rec["idle_usd"]),
                                                float(rec["gpu_seconds"]))
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
            out.append((json.dumps(list(key)), value))
        self.dirty.clear()
        return out

    def restore_state(self, record_key: str, value: dict | None) -> None:
        key = tuple(json.loads(record_key))
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


# -- per-rule evaluation state ---------------------------------------------------------------------
@dataclass
class GroupState:
    next_ws: int | None = None        # the next completed window to evaluate (sequential kinds)
    pending_since: int | None = None  # start of the current run of windows meeting the condition
    baseline: deque = field(default_factory=deque)  # (window_start, rate_usd_h), anomaly only


@dataclass
class RuleState:
    rule: Rule
    groups: dict[tuple, GroupState] = field(default_factory=dict)


class AlertEvaluator:
    """Rules plus the state of every fingerprint; `observe` returns the alert transitions."""

    def __init__(self, size_s: int = 60, step_s: int = 10, allowed_lateness_s: int = 120, clock=time.time):
        if 3600 % size_s:
            raise ValueError(f"window size {size_s}s must divide an hour for exact budget periods")
        self.size_s, self.step_s = size_s, step_s
        self.book = WindowBook(size_s, step_s, allowed_lateness_s)
        self.rules: dict[str, RuleState] = {}
        self.firing: dict[str, dict] = {}  # fingerprint -> its firing alert record
        self.watermark = 0.0
        self.ready = False  # rules and firing alerts restored; until then records are only kept
        self.clock = clock
        # With several workers each evaluates the tenants whose windows it sums; a restored firing
        # alert of a tenant held elsewhere is not this evaluator's to resolve. Default: one worker.
        self.owns: Callable[[dict], bool] = lambda alert: True

    # -- rules -------------------------------------------------------------------------------------
    def set_rule(self, rule: Rule) -> list[dict]:
        """Add or replace a rule; a changed definition resolves the old rule's firing alerts."""
        old = self.rules.get(rule.id)
        out: list[dict] = []
        if not rule.enabled:
            return self.delete_rule(rule.id, reason="rule disabled")
        if old is not None and old.rule.definition() == rule.definition():
            old.rule = rule  # renamed only: keep every state
            return out
        if old is not None:
            out = self._resolve_rule(rule.id, "rule changed")
        self.rules[rule.id] = RuleState(rule)
        self._update_retention()
        return out

    def delete_rule(self, rule_id: str, reason: str = "rule deleted") -> list[dict]:
        self.rules.pop(rule_id, None)
        self._update_retention()
        return self._resolve_rule(rule_id, reason)

    def _resolve_rule(self, rule_id: str, reason: str) -> list[dict]:
        now = self.watermark
        return [self._resolve(fp, now, None, f"{a['summary']} (resolved: {reason})")
                for fp, a in list(self.firing.items()) if a["rule_id"] == rule_id and self.owns(a)]

    def _update_retention(self) -> None:
        need = 3600
        for st in self.rules.values():
            p = st.rule.params
            need = max(need, p.get("lookback_s", 0), p.get("baseline_s", 0), p.get("for_s", 0))
        self.book.retain_s = need

    def restore_alert(self, alert: dict) -> None:
        """Replay one record of cost.alerts at startup: the last state per fingerprint wins."""
        if alert.get("state") == "firing":
            self.firing[alert["fingerprint"]] = alert
        else:
            self.firing.pop(alert.get("fingerprint"), None)

    def orphans(self) -> list[dict]:
        """Firing alerts whose rule no longer exists (deleted while the worker was down)."""
        return [self._resolve(fp, self.watermark, None, f"{a['summary']} (resolved: rule deleted)")
                for fp, a in list(self.firing.items()) if a.get("rule_id") not in self.rules and self.owns(a)]

    # -- records -----------------------------------------------------------------------------------
    def observe(self, records: list[dict], watermark: float) -> list[dict]:
        """Take one batch of emitted window records and the worker's watermark; returns the
        alert transitions (empty until `ready`)."""
        # A window whose first pane the watermark has closed may come out partial (re-emitted
        # after a restart, or after the worker evicted some of its panes): never trust it.
        partial_upto = watermark - self.book.allowed_lateness_s - self.size_s
        for rec in records:
            if rec["window_start"] > partial_upto:
                self.book.add(rec)
        if not self.ready:  # nothing folds before the restored totals are in (follow_rules)
            return []
        changed = bool(records) or watermark > self.watermark
        self.watermark = max(self.watermark, watermark)
        self.book.advance(self.watermark)
        if not changed:
            return []
        out: list[dict] = []
        for st in list(self.rules.values()):
            groups = self._groups(st.rule)
            evaluate = getattr(self, f"_eval_{st.rule.kind}")
            for group, keys in groups.items():
                out.extend(evaluate(st, group, keys))
            # Firing groups that vanished from the book (no data left at all) still resolve.
            for fp, a in list(self.firing.items()):
                if a["rule_id"] == st.rule.id and self.owns(a):
                    group = tuple(a["group"].get(f) for f in st.rule.group_by)
                    if group not in groups:
                        if st.rule.kind in ("budget", "burn_rate"):
                            out.extend(evaluate(st, group, []))
                        else:
                            out.extend(self._sequential_false(st, group, self._last_completed()))
                            st.groups.pop(group, None)
        return out

    def _groups(self, rule: Rule) -> dict[tuple, list[tuple]]:
        groups: dict[tuple, list[tuple]] = {}
        for key in self.book.windows.keys() | self.book.closed.keys():
            if rule.matches(key):
                groups.setdefault(rule.group_of(key), []).append(key)
        return groups

    def _last_completed(self) -> int:
        return math.floor((self.watermark - self.size_s) / self.step_s) * self.step_s

    # -- transitions -------------------------------------------------------------------------------
    def _alert(self, rule: Rule, group: tuple, level: str, value: float, threshold: float,
               summary: str, starts_at: float, severity: str, details: dict) -> dict | None:
        labels = dict(zip(rule.group_by, group))
        fp = fingerprint(rule.id, labels, level)
        if fp in self.firing:
            return None
        alert = {
            "fingerprint": fp, "state": "firing", "rule_id": rule.id, "rule_kind": rule.kind,
            "rule_name": rule.name, "rule_version": rule.version, "level": level, "severity": severity,
            "group": labels,
            **{f: labels.get(f, getattr(rule, f)) for f in KEY_FIELDS},
            "value": value, "threshold": threshold, "summary": summary,
            "starts_at": starts_at, "ends_at": None, "details": details, "emitted_at": self.clock(),
        }
        self.firing[fp] = alert
        return alert

    def _resolve(self, fp: str, ends_at: float, value: float | None, summary: str) -> dict:
        alert = dict(self.firing.pop(fp))
        alert.update(state="resolved", ends_at=ends_at, summary=summary, emitted_at=self.clock())
        if value is not None:
            alert["value"] = value
        return alert

    def _fp(self, rule: Rule, group: tuple, level: str = "") -> str:
        return fingerprint(rule.id, dict(zip(rule.group_by, group)), level)

    # -- budget ------------------------------------------------------------------------------------
    def _eval_budget(self, st: RuleState, group: tuple, keys: list[tuple]) -> list[dict]:
        rule, p = st.rule, st.rule.params
        now = self.watermark
        start, end = period_bounds(p["period"], now)
        spend = self.book.period_spend(keys, p["period"], now)
        limit = p["limit_usd"]
        out = []
        levels = [(f"{round(w * 100)}%", w, "warning") for w in p["warn_at"]] + [("100%", 1.0, "critical")]
        for level, share, severity in levels:
            fp = self._fp(rule, group, level)
            firing = self.firing.get(fp)
            if firing is not None and firing["details"].get("period_start") != start:
                out.append(self._resolve(fp, start, spend, f"{rule.name}: new {p['period']} period began "
                                         f"(spend so far ${spend:.2f} of ${limit:.2f})"))
                firing = None
            if firing is None and spend >= share * limit:
                a = self._alert(rule, group, level, spend, share * limit,
                                f"{rule.name}: {p['period']} spend ${spend:.2f} reached {level} of the "
                                f"${limit:.2f} budget", now, severity,
                                {"period": p["period"], "period_start": start, "period_end": end,
                                 "limit_usd": limit, "share": share})
                if a:
                    out.append(a)
        return out

    # -- burn rate ---------------------------------------------------------------------------------
    def _eval_burn_rate(self, st: RuleState, group: tuple, keys: list[tuple]) -> list[dict]:
        rule, p = st.rule, st.rule.params
        now = self.watermark
        period = "1d" if p["horizon"] == "day" else "month"
        start, end = period_bounds(period, now)
        spent = self.book.period_spend(keys, period, now)
        # rate over the complete aligned windows of the lookback (never before the period start
        # would matter: a rate is a rate)
        last_end = math.floor(now / self.size_s) * self.size_s
        first = last_end - p["lookback_s"]
        total, peak = 0.0, 0.0
        for ws in range(first - first % self.size_s, last_end, self.size_s):
            if ws < first:
                continue
            v = self.book.group_window(keys, ws)
            if v is not None:
                total += v[SPEND]
                peak = max(peak, v[SPEND])
        rate_usd_s = total / p["lookback_s"]
        remaining = max(0.0, end - now)
        projected = spent + rate_usd_s * remaining
        low, high = spent, spent + peak / self.size_s * remaining
        fp = self._fp(rule, group)
        limit = p["limit_usd"]
        details = {"horizon": p["horizon"], "period_start": start, "period_end": end, "spent_usd": spent,
                   "rate_usd_h": rate_usd_s * 3600, "projected_usd": projected, "projected_low_usd": low,
                   "projected_high_usd": high, "limit_usd": limit}
        if fp not in self.firing and projected > limit:
            a = self._alert(rule, group, "", projected, limit,
                            f"{rule.name}: end-of-{p['horizon']} spend projected at ${projected:.2f} "
                            f"(bounds ${low:.2f}-${high:.2f}) above the ${limit:.2f} limit", now, "warning", details)
            return [a] if a else []
        if fp in self.firing and projected <= limit * (1 - p["hysteresis"]):
            return [self._resolve(fp, now, projected, f"{rule.name}: end-of-{p['horizon']} spend projected at "
                                  f"${projected:.2f}, within the ${limit:.2f} limit")]
        return []

    # -- windowed kinds: every completed window of the group, in order, exactly once ---------------
    def _sequential(self, st: RuleState, group: tuple, keys: list[tuple], condition) -> list[dict]:
        """condition(st, gs, ws, value|None) -> list of alerts; a window without data is None."""
        gs = st.groups.setdefault(group, GroupState())
        last = self._last_completed()
        out: list[dict] = []
        if gs.next_ws is None:
            # a new rule (or a restarted worker) looks back only as far as its condition needs
            p = st.rule.params
            since = last - max(p.get("for_s", 0), p.get("baseline_s", 0)) - self.size_s
            first = self.book.next_data_window(keys, since - 1, last)
            if first is None:
                return out
            gs.next_ws = first
        ws = gs.next_ws
        while ws <= last:
            value = self.book.group_window(keys, ws)
            out.extend(condition(st, group, gs, ws, value))
            if value is None:  # skip the gap in one step: every window in it is equally empty
                nxt = self.book.next_data_window(keys, ws, last)
                ws = nxt if nxt is not None else last + self.step_s
            else:
                ws += self.step_s
        gs.next_ws = ws
        return out

    def _sequential_false(self, st: RuleState, group: tuple, ws: int) -> list[dict]:
        gs = st.groups.get(group) or GroupState()
        return getattr(self, f"_cond_{st.rule.kind}")(st, group, gs, ws, None)

    def _for_duration(self, st, group, gs, ws, holds: bool, value: float, threshold: float, for_s: int,
                      summary_firing: str, summary_resolved: str, details: dict) -> list[dict]:
        fp = self._fp(st.rule, group)
        end = ws + self.size_s
        if holds:
            if gs.pending_since is None:
                gs.pending_since = ws
            if fp not in self.firing and end - gs.pending_since >= for_s:
                a = self._alert(st.rule, group, "", value, threshold, summary_firing, end, "warning",
                                {**details, "window_start": ws, "pending_since": gs.pending_since})
                return [a] if a else []
            return []
        gs.pending_since = None
        if fp in self.firing:
            return [self._resolve(fp, end, value, summary_resolved)]
        return []

    def _eval_idle_waste(self, st, group, keys):
        return self._sequential(st, group, keys, self._cond_idle_waste)

    def _cond_idle_waste(self, st, group, gs, ws, v):
        p = st.rule.params
        spend = v[SPEND] if v else 0.0
        share = v[IDLE] / spend if v and spend > 0 else 0.0
        holds = spend > p["min_spend_usd"] and spend > 0 and share > p["threshold"]
        return self._for_duration(
            st, group, gs, ws, holds, share, p["threshold"], p["for_s"],
            f"{st.rule.name}: {share:.0%} of spend idle for {p['for_s']}s (threshold {p['threshold']:.0%})",
            f"{st.rule.name}: idle share {share:.0%}, at or below {p['threshold']:.0%}",
            {"idle_usd": v[IDLE] if v else 0.0, "spend_usd": spend})

    def _eval_gpu_quota(self, st, group, keys):
        return self._sequential(st, group, keys, self._cond_gpu_quota)

    def _cond_gpu_quota(self, st, group, gs, ws, v):
        p = st.rule.params
        gpus = v[GPU_S] / self.size_s if v else 0.0
        return self._for_duration(
            st, group, gs, ws, gpus > p["max_gpus"], gpus, p["max_gpus"], p["for_s"],
            f"{st.rule.name}: {gpus:.1f} GPUs in use, quota {p['max_gpus']:g}",
            f"{st.rule.name}: {gpus:.1f} GPUs in use, within the quota of {p['max_gpus']:g}",
            {"gpus": gpus})

    def _eval_anomaly(self, st, group, keys):
        return self._sequential(st, group, keys, self._cond_anomaly)

    def _cond_anomaly(self, st, group, gs, ws, v):
        p = st.rule.params
        rate = v[SPEND] * 3600.0 / self.size_s if v else 0.0
        while gs.baseline and gs.baseline[0][0] < ws - p["baseline_s"]:
            gs.baseline.popleft()
        baseline = (sum(r for _, r in gs.baseline) / len(gs.baseline)) if gs.baseline else 0.0
        known = len(gs.baseline) >= p["min_baseline_windows"]
        anomalous = bool(v) and known and rate >= p["min_rate_usd_h"] and rate > p["factor"] * baseline
        if v and not anomalous:
            gs.baseline.append((ws, rate))  # the baseline learns only from normal windows
        return self._for_duration(
            st, group, gs, ws, anomalous, rate, p["factor"] * baseline, 0,
            f"{st.rule.name}: spend rate ${rate:.2f}/h is {rate / baseline if baseline else math.inf:.1f}x "
            f"its baseline of ${baseline:.2f}/h",
            f"{st.rule.name}: spend rate ${rate:.2f}/h back within {p['factor']:g}x its baseline",
            {"rate_usd_h": rate, "baseline_usd_h": baseline, "factor": p["factor"]})


# -- the worker's side of cost.rules and cost.alerts ------------------------------------------------
async def follow_rules(settings, evaluator: AlertEvaluator, publish) -> None:
    """Restore the evaluator (firing alerts from cost.alerts, folded budget totals from the
    compacted cost.alertstate), load every rule from the compacted cost.rules, mark it ready, then
    apply rule changes as they come (no restart) and persist changed totals about every second.
    `publish(alerts)` sends the transitions a rule change causes (a deleted rule's alerts resolve)."""
    from core.kafka import consumer, producer, read_to_end, stop_consumer

    await ensure_state_topic(settings)
    c = consumer(settings=settings, group_id=None)
    p = producer(settings)
    await c.start()
    await p.start()
    try:
        await read_to_end(c, settings.alerts_topic, lambda r: r.value and evaluator.restore_alert(json.loads(r.value)))
        await read_to_end(c, settings.alert_state_topic, lambda r: evaluator.book.restore_state(
            r.key.decode(), json.loads(r.value) if r.value is not None else None))
        rules: dict[str, Rule | None] = {}
        await read_to_end(c, settings.rules_topic, lambda r: rules.__setitem__(r.key.decode(), _rule(r.value)))
        for rule_id, rule in rules.items():
            if rule is not None:
                evaluator.set_rule(rule)
        evaluator.ready = True
        await publish(evaluator.orphans())
        log.info("alert rules loaded: %d, firing alerts restored: %d, budget totals restored for %d keys",
                 len(evaluator.rules), len(evaluator.firing), len(evaluator.book.closed))
        while True:
            batches = await c.getmany(timeout_ms=1000)
            for records in batches.values():
                for r in records:
                    if r.topic != settings.rules_topic:
                        continue
                    rule = _rule(r.value)
                    out = evaluator.set_rule(rule) if rule else evaluator.delete_rule(r.key.decode())
                    await publish(out)
            await _persist_state(p, settings, evaluator)
    finally:
        try:
            await _persist_state(p, settings, evaluator)  # a clean stop loses nothing
        finally:
            await p.stop()
            await stop_consumer(c)


async def _persist_state(p, settings, evaluator: AlertEvaluator) -> None:
    futures = [await p.send(settings.alert_state_topic, key=k.encode(),
                            value=json.dumps(v).encode() if v is not None else None)
               for k, v in evaluator.book.state_records()]
    for fut in futures:
        await fut


async def ensure_state_topic(settings) -> None:
    from aiokafka.admin import NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    from core.kafka import admin

    client = admin(settings)
    await client.start()
    try:
        if settings.alert_state_topic not in set(await client.list_topics()):
            try:
                await client.create_topics([NewTopic(settings.alert_state_topic, 1, 1,
                                                     topic_configs={"cleanup.policy": "compact"})])
            except TopicAlreadyExistsError:
                pass
    finally:
        await client.close()


def _rule(value: bytes | None) -> Rule | None:
    if value is None:
        return None
    try:
        return Rule.model_validate_json(value)
    except ValueError as exc:
        log.warning("ignoring an invalid rule on cost.rules: %s", exc)
        return None
