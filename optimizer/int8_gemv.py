"""A Triton GEMV for int8 weight-only decode: y = (x @ W^T) * scales with W int8 [N, K].

At decode batch sizes (a handful of rows) the matmul is a read of the weights; this kernel reads
each int8 weight once, converts in registers and accumulates in fp32, so a step moves half the
bytes of bf16. It is a `torch.library` custom op: opaque to torch.compile (which fuses everything
around it), autotuned on its first real call per shape (outside any CUDA graph capture)."""

from __future__ import annotations

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the module swap falls back to its one-line forward
    triton = None

ENABLED = True  # False: decode through Inductor's fused reduction instead (for comparison)
MAX_ROWS = 4  # beyond a few rows the weights are worth tiling: cuBLAS / Inductor take over

if triton is not None:
    @triton.autotune(
        configs=[triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w)
                 for bn in (4, 8, 16, 32) for bk in (256, 512, 1024) for w in (4, 8)],
        key=["N", "K"],
    )
    @triton.jit
    def _int8_gemv_kernel(x_ptr, w_ptr, s_ptr, y_ptr, N, K, stride_xm, stride_wn, stride_ym,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_n = tl.program_id(0)
        row = tl.program_id(1)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        n_mask = offs_n < N
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + offs_k
            k_mask = k < K
            x = tl.load(x_ptr + row * stride_xm + k, mask=k_mask, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + offs_n[:, None] * stride_wn + k[None, :],
                        mask=n_mask[:, None] & k_mask[None, :], other=0)
            acc += tl.sum(w.to(tl.float32) * x[None, :], axis=1)
        s = tl.load(s_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + row * stride_ym + offs_n, (acc * s).to(y_ptr.dtype.element_ty), mask=n_mask)


@torch.library.custom_op("gpucost::int8_gemv", mutates_args=())
def int8_gemv(x: Tensor, weight: Tensor, scales: Tensor) -> Tensor:
    n, k = weight.shape
    x2 = x.reshape(-1, k).contiguous()
    y = torch.empty(x2.shape[0], n, dtype=x.dtype, device=x.device)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), x2.shape[0])  # noqa: E731
    _int8_gemv_kernel[grid](x2, weight, scales, y, n, k, x2.stride(0), weight.stride(0), y.stride(0))
    return y.reshape(*x.shape[:-1], n)


@int8_gemv.register_fake
def _(x: Tensor, weight: Tensor, scales: Tensor) -> Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def gemv_applies(x: Tensor, weight: Tensor) -> bool:
    """Use the kernel for decode-sized inputs on a GPU with Triton; the fallback elsewhere."""
    return (triton is not None and x.is_cuda and weight.is_contiguous()
            and x.numel() // x.shape[-1] <= MAX_ROWS)
