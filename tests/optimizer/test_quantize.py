"""Weight quantization as module swaps: what gets swapped, how close it stays, how much it saves."""

import torch
import torch.nn as nn

from optimizer.model import build_model, model_bytes
from optimizer.quantize import Float8Linear, WeightOnlyInt8Linear, quantize_model, quantize_per_channel


def test_per_channel_int8_round_trip_error_is_small():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    q, scales = quantize_per_channel(w)
    assert q.dtype == torch.int8 and scales.shape == (64,)
    assert ((q.float() * scales[:, None]) - w).norm() / w.norm() < 0.01


def test_weight_only_int8_linear_matches_the_float_linear():
    lin = nn.Linear(128, 64, bias=False)
    x = torch.randn(3, 5, 128)
    q = WeightOnlyInt8Linear.from_linear(lin)
    assert (q(x) - lin(x)).norm() / lin(x).norm() < 0.01


def test_fp8_linear_emulated_on_cpu_is_close():
    lin = nn.Linear(128, 64, bias=False)
    x = torch.randn(4, 128)
    q = Float8Linear.from_linear(lin)
    assert q.weight.dtype == torch.float8_e4m3fn
    assert (q(x) - lin(x)).norm() / lin(x).norm() < 0.1


def test_every_linear_is_swapped_and_the_model_shrinks():
    model = build_model("test")
    before = model_bytes(model)
    quantize_model(model, "int8-weight-only")
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert sum(isinstance(m, WeightOnlyInt8Linear) for m in model.modules()) == 2 * 4 + 1  # wqkv, wo, w13, w2 per layer, and the output head
    # int8 linears are a quarter of fp32; embeddings and norms stay fp32
    assert model_bytes(model) < 0.45 * before


def test_dynamic_int8_runs_on_cpu():
    model = quantize_model(build_model("test"), "int8-dynamic")
    out = model(torch.arange(8).view(1, -1))
    assert out.shape == (1, 8, 1024) and torch.isfinite(out).all()
