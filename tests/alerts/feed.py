"""Drive the real pane aggregation (streaming/panes.py) with crafted usage and hand every emitted
window record to an AlertEvaluator, the way the worker's emit timer does."""

from __future__ import annotations

from contracts.rules import Rule
from streaming.alert_eval import AlertEvaluator
from streaming.panes import PaneStore, WindowSpec
from contracts.events import UsageEvent

USD_PER_GPU_HOUR = 3.6  # $0.01 per GPU per 10 s sample
DAY0 = 1_763_942_400  # 2025-11-24T00:00:00Z, a Monday; every test starts at a known UTC boundary


def usage(ts: float, *, tenant="acme", service="train", gpu_index=0, util=1.0, interval_s=10.0, host="h1",
          model_version=None) -> UsageEvent:
    return UsageEvent(ts=float(ts), tenant=tenant, service=service, cloud="aws", region="us-east-1",
                      instance_type="p4d.24xlarge", gpu_model="A100-40GB", host=host, gpu_index=gpu_index,
                      interval_s=interval_s, util=util, mem_used_gb=1.0, mem_total_gb=40.0, power_w=100.0,
                      model_version=model_version)


def rule(kind: str, rule_id: str = "r1", **params) -> Rule:
    group_by = params.pop("group_by", None)
    service = params.pop("service", None)
    model_version = params.pop("model_version", None)
    return Rule(id=rule_id, name=f"{kind} rule", kind=kind, tenant="acme", service=service,
                model_version=model_version, group_by=group_by, params=params)


class Feed:
    """A one-partition worker in miniature: events in, pane records, windows, alert transitions out."""

    def __init__(self, *rules: Rule, size_s=60, step_s=10, lateness_s=120):
        spec = WindowSpec(size_s, step_s, lateness_s)
        self.store = PaneStore(spec, lambda ev: (USD_PER_GPU_HOUR, False))  # folds events into panes
        self.windows = PaneStore(spec, self.store.price)  # sums windows from the pane records
        self.evaluator = AlertEvaluator(size_s, step_s, lateness_s, clock=lambda: 0.0)
        for r in rules:
            self.evaluator.set_rule(r)
        self.evaluator.ready = True
        self.alerts: list[dict] = []
        self.offset = 0

    def send(self, events: list[UsageEvent]) -> list[dict]:
        self.offset += 1
        assert not self.store.add(events, 0, self.offset), "no event may be late in these sequences"
        for record_key, value in self.store.take_dirty():
            self.windows.restore(record_key, value)
        records = self.windows.take_pending_windows()
        for record_key in self.store.evict_closed():
            self.windows.restore(record_key, None)
        out = self.evaluator.observe(records, self.windows.watermark)
        self.alerts.extend(out)
        return out

    def run(self, start: float, seconds: int, gpus: int = 1, step_s: int = 10, **kw) -> list[dict]:
        """`gpus` GPUs reporting every step_s seconds over [start, start + seconds)."""
        out = []
        for ts in range(int(start), int(start + seconds), step_s):
            out += self.send([usage(ts, gpu_index=i, interval_s=float(step_s), **kw) for i in range(gpus)])
        return out

    def transitions(self, fingerprint: str | None = None) -> list[str]:
        return [a["state"] for a in self.alerts if fingerprint is None or a["fingerprint"] == fingerprint]

    def by_fingerprint(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for a in self.alerts:
            out.setdefault(a["fingerprint"], []).append(a["state"])
        return out
