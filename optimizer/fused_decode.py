"""A batch-1 decode step in fewer kernels (the "fused" variant; GEMV schemes only).

The 1B model's compiled decode step on the H200 was 184 kernels, and 240 µs of its 0.9 ms were
not weight reads: cuDNN's attention and the conversion of the boolean mask it needs, RMSNorm and
residual adds, SiLU, RoPE and the KV-cache writes. Here a layer (`TransformerBlock.forward_fused`,
model.py) is five kernels:

1. `gemv_fused(x, wqkv, norm=attention_norm)`: RMSNorm inside the GEMV (its sum of squares
   gathered in the same pass over the input, the row's scale applied to the dot products);
2. `decode_attention(qkv, ...)`: one Triton kernel that applies RoPE to q and the new k (from
   the model's table at the query's position), writes the new k and v into the cache and the
   step's slot bookkeeping into the model's buffers, and attends over the cache rows, building
   the mask from that bookkeeping itself (no bias tensor, no cuDNN plan, and since run 11 no
   Inductor kernel for RoPE or the bookkeeping). A head's slots are split across CTAs
   (flash-decoding); the last split to finish combines them (a counter a row and head);
3. `gemv_fused(y, wo, resid=x)`: the residual add in the epilogue;
4. `gemv_fused(h, w13, norm=ffn_norm, glu=True)`: each CTA takes matching gate and up rows and
   writes SiLU(gate) * up;
5. `gemv_fused(act, w2, resid=h)`.

Programmatic dependent launch (Hopper) lets a kernel start while the last CTAs of the one before
run and fetch what does not depend on it before it waits: the GEMVs 1 to 8 weight tiles a CTA
(PREFETCH), the attention kernel the position, its RoPE row and (PRE) its first cached tile.
Each site's launch (config, kernel, PDL, prefetch) comes from the step-tuned table of the device
where there is one (optimizer/launch_table.py, filled by step_tune.py: on the H200 PDL at every
site, with configs and prefetches chosen under it); elsewhere the kernels are autotuned, with PDL
only when GPUCOST_FUSED_PDL=1.

Measured on the H200 (docs/benchmarks.md): run 8 (the attention kernel alone, RoPE and the KV
write left to Inductor, SiLU in the w2 GEMV's prologue) took a 1B step from 184 to 132 kernels;
run 9 (this form) to 88, 0.789 ms against 0.890 ms unfused in one process (1.13x), and the 7B
step to 171 kernels, 3.93 ms (76.9 % of 4.8 TB/s); run 10 (the tuned launches) to 0.703 ms at 1B
(65.7 %) and 3.725 ms at 7B (81.2 %); run 11 (fetches before the wait, RoPE and the bookkeeping
in the attention kernel) to 84 kernels and 0.665 ms at 1B (69.4 %), 3.675 ms at 7B (82.3 %); run
12 (the graphed greedy tail as one kernel, `greedy_next`, which also writes the next step's
embedded input) to 0.658 ms at 1B (70.1 %).

Rounding follows eager PyTorch where the kernels round at all (the linear's output before the
residual, SiLU and its product); the normed input is not rounded to the model dtype (fp32
throughout). On a CPU the kernels run under Triton's interpreter in the tests, against the
unfused model."""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

from optimizer import int8_gemv, launch_table
from optimizer.int8_gemv import triton
from optimizer.kvcache import KVCache
from optimizer.quantize import GemvLinear, WeightOnlyInt8Linear

