"""Frame times of the dashboard in Chromium with 1,000 live keys, side by side with the same page
filtered to 10 of them, on one stack under one load (the same worker, API and event rate):

    PYTHONPATH=$PWD python -m bench.dashboard_frames [--keys 1000] [--seconds 30]

Load: every key (tenant x service x region/GPU) reports one sample every 10 s, stamped now, after
10 minutes of history. In the page: requestAnimationFrame intervals (what a person sees: 16.7 ms
is smooth at 60 Hz), the dashboard's own draw() durations, and long tasks (> 50 ms) from
PerformanceObserver. Prints both runs and their ratios."""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from contracts.events import UsageEvent
from tests.support import Stack, wait_for
from tests.web.browser import browser_page

REGIONS = [("us-east-1", "A10G", "g5.xlarge"), ("us-west-2", "A10G", "g5.xlarge"), ("us-east-1", "L4", "g6.xlarge"),
           ("us-west-2", "L4", "g6.xlarge"), ("us-east-1", "A100-40GB", "p4d.24xlarge"),
           ("us-west-2", "A100-40GB", "p4d.24xlarge"), ("us-east-1", "H100-80GB", "p5.48xlarge"),
           ("us-east-2", "H100-80GB", "p5.48xlarge"), ("us-west-2", "H100-80GB", "p5.48xlarge"),
           ("us-east-2", "A10G", "g5.xlarge")]

PROBE = """() => {
  window.__frames = []; window.__long = 0; let last = performance.now();
  new PerformanceObserver((l) => { window.__long += l.getEntries().length; }).observe({ type: "longtask" });
  const tick = (t) => { window.__frames.push(t - last); last = t; requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
  window.gpucost.drawMs.length = 0;
}"""


def keys(n: int) -> list[tuple[str, str, tuple]]:
    out = []
    for i in range(n):
        out.append((f"t{i // 100}", f"svc{(i // 10) % 10}", REGIONS[i % 10]))
    return out


def events(ks, ts: float) -> list[UsageEvent]:
    return [UsageEvent(ts=ts, tenant=t, service=s, cloud="aws", region=r, instance_type=it, gpu_model=g,
                       host=f"{t}-{s}-{j}", gpu_index=0, interval_s=10.0, util=0.3 + 0.05 * (j % 10),
                       mem_used_gb=10, mem_total_gb=24, power_w=200, tokens=1000 + j, requests=3)
            for j, (t, s, (r, g, it)) in enumerate(ks)]


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q / 100 * len(v)))] if v else float("nan")


async def measure(stack, path: str, seconds: float) -> dict:
    async with browser_page(viewport={"width": 1440, "height": 900}) as (page, errors):
        await page.goto(stack.url + path + ("&" if "?" in path else "?") + f"api_key={stack.admin_key}")
        await page.wait_for_function("() => document.getElementById('conn').textContent === 'live'", timeout=60000)
        await asyncio.sleep(10)  # history drawn, socket settled
        await page.evaluate(PROBE)
        await asyncio.sleep(seconds)
        r = await page.evaluate("({frames: window.__frames, draws: window.gpucost.drawMs, long: window.__long,"
                                " messages: window.gpucost.messages, keys: new Set([...window.gpucost.live.values()]"
                                ".flatMap(w => [...w.keys()])).size})")
    f, d = r["frames"], r["draws"]
    return {"live_keys_in_page": r["keys"], "frames": len(f), "frame_p50_ms": pct(f, 50), "frame_p95_ms": pct(f, 95),
            "frame_p99_ms": pct(f, 99), "frames_over_50ms": sum(x > 50 for x in f), "draws": len(d),
            "draw_p50_ms": pct(d, 50), "draw_p95_ms": pct(d, 95), "long_tasks": r["long"],
            "fps": len(f) / seconds, "errors": errors}


async def main(n_keys: int, seconds: float) -> None:
    from ingest.producer import EventProducer

    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp))
        try:
            stack.start_worker()
            stack.start_api()
            ks = keys(n_keys)
            async with EventProducer(stack.settings) as producer:
                now = time.time()
                for i in range(60):
                    await producer.send_usage(events(ks, now - 600 + i * 10))
                wait_for(lambda: stack.get("/api/stats")["keys_live"] >= n_keys * 0.95, 180, what="live keys")
                stop = asyncio.Event()

                async def feed():  # a tenth of the keys every second: each key every 10 s
                    i = 0
                    while not stop.is_set():
                        part = [k for j, k in enumerate(ks) if j % 10 == i % 10]
                        await producer.send_usage(events(part, time.time()))
                        i += 1
                        await asyncio.sleep(1.0)

                task = asyncio.create_task(feed())
                try:
                    small = await measure(stack, "/?tenant=t0&service=svc0", seconds)
                    full = await measure(stack, "/", seconds)
                finally:
                    stop.set()
                    await task
        finally:
            stack.stop()
    print(json.dumps({"filtered_to_10_keys": small, f"all_{n_keys}_keys": full}, indent=1))
    for k in ("frame_p50_ms", "frame_p95_ms", "frame_p99_ms", "draw_p50_ms", "draw_p95_ms"):
        print(f"{k}: {full[k]:.1f} vs {small[k]:.1f} (ratio {full[k] / small[k]:.2f})" if small[k] else k)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=30.0)
    a = ap.parse_args()
    asyncio.run(main(a.keys, a.seconds))
