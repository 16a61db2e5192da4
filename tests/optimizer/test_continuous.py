"""The in-flight batcher: requests join and leave the running batch at every step, and each
request's tokens are exactly those of the same request decoded alone (greedy)."""

import asyncio
import random

import pytest
import torch

from optimizer.batcher import run_load
from optimizer.continuous import ContinuousBatcher
from optimizer.generate import generate
from optimizer.model import build_model


def alone(model, prompt, n):
    return generate(model, [prompt], n).tokens[0]


def mixed_workload(vocab: int, n: int, seed: int = 3):
    rng = random.Random(seed)
    prompts = [[rng.randrange(1, vocab) for _ in range(rng.randint(1, 24))] for _ in range(n)]
    lengths = [rng.randint(1, 20) for _ in range(n)]
    return prompts, lengths


@pytest.mark.asyncio
async def test_every_request_gets_the_tokens_it_gets_alone_while_others_join_and_leave():
    model = build_model("test", seed=1)
    prompts, lengths = mixed_workload(model.args.vocab_size, 14)
    async with ContinuousBatcher(model, max_batch_size=4, max_seq_len=64) as batcher:
        # 6 clients for 4 rows: requests queue, and join as soon as any row frees up.
        result = await run_load(batcher.submit, prompts, n_requests=14, max_new_tokens=lengths, concurrency=6)
    assert len(result.completions) == 14
    expected = sorted((alone(model, p, n) for p, n in zip(prompts, lengths)), key=lambda t: (len(t), t))
    got = sorted((c.tokens for c in result.completions), key=lambda t: (len(t), t))
    assert got == expected
    # Joining mid-flight really happened: some admissions found rows still decoding.
    assert any(joined > 0 and busy > 0 for joined, busy in batcher.admissions)
    assert max(batcher.steps) == 4 and min(batcher.steps) < 4
    assert all(c.latency_s >= c.ttft_s >= c.queue_s >= 0 for c in result.completions)


@pytest.mark.asyncio
async def test_each_completion_belongs_to_its_own_request():
    """Matched one by one (not as a multiset): the future of request i gets request i's tokens."""
    model = build_model("test", seed=2)
    prompts, lengths = mixed_workload(model.args.vocab_size, 6, seed=5)
    async with ContinuousBatcher(model, max_batch_size=3, max_seq_len=64) as batcher:
        outs = await asyncio.gather(*(batcher.submit(p, n) for p, n in zip(prompts, lengths)))
    for p, n, c in zip(prompts, lengths, outs):
        assert c.tokens == alone(model, p, n)


@pytest.mark.asyncio
async def test_int8_kv_cache_rows_match_decoding_alone():
    model = build_model("test", seed=4)
    model.kv_cache_kind = "int8"
    prompts, lengths = mixed_workload(model.args.vocab_size, 5, seed=9)
    async with ContinuousBatcher(model, max_batch_size=2, max_seq_len=64) as batcher:
        outs = await asyncio.gather(*(batcher.submit(p, n) for p, n in zip(prompts, lengths)))
    assert model.caches[0].__class__.__name__ == "Int8KVCache"
    for p, n, c in zip(prompts, lengths, outs):
        assert c.tokens == alone(model, p, n)


@pytest.mark.asyncio
async def test_a_request_longer_than_a_row_is_refused_and_the_rest_go_on():
    model = build_model("test")
    async with ContinuousBatcher(model, max_batch_size=2, max_seq_len=16) as batcher:
        with pytest.raises(ValueError, match="exceed the KV cache row"):
            await batcher.submit(list(range(1, 12)), 8)
        ok = await batcher.submit([5, 6, 7], 4)
    assert ok.tokens == alone(model, [5, 6, 7], 4)


def test_cuda_graphs_need_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        ContinuousBatcher(build_model("test"), cuda_graph=True)
