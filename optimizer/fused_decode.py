"""A batch-1 decode step in fewer kernels (the "fused" variant; GEMV schemes only).

The 1B model's compiled decode step on the H200 was 184 kernels, and 240 µs of its 0.9 ms were
not weight reads: cuDNN's attention and the conversion of the boolean mask it needs, RMSNorm and
residual adds, SiLU. Here a layer (`TransformerBlock.forward_fused`, model.py) is:

1. `gemv_fused(x, wqkv, norm=attention_norm)`: RMSNorm computed in the GEMV's prologue;
2. RoPE and the KV-cache write (Inductor, as before);
3. `decode_attention`: one Triton kernel per layer that reads the cache rows and builds the mask
   from the slot bookkeeping itself (no bias tensor, no cuDNN plan);
4. `gemv_fused(y, wo, resid=x)`: the residual add in the epilogue;
5. `gemv_fused(h, w13, norm=ffn_norm)`;
6. `gemv_fused(gate_up, w2, silu=True, resid=h)`: SiLU(gate) * up in the prologue, residual after.

With GPUCOST_FUSED_PDL=1 (Hopper) these Triton kernels are launched with programmatic dependent
launch: the next kernel starts while the last CTAs of the one before run, and fetches its first
weight tile before it waits for the data it depends on. On the H200 that did not pay, so it is off.

Measured on the H200 (run 8, docs/benchmarks.md): 184 -> 132 kernels a 1B step, 0.910 -> 0.853 ms
in one process (1.067x); at 7B 364 -> 260 kernels, 4.213 -> 4.208 ms (1.001x). The attention kernel
takes what cuDNN took (5.8 µs a layer at 1B); the gain is the kernels that went away.

Rounding follows eager PyTorch (the norm's output rounded to the model dtype before the weight,
the linear's output before the residual). On a CPU the kernels run under Triton's interpreter in
the tests, against the unfused model."""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

from optimizer import int8_gemv
from optimizer.int8_gemv import triton
from optimizer.kvcache import KVCache
from optimizer.quantize import GemvLinear, WeightOnlyInt8Linear

if triton is not None:
    import triton.language as tl

    def _attn_configs() -> list:
        if int8_gemv._interpreting():
            return [triton.Config({"BLOCK_S": 16}, num_warps=4)]
        return [triton.Config({"BLOCK_S": bs}, num_warps=w, num_stages=st)
                for bs, w in ((32, 4), (64, 4), (128, 4), (128, 8), (256, 8)) for st in (1, 2, 3)]

    def _attn_fits(configs, named_args, **kwargs):
        """Tiles of at most 32 K fp32 values (K and V each) a CTA."""
        d = kwargs["D"] if "D" in kwargs else named_args["D"]  # a keyword (constexpr) in Triton 3.6
        kept = [c for c in configs if c.kwargs["BLOCK_S"] * d <= 32768]
        return kept or configs[:1]

    @triton.autotune(configs=_attn_configs(), key=["S", "D", "GROUP"], do_bench=int8_gemv._bench,
                     prune_configs_by={"early_config_prune": _attn_fits})
    @triton.jit
    def _decode_attention_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, real_ptr, qpos_ptr, y_ptr, S, scale, window,
                                 stride_qb, stride_qh, stride_kb, stride_kh, stride_ks, stride_pb, stride_qpb,
                                 stride_yb, GROUP: tl.constexpr, D: tl.constexpr, WINDOW: tl.constexpr,
                                 PDL: tl.constexpr, BLOCK_S: tl.constexpr):
        """One query head of one row against its KV head's cache row: online softmax over the
        slots in BLOCK_S blocks, fp32 throughout. A slot is attended when it is real, at or before
        the query's position (and within the window), or at the query's own position: the
        model's `slot_mask`."""
        b = tl.program_id(0)
        h = tl.program_id(1)
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
            tl.extra.cuda.gdc_wait()
        offs_d = tl.arange(0, D)
        q = tl.load(q_ptr + b * stride_qb + h * stride_qh + offs_d).to(tl.float32) * scale
        qp = tl.load(qpos_ptr + b * stride_qpb)
        kv = (h // GROUP) * stride_kh + b * stride_kb
        m = tl.full((1,), -1e30, dtype=tl.float32)  # running max and sum; finite, so an all-unseen
        l = tl.zeros((1,), dtype=tl.float32)        # block gives exp(0) * 0, never NaN
        acc = tl.zeros((D,), dtype=tl.float32)
        for s0 in range(0, S, BLOCK_S):
            offs_s = s0 + tl.arange(0, BLOCK_S)
            s_mask = offs_s < S
            kp = tl.load(pos_ptr + b * stride_pb + offs_s, mask=s_mask, other=-1)
            kr = tl.load(real_ptr + b * stride_pb + offs_s, mask=s_mask, other=0)
            tile = kv + offs_s[:, None] * stride_ks + offs_d[None, :]
            kt = tl.load(k_ptr + tile, mask=s_mask[:, None], other=0.0).to(tl.float32)
            vt = tl.load(v_ptr + tile, mask=s_mask[:, None], other=0.0).to(tl.float32)
            seen = (kr != 0) & (kp <= qp) & (kp >= 0)
            if WINDOW:
                seen = seen & (qp - kp < window)
            seen = (seen | (kp == qp)) & s_mask
            sc = tl.where(seen, tl.sum(kt * q[None, :], axis=1), -1e30)
            m_new = tl.maximum(m, tl.max(sc, axis=0))
            alpha = tl.exp(m - m_new)
            p = tl.where(seen, tl.exp(sc - m_new), 0.0)
            l = l * alpha + tl.sum(p, axis=0)
            acc = acc * alpha + tl.sum(p[:, None] * vt, axis=0)
            m = m_new
        tl.store(y_ptr + b * stride_yb + h * D + offs_d, (acc / l).to(y_ptr.dtype.element_ty))


def _decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, slot_pos: Tensor, slot_real: Tensor,
                      q_pos: Tensor, window: int, pdl: bool) -> Tensor:
    bsz, seqlen, n_head, head_dim = q.shape
    if seqlen != 1:
        raise ValueError("decode attention takes one query token a row")
    q = q.contiguous()
    y = torch.empty(bsz, 1, n_head * head_dim, dtype=q.dtype, device=q.device)
    n_slots = k_cache.shape[2]
    pdl = pdl and int8_gemv.pdl_supported(q.device)
    q_pos = q_pos.reshape(-1)
    extra = {"launch_pdl": True} if pdl else {}
    _decode_attention_kernel[(bsz, n_head)](
        q, k_cache, v_cache, slot_pos, slot_real.view(torch.uint8), q_pos, y, n_slots, 1.0 / math.sqrt(head_dim),
        window, q.stride(0), q.stride(2), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        slot_pos.stride(0), 0 if q_pos.numel() == 1 else q_pos.stride(0), y.stride(0),
        GROUP=n_head // k_cache.shape[1], D=head_dim, WINDOW=window > 0, PDL=pdl, **extra)
    return y


@torch.library.custom_op("gpucost::decode_attention", mutates_args=())
def decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, slot_pos: Tensor, slot_real: Tensor,
                     q_pos: Tensor, window: int, pdl: bool) -> Tensor:
    """q [B, 1, H, D] (RoPE applied) against cache rows 0..B-1 [*, Hkv, S, D] -> [B, 1, H * D].
    `slot_pos`/`slot_real` [B, S] are the model's slot bookkeeping, `q_pos` the query positions
    ([1] shared or [B]), `window` 0 for full attention."""
    return _decode_attention(q, k_cache, v_cache, slot_pos, slot_real, q_pos, window, pdl)


