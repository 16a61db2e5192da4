"""A fleet simulator (`gpucost simulate`): tenants running services on GPU hosts across clouds,
regions and GPU models taken from the pricing catalog, with diurnal load, idle stretches and
bursts. Deterministic for a given --seed and start time. Each host reports all its GPUs for one
interval in one message. The fleet's bill is a FOCUS export (ingest/billing/synthetic.py) written
and imported through the real importer as each hour closes (`HourlyExport`); in real time the
simulator first back-fills from the start of the previous hour, so a first run has a whole billed
hour to reconcile against its metered usage at once."""

from __future__ import annotations

import asyncio
import math
import random
import time
import zlib
from dataclasses import dataclass, field

from core.pricing import default_catalog
from contracts.events import UsageEvent

TENANTS = {
    "acme": ["chat-api", "embeddings", "batch-summarize"],
    "globex": ["search-rerank", "vision-ocr"],
    "initech": ["copilot", "fine-tune-eval"],
    "umbrella": ["translate", "speech-to-text", "chat-api"],
}


@dataclass
class SimHost:
    host: str
    tenant: str
    service: str
    cloud: str
    region: str
    instance_type: str
    gpu_model: str
    gpu_count: int
    gpu_mem_gb: float
    usd_h: float
    pricing: str
    base_util: float
    idle_share: float          # chance that an hour is an idle stretch
    phase_h: float             # local-time offset of the diurnal peak
    model_version: str
    rng: random.Random = field(default_factory=random.Random)


