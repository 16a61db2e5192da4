"""Where the in-flight batcher's engine time goes: its decode step against its mixed steps (the
decode rows plus R prompt chunks), each replayed from its CUDA graph, interleaved over rounds; and
a kernel profile of each step kind (torch.profiler over the same calls launched without the
graph: kernels a step, the costliest kernels). Each step's time is also given as a ratio to the same
engine's decode step, round by round.

    python3 bench/inflight_steps.py [--model 1b] [--chunk 128] [--compile] [--out FILE.json]

`--compile` builds the engine with torch.compile for the decode step and the mixed steps (one
compile per segment-row bucket), beside the eager-kernel engine, in the same process."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.gemv import time_graph  # noqa: E402
from optimizer import bench as B  # noqa: E402
from optimizer.continuous import ContinuousBatcher  # noqa: E402


def kernel_profile(fn, steps: int = 3, top: int = 12) -> dict:
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    rows = [e for e in prof.key_averages() if e.device_type.name == "CUDA" and e.count]
    total = sum(e.device_time_total for e in rows)
    rows.sort(key=lambda e: -e.device_time_total)
    return {"kernels_per_step": sum(e.count for e in rows) / steps, "kernel_us_per_step": total / steps,
            "top": [{"name": e.key[:90], "calls_per_step": e.count / steps,
                     "us_per_step": e.device_time_total / steps} for e in rows[:top]]}


def engine(model, args, compile: bool) -> tuple[ContinuousBatcher, float]:
    t0 = time.perf_counter()
    b = ContinuousBatcher(model, 32, 512, cuda_graph=True, compile=compile, chunk=args.chunk,
                          chunk_rows=tuple(int(x) for x in args.rows.split(",")))
    with torch.no_grad():
        b._setup()
    return b, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="1b")
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--rows", default="1,2,4,8")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out")
    args = ap.parse_args()
    model, _ = B.build_variant(args.model, B.Variant.parse("bf16+cudagraph"), "cuda")
    out: dict = {"model": args.model, "chunk": args.chunk, "engines": {}}
    forms = [False, True] if args.compile else [False]
    engines = {}
    for c in forms:
        name = "compiled" if c else "eager"
        engines[name], setup_s = engine(model, args, c)
        out["engines"][name] = {"setup_s": setup_s}
        print(f"{name}: setup {setup_s:.1f} s", flush=True)
    graphs = {}
    for name, b in engines.items():
        graphs[f"{name} decode"] = b._graph
        for n, g in b._mixed_graphs.items():
            graphs[f"{name} mixed R={n}"] = g
    times = {k: [] for k in graphs}
    for r in range(args.rounds):
        for k in (graphs if r % 2 == 0 else list(graphs)[::-1]):
            times[k].append(time_graph(graphs[k], reps=20, calls=1) * 1e3)
    for k, ts in times.items():
        decode = times[f"{k.split()[0]} decode"]  # the same engine's decode step, same rounds
        ratios = [t / d for t, d in zip(ts, decode)]
        out[k] = {"ms": statistics.median(ts), "min": min(ts), "max": max(ts),
                  "vs_decode": statistics.median(ratios), "vs_decode_min": min(ratios), "vs_decode_max": max(ratios)}
        print(f"{k:24} {statistics.median(ts):7.3f} ms [{min(ts):.3f}..{max(ts):.3f}]  "
              f"x{statistics.median(ratios):.2f} [{min(ratios):.2f}..{max(ratios):.2f}] its decode step", flush=True)
    with torch.no_grad():
        for name, b in engines.items():
            for label, fn in (("decode", b._advance), ("mixed R=1", lambda b=b: b._mixed(1))):
                prof = kernel_profile(fn)
                out[f"{name} {label} profile"] = prof
                print(f"{name} {label}: {prof['kernels_per_step']:.0f} kernels, "
                      f"{prof['kernel_us_per_step']:.0f} us of kernels", flush=True)
                for t in prof["top"]:
                    print(f"   {t['calls_per_step']:5.0f} x {t['us_per_step']:8.1f} us  {t['name']}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
