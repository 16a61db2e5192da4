"""The in-flight batcher: requests join and leave the running batch at every step, and each
request's tokens are exactly those of the same request decoded alone (greedy)."""

import asyncio
import random

import pytest
import torch

from optimizer.batcher import run_load
from optimizer.continuous import ContinuousBatcher, idle_chunks, mixed_step, pack_chunks, packed_width
from optimizer.generate import ensure_caches, generate
from optimizer.model import build_model


def alone(model, prompt, n):
    return generate(model, [prompt], n).tokens[0]


def mixed_workload(vocab: int, n: int, seed: int = 3):
    rng = random.Random(seed)
    prompts = [[rng.randrange(1, vocab) for _ in range(rng.randint(1, 24))] for _ in range(n)]
    lengths = [rng.randint(1, 20) for _ in range(n)]
    return prompts, lengths


@pytest.mark.parametrize("kwargs", [{}, {"chunk": 0}, {"chunk": 0, "overlap": False}, {"min_join": 2}],
                         ids=["chunked", "eager-prefill", "eager-prefill-sync", "join2"])
@pytest.mark.asyncio
async def test_every_request_gets_the_tokens_it_gets_alone_while_others_join_and_leave(kwargs):
    model = build_model("test", seed=1)
    prompts, lengths = mixed_workload(model.args.vocab_size, 14)
    async with ContinuousBatcher(model, max_batch_size=4, max_seq_len=64, **kwargs) as batcher:
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


# -- chunked prefill: mixed steps (decode rows + prompt chunks in one forward) -----------------

def long_workload(vocab: int, n: int, seed: int, longest: int = 30):
    rng = random.Random(seed)
    prompts = [[rng.randrange(1, vocab) for _ in range(rng.randint(1, longest))] for _ in range(n)]
    lengths = [rng.randint(1, 12) for _ in range(n)]
    return prompts, lengths


