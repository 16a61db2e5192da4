"""Alert rule evaluation, pure Python: `AlertEvaluator` holds the rules and one state per
fingerprint (rule + group + level), takes each batch of emitted window records with the worker's
event-time watermark, and returns exactly one alert when a fingerprint starts firing and one when
it resolves. Its Kafka side (rules in, alerts and budget totals out) is streaming/alerts.py."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from contracts.aggregates import KEY_FIELDS, WindowAggregate
from contracts.rules import Rule, fingerprint
from streaming.alert_book import GPU_S, IDLE, SPEND, WindowBook, period_bounds

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
    def observe(self, records: list[WindowAggregate], watermark: float) -> list[dict]:
        """Take one batch of emitted window records and the worker's watermark; returns the
        alert transitions (empty until `ready`)."""
        # A window whose first pane the watermark has closed may come out partial (re-emitted
        # after a restart, or after the worker evicted some of its panes): never trust it.
        partial_upto = watermark - self.book.allowed_lateness_s - self.size_s
        for rec in records:
            if rec.window_start > partial_upto:
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
            f"{st.rule.name}: spend rate ${rate:.2f}/h is "
            + (f"{rate / baseline:.1f}x its baseline of ${baseline:.2f}/h" if baseline else "above a baseline of $0.00/h"),
            f"{st.rule.name}: spend rate ${rate:.2f}/h back within {p['factor']:g}x its baseline",
            {"rate_usd_h": rate, "baseline_usd_h": baseline, "factor": p["factor"]})