@dataclass
class Fleet:
    hosts: list[SimHost]
    interval_s: float

    @classmethod
    def build(cls, seed: int = 7, hosts: int = 24, interval_s: float = 10.0) -> "Fleet":
        rng = random.Random(seed)
        rows = sorted(default_catalog().rows, key=lambda r: (r.cloud, r.region, r.instance_type))
        pairs = [(t, s) for t, services in TENANTS.items() for s in services]
        fleet = []
        for i in range(hosts):
            tenant, service = pairs[i % len(pairs)] if i < len(pairs) else rng.choice(pairs)
            row = rng.choice(rows)
            spot = row.spot_usd_h is not None and rng.random() < 0.25
            fleet.append(SimHost(
                host=f"{row.cloud}-{row.region}-{i:03d}",
                tenant=tenant, service=service, cloud=row.cloud, region=row.region,
                instance_type=row.instance_type, gpu_model=row.gpu_model, gpu_count=row.gpu_count,
                gpu_mem_gb=row.gpu_mem_gb,
                usd_h=(row.spot_usd_h if spot else row.on_demand_usd_h),
                pricing="spot" if spot else "on_demand",
                base_util=rng.uniform(0.25, 0.9), idle_share=rng.choice([0.0, 0.05, 0.15, 0.4]),
                phase_h=rng.uniform(-3, 3), model_version=rng.choice(["v1", "v1", "v2-canary"]),
                rng=random.Random(rng.getrandbits(64)),
            ))
        return cls(fleet, interval_s)

    def util(self, h: SimHost, ts: float, gpu: int) -> float:
        hour = (ts / 3600.0) % 24
        diurnal = 0.55 + 0.45 * math.sin(2 * math.pi * (hour - 9 + h.phase_h) / 24)
        # Idle stretches last whole hours and are the same for every GPU of the host.
        hour_rng = random.Random(zlib.crc32(f"{h.host}/{int(ts // 3600)}".encode()))
        if hour_rng.random() < h.idle_share:
            return round(h.rng.uniform(0.0, 0.05), 4)
        burst = 0.35 if h.rng.random() < 0.03 else 0.0
        noise = h.rng.gauss(0, 0.06) + 0.02 * gpu
        return round(min(1.0, max(0.0, h.base_util * diurnal + burst + noise)), 4)

    def sample(self, ts: float) -> list[UsageEvent]:
        """Every GPU of every host for the interval ending at ts."""
        out = []
        for h in self.hosts:
            for g in range(h.gpu_count):
                u = self.util(h, ts, g)
                tokens = int(u * self.interval_s * 2400 * h.rng.uniform(0.8, 1.2)) if "embed" not in h.service else 0
                out.append(UsageEvent(
                    ts=ts, tenant=h.tenant, service=h.service, cloud=h.cloud, region=h.region,
                    instance_type=h.instance_type, gpu_model=h.gpu_model, host=h.host, gpu_index=g,
                    interval_s=self.interval_s, util=u,
                    mem_used_gb=round(h.gpu_mem_gb * min(0.97, 0.15 + 0.8 * u), 2), mem_total_gb=h.gpu_mem_gb,
                    power_w=round(70 + 630 * u, 1), tokens=tokens or None,
                    requests=max(1, tokens // 400) if tokens else None, model_version=h.model_version,
                ))
        return out

    @property
    def gpus(self) -> int:
        return sum(h.gpu_count for h in self.hosts)


def backfill_start(now: float, simulated_upto: float | None = None) -> float:
    """Where a real-time run starts simulating: the start of the previous hour, so that one whole
    hour is billed at once, or where the last run stopped, if later (never the same time twice)."""
    start = math.floor(now / 3600) * 3600 - 3600
    return max(start, simulated_upto) if simulated_upto else start


async def run(producer, fleet: Fleet, *, duration_s: float | None, realtime: bool, speed: float = 1.0,
              start_ts: float | None = None, on_tick=None, billing=None, backfill_from: float | None = None,
              on_progress=None) -> int:
    """Produce the fleet's samples. realtime: one interval every interval_s/speed seconds, stamped
    with the wall clock, after back-filling [backfill_from, now) as fast as possible if given; else
    as fast as possible over [start_ts, start_ts + duration_s]. billing: an `HourlyExport` that
    bills each hour as it closes. on_progress(ts): after each interval (the caller's state)."""
    if realtime:
        sent = 0
        if backfill_from is not None and backfill_from < time.time() - fleet.interval_s:
            now = time.time()
            steps = int((now - backfill_from) // fleet.interval_s)
            sent = await run(producer, fleet, duration_s=steps * fleet.interval_s, realtime=False,
                             start_ts=backfill_from, on_tick=on_tick, billing=billing, on_progress=on_progress)
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while deadline is None or time.monotonic() < deadline:
            tick = time.monotonic()
            ts = time.time()
            events = fleet.sample(ts)
            await producer.send_usage(events)
            if billing is not None:
                await billing.due(ts, producer)
            sent += len(events)
            if on_tick:
                on_tick(len(events))
            if on_progress:
                on_progress(ts)
            await asyncio.sleep(max(0.0, fleet.interval_s / speed - (time.monotonic() - tick)))
        return sent
    if duration_s is None:
        raise ValueError("as-fast-as-possible mode needs a duration of simulated time")
    sent = 0
    ts = start_ts if start_ts is not None else time.time() - duration_s
    end = ts + duration_s
    pending = []
    while ts < end - 1e-6:
        ts += fleet.interval_s
        events = fleet.sample(ts)
        pending += await producer.send_usage(events, wait=False)
        sent += len(events)
        if on_tick:
            on_tick(len(events))
        if billing is not None and math.floor(ts / 3600) * 3600 > billing.billed_upto:
            await asyncio.gather(*pending)  # the hour's usage before its bill
            pending.clear()
            await billing.due(ts, producer)
        if len(pending) > 2000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    if on_progress:
        on_progress(ts)
    return sent


# -- the first run's demo alerts ---------------------------------------------------------------------
def tenant_rates(fleet: Fleet) -> dict[str, tuple[float, int]]:
    """tenant -> (USD per hour, GPUs) of the simulated fleet at its list prices."""
    out: dict[str, tuple[float, int]] = {}
    for h in fleet.hosts:
        usd, gpus = out.get(h.tenant, (0.0, 0))
        out[h.tenant] = (usd + h.usd_h, gpus + h.gpu_count)
    return out


def demo_rules(fleet: Fleet, now: float | None = None) -> list[dict]:
    """One alert rule of each kind for the simulated tenants, tuned from the fleet's own prices so
    that some fire within minutes of `gpucost up` (rule specs as POST /api/rules takes them)."""
    now = time.time() if now is None else now
    rates = tenant_rates(fleet)
    tenants = sorted(rates, key=lambda t: -rates[t][0])  # the biggest spenders first
    pick = (tenants * 5)[:5]
    hour_left_h = (3600 - now % 3600) / 3600
    day_left_h = (86400 - now % 86400) / 3600
    usd_h = {t: rates[t][0] for t in tenants}
    return [
        # warns at 50 % after ~5 minutes of this hour's spend, critical after ~10
        {"name": "demo: hourly budget", "kind": "budget", "tenant": pick[0],
         "params": {"period": "1h", "limit_usd": round(max(usd_h[pick[0]] * min(hour_left_h, 1 / 6), 0.01), 2)}},
        # the rest of the day at the current rate overshoots this limit by a quarter
        {"name": "demo: daily burn rate", "kind": "burn_rate", "tenant": pick[1],
         "params": {"horizon": "day", "limit_usd": round(max(usd_h[pick[1]] * day_left_h * 0.8, 0.01), 2),
                    "lookback_s": 600}},
        {"name": "demo: idle waste over 30 %", "kind": "idle_waste", "tenant": pick[2],
         "params": {"threshold": 0.3, "for_s": 120}},
        {"name": "demo: spend anomaly", "kind": "anomaly", "tenant": pick[3],
         "params": {"factor": 1.3, "baseline_s": 600, "min_baseline_windows": 3}},
        # half the GPUs the tenant runs: fires as soon as a minute of usage is in
        {"name": "demo: GPU quota", "kind": "gpu_quota", "tenant": pick[4],
         "params": {"max_gpus": max(rates[pick[4]][1] / 2, 0.5), "for_s": 60}},
    ]