if triton is not None:
    import triton.language as tl

    from optimizer.int8_gemv import _trigger

    def _attn_configs() -> list:
        if int8_gemv._interpreting():
            return [triton.Config({"BLOCK_S": 16}, num_warps=4)]
        # small tiles: a head's slots are split across CTAs (up to MAX_SPLIT), each a tile or two;
        # large ones (run 11): a head in one or two CTAs, with no combine of splits when one
        return [triton.Config({"BLOCK_S": bs}, num_warps=w, num_stages=st)
                for bs, w in ((16, 2), (32, 2), (32, 4), (64, 4), (128, 4), (128, 8), (256, 4), (256, 8), (512, 8))
                for st in (1, 2)]

    def _attn_fits(configs, named_args, **kwargs):
        """Tiles of at most 32 K fp32 values (K and V each) a CTA."""
        d = kwargs["D"] if "D" in kwargs else named_args["D"]  # a keyword (constexpr) in Triton 3.6
        kept = [c for c in configs if c.kwargs["BLOCK_S"] * d <= 32768]
        return kept or configs[:1]

    @triton.jit
    def _rope(row, c, s, offs_p, D: tl.constexpr):
        """Load a head's D values at `row` and rotate its adjacent pairs (model.apply_rope: fp32,
        rounded to the model dtype) -> [D] fp32."""
        dt = row.dtype.element_ty
        even = tl.load(row + 2 * offs_p).to(tl.float32)
        odd = tl.load(row + 2 * offs_p + 1).to(tl.float32)
        out = tl.join(even * c - odd * s, odd * c + even * s)
        return tl.reshape(out, (D,)).to(dt).to(tl.float32)

    @triton.jit
    def _kv_tile(k_ptr, v_ptr, kv, s0, hi, stride_ks, offs_d, BLOCK_S: tl.constexpr):
        """The cached keys and values of slots s0 .. s0 + BLOCK_S (those below `hi`), as stored."""
        offs_s = s0 + tl.arange(0, BLOCK_S)
        tile = kv + offs_s[:, None] * stride_ks + offs_d[None, :]
        s_mask = (offs_s < hi)[:, None]
        return tl.load(k_ptr + tile, mask=s_mask, other=0.0), tl.load(v_ptr + tile, mask=s_mask, other=0.0)

    @triton.jit
    def _attend(kt, vt, s0, hi, q, qp, slot, window, pos_row, real_row, m, l, acc, WINDOW: tl.constexpr,
                BLOCK_S: tl.constexpr):
        """One tile of the online softmax: the slots s0 .. s0 + BLOCK_S below `hi` that the query
        at position qp attends (the model's slot_mask; the slot being written left out)."""
        offs_s = s0 + tl.arange(0, BLOCK_S)
        s_mask = offs_s < hi
        kp = tl.load(pos_row + offs_s, mask=s_mask, other=-1)
        kr = tl.load(real_row + offs_s, mask=s_mask, other=0)
        seen = (kr != 0) & (kp <= qp) & (kp >= 0)
        if WINDOW:
            seen = seen & (qp - kp < window)
        seen = (seen | (kp == qp)) & s_mask & (offs_s != slot)
        sc = tl.where(seen, tl.sum(kt.to(tl.float32) * q[None, :], axis=1), -1e30)
        m_new = tl.maximum(m, tl.max(sc, axis=0))
        alpha = tl.exp(m - m_new)
        p = tl.where(seen, tl.exp(sc - m_new), 0.0)
        l = l * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum(p[:, None] * vt.to(tl.float32), axis=0)
        return m_new, l, acc

    @triton.autotune(configs=_attn_configs(), key=["S", "D", "GROUP"], do_bench=int8_gemv._bench,
                     prune_configs_by={"early_config_prune": _attn_fits})
    @triton.jit
    def _attention_kernel(qkv_ptr, rope_ptr, k_ptr, v_ptr, pos_ptr, real_ptr, qpos_ptr, part_ptr,
                          count_ptr, y_ptr, S, scale, window, stride_qkv, stride_rope, stride_kb,
                          stride_kh, stride_ks, stride_pb, stride_qpb, stride_yb, H: tl.constexpr,
                          GROUP: tl.constexpr, D: tl.constexpr, WINDOW: tl.constexpr, MAX_SPLIT: tl.constexpr,
                          PDL: tl.constexpr, TRIGGER: tl.constexpr, PRE: tl.constexpr, BLOCK_S: tl.constexpr):
        """A layer's attention for one query head of one row, from the qkv GEMV's output: RoPE on
        q and the new k, the new k and v written to the cache (by the group's first head), and
        an online softmax over this CTA's share of the cache slots (the grid's third axis splits
        them). The slot being written is left out of the scan and the new token is taken from
        registers instead, so no CTA reads what another writes. A slot is attended when it is
        real, at or before the query's position (and within the window), or at the query's own
        position: the model's `slot_mask`.
        Each split leaves (max, sum, weighted values) in `part`; the last to finish (a counter
        per row and head, reset after) combines them. With PDL it was launched as a dependent and
        waits for the kernel before; TRIGGER lets the next kernel launch at its start (1) or after
        its scan (2). PRE 1: the split's first tile of cached keys and values (earlier steps'; the
        slot this step writes is left out of the scan anyway) is requested before that wait."""
        b = tl.program_id(0)
        h = tl.program_id(1)
        sp = tl.program_id(2)
        nsplit = tl.num_programs(2)
        HKV: tl.constexpr = H // GROUP
        kvh = h // GROUP
        offs_p = tl.arange(0, D // 2)
        offs_d = tl.arange(0, D)
        kv = kvh * stride_kh + b * stride_kb
        per = tl.cdiv(tl.cdiv(S, BLOCK_S), nsplit) * BLOCK_S  # this CTA's slots: [lo, hi)
        lo = sp * per
        hi = tl.minimum(S, lo + per)
        # before the wait: the step's inputs (the query's position, its row of the RoPE table)
        qp = tl.load(qpos_ptr + b * stride_qpb)
        rope = rope_ptr + qp * stride_rope + 2 * offs_p
        c, s = tl.load(rope), tl.load(rope + 1)
        if PRE:
            kt0, vt0 = _kv_tile(k_ptr, v_ptr, kv, lo, hi, stride_ks, offs_d, BLOCK_S)
        _trigger(TRIGGER, 1)
        if PDL:
            tl.extra.cuda.gdc_wait()
        slot = qp % S  # the model's slots: input_pos % cache_slots
        if h == 0 and sp == 0:  # this step's slot bookkeeping (the scans leave the slot out anyway)
            tl.store(pos_ptr + b * stride_pb + slot, qp)
            tl.store(real_ptr + b * stride_pb + slot, 1)
        row = qkv_ptr + b * stride_qkv
        q = _rope(row + h * D, c, s, offs_p, D) * scale
        m = tl.full((1,), -1e30, dtype=tl.float32)  # running max and sum; finite, so an all-unseen
        l = tl.zeros((1,), dtype=tl.float32)        # block gives exp(0) * 0, never NaN
        acc = tl.zeros((D,), dtype=tl.float32)
        if sp == 0:  # the new token: every query sees its own position
            k_new = _rope(row + (H + kvh) * D, c, s, offs_p, D)
            v_new = tl.load(row + (H + HKV + kvh) * D + offs_d)
            if h % GROUP == 0:
                tl.store(k_ptr + kv + slot * stride_ks + offs_d, k_new.to(k_ptr.dtype.element_ty))
                tl.store(v_ptr + kv + slot * stride_ks + offs_d, v_new.to(v_ptr.dtype.element_ty))
            m = tl.sum(q * k_new, axis=0) + tl.zeros((1,), dtype=tl.float32)
            l = tl.full((1,), 1.0, dtype=tl.float32)
            acc = v_new.to(tl.float32)
        start = lo
        if PRE:
            m, l, acc = _attend(kt0, vt0, lo, hi, q, qp, slot, window, pos_ptr + b * stride_pb,
                                real_ptr + b * stride_pb, m, l, acc, WINDOW, BLOCK_S)
            start = lo + BLOCK_S
        for s0 in range(start, hi, BLOCK_S):
            kt, vt = _kv_tile(k_ptr, v_ptr, kv, s0, hi, stride_ks, offs_d, BLOCK_S)
            m, l, acc = _attend(kt, vt, s0, hi, q, qp, slot, window, pos_ptr + b * stride_pb,
                                real_ptr + b * stride_pb, m, l, acc, WINDOW, BLOCK_S)
        _trigger(TRIGGER, 2)  # (PDL) the next kernel may launch and fetch its weights
        out = y_ptr + b * stride_yb + h * D + offs_d
        if nsplit == 1:
            tl.store(out, (acc / l).to(y_ptr.dtype.element_ty))
        else:
            part = part_ptr + ((b * H + h) * MAX_SPLIT) * (D + 2)
            tl.store(part + sp * (D + 2) + offs_d, acc)
            tl.store(part + sp * (D + 2) + D + tl.arange(0, 1), m)
            tl.store(part + sp * (D + 2) + D + 1 + tl.arange(0, 1), l)
            tl.debug_barrier()  # every thread's share stored before the counter says so
            done = tl.atomic_add(count_ptr + b * H + h, 1, sem="acq_rel", scope="gpu")
            if done == nsplit - 1:  # the last split of this head: combine
                tl.debug_barrier()
                offs_sp = tl.arange(0, MAX_SPLIT)
                sp_mask = offs_sp < nsplit
                pm = tl.load(part + offs_sp * (D + 2) + D, mask=sp_mask, other=-1e30, cache_modifier=".cg")
                pl = tl.load(part + offs_sp * (D + 2) + D + 1, mask=sp_mask, other=0.0, cache_modifier=".cg")
                pa = tl.load(part + offs_sp[:, None] * (D + 2) + offs_d[None, :], mask=sp_mask[:, None],
                             other=0.0, cache_modifier=".cg")
                w = tl.exp(pm - tl.max(pm, axis=0))
                total = tl.sum(pa * w[:, None], axis=0) / tl.sum(pl * w, axis=0)
                tl.store(out, total.to(y_ptr.dtype.element_ty))
                tl.store(count_ptr + b * H + h, 0)  # ready for the next layer


MAX_SPLIT = 16  # cache-slot splits a head's attention may take (the grid's third axis)


def attention_site(dtype: torch.dtype, n_head: int, n_kv: int, head_dim: int, n_slots: int, rows: int,
                   window: int) -> str:
    """The attention kernel's site key in launch_table.TUNED."""
    return (f"attention {str(dtype).removeprefix('torch.')} H={n_head} Hkv={n_kv} D={head_dim} S={n_slots} "
            f"rows={rows}" + (" window" if window else ""))


def attention_candidates(head_dim: int) -> list[dict]:
    """The launches step_tune.py tries at an attention site: the autotuning configs that fit."""
    fits = _attn_fits(_attention_kernel.configs, {"D": head_dim})
    return [int8_gemv.launch_entry("attention", c, False) for c in fits]


def _splits(n_slots: int, block_s: int) -> int:
    return min(MAX_SPLIT, triton.cdiv(n_slots, block_s))


def _attention(qkv: Tensor, rope: Tensor, k_cache: Tensor, v_cache: Tensor, slot_pos: Tensor,
               slot_real: Tensor, q_pos: Tensor, counts: Tensor, n_head: int, window: int, pdl: bool) -> Tensor:
    bsz, seqlen, width = qkv.shape
    n_kv, n_slots, head_dim = k_cache.shape[1], k_cache.shape[2], k_cache.shape[3]
    if seqlen != 1 or width != (n_head + 2 * n_kv) * head_dim:
        raise ValueError(f"decode attention takes one token's q, k and v a row, not {tuple(qkv.shape)}")
    if counts.numel() < bsz * n_head:
        raise ValueError(f"{counts.numel()} split counters for {bsz} rows x {n_head} heads")
    qkv = qkv.contiguous()
    rope = rope.reshape(-1, head_dim)  # [positions, D/2 x (cos, sin)]
    if rope.stride(1) != 1:
        raise ValueError("the RoPE table's rows must be contiguous")
    q_pos = q_pos.reshape(-1)
    y = torch.empty(bsz, 1, n_head * head_dim, dtype=qkv.dtype, device=qkv.device)
    part = torch.empty(bsz, n_head, MAX_SPLIT, head_dim + 2, dtype=torch.float32, device=qkv.device)
    shared = lambda t: 0 if t.shape[0] == 1 else t.stride(0)  # noqa: E731  one for all rows
    grid = lambda meta: (bsz, n_head, _splits(n_slots, meta["BLOCK_S"]))  # noqa: E731
    args = (qkv, rope, k_cache, v_cache, slot_pos, slot_real.view(torch.uint8), q_pos, part, counts, y,
            n_slots, 1.0 / math.sqrt(head_dim), window, qkv.stride(0), rope.stride(0),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), slot_pos.stride(0), shared(q_pos), y.stride(0))
    consts = dict(H=n_head, GROUP=n_head // n_kv, D=head_dim, WINDOW=window > 0, MAX_SPLIT=MAX_SPLIT)
    site = attention_site(qkv.dtype, n_head, n_kv, head_dim, n_slots, bsz, window)
    entry = launch_table.tuned_entry(site, qkv.device)
    if entry is None:  # autotuned; with the caller's PDL as the GEMVs (trigger after the scan)
        _attention_kernel[grid](*args, **consts, PRE=0, **int8_gemv.pdl_launch(pdl, 2 * pdl, qkv.device))
        entry = int8_gemv.launch_entry("attention", _attention_kernel.best_config, pdl)
    else:
        launch = int8_gemv.pdl_launch(entry["pdl"], entry["trigger"], qkv.device)
        _attention_kernel.fn[grid](*args, **consts, **launch, PRE=entry.get("PRE", 0),
                                   **int8_gemv.entry_config(entry).all_kwargs())
    launch_table.record(site, entry)
    return y


@torch.library.custom_op("gpucost::decode_attention",
                         mutates_args=("k_cache", "v_cache", "slot_pos", "slot_real", "counts"))
def decode_attention(qkv: Tensor, rope: Tensor, k_cache: Tensor, v_cache: Tensor,
                     slot_pos: Tensor, slot_real: Tensor, q_pos: Tensor, counts: Tensor, n_head: int,
                     window: int, pdl: bool) -> Tensor:
    """A decode step's attention from the qkv GEMV's output [B, 1, (H + 2 Hkv) D]: RoPE (from
    `rope`, the model's table [positions, D/2, 2], at each query's position), the new keys and
    values written at slot `q_pos % S` of cache rows 0..B-1 [*, Hkv, S, D], attention over those
    rows -> [B, 1, H D]. `q_pos` are the query positions ([1] shared or [B, 1]); `slot_pos` /
    `slot_real` [>= B, S] the model's slot bookkeeping, where this step's slots are written (the
    model's `_cached_mask` / `_row_mask` update, so a fused step needs no other kernel for it);
    `window` 0 for full attention; `counts` int32 zeros (at least B x H; left zero). `q_pos` and
    the table are the step's inputs: with `pdl` they are read before waiting for the kernel
    before, so nothing launched in the step before this op may write them."""
    return _attention(qkv, rope, k_cache, v_cache, slot_pos, slot_real, q_pos, counts, n_head, window, pdl)


@decode_attention.register_fake
def _(qkv, rope, k_cache, v_cache, slot_pos, slot_real, q_pos, counts, n_head, window, pdl):
    return qkv.new_empty(qkv.shape[0], 1, n_head * k_cache.shape[3])


# -- the greedy tail of a graphed step (generate.Decoder._greedy) ------------------------------

GREEDY_BLOCK = 16384  # logits a CTA compares at once: 32,000 in two passes of 32 a thread
GREEDY_PDL = os.environ.get("GPUCOST_GREEDY_PDL", "1") == "1"  # launched as a dependent of the head GEMV

if triton is not None:
    @triton.jit
    def _greedy_kernel(logits_ptr, tok_ptr, pos_ptr, hist_ptr, ticket_ptr, emb_ptr, x_ptr, V, B, HIST, DIM,
                       stride_lb, stride_tb, stride_hb, stride_eb, stride_xb, SHARED_POS: tl.constexpr,
                       PDL: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
        """Row b's next token: the first index of its largest logit (torch.argmax's answer), into
        tokens[b] and history[b, p + 1], p the row's position, and its embedding into the next
        step's input x[b]; then the positions one on. A shared position (SHARED_POS) is moved by
        the last CTA to take a ticket (every CTA read it before taking one), so no CTA reads a
        moved position. Launched as a dependent of the head GEMV, it waits for it."""
        b = tl.program_id(0)
        if PDL:
            tl.extra.cuda.gdc_wait()
        offs = tl.arange(0, BLOCK)
        best = tl.full([], -float("inf"), tl.float32)
        best_i = tl.zeros([], tl.int32)
        for v0 in range(0, V, BLOCK):
            x = tl.load(logits_ptr + b * stride_lb + v0 + offs, mask=v0 + offs < V, other=-float("inf"))
            x = x.to(tl.float32)
            i = tl.argmax(x, axis=0, tie_break_left=True)
            m = tl.max(x, axis=0)
            if m > best:  # strictly: an equal maximum further on is not the first
                best = m
                best_i = v0 + i
        tok = best_i.to(tl.int64)
        tl.store(tok_ptr + b * stride_tb, tok)
        offs_d = tl.arange(0, BLOCK_D)
        for d0 in range(0, DIM, BLOCK_D):  # the next step's input: the token's embedding row
            e = tl.load(emb_ptr + tok * stride_eb + d0 + offs_d, mask=d0 + offs_d < DIM)
            tl.store(x_ptr + b * stride_xb + d0 + offs_d, e, mask=d0 + offs_d < DIM)
        if SHARED_POS:
            p = tl.load(pos_ptr)
        else:
            p = tl.load(pos_ptr + b)
        if p + 1 < HIST:
            tl.store(hist_ptr + b * stride_hb + p + 1, tok)
        if SHARED_POS:
            if B == 1:
                tl.store(pos_ptr, p + 1)
            else:
                if tl.atomic_add(ticket_ptr, 1, sem="acq_rel") == B - 1:
                    tl.store(pos_ptr, p + 1)
                    tl.store(ticket_ptr, 0)
        else:
            tl.store(pos_ptr + b, p + 1)


@torch.library.custom_op("gpucost::greedy_next", mutates_args=("tokens", "input_pos", "history", "ticket", "embedded"))
def greedy_next(logits: Tensor, tokens: Tensor, input_pos: Tensor, history: Tensor, ticket: Tensor,
                embedding: Tensor, embedded: Tensor) -> None:
    """tokens [B, 1] <- argmax(logits [B, V]) (the first index of the maximum, as torch.argmax),
    history[b, p + 1] <- that token (p: the row's position, shared [1] or one a row [B]; none
    past history's width), embedded [B, 1, dim] <- its row of `embedding` (the next step's
    input), then the positions one on: one small kernel, launched as a programmatic dependent of
    the head GEMV where the GPU has it. It replaces Inductor's argmax (6.8 us for 32,000 logits
    on the H200, run 11), the position add, the next step's embedding kernel, and the copy of
    each new token out of the graph's input between replays. `ticket`: an int32 [1] zero, left zero."""
    bsz, vocab = logits.shape
    dim = embedding.shape[1]
    if (tokens.shape != (bsz, 1) or not input_pos.is_contiguous() or input_pos.numel() not in (1, bsz)
            or history.shape[0] != bsz or history.stride(1) != 1 or ticket.dtype != torch.int32
            or embedded.shape != (bsz, 1, dim) or embedded.stride(2) != 1 or embedding.stride(1) != 1):
        raise ValueError(f"tokens {tuple(tokens.shape)}, positions {tuple(input_pos.shape)}, history "
                         f"{tuple(history.shape)} and next inputs {tuple(embedded.shape)} for {bsz} rows of "
                         f"{dim} (and an int32 ticket)")
    block = min(triton.next_power_of_2(vocab), GREEDY_BLOCK)
    pdl = GREEDY_PDL and int8_gemv.pdl_supported(logits.device)
    _greedy_kernel[(bsz,)](logits, tokens, input_pos, history, ticket, embedding, embedded, vocab, bsz,
                           history.shape[1], dim, logits.stride(0), tokens.stride(0), history.stride(0),
                           embedding.stride(0), embedded.stride(0), SHARED_POS=input_pos.numel() == 1, PDL=pdl,
                           BLOCK=block, BLOCK_D=min(triton.next_power_of_2(dim), 1024),
                           num_warps=16 if block >= 8192 else 4, **({"launch_pdl": True} if pdl else {}))


@greedy_next.register_fake
def _(logits, tokens, input_pos, history, ticket, embedding, embedded):
    return None


def greedy_applies(model, tokens: Tensor, input_pos: Tensor) -> bool:
    """The greedy tail runs as one kernel where the step is the fused one (model.forward_embedded)."""
    return applies(model, tokens, input_pos, None, None)


# -- what the model's fused step (TransformerBlock.forward_fused) calls ------------------------

def linear(module, x: Tensor, norm=None, resid: Tensor | None = None, glu: bool = False) -> Tensor:
    """`module` (GemvLinear or WeightOnlyInt8Linear) applied as one fused GEMV."""
    scales = getattr(module, "scales", None) if module.weight.dtype == torch.int8 else None
    return torch.ops.gpucost.gemv_fused(x, module.weight, scales, None if norm is None else norm.weight,
                                        0.0 if norm is None else norm.eps, resid, glu, PDL)


# Programmatic dependent launch (Hopper and later) at the sites the device's step-tuned table does
# not cover, only when GPUCOST_FUSED_PDL=1. With autotuned configs it did not pay reliably on the
# H200 (docs/benchmarks.md): a 1B bf16 step took 0.738 against 0.791 ms in one process but 0.770 ms
# in another, and the int8 step with it 0.786 ms against 0.656 without (run 9); with configs chosen
# in the step under it (the tuned table, run 10) it took 5 to 10 % off every step.
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