@decode_attention.register_fake
def _(q, k_cache, v_cache, slot_pos, slot_real, q_pos, window, pdl):
    return q.new_empty(q.shape[0], 1, q.shape[2] * q.shape[3])


# -- what the model's fused step (TransformerBlock.forward_fused) calls ------------------------

def linear(module, x: Tensor, norm=None, resid: Tensor | None = None, silu: bool = False) -> Tensor:
    """`module` (GemvLinear or WeightOnlyInt8Linear) applied as one fused GEMV."""
    scales = getattr(module, "scales", None) if module.weight.dtype == torch.int8 else None
    return torch.ops.gpucost.gemv_fused(x, module.weight, scales, None if norm is None else norm.weight,
                                        0.0 if norm is None else norm.eps, resid, silu, PDL)


# Programmatic dependent launch (Hopper and later) only when GPUCOST_FUSED_PDL=1: on the H200 it
# did not pay (run 8, docs/benchmarks.md: 1B fused step 0.878 ms with it, 0.846 to 0.853 without;
# 7B 4.215 and 4.208 ms), so it is off by default and kept for comparison.
PDL = os.environ.get("GPUCOST_FUSED_PDL", "0") == "1"


def applies(model, idx: Tensor, input_pos: Tensor, pad_mask: Tensor | None, rows: Tensor | None) -> bool:
    """The fused step runs a decode step (one token a row, shared or per-row positions) of a model
    whose linear layers are all GEMV modules, with a full-precision KV cache, where the GEMV runs."""
    if not getattr(model, "fused_decode", False) or model.caches is None or rows is not None or pad_mask is not None:
        return False
    if idx.shape[1] != 1 or type(model.caches[0]) is not KVCache:
        return False
    if not (input_pos.dim() == 1 or input_pos.shape == idx.shape):
        return False
    if triton is None or not int8_gemv.ENABLED or idx.shape[0] > int8_gemv.MAX_ROWS:
        return False
    if not (idx.is_cuda or int8_gemv._interpreting()):
        return False
    hd = model.args.head_dim
    if hd & (hd - 1):  # the attention kernel's head tile is a power of two
        return False
    layer = model.layers[0]
    mods = (layer.attention.wqkv, layer.attention.wo, layer.feed_forward.w13, layer.feed_forward.w2, model.output)
    return all(isinstance(m, (GemvLinear, WeightOnlyInt8Linear)) and m.weight.is_contiguous() for m in mods)
