"""The dynamic batcher flushes on size or on delay, whichever comes first, and the load
generator drives it closed-loop or at an arrival rate."""

import asyncio

import pytest

from optimizer.batcher import DynamicBatcher, run_load
from optimizer.generate import Generation, generate
from optimizer.model import build_model


def echo_batch(prompts, max_new):
    """A stand-in model run that answers each prompt with its own first token, max_new times."""
    return Generation(tokens=[[p[0]] * max_new for p in prompts], ttft_s=0.0, total_s=0.0,
                      decode_steps=max_new - 1)


@pytest.mark.asyncio
async def test_a_full_batch_flushes_without_waiting_for_the_delay():
    async with DynamicBatcher(echo_batch, max_batch_size=4, max_queue_delay_ms=60_000) as batcher:
        results = await asyncio.wait_for(
            asyncio.gather(*(batcher.submit([i], 3) for i in range(4))), timeout=30)
    assert [r.tokens for r in results] == [[0] * 3, [1] * 3, [2] * 3, [3] * 3]
    assert [(b.size, b.reason) for b in batcher.batches] == [(4, "size")]
    assert all(r.batch_size == 4 for r in results)


@pytest.mark.asyncio
async def test_a_lone_request_flushes_after_the_delay():
    async with DynamicBatcher(echo_batch, max_batch_size=8, max_queue_delay_ms=50) as batcher:
        result = await batcher.submit([5], 2)
    assert result.tokens == [5, 5]
    assert [(b.size, b.reason) for b in batcher.batches] == [(1, "delay")]
    # it waited out the 50 ms delay for company that never came (less the event loop's clock slack)
    assert result.queue_s >= 0.045


@pytest.mark.asyncio
async def test_requests_beyond_the_batch_size_go_in_the_next_batch():
    async with DynamicBatcher(echo_batch, max_batch_size=3, max_queue_delay_ms=20) as batcher:
        await asyncio.gather(*(batcher.submit([i], 1) for i in range(7)))
    assert [b.size for b in batcher.batches] == [3, 3, 1]
    assert [b.reason for b in batcher.batches] == ["size", "size", "delay"]


@pytest.mark.asyncio
async def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on():
    calls = []

    def flaky(prompts, max_new):
        calls.append(len(prompts))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return echo_batch(prompts, max_new)

    async with DynamicBatcher(flaky, max_batch_size=2, max_queue_delay_ms=5) as batcher:
        with pytest.raises(RuntimeError, match="out of memory"):
            await batcher.submit([1], 1)
        assert (await batcher.submit([2], 1)).tokens == [2]


@pytest.mark.asyncio
async def test_closed_loop_load_through_the_real_model_batches_concurrent_clients():
    model = build_model("test")
    model.setup_caches(4, 64)

    def run_batch(prompts, max_new):
        return generate(model, prompts, max_new)

    async with DynamicBatcher(run_batch, max_batch_size=4, max_queue_delay_ms=20) as batcher:
        result = await run_load(batcher.submit, [[1, 2, 3], [4, 5]], n_requests=12, max_new_tokens=5,
                                concurrency=4)
    assert len(result.completions) == 12 and result.tokens == 60
    assert max(b.size for b in batcher.batches) == 4
    assert len(batcher.batches) < 12
    assert all(c.latency_s >= c.queue_s >= 0 and c.ttft_s <= c.latency_s for c in result.completions)
    assert result.tokens_per_s > 0 and result.requests_per_s > 0


@pytest.mark.asyncio
async def test_open_loop_arrivals_respect_the_concurrency_cap():
    in_flight, peak = 0, 0

    async def submit(prompt, max_new):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return (await asyncio.sleep(0, result=None)) or _done(max_new)

    def _done(n):
        from optimizer.batcher import Completion
        return Completion(tokens=[0] * n, latency_s=0.01, queue_s=0.0, ttft_s=0.0, batch_size=1)

    result = await run_load(submit, [[1]], n_requests=20, max_new_tokens=2, concurrency=3,
                            arrival_rate_per_s=2000.0, seed=1)
    assert len(result.completions) == 20 and peak <= 3
