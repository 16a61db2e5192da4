"""KV caches: the model-dtype cache, and group-wise int8 and int4 caches (group 64).

A cache holds `n_slots` key/value vectors per (batch row, kv head). `update(slots, k, v)` writes
the new step's keys and values at `slots` and returns the whole cache as dense tensors for
attention. The quantized caches store integers plus one float16 scale per group of 64 channels
(symmetric, absmax), so int8 costs 1 + 2/64 bytes a value and int4 0.5 + 2/64, against 2 for bf16."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

GROUP_SIZE = 64
SCALE_DTYPE = torch.float16


class KVCache(nn.Module):
    """Keys and values in the model's dtype: [batch, kv_heads, slots, head_dim]."""

    def __init__(self, max_batch_size: int, n_slots: int, n_kv_head: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu"):
        super().__init__()
        shape = (max_batch_size, n_kv_head, n_slots, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, slots: Tensor, k: Tensor, v: Tensor, rows: Tensor | None = None
               ) -> tuple[Tensor, Tensor]:
        if slots.dim() == 2:
            return _put_rows(self.k_cache, slots, rows, k), _put_rows(self.v_cache, slots, rows, v)
        bsz = k.shape[0]
        k_out, v_out = self.k_cache[:bsz], self.v_cache[:bsz]
        k_out[:, :, slots] = k
        v_out[:, :, slots] = v
        return k_out, v_out

    def put_tokens(self, rows: Tensor, slots: Tensor, k: Tensor, v: Tensor) -> None:
        """Write N tokens' keys and values [N, H, W], token i at (rows[i], slots[i]) (the
        in-flight batcher's mixed step: decode rows and prompt chunks in one write)."""
        self.k_cache[rows, :, slots] = k.to(self.k_cache.dtype)
        self.v_cache[rows, :, slots] = v.to(self.v_cache.dtype)

    def dense(self, bsz: int) -> tuple[Tensor, Tensor]:
        """Keys and values of rows 0..bsz-1 [bsz, H, S, W] in the model's dtype."""
        return self.k_cache[:bsz], self.v_cache[:bsz]

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())


def _put_rows(store: Tensor, slots: Tensor, rows: Tensor | None, x: Tensor) -> Tensor:
    """Write x [B, H, T, W] at per-row slots [B, T] of cache rows `rows` (0..B-1 when None);
    returns those rows [B, H, S, W] (a view for 0..B-1, a gathered copy otherwise)."""
    bsz = x.shape[0]
    # An index_put on the whole buffer for rows 0..B-1 too, not a scatter into their view:
    # compiled, that scatter became a copy of the whole cache per layer (0.5 ms of a 1.8 ms
    # in-flight step of the 1B model at 32 x 512 slots, H200).
    at = torch.arange(bsz, device=store.device) if rows is None else rows
    store[at[:, None], :, slots] = x.transpose(1, 2).to(store.dtype)
    return store[:bsz] if rows is None else store[rows]


def quantize_groupwise(x: Tensor, bits: int, group_size: int = GROUP_SIZE) -> tuple[Tensor, Tensor]:
    """Symmetric per-group quantization along the last dim: (integers as int8, float16 scales)."""
    group = min(group_size, x.shape[-1])
    qmax = 2 ** (bits - 1) - 1
    xg = x.float().unflatten(-1, (-1, group))
    scales = (xg.abs().amax(-1, keepdim=True) / qmax).clamp(min=1e-8)
    q = torch.clamp(torch.round(xg / scales), -qmax - 1, qmax).to(torch.int8)
    return q.flatten(-2), scales.squeeze(-1).to(SCALE_DTYPE)


def dequantize_groupwise(q: Tensor, scales: Tensor, dtype: torch.dtype) -> Tensor:
    group = q.shape[-1] // scales.shape[-1]
    return (q.unflatten(-1, (-1, group)).to(dtype) * scales.unsqueeze(-1).to(dtype)).flatten(-2)


def pack_int4(q: Tensor) -> Tensor:
    """Two signed 4-bit values [-8, 7] per byte along the last dim."""
    u = (q + 8).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: Tensor) -> Tensor:
    low = (packed & 0x0F).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack([low, high], dim=-1).flatten(-2)


class Int8KVCache(KVCache):
    bits = 8

    def __init__(self, max_batch_size: int, n_slots: int, n_kv_head: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu"):
        nn.Module.__init__(self)
        self.dtype = dtype
        group = min(GROUP_SIZE, head_dim)
        if head_dim % group:
            raise ValueError(f"head_dim {head_dim} is not a multiple of the group size {group}")
        width = head_dim * self.bits // 8
        for name in ("k", "v"):
            self.register_buffer(f"{name}_q", torch.zeros(
                (max_batch_size, n_kv_head, n_slots, width), dtype=self._storage_dtype, device=device),
                persistent=False)
            self.register_buffer(f"{name}_scale", torch.zeros(
                (max_batch_size, n_kv_head, n_slots, head_dim // group), dtype=SCALE_DTYPE, device=device),
                persistent=False)

    _storage_dtype = torch.int8

    def _store(self, q: Tensor) -> Tensor:
        return q

    def _load(self, stored: Tensor) -> Tensor:
        return stored

    def update(self, slots: Tensor, k: Tensor, v: Tensor, rows: Tensor | None = None
               ) -> tuple[Tensor, Tensor]:
        bsz = k.shape[0]
        out = []
        for name, x in (("k", k), ("v", v)):
            q, scale = quantize_groupwise(x, self.bits)
            if slots.dim() == 2:  # per-row positions (the in-flight batcher)
                store = _put_rows(getattr(self, f"{name}_q"), slots, rows, self._store(q))
                scales = _put_rows(getattr(self, f"{name}_scale"), slots, rows, scale)
            else:
                store, scales = getattr(self, f"{name}_q")[:bsz], getattr(self, f"{name}_scale")[:bsz]
                store[:, :, slots] = self._store(q)
                scales[:, :, slots] = scale
            out.append(dequantize_groupwise(self._load(store), scales, self.dtype))
        return out[0], out[1]

    def put_tokens(self, rows: Tensor, slots: Tensor, k: Tensor, v: Tensor) -> None:
        for name, x in (("k", k), ("v", v)):
            q, scale = quantize_groupwise(x, self.bits)
            getattr(self, f"{name}_q")[rows, :, slots] = self._store(q)
            getattr(self, f"{name}_scale")[rows, :, slots] = scale

    def dense(self, bsz: int) -> tuple[Tensor, Tensor]:
        return tuple(dequantize_groupwise(self._load(getattr(self, f"{n}_q")[:bsz]),
                                          getattr(self, f"{n}_scale")[:bsz], self.dtype) for n in ("k", "v"))


class Int4KVCache(Int8KVCache):
    bits = 4
    _storage_dtype = torch.uint8

    def _store(self, q: Tensor) -> Tensor:
        return pack_int4(q)

    def _load(self, stored: Tensor) -> Tensor:
        return unpack_int4(stored)


KV_CACHE_KINDS: dict[str, type[KVCache]] = {"full": KVCache, "int8": Int8KVCache, "int4": Int4KVCache}
"""Cache kinds by name; "full" keeps keys and values in the model's dtype (bf16 on a bf16 model)."""
