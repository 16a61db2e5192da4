"""The dynamic batcher against in-flight batcher configurations, side by side in interleaved rounds.

`bench/optimizer_gpu.py --sections batchers` runs this on the GPU (bf16 + CUDA graph for every
batcher); the same code runs on the CPU as a smoke test:

    python -m optimizer.batcher_compare --model test --clients 8 --requests 16 --rounds 1

Closed-loop clients (`batcher.run_load`), seeded prompts and answer lengths (the same for every
batcher). Each round runs every batcher once, the order reversed every other round; per round and
batcher: tokens/s, p50/p99 latency, TTFT p50, and the engine's counters. The ratios against the
dynamic batcher of the same round are reported as median and spread; the goal (tokens/s >= 1.5x
at no worse p99) counts as met only when every round clears it, for the configuration named best."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
from collections import Counter
from collections.abc import Callable

from optimizer import abtest
from optimizer.batcher import DynamicBatcher, run_load
from optimizer.continuous import ContinuousBatcher
from optimizer.generate import Decoder, ensure_caches, generate
from optimizer.measure import latency_summary_ms
from optimizer.model import Transformer

GOAL_TPUT, GOAL_P99 = 1.5, 1.0

# The in-flight forms the GPU section measures (run 8: both batchers' steps compiled): chunked
# prefill in mixed steps joining at every step, the host one step ahead of the GPU (the best
# form), the same with host and GPU in lockstep, and the first form as measured in run 3 (eager
# prefill, join in groups of 8, lockstep). Run 7 (eager kernels in CUDA graphs) also measured a
# chunk of 256 (docs/benchmarks.md).
INFLIGHT_CONFIGS: dict[str, dict] = {
    "inflight_chunk128": {"chunk": 128, "chunk_rows": (1, 2, 4, 8), "overlap": True},
    "inflight_chunk128_sync": {"chunk": 128, "chunk_rows": (1, 2, 4, 8), "overlap": False},
    "inflight_join8_eager": {"chunk": 0, "min_join": 8, "overlap": False},
}
BEST = "inflight_chunk128"


def workload(vocab_size: int, n_requests: int, prompt_range: tuple[int, int] = (16, 256),
             answer_range: tuple[int, int] = (16, 256), seed: int = 0) -> tuple[list[list[int]], list[int]]:
    rng = random.Random(seed)
    prompts = [[rng.randrange(1, vocab_size) for _ in range(rng.randint(*prompt_range))] for _ in range(n_requests)]
    lengths = [rng.randint(*answer_range) for _ in range(n_requests)]
    return prompts, lengths


def compare_batchers(model: Transformer, decoder: Decoder, configs: dict[str, dict] | None = None, *,
                     best: str = BEST, clients: int = 32, n_requests: int = 128, seq: int = 512,
                     rounds: int = 3, prompt_range: tuple[int, int] = (16, 256),
                     answer_range: tuple[int, int] = (16, 256), cuda_graph: bool = True,
                     compile: bool = False, log: Callable[[str], None] = print, on_round: Callable[[], None] | None = None,
                     out: dict | None = None) -> dict:
    """Dynamic vs each in-flight configuration (ContinuousBatcher keyword arguments), `rounds`
    interleaved rounds after one warm-up run each. `compile`: the in-flight steps through
    torch.compile (give the dynamic batcher's `decoder` the same). Fills and returns `out`."""
    configs = dict(INFLIGHT_CONFIGS if configs is None else configs)
    if best not in configs:
        raise ValueError(f"the best configuration {best!r} is not among {list(configs)}")
    prompts, lengths = workload(model.args.vocab_size, n_requests, prompt_range, answer_range)
    ensure_caches(model, clients, seq)

    def run_batch(ps, max_new):
        return generate(model, ps, max_new, decoder=decoder)

    async def dynamic(n):
        async with DynamicBatcher(run_batch, clients, 5.0) as b:
            return await run_load(b.submit, prompts, n, lengths, clients), {"batch_sizes": [x.size for x in b.batches]}

    async def inflight(n, kwargs):
        async with ContinuousBatcher(model, clients, seq, cuda_graph=cuda_graph, compile=compile, **kwargs) as b:
            r = await run_load(b.submit, prompts, n, lengths, clients)
        return r, {"mean_busy_rows": sum(b.steps) / max(len(b.steps), 1), "steps": len(b.steps),
                   "mixed_steps": len(b.mixed_steps),
                   "prompts_per_mixed_step": dict(sorted(Counter(b.mixed_steps).items())),
                   "admissions": len(b.admissions), "engine_prefill_s": b.prefill_s,
                   "engine_decode_s": b.decode_s, "engine_mixed_s": b.mixed_s}

    runners: dict[str, Callable] = {"dynamic": dynamic}
    for name, kwargs in configs.items():
        runners[name] = (lambda kw: (lambda n: inflight(n, kw)))(kwargs)
    out = {} if out is None else out
    out.update({"clients": clients, "requests_per_round": n_requests,
                "prompt_tokens": f"uniform {prompt_range[0]}..{prompt_range[1]}",
                "new_tokens": f"uniform {answer_range[0]}..{answer_range[1]}", "cache_slots": seq,
                "configs": {k: {kk: list(vv) if isinstance(vv, tuple) else vv for kk, vv in v.items()}
                            for k, v in configs.items()},
                "best": best, "compiled": compile, "rounds": []})
    for name, fn in runners.items():  # warm-up: graphs for the batch sizes seen
        asyncio.run(fn(clients))
        log(f"batchers warm-up {name} done")
    for r in range(rounds):
        order = tuple(runners) if r % 2 == 0 else tuple(runners)[::-1]
        rnd = {}
        for name in order:
            res, info = asyncio.run(runners[name](n_requests))
            lat = latency_summary_ms([c.latency_s for c in res.completions])
            rnd[name] = {"tokens_per_s": res.tokens_per_s, "tokens": res.tokens, "wall_s": res.wall_s, **lat,
                         "ttft_p50_ms": latency_summary_ms([c.ttft_s for c in res.completions])["p50_ms"], **info}
            log(f"batchers round {r} {name}: {res.tokens_per_s:.0f} tok/s, p50 {lat['p50_ms']:.0f} ms, "
                f"p99 {lat['p99_ms']:.0f} ms {info if name != 'dynamic' else ''}")
        out["rounds"].append(rnd)
        if on_round is not None:
            on_round()
    for name in configs:
        tput = [x[name]["tokens_per_s"] / x["dynamic"]["tokens_per_s"] for x in out["rounds"]]
        p99 = [x[name]["p99_ms"] / x["dynamic"]["p99_ms"] for x in out["rounds"]]
        out[f"{name}_throughput_ratio"] = abtest.spread(tput)
        out[f"{name}_p99_ratio"] = abtest.spread(p99)
        log(f"batchers: {name}/dynamic tokens/s x{statistics.median(tput):.2f} [{min(tput):.2f}..{max(tput):.2f}], "
            f"p99 x{statistics.median(p99):.2f} [{min(p99):.2f}..{max(p99):.2f}]")
    tput = out[f"{best}_throughput_ratio"]["values"]
    p99 = out[f"{best}_p99_ratio"]["values"]
    out["throughput_ratio"] = out[f"{best}_throughput_ratio"]
    out["p99_ratio"] = out[f"{best}_p99_ratio"]
    out["goal"] = ("met" if min(tput) >= GOAL_TPUT and max(p99) <= GOAL_P99 else
                   "not met" + (" (spread crosses the goal)" if max(tput) >= GOAL_TPUT and min(p99) <= GOAL_P99 else ""))
    log(f"batchers: best {best}: tokens/s x{out['throughput_ratio']['median']:.2f} [{min(tput):.2f}..{max(tput):.2f}], "
        f"p99 x{out['p99_ratio']['median']:.2f} [{min(p99):.2f}..{max(p99):.2f}]: {out['goal']}")
    return out


def main(argv: list[str] | None = None) -> dict:
    """CPU smoke run (fp32, eager decode, no CUDA graph) of the same comparison."""
    from optimizer.model import build_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="test")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--prompt-max", type=int, default=48)
    ap.add_argument("--answer-max", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=16, help="chunk of the best form on the CPU (128 on the GPU)")
    args = ap.parse_args(argv)
    model = build_model(args.model)
    configs = {"inflight_chunked": {"chunk": args.chunk, "chunk_rows": (1, 2, 4, 8)},
               "inflight_join8_eager": {"chunk": 0, "min_join": min(8, args.clients)}}
    out = compare_batchers(model, Decoder(model), configs, best="inflight_chunked", clients=args.clients,
                           n_requests=args.requests, seq=args.seq, rounds=args.rounds,
                           prompt_range=(4, args.prompt_max), answer_range=(4, args.answer_max),
                           cuda_graph=False)
    print(json.dumps({k: v for k, v in out.items() if k != "rounds"}, default=str))
    return out


if __name__ == "__main__":
    main()
