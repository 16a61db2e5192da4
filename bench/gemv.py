"""Batch-1 GEMV kernels side by side on a GPU: cuBLAS (F.linear, bf16), the Triton GEMV on bf16
weights, the Triton GEMV on int8 weights (optimizer/int8_gemv.py), for every linear layer shape of
the 1B and 7B presets; the int8 GEMV both ways: "tile" (a [BLOCK_N, BLOCK_K] fp32 accumulator,
as the bf16 kernel) and "grouped" (16 weights summed in registers per thread at every K step),
each with the int8 weights made fp32 in each of `--converts` (int8_gemv.INT8_CONVERT: "cvt", a
conversion instruction; "magic", the bits of 2^23 + 128 + w by integer add; "prmt", the same bits
by byte permute). Each kernel runs from a CUDA graph of 20 calls cycling through enough weight
copies (>= 256 MB) that nothing is served from L2; variants interleaved over rounds; the median
and spread of the achieved bandwidth, as a share of a measured device copy. Every int8 form's
output is compared with the first form's (exact conversions, the same sums: equal is expected,
and "magic" against "prmt" must be); whether equal, and the largest difference relative to the
output's largest magnitude, are printed and stored.

    python3 bench/gemv.py [--rounds 5] [--kernels tile,grouped] [--converts cvt,magic] [--out FILE.json]"""

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
    ap.add_argument("--kernels", default="tile,grouped", help="int8 kernels (int8_gemv.INT8_KERNEL)")
    ap.add_argument("--converts", default="cvt,magic", help="int8 to fp32 forms (int8_gemv.INT8_CONVERT)")
    ap.add_argument("--out")
    args = ap.parse_args()
    kernels, converts = args.kernels.split(","), args.converts.split(",")
    defaults = int8_gemv.INT8_KERNEL, int8_gemv.INT8_CONVERT
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
            def int8(kernel, convert):
                def call(i):  # the kernel and conversion are chosen when the graph is captured
                    int8_gemv.INT8_KERNEL, int8_gemv.INT8_CONVERT = kernel, convert
                    return torch.ops.gpucost.int8_gemv(x, q[i][0], q[i][1])
                return call

            fns = {"cublas_bf16": lambda i: F.linear(x, wb[i]),
                   "triton_bf16": lambda i: torch.ops.gpucost.gemv(x, wb[i]),
                   **{f"triton_int8_{kern}_{conv}": int8(kern, conv) for kern in kernels for conv in converts}}
            agree = {}
            for kern in kernels:  # the same int8 GEMV in each form: equal, or how far apart
                ref = fns[f"triton_int8_{kern}_{converts[0]}"](0).float()
                for conv in converts[1:]:
                    got = fns[f"triton_int8_{kern}_{conv}"](0).float()
                    equal = bool(torch.equal(got, ref))
                    agree[f"{kern} {conv} vs {converts[0]}"] = {
                        "equal": equal, "max_rel": ((got - ref).abs().max() / ref.abs().max()).item()}
                    if {conv, converts[0]} == {"magic", "prmt"} and not equal:
                        raise SystemExit(f"{preset} {name}: prmt and magic disagree ({kern})")
            int8_gemv.INT8_KERNEL, int8_gemv.INT8_CONVERT = defaults
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
            row = {"preset": preset, "layer": name, "N": n, "K": k, "autotuned": cfg, "agreement": agree}
            for v, ts in times.items():
                med = statistics.median(ts)
                row[v] = {"us": med * 1e6, "us_min": min(ts) * 1e6, "us_max": max(ts) * 1e6,
                          "gb_s": nbytes[v] / med / 1e9, "share_of_copy": nbytes[v] / med / 1e9 / copy}
            rows.append(row)
            first = {kern: row[f"triton_int8_{kern}_{converts[0]}"]["us"] for kern in kernels}
            print(f"{preset} {name:5} {n:6}x{k:<6} " + "  ".join(
                f"{v.removeprefix('triton_')} {row[v]['us']:7.2f} us ({row[v]['share_of_copy']:.0%})" for v in fns)
                + "  " + "  ".join(f"{kern} {conv}/{converts[0]} x{first[kern] / row[f'triton_int8_{kern}_{conv}']['us']:.3f}"
                                   for kern in kernels for conv in converts[1:])
                + "  " + "  ".join(f"{a}: " + ("equal" if v["equal"] else f"{v['max_rel']:.1e}")
                                   for a, v in agree.items()), flush=True)
            graphs = fns = None
            torch.cuda.empty_cache()
    if args.out:
        Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(dev), "copy_gb_s": copy,
                                              "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
