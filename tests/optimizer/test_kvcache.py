"""Group-wise int8 / int4 KV caches: round trips, the memory they save, and generation through them."""

import pytest
import torch

from optimizer.generate import generate
from optimizer.kvcache import (
    Int4KVCache, Int8KVCache, KVCache, dequantize_groupwise, pack_int4, quantize_groupwise, unpack_int4,
)
from optimizer.model import build_model


def test_int4_packing_round_trips_every_value():
    q = torch.arange(-8, 8, dtype=torch.int8).repeat(4).view(2, 32)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (2, 16)
    assert torch.equal(unpack_int4(packed), q)


@pytest.mark.parametrize("bits,bound", [(8, 0.01), (4, 0.15)])
def test_groupwise_quantization_error_is_bounded(bits, bound):
    x = torch.randn(2, 4, 10, 128, generator=torch.Generator().manual_seed(0))
    q, scales = quantize_groupwise(x, bits)
    assert scales.shape == (2, 4, 10, 2)  # one scale per group of 64 channels
    err = (dequantize_groupwise(q, scales, torch.float32) - x).norm() / x.norm()
    assert err < bound


def test_quantized_caches_save_the_promised_memory_at_head_dim_64():
    args = (4, 256, 8, 64, torch.bfloat16)
    full = KVCache(*args).nbytes()
    assert full / Int8KVCache(*args).nbytes() >= 1.9
    assert full / Int4KVCache(*args).nbytes() >= 3.5


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_generation_through_a_quantized_cache(kind):
    base = build_model("test")
    prompts = [list(range(3, 30)), [9, 8, 7]]
    reference = generate(base, prompts, 16).tokens
    model = build_model("test")
    model.setup_caches(2, 64, kind)
    out = generate(model, prompts, 16).tokens
    assert [len(t) for t in out] == [16, 16]
    first_tokens_agree = sum(a[0] == b[0] for a, b in zip(out, reference))
    assert first_tokens_agree == 2  # the prompt pass sees the same keys up to quantization error
    assert model.kv_cache_kind == kind
