"""The Triton GEMVs (optimizer/int8_gemv.py) on the CPU, under Triton's interpreter: the same kernel
source the GPU runs, masks and the unmasked fast path included. The interpreter is chosen when
Triton is imported, so the checks run in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]

CHECK = textwrap.dedent("""
    import torch
    from optimizer import int8_gemv
    from optimizer.bench import Variant, build_variant
    from optimizer.generate import generate
    from optimizer.quantize import GemvLinear, quantize_per_channel

    torch.manual_seed(0)
    # (64, 128): every block full (no masks); (70, 200): ragged N and K (masked loads)
    for n, k in ((64, 128), (70, 200)):
        w = torch.randn(n, k)
        q, s = quantize_per_channel(w)
        for kernel in ("grouped", "tile"):  # both int8 kernels
            int8_gemv.INT8_KERNEL = kernel
            for rows in (1, 3):
                x = torch.randn(rows, k)
                y = torch.ops.gpucost.int8_gemv(x, q, s)
                ref = (x.double() @ q.double().t()) * s.double()
                assert y.shape == (rows, n), y.shape
                assert torch.allclose(y.double(), ref, rtol=1e-5, atol=1e-4), (kernel, (y.double() - ref).abs().max())
        int8_gemv.INT8_KERNEL = "grouped"
        xb, wb = torch.randn(1, 1, k).bfloat16(), w.bfloat16()
        y = torch.ops.gpucost.gemv(xb, wb)
        ref = (xb.double().reshape(1, k) @ wb.double().t()).reshape(1, 1, n)
        assert y.dtype == torch.bfloat16 and y.shape == (1, 1, n)
        # fp32 accumulation, one rounding to bf16 at the end: within one bf16 ulp (the
        # interpreter truncates where the GPU rounds to nearest)
        assert torch.allclose(y.double(), ref, rtol=2 ** -7, atol=1e-3), (y.double() - ref).abs().max()

    # The decode path: the GEMV scheme computes the plain model's tokens, and its linear layers
    # really went through the kernel (a wrong kernel would change the greedy tokens).
    calls = {"gemv": 0}
    prompts = [[5, 9, 17, 3, 250, 11]]
    plain, dec = build_variant("test", Variant(precision="fp32"), "cpu")
    want = generate(plain, prompts, 6, decoder=dec).tokens
    model, dec = build_variant("test", Variant(precision="fp32", quantization="gemv"), "cpu")
    assert sum(isinstance(m, GemvLinear) for m in model.modules()) == 2 * 4 + 1  # 2 layers x (wqkv, wo, w13, w2), the head
    orig = GemvLinear.forward
    def forward(self, x):
        if int8_gemv.gemv_applies(x, self.weight):
            calls["gemv"] += 1
        return orig(self, x)
    GemvLinear.forward = forward
    got = generate(model, prompts, 6, decoder=dec).tokens
    assert got == want, (got, want)
    assert calls["gemv"] >= 5 * 9, calls  # every decode step, every linear layer
    model, dec = build_variant("test", Variant(precision="fp32", quantization="int8-weight-only"), "cpu")
    int8_gemv.ENABLED = False
    fallback = generate(model, prompts, 6, decoder=dec).tokens
    int8_gemv.ENABLED = True
    assert generate(model, prompts, 6, decoder=dec).tokens == fallback
    print("ok")
""")


def test_gemv_kernels_under_the_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr


def test_gemv_applies_only_where_the_kernel_runs():
    import torch

    from optimizer import int8_gemv

    w = torch.zeros(8, 16)
    if os.environ.get("TRITON_INTERPRET") != "1":
        assert not int8_gemv.gemv_applies(torch.zeros(1, 16), w)  # CPU tensors, no interpreter
    assert not int8_gemv.gemv_applies(torch.zeros(int8_gemv.MAX_ROWS + 1, 16), w)
    assert not int8_gemv.gemv_applies(torch.zeros(1, 16), w.t().contiguous().t())  # not contiguous
