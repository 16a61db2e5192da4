"""Triton GEMVs for batch-1 decode: y = (x @ W^T) [* scales], W int8 [N, K] or bf16/fp16 [N, K].

At decode batch sizes (a handful of rows) a linear layer is a read of its weights. These kernels
read each weight once (int8: converted in registers), multiply and accumulate in fp32 in
registers over the whole K loop, and reduce across threads once at the end (a reduction per K
step, as the first int8 kernel did, held the 7B int8 step to 46 % of the H200's bandwidth).
Weights are streamed with evict-first so they do not push the activations out of L2.

- `_gemv_kernel` ("tile"): a [BLOCK_N, BLOCK_K] fp32 accumulator; the bf16 GEMV, and the int8
  one when `INT8_KERNEL = "tile"`.
- `_int8_gemv_kernel` ("grouped", the int8 default): 16 consecutive int8 weights a thread (one
  16-byte load) summed in registers at every K step, so the accumulator is 1/16 the size and a CTA
  streams 8 to 32 KB a step. On the H200 it beat "tile" at 7B (step 3.150 vs 3.315 ms) and lost at
  1B (GEMV time 577 vs 498 µs a step); docs/benchmarks.md, H200 section.

Both ops are `torch.library` custom ops: opaque to torch.compile (which fuses everything around
them), autotuned on their first real call per shape and dtype (outside any CUDA graph capture).
The bf16 op gives a bf16 baseline whose kernels do not depend on what Inductor's coordinate-descent
tuning picked in a given process (that moved the 7B bf16 step by 25 % between processes on the
H200), and an int8-vs-bf16 ratio of like kernels. On a CPU the kernels run under Triton's
interpreter (TRITON_INTERPRET=1) in the tests."""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the module swaps fall back to their one-line forwards
    triton = None

ENABLED = True  # False: decode through Inductor's fused reduction instead (for comparison)
# "grouped": the int8 kernel with 16-weight groups summed in registers; "tile": the bf16 kernel's
# [BLOCK_N, BLOCK_K] accumulator on int8 weights (46-73 % of a copy on the H200, bench/gemv.py)
INT8_KERNEL = "grouped"
MAX_ROWS = 4  # beyond a few rows the weights are worth tiling: cuBLAS / Inductor take over


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _configs() -> list:
    """Output rows x K block x warps (the fp32 accumulator tile is 16..64 registers a thread),
    each with and without load pipelining. Under Triton's CPU interpreter (tests) one config,
    small enough that the masks are exercised."""
    if _interpreting():
        return [triton.Config({"BLOCK_N": 16, "BLOCK_K": 64}, num_warps=4)]
    shapes = ((2, 2048, 4), (4, 512, 4), (4, 1024, 4), (8, 256, 4), (8, 512, 4), (8, 1024, 4),
              (16, 256, 4), (16, 512, 4), (4, 2048, 8), (8, 1024, 8), (16, 512, 8), (16, 1024, 8))
    return [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)
            for bn, bk, warps in shapes for stages in (1, 3)]


