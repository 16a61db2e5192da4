"""The workload model: shapes, determinism, and the KV cache computing the same function as a
plain causal forward (left padding, sliding window, precisions)."""

import pytest
import torch

from optimizer.generate import generate
from optimizer.model import PRESETS, build_model, model_bytes, model_parameters


def greedy_without_cache(model, prompt, n):
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt):]


def test_forward_shapes_and_parameter_count():
    model = build_model("test")
    args = PRESETS["test"]
    logits = model(torch.randint(0, args.vocab_size, (3, 7)))
    assert logits.shape == (3, 7, args.vocab_size)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    per_layer = (args.dim * (args.n_head + 2 * args.n_kv_head) * args.head_dim + args.dim * args.dim
                 + 3 * args.dim * args.ffn_dim + 2 * args.dim)
    expected = args.n_layer * per_layer + 2 * args.vocab_size * args.dim + args.dim
    assert model_parameters(model) == expected
    assert model_bytes(model) == 4 * expected


def test_the_ten_million_preset_is_about_ten_million_parameters():
    assert 8e6 < model_parameters(build_model("10m")) < 12e6


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = build_model("test", seed=1), build_model("test", seed=1), build_model("test", seed=2)
    idx = torch.arange(10).view(1, -1)
    assert torch.equal(a(idx), b(idx))
    assert not torch.allclose(a(idx), c(idx))


def test_bf16_model_holds_the_rounded_fp32_weights():
    fp32, bf16 = build_model("test", dtype=torch.float32), build_model("test", dtype=torch.bfloat16)
    assert torch.equal(fp32.layers[0].attention.wqkv.weight.to(torch.bfloat16), bf16.layers[0].attention.wqkv.weight)
    assert bf16.rope.dtype == torch.float32


def test_cached_generation_equals_recomputing_the_whole_sequence():
    model = build_model("test")
    prompts = [[5, 6, 7, 8, 9, 10, 11], [42, 43]]  # different lengths: the second is left-padded
    out = generate(model, prompts, 12).tokens
    model.clear_caches()
    for prompt, tokens in zip(prompts, out):
        assert tokens == greedy_without_cache(model, prompt, 12)


def test_the_graphed_steps_greedy_tail_continues_generation_in_place():
    # Decoder._greedy is what the CUDA graph runs (compiled with the step under torch.compile):
    # the next tokens written into the token buffer and into the history at their position, the
    # position moved on, the logits returned; step by step it gives generate's tokens, every row.
    from optimizer.generate import Decoder, prefill

    model = build_model("test", seed=4)
    prompts = [[5, 6, 7, 8, 9], [11, 12, 13, 14, 15]]
    want = generate(model, prompts, 6).tokens
    model.reset_cache_state()
    decoder = Decoder(model)
    tokens = prefill(model, torch.tensor(prompts), None).argmax(dim=-1, keepdim=True)
    pos = torch.tensor([5])
    history = torch.zeros(2, model.args.max_seq_len + 1, dtype=torch.long)
    ticket = torch.zeros(1, dtype=torch.int32)
    history[:, 5] = tokens[:, 0]
    for step in range(5):
        logits = decoder._greedy(tokens, pos, history, ticket)
        assert logits.shape == (2, model.args.vocab_size)
        assert torch.equal(tokens, logits.argmax(dim=-1, keepdim=True))
        assert torch.equal(history[:, 6 + step], tokens[:, 0])
    assert history[:, 5:11].tolist() == want and int(pos) == 10
    assert history[:, :5].eq(0).all() and history[:, 11:].eq(0).all()


def test_generation_is_deterministic_and_sampling_is_seeded():
    model = build_model("test")
    prompts = [[1, 2, 3]]
    assert generate(model, prompts, 8).tokens == generate(model, prompts, 8).tokens
    s1 = generate(model, prompts, 16, temperature=1.0, seed=3).tokens
    s2 = generate(model, prompts, 16, temperature=1.0, seed=3).tokens
    s3 = generate(model, prompts, 16, temperature=1.0, seed=4).tokens
    assert s1 == s2 and s1 != s3


def test_eos_cuts_the_answer():
    model = build_model("test")
    full = generate(model, [[1, 2, 3]], 10).tokens[0]
    eos = full[3]
    cut = generate(model, [[1, 2, 3]], 10, eos_id=eos).tokens[0]
    assert cut == full[: full.index(eos) + 1]


def test_sliding_window_ring_cache_matches_windowed_attention_and_stays_small():
    window = 16
    ringed = build_model("test")
    ringed.set_sliding_window(window)
    ringed.setup_caches(2, 200, prefill_chunk=8)
    assert ringed.cache_slots == window + 8
    prompts = [list(range(1, 41)), [7, 8, 9]]
    out = generate(ringed, prompts, 30).tokens
    assert ringed.cache_slots == window + 8  # 70 tokens went through a ring of 24 slots
    reference = build_model("test")
    reference.set_sliding_window(window)
    for prompt, tokens in zip(prompts, out):
        assert tokens == greedy_without_cache(reference, prompt, 30)


def test_a_window_changes_what_the_model_sees():
    full, windowed = build_model("test"), build_model("test")
    windowed.set_sliding_window(4)
    idx = torch.arange(1, 30).view(1, -1)
    assert torch.allclose(full(idx)[:, :4], windowed(idx)[:, :4], atol=1e-5)
    assert not torch.allclose(full(idx)[:, -1], windowed(idx)[:, -1], atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precisions_stay_close_to_fp32(dtype):
    fp32, half = build_model("test"), build_model("test", dtype=dtype)
    idx = torch.randint(0, 1024, (2, 12), generator=torch.Generator().manual_seed(0))
    a, b = fp32(idx), half(idx).float()
    assert b.shape == a.shape
    assert (b - a).norm() / a.norm() < 0.05
    assert model_bytes(half) * 2 == model_bytes(fp32)
