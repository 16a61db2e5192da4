"""Batch-1 GEMV kernels side by side on a GPU: cuBLAS (F.linear, bf16), the Triton GEMV on bf16
weights, the Triton GEMV on int8 weights (optimizer/int8_gemv.py), for every linear layer shape of
the 1B and 7B presets; the int8 GEMV both ways: "tile" (a [BLOCK_N, BLOCK_K] fp32 accumulator,
as the bf16 kernel) and "grouped" (16 weights summed in registers per thread at every K step),
each with the int8 weights turned into fp32 by a conversion instruction ("cvt") and by the bits
of 2^23 + 128 + w ("magic", `_magic` arms). Each kernel runs from a CUDA graph of 20 calls cycling through enough
weight copies (>= 256 MB) that nothing is served from L2; variants interleaved over rounds;
the median and spread of the achieved bandwidth, as a share of a measured device copy.

    python3 bench/gemv.py [--rounds 5] [--out FILE.json]"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.optimizer_gpu import copy_bandwidth  # noqa: E402
from optimizer import int8_gemv  # noqa: E402  (registers the ops)
from optimizer.model import PRESETS  # noqa: E402
from optimizer.quantize import quantize_per_channel  # noqa: E402

CALLS = 20


def shapes(preset: str) -> list[tuple[str, int, int]]:
    a = PRESETS[preset]
    hd = a.dim // a.n_head
    return [("wqkv", (a.n_head + 2 * a.n_kv_head) * hd, a.dim), ("wo", a.dim, a.dim),
            ("w13", 2 * a.ffn_dim, a.dim), ("w2", a.dim, a.ffn_dim), ("head", a.vocab_size, a.dim)]


def graphed(fn, n_copies: int):
    """A CUDA graph of CALLS calls of fn(i % n_copies)."""
    for i in range(min(n_copies, 3)):
        fn(i)  # autotune outside the capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(CALLS):
            fn(i % n_copies)
    return g


def time_graph(g, reps: int = 10, calls: int = CALLS) -> float:
    """Seconds per call of a graph of `calls` calls, over `reps` replays after one."""
    g.replay()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(reps):
        g.replay()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / 1e3 / (reps * calls)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--presets", default="1b,7b")
    ap.add_argument("--out")
    args = ap.parse_args()
    dev = torch.device("cuda")
    copy = copy_bandwidth(dev) / 1e9
    print(f"device {torch.cuda.get_device_name(dev)}; copy {copy:.0f} GB/s", flush=True)
    rows = []
    for preset in args.presets.split(","):
        for name, n, k in shapes(preset):
            x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
            n_copies = max(2, -(-(256 << 20) // (n * k)))  # int8 bytes; bf16 copies are twice that
            wb = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) for _ in range(n_copies)]
            q = [quantize_per_channel(w) for w in wb]
            q = [(a, s.to(torch.bfloat16)) for a, s in q]
            def int8(kernel, convert="cvt"):
                def call(i):  # the kernel and conversion are chosen when the graph is captured
                    int8_gemv.INT8_KERNEL, int8_gemv.INT8_CONVERT = kernel, convert
                    return torch.ops.gpucost.int8_gemv(x, q[i][0], q[i][1])
                return call

            fns = {"cublas_bf16": lambda i: F.linear(x, wb[i]),
                   "triton_bf16": lambda i: torch.ops.gpucost.gemv(x, wb[i]),
                   "triton_int8_tile": int8("tile"), "triton_int8": int8("grouped"),
                   "triton_int8_tile_magic": int8("tile", "magic"), "triton_int8_magic": int8("grouped", "magic")}
            nbytes = {v: 2 * n * k if "bf16" in v else n * k + 2 * n for v in fns}
            graphs = {v: graphed(fn, n_copies) for v, fn in fns.items()}
            times = {v: [] for v in fns}
            for r in range(args.rounds):
                for v in (fns if r % 2 == 0 else list(fns)[::-1]):
                    times[v].append(time_graph(graphs[v]))
            cfg = {}
            for label, kern in (("tile", int8_gemv._gemv_kernel), ("grouped", int8_gemv._int8_gemv_kernel)):
                for key, c in kern.cache.items():
                    if tuple(key[:2]) == (n, k):
                        cfg[f"{label} {key[2:]}"] = str(c)
            row = {"preset": preset, "layer": name, "N": n, "K": k, "autotuned": cfg}
            for v, ts in times.items():
                med = statistics.median(ts)
                row[v] = {"us": med * 1e6, "us_min": min(ts) * 1e6, "us_max": max(ts) * 1e6,
                          "gb_s": nbytes[v] / med / 1e9, "share_of_copy": nbytes[v] / med / 1e9 / copy}
            rows.append(row)
            print(f"{preset} {name:5} {n:6}x{k:<6} " + "  ".join(
                f"{v} {row[v]['us']:7.2f} us {row[v]['gb_s']:6.0f} GB/s ({row[v]['share_of_copy']:.0%})"
                for v in fns) + f"  int8/bf16 x{row['triton_bf16']['us'] / row['triton_int8']['us']:.2f}"
                f"  magic/cvt tile x{row['triton_int8_tile']['us'] / row['triton_int8_tile_magic']['us']:.2f}"
                f" grouped x{row['triton_int8']['us'] / row['triton_int8_magic']['us']:.2f}", flush=True)
            graphs = fns = None
            torch.cuda.empty_cache()
    if args.out:
        Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(dev), "copy_gb_s": copy,
                                              "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
