"""The greedy-tail kernel (`gpucost::greedy_next`) alone on a GPU, against torch: the tokens
(torch.argmax's), the history, the positions and the next step's embedded input, at the 1B and
7B vocabulary, one row and several (a shared position and one a row); and its time in a CUDA
graph against torch's argmax, copy and add captured alike.

    python3 bench/greedy_tail_check.py [--vocab 32000] [--dim 2048] [--hang-s 240] [--out FILE.json]

A kernel that hangs shows where (faulthandler dumps the stacks and exits after --hang-s) instead
of a call that runs past its limit with nothing printed."""

from __future__ import annotations

import argparse
import faulthandler
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from optimizer import fused_decode  # noqa: E402,F401  (registers the op)


def graph_us(fn, replays: int = 200) -> float:
    """Per-call time (us) of `fn` captured 10 times in one CUDA graph, best of 5 runs."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(10):
            fn()
    best = float("inf")
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(replays // 10):
            g.replay()
        b.record()
        torch.cuda.synchronize()
        best = min(best, a.elapsed_time(b) * 1e3 / replays)
    return best


def check(vocab: int, dim: int, rows: int, shared: bool, device) -> dict:
    gen = torch.Generator(device=device).manual_seed(rows * 7 + shared)
    logits = torch.randn(rows, vocab, device=device, generator=gen).bfloat16()
    logits[0, 5] = logits[0, vocab - 3] = logits.max() + 1  # a tie: the first index wins
    emb = torch.randn(vocab, dim, device=device, generator=gen).bfloat16()
    tokens = torch.zeros(rows, 1, dtype=torch.long, device=device)
    pos = torch.tensor([100], device=device) if shared else torch.arange(rows, device=device) + 100
    hist = torch.zeros(rows, 2049, dtype=torch.long, device=device)
    ticket = torch.zeros(1, dtype=torch.int32, device=device)
    x = torch.zeros(rows, 1, dim, dtype=torch.bfloat16, device=device)
    t0 = time.perf_counter()
    torch.ops.gpucost.greedy_next(logits, tokens, pos, hist, ticket, emb, x)
    torch.cuda.synchronize()
    first_s = time.perf_counter() - t0
    want = logits.argmax(dim=-1, keepdim=True)
    cols = torch.full((rows,), 101, device=device) if shared else torch.arange(rows, device=device) + 101
    ok = {"tokens": torch.equal(tokens, want), "first_of_ties": int(tokens[0, 0]) == 5,
          "history": torch.equal(hist[torch.arange(rows, device=device), cols], want[:, 0])
          and int(hist.ne(0).sum()) == rows,
          "positions": pos.tolist() == ([101] if shared else [101 + r for r in range(rows)]),
          "ticket": int(ticket) == 0, "embedded": torch.equal(x[:, 0], emb[want[:, 0]])}
    pos -= 1  # back where it was

    def kernel():
        torch.ops.gpucost.greedy_next(logits, tokens, pos, hist, ticket, emb, x)
        pos.sub_(1)  # stays in range over the replays (one small kernel, in both arms)

    def torch_tail():
        tokens.copy_(logits.argmax(dim=-1, keepdim=True))
        hist.index_copy_(1, pos[:1] + 1, tokens)
        x.copy_(torch.nn.functional.embedding(tokens, emb))
        pos.add_(1)
        pos.sub_(1)

    return {"vocab": vocab, "rows": rows, "shared_position": shared, "checks": ok, "passed": all(ok.values()),
            "first_call_s": first_s, "kernel_us": graph_us(kernel), "torch_eager_us": graph_us(torch_tail)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--hang-s", type=float, default=240)
    ap.add_argument("--out")
    args = ap.parse_args()
    faulthandler.dump_traceback_later(args.hang_s, exit=True)
    device = torch.device("cuda")
    out = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__, "cases": []}
    for rows, shared in ((1, True), (4, True), (4, False)):
        r = check(args.vocab, args.dim, rows, shared, device)
        out["cases"].append(r)
        print(f"rows={rows} shared={shared}: {'PASS' if r['passed'] else 'FAIL ' + str(r['checks'])}; first call "
              f"{r['first_call_s']:.1f} s; in a graph {r['kernel_us']:.2f} us vs torch ops {r['torch_eager_us']:.2f} us",
              flush=True)
    out["passed"] = all(r["passed"] for r in out["cases"])
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    faulthandler.cancel_dump_traceback_later()
    sys.exit(0 if out["passed"] else 1)


if __name__ == "__main__":
    main()