if triton is not None:
    def _bench(kernel_call, quantiles):
        return triton.testing.do_bench(kernel_call, warmup=10, rep=40, quantiles=quantiles)

    # Each config is timed for ~50 ms per shape instead of Triton's default 125 ms: 24 configs x
    # 10 shapes (1B and 7B, bf16 and int8) would otherwise add about 30 s to a process's first steps.
    @triton.autotune(configs=_configs(), key=["N", "K", "HAS_SCALE"], do_bench=_bench)
    @triton.heuristics({"EVEN_K": lambda a: a["K"] % a["BLOCK_K"] == 0,
                        "EVEN_N": lambda a: a["N"] % a["BLOCK_N"] == 0})
    @triton.jit
    def _gemv_kernel(x_ptr, w_ptr, s_ptr, y_ptr, N, K, stride_xm, stride_wn, stride_ym,
                     HAS_SCALE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     EVEN_K: tl.constexpr, EVEN_N: tl.constexpr):
        pid_n = tl.program_id(0)
        row = tl.program_id(1)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        n_mask = offs_n < N
        w_ptrs = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :]
        x_ptrs = x_ptr + row * stride_xm + offs_k
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            if EVEN_K and EVEN_N:
                w = tl.load(w_ptrs, eviction_policy="evict_first")
                x = tl.load(x_ptrs)
            else:
                k_mask = (k0 + offs_k) < K
                w = tl.load(w_ptrs, mask=n_mask[:, None] & k_mask[None, :], other=0,
                            eviction_policy="evict_first")
                x = tl.load(x_ptrs, mask=k_mask, other=0.0)
            acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
            w_ptrs += BLOCK_K
            x_ptrs += BLOCK_K
        out = tl.sum(acc, axis=1)
        if HAS_SCALE:
            out = out * tl.load(s_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + row * stride_ym + offs_n, out.to(y_ptr.dtype.element_ty), mask=n_mask)

    def _int8_configs() -> list:
        """int8 tiles: 8..32 KB of weights a CTA per K step (twice the bf16 kernel's bytes for the
        same registers: the accumulator holds one partial sum per 16 weights)."""
        if _interpreting():
            return [triton.Config({"BLOCK_N": 16, "BLOCK_K": 64}, num_warps=4)]
        shapes = ((2, 4096, 4), (4, 2048, 4), (8, 1024, 4), (16, 512, 4), (4, 4096, 4), (8, 2048, 4),
                  (16, 1024, 4), (8, 2048, 8), (16, 1024, 8), (8, 4096, 8), (16, 2048, 8), (32, 1024, 8))
        return [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)
                for bn, bk, warps in shapes for stages in (1, 3)]

    def _fits(configs, named_args, **kwargs):
        """Drop K blocks longer than K (all masked work); keep at least one config."""
        kept = [c for c in configs if c.kwargs["BLOCK_K"] <= max(named_args["K"], 64)]
        return kept or configs[:1]

    @triton.autotune(configs=_int8_configs(), key=["N", "K"], do_bench=_bench,
                     prune_configs_by={"early_config_prune": _fits})
    @triton.heuristics({"EVEN_K": lambda a: a["K"] % a["BLOCK_K"] == 0,
                        "EVEN_N": lambda a: a["N"] % a["BLOCK_N"] == 0})
    @triton.jit
    def _int8_gemv_kernel(x_ptr, w_ptr, s_ptr, y_ptr, N, K, stride_xm, stride_wn, stride_ym,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
                          EVEN_N: tl.constexpr):
        """The int8 GEMV: a [BLOCK_N, BLOCK_K / 16, 16] weight tile, each thread holding 16
        consecutive int8 weights (one 16-byte load), summed in registers at every K step into a
        [BLOCK_N, BLOCK_K / 16] accumulator; one cross-thread reduction at the end."""
        R: tl.constexpr = 16
        G: tl.constexpr = BLOCK_K // R
        pid_n = tl.program_id(0)
        row = tl.program_id(1)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, G)[:, None] * R + tl.arange(0, R)[None, :]  # [G, R]
        n_mask = offs_n < N
        w_ptrs = w_ptr + offs_n[:, None, None].to(tl.int64) * stride_wn + offs_k[None, :, :]
        x_ptrs = x_ptr + row * stride_xm + offs_k
        acc = tl.zeros((BLOCK_N, G), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            if EVEN_K and EVEN_N:
                w = tl.load(w_ptrs, eviction_policy="evict_first")
                x = tl.load(x_ptrs)
            else:
                k_mask = (k0 + offs_k) < K
                w = tl.load(w_ptrs, mask=n_mask[:, None, None] & k_mask[None, :, :], other=0,
                            eviction_policy="evict_first")
                x = tl.load(x_ptrs, mask=k_mask, other=0.0)
            acc += tl.sum(w.to(tl.float32) * x.to(tl.float32)[None, :, :], axis=2)
            w_ptrs += BLOCK_K
            x_ptrs += BLOCK_K
        out = tl.sum(acc, axis=1) * tl.load(s_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + row * stride_ym + offs_n, out.to(y_ptr.dtype.element_ty), mask=n_mask)


def _launch(x: Tensor, weight: Tensor, scales: Tensor | None) -> Tensor:
    n, k = weight.shape
    x2 = x.reshape(-1, k).contiguous()
    y = torch.empty(x2.shape[0], n, dtype=x.dtype, device=x.device)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), x2.shape[0])  # noqa: E731
    if scales is None:
        _gemv_kernel[grid](x2, weight, weight, y, n, k, x2.stride(0), weight.stride(0), y.stride(0),
                           HAS_SCALE=False)
    elif INT8_KERNEL == "grouped":
        _int8_gemv_kernel[grid](x2, weight, scales, y, n, k, x2.stride(0), weight.stride(0), y.stride(0))
    else:
        _gemv_kernel[grid](x2, weight, scales, y, n, k, x2.stride(0), weight.stride(0), y.stride(0),
                           HAS_SCALE=True)
    return y.reshape(*x.shape[:-1], n)


@torch.library.custom_op("gpucost::int8_gemv", mutates_args=())
def int8_gemv(x: Tensor, weight: Tensor, scales: Tensor) -> Tensor:
    return _launch(x, weight, scales)


@int8_gemv.register_fake
def _(x: Tensor, weight: Tensor, scales: Tensor) -> Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


@torch.library.custom_op("gpucost::gemv", mutates_args=())
def gemv(x: Tensor, weight: Tensor) -> Tensor:
    return _launch(x, weight, None)


@gemv.register_fake
def _(x: Tensor, weight: Tensor) -> Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def gemv_applies(x: Tensor, weight: Tensor) -> bool:
    """Use the kernels for decode-sized inputs on a GPU with Triton (or under Triton's CPU
    interpreter); the fallback elsewhere."""
    return (triton is not None and (x.is_cuda or _interpreting()) and weight.is_contiguous()
            and x.numel() // x.shape[-1] <= MAX_ROWS)