@pytest.mark.parametrize("kind,overlap", [("full", True), ("int8", True), ("full", False)])
@pytest.mark.asyncio
async def test_chunked_prefill_matches_decoding_alone_with_prompts_longer_than_a_chunk(kind, overlap):
    model = build_model("test", seed=6)
    model.kv_cache_kind = kind
    prompts, lengths = long_workload(model.args.vocab_size, 16, seed=11)
    prompts[0] = prompts[0][:1]  # a one-token prompt and a one-token answer
    lengths[0] = 1
    chunk = 8
    async with ContinuousBatcher(model, max_batch_size=4, max_seq_len=64, chunk=chunk,
                                 chunk_rows=(1, 2, 4), overlap=overlap) as batcher:
        outs = []

        async def client(ids):  # 6 closed-loop clients for 4 rows: requests join mid-run
            for i in ids:
                outs.append((i, await batcher.submit(prompts[i], lengths[i])))

        await asyncio.gather(*(client(range(c, 16, 6)) for c in range(6)))
    assert model.caches[0].__class__.__name__ == ("Int8KVCache" if kind == "int8" else "KVCache")
    assert len(outs) == 16
    for i, c in outs:
        assert c.tokens == alone(model, prompts[i], lengths[i]), i
    # The new path ran: mixed steps, several prompts in one step, prompts over several chunks
    # (more chunks than requests), and requests joining while others decoded.
    assert batcher.mixed_steps and max(batcher.mixed_steps) >= 2
    chunks = sum(-(-len(p) // chunk) for p in prompts)
    assert sum(batcher.mixed_steps) == chunks > 16
    assert any(busy > 0 for _, busy in batcher.admissions)
    assert len(batcher.steps) > len(batcher.mixed_steps)  # plain decode steps too
    assert all(c.latency_s >= c.ttft_s >= c.queue_s >= 0 for _, c in outs)


def test_pack_chunks_indices_stay_in_range_at_the_gpu_shapes():
    """32 rows, 512 slots, chunks of 128, every bucket: positions in [0, 511] (real ones <= 510),
    rows in [0, 31], last-token index in [0, 127]; out-of-range input is refused on the host."""
    rows, slots, chunk = 32, 512, 128
    rng = random.Random(0)
    for n_rows in (1, 2, 4, 8):
        for _ in range(50):
            n = rng.randint(1, n_rows)
            segs = []
            for row in rng.sample(range(rows), n):
                length = rng.randint(1, slots - 1)  # prompt + at least one answer token fit
                start = rng.randrange(0, length, chunk)
                toks = [rng.randrange(1, 1024) for _ in range(min(chunk, length - start))]
                segs.append((row, toks, start, start + len(toks) == length, length))
            packed = pack_chunks(segs, n_rows, chunk, slots)
            assert packed.shape == (n_rows, packed_width(chunk))
            pos = packed[:, chunk: 2 * chunk]
            assert int(pos.min()) >= 0 and int(pos.max()) <= slots - 1
            real = pos != slots - 1
            assert int(real.sum()) == sum(len(s[1]) for s in segs)
            assert all(0 <= int(x) < rows for x in packed[:, 2 * chunk])
            assert all(0 <= int(x) < chunk for x in packed[:, 2 * chunk + 1])
            assert int(packed[:, 2 * chunk + 3].max()) <= slots - 1
            assert int(packed[n:, 2 * chunk + 2].sum()) == 0  # unused segments never finish
    with pytest.raises(ValueError):
        pack_chunks([(0, [1] * 4, slots - 4, True, slots)], 1, chunk, slots)  # would reach the park slot
    with pytest.raises(ValueError):
        pack_chunks([(0, [1] * (chunk + 1), 0, False, 300)], 1, chunk, slots)


def test_mixed_step_at_the_gpu_shapes_runs_on_the_cpu():
    """The exact step the GPU captures (32 decode rows, 512 slots, 8 segment rows of 128), run
    eagerly: CPU indexing raises on any index out of range instead of a device-side assert.
    Segments at the row's end (positions up to 510), unused segments, idle rows parked at 511."""
    model = build_model("test", seed=0)
    b, slots, chunk = 32, 512, 128
    ensure_caches(model, b, slots)
    model.reset_cache_state()
    tokens = torch.randint(1, 1000, (b, 1))
    pos = torch.full((b, 1), slots - 1, dtype=torch.long)
    pos[:20, 0] = torch.arange(20) * 25  # busy rows, the last at 475
    segs = [(20, list(range(1, 128)), 383, True, 510),  # ends at position 509: first token at 510
            (21, [5] * chunk, 0, False, 300),
            (22, [7] * 3, 0, True, 3)]
    packed = pack_chunks(segs, 8, chunk, slots)
    mixed_step(model, tokens, pos, packed, chunk)
    assert pos[20, 0] == 510 and pos[22, 0] == 3 and pos[21, 0] == slots - 1  # 21 not done: parked
    assert pos[:20, 0].tolist() == [min(p + 1, slots - 1) for p in (torch.arange(20) * 25).tolist()]
    assert pos[23:, 0].tolist() == [slots - 1] * (b - 23)
    assert model.slot_real[21, :chunk].all() and not model.slot_real[21, chunk:slots - 1].any()
    assert model.slot_pos[20, 383:510].tolist() == list(range(383, 510))
    # Row 22's first token is the one its 3-token prompt gives alone (generate resets the cache).
    first = tokens[22, 0].item()
    assert first == alone(model, [7] * 3, 1)[0]


@pytest.mark.parametrize("n_rows", [1, 8])
def test_the_warm_up_step_on_idle_buffers_writes_only_the_parked_slot(n_rows):
    """What runs before each capture (and whatever an unused segment does): all rows parked,
    all segments unused. Only slot 511 may change; every position stays parked."""
    model = build_model("test", seed=0)
    b, slots, chunk = 32, 512, 128
    ensure_caches(model, b, slots)
    model.reset_cache_state()
    before = model.caches[0].k_cache.clone()
    tokens = torch.zeros(b, 1, dtype=torch.long)
    pos = torch.full((b, 1), slots - 1, dtype=torch.long)
    mixed_step(model, tokens, pos, idle_chunks(n_rows, chunk, slots), chunk)
    assert pos.eq(slots - 1).all()
    assert not model.slot_real[:, : slots - 1].any() and model.slot_pos[:, : slots - 1].eq(-1).all()
    assert torch.equal(model.caches[0].k_cache[:, :, : slots - 1], before[:, :, : slots - 1])


@pytest.mark.asyncio
async def test_compiled_steps_match_decoding_alone_and_a_second_batcher_reuses_them(monkeypatch):
    """`compile=True` traces the decode and mixed steps (aot_eager here: Dynamo's tracing and
    functionalization of the in-place cache writes, without code generation); the tokens are
    those of each request decoded alone, and a second batcher on the same model compiles nothing
    new (the steps take the model as an argument, so no guard on the batcher fails)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from optimizer import continuous

    monkeypatch.setattr(continuous, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    counters.clear()
    model = build_model("test", seed=6)
    prompts, lengths = long_workload(model.args.vocab_size, 10, seed=5)

    async def run():
        async with ContinuousBatcher(model, max_batch_size=4, max_seq_len=64, chunk=8, chunk_rows=(1, 2, 4),
                                     compile=True) as batcher:
            result = await run_load(batcher.submit, prompts, n_requests=10, max_new_tokens=lengths, concurrency=6)
        return batcher, result

    batcher, result = await run()
    assert batcher.mixed_steps and len(batcher.steps) > len(batcher.mixed_steps)
    expected = sorted((alone(model, p, n) for p, n in zip(prompts, lengths)), key=lambda t: (len(t), t))
    assert sorted((c.tokens for c in result.completions), key=lambda t: (len(t), t)) == expected
    frames = counters["stats"]["unique_graphs"]
    assert frames >= 4  # the decode step and the three buckets' mixed steps
    await run()
    assert counters["stats"]["unique_graphs"] == frames
