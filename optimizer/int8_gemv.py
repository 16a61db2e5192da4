"""Triton GEMVs for batch-1 decode: y = (x @ W^T) [* scales], W int8 [N, K] or bf16/fp16 [N, K].

At decode batch sizes (a handful of rows) a linear layer is a read of its weights. These kernels
read each weight once (int8: converted in registers), multiply and accumulate in fp32 in
registers over the whole K loop, and reduce across threads once at the end (a reduction per K
step, as the first int8 kernel did, held the 7B int8 step to 46 % of the H200's bandwidth).
Weights are streamed with evict-first so they do not push the activations out of L2.

- `_gemv_kernel` ("tile"): a [BLOCK_N, BLOCK_K] fp32 accumulator; the bf16 GEMV, and the int8
  one by default (`INT8_KERNEL = "tile"`).
- `_int8_gemv_kernel` ("grouped"): 16 consecutive int8 weights a thread (one 16-byte load) summed
  in registers at every K step, so the accumulator is 1/16 the size and a CTA streams 8 to 32 KB a
  step. On the H200 it beat "tile" at 7B with the conversion instruction (step 3.150 vs 3.315 ms,
  run 7) and lost at 1B; docs/benchmarks.md, H200 section.

int8 weights become fp32 in registers through the bits of 2^23 + 128 + w and an fp32 subtract
rather than an int-to-float conversion per weight ("cvt"), which Hopper issues at a fraction of
the fp32 FMA rate: the 1B fused int8 step took 0.656 ms against 0.764 ms with the conversion (H200,
run 9, same process, "tile" kernel). Those bits come from a byte permute (`INT8_CONVERT = "prmt"`,
the default since run 13: one xor for four weights, one PTX prmt a weight) or from a sign
extension and an integer add ("magic"); the same bits, so the same results. With its launches
re-tuned under it, the 1B int8 step took 0.477 ms against 0.511 ms ("magic", its own table),
because larger tiles paid once the inner loop issued fewer integer instructions (run 13).

Both kernels also come fused (`gpucost::gemv_fused`, used by fused_decode.py): RMSNorm of the
input, a residual add or SiLU(gate) * up in the epilogue, and (optionally) programmatic dependent
launch on Hopper, the tile kernel requesting PREFETCH weight tiles before it waits (run 11: the
1B w13 GEMV with all of its K early, the head with 4 tiles; 1.038x on the whole step).

The ops are `torch.library` custom ops: opaque to torch.compile (which fuses everything around
them), autotuned on their first real call per shape and dtype (outside any CUDA graph capture),
or launched as the device's step-tuned table says (optimizer/launch_table.py, step_tune.py).
The bf16 op gives a bf16 baseline whose kernels do not depend on what Inductor's coordinate-descent
tuning picked in a given process (that moved the 7B bf16 step by 25 % between processes on the
H200), and an int8-vs-bf16 ratio of like kernels. On a CPU the kernels run under Triton's
interpreter (TRITON_INTERPRET=1) in the tests."""

from __future__ import annotations

import os

import torch
from torch import Tensor

from optimizer import launch_table

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the module swaps fall back to their one-line forwards
    triton = None

ENABLED = True  # False: decode through Inductor's fused reduction instead (for comparison)
# "tile" (the default): the bf16 kernel's [BLOCK_N, BLOCK_K] accumulator on int8 weights;
# "grouped": the int8 kernel with 16-weight groups summed in registers; "auto": per shape, whichever
# of the two is faster, timed alone on the first call. On the H200 (run 9) "auto" kept "grouped"
# for 48 of the 1B step's 65 GEMVs and that step took 0.719 to 0.808 ms, depending on the process;
# "tile" took 0.656 ms (docs/benchmarks.md), so timing a kernel alone does not predict it in the step.
INT8_KERNEL = "tile"
# int8 weights to fp32 in registers: "cvt" (an int-to-float conversion per weight), "magic"
# (integer add and fp32 subtract on the bits of 2^23 + 128 + w; exact, same results) or "prmt"
# (the same bits by a byte permute; the same results again, a third of the integer instructions)
INT8_CONVERT = os.environ.get("GPUCOST_INT8_CONVERT", "prmt")
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

    # -- pieces shared by both kernels -------------------------------------------------------
    # The fused forms (fused_decode.py): RMSNorm of the input row (NORM: the input times the
    # norm's weight in the dot products, its sum of squares gathered in the same pass, the row's
    # scale applied to the results; fp32 throughout, where eager PyTorch rounds the normed row to
    # the model dtype), a residual added in the epilogue (RESID) or SiLU(gate) * up of the w13
    # rows (GLU), rounded where eager PyTorch rounds; and programmatic dependent launch (PDL,
    # Hopper): launched as a dependent, the kernel loads its first weight tile (weights never
    # depend on the kernel before) before it waits for the previous kernel's output; it lets the
    # next one launch once each of its CTAs is past its main loop (TRIGGER 2, as run 9 measured)
    # or has requested its first tile (TRIGGER 1, as run 8 did), or only at its exit (0).

    @triton.jit
    def _w_tile(w_ptrs, n_mask, offs_k, k0, K, EVEN: tl.constexpr):
        if EVEN:
            w = tl.load(w_ptrs + k0, eviction_policy="evict_first")
        else:
            w = tl.load(w_ptrs + k0, mask=n_mask & ((k0 + offs_k) < K), other=0, eviction_policy="evict_first")
        return w

    @triton.jit
    def _x_block(x_row, g_ptr, offs_k, k0, K, EVEN_K: tl.constexpr, NORM: tl.constexpr):
        """The input block at k0 as fp32, times the norm's weight with NORM; and its squares (the
        RMSNorm's sum of squares, gathered in the same pass)."""
        k_mask = (k0 + offs_k) < K
        if EVEN_K:
            x = tl.load(x_row + k0 + offs_k).to(tl.float32)
        else:
            x = tl.load(x_row + k0 + offs_k, mask=k_mask, other=0.0).to(tl.float32)
        if NORM:
            if EVEN_K:
                g = tl.load(g_ptr + k0 + offs_k).to(tl.float32)
            else:
                g = tl.load(g_ptr + k0 + offs_k, mask=k_mask, other=0.0).to(tl.float32)
            return x * g, x * x
        else:
            return x, x

    @triton.jit
    def _prmt_magic(w):
        """The bits of 2^23 + 128 + w for int8 weights, four at a time: the four bytes of a 32-bit
        register flipped to w + 128 by one xor, then each byte put under the exponent of 2^23 by
        one byte permute (PTX prmt; its selector 0x765k takes byte k of the weights and the three
        high bytes of 0x4B000000)."""
        return tl.inline_asm_elementwise(
            asm="""{
            .reg .b32 t, m;
            xor.b32 t, $4, 0x80808080;
            mov.b32 m, 0x4B000000;
            prmt.b32 $0, t, m, 0x7650;
            prmt.b32 $1, t, m, 0x7651;
            prmt.b32 $2, t, m, 0x7652;
            prmt.b32 $3, t, m, 0x7653;
            }""",
            constraints="=r,=r,=r,=r,r", args=[w], dtype=tl.float32, is_pure=True, pack=4)

    @triton.jit
    def _f32(w, MAGIC: tl.constexpr, PRMT: tl.constexpr):
        """A weight tile as fp32. int8 with MAGIC: through the bits of 2^23 + 128 + w, then an
        fp32 subtract (exact for -128..127), instead of an int-to-float conversion, which Hopper
        issues at a fraction of the fp32 FMA rate. The bits come from a sign extension and an
        integer add a weight, or with PRMT from a byte permute a weight and an xor every four
        (`_prmt_magic`): the same bits with a third of the integer instructions, where the inner
        loop otherwise issued about three integer instructions a weight on a pipe half as wide as
        the fp32 one (sm_90 SASS, run 13)."""
        if PRMT:
            return _prmt_magic(w) - 8388736.0
        elif MAGIC:
            return (w.to(tl.int32) + 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0
        else:
            return w.to(tl.float32)

    @triton.jit
    def _rows(pid_n, N, BLOCK_N: tl.constexpr, GLU: tl.constexpr):
        """The weight rows a CTA reads and the output columns it writes. GLU: the weight is
        [gate (N/2 rows), up (N/2 rows)] and a CTA takes BLOCK_N/2 rows of each, interleaved, so
        its epilogue can write SiLU(gate) * up for those columns."""
        if GLU:
            f = N // 2
            cols = pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
            offs_n = tl.reshape(tl.join(cols, cols + f), (BLOCK_N,))
            n_mask = tl.reshape(tl.join(cols < f, cols < f), (BLOCK_N,))
        else:
            cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
            offs_n = cols
            n_mask = cols < N
        return offs_n, n_mask, cols

    @triton.jit
    def _normed(out, sum_sq, K, eps, NORM: tl.constexpr):
        """RMSNorm's 1 / sqrt(mean(x^2) + eps), a scalar a row (`sum_sq`: the input's sum of
        squares), applied to the dot products."""
        if NORM:
            out = out / tl.sqrt(sum_sq / K + eps)
        return out

    @triton.jit
    def _epilogue(out, s_ptr, r_row, y_row, offs_n, n_mask, cols, N, HAS_SCALE: tl.constexpr,
                  RESID: tl.constexpr, GLU: tl.constexpr, BLOCK_N: tl.constexpr):
        dt = y_row.dtype.element_ty
        if HAS_SCALE:
            out = out * tl.load(s_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        if GLU:  # [gate, up] pairs -> SiLU(gate) * up, each rounded where eager PyTorch rounds
            gate, up = tl.split(tl.reshape(out, (BLOCK_N // 2, 2)))
            gate = gate.to(dt).to(tl.float32)
            act = (gate / (1.0 + tl.exp(-gate))).to(dt).to(tl.float32)
            tl.store(y_row + cols, (act * up.to(dt).to(tl.float32)).to(dt), mask=cols < N // 2)
        else:
            if RESID:  # x + linear(...): the linear's output rounded first, as eager PyTorch does
                out = out.to(dt).to(tl.float32) + tl.load(r_row + offs_n, mask=n_mask, other=0.0).to(tl.float32)
            tl.store(y_row + offs_n, out.to(dt), mask=n_mask)

    @triton.jit
    def _trigger(TRIGGER: tl.constexpr, AT: tl.constexpr):
        """Let the next kernel launch (programmatic dependent launch) here: TRIGGER 1 once the
        first weight tile is requested, 2 once past the main loop, 0 never (at exit)."""
        if TRIGGER == AT:
            tl.extra.cuda.gdc_launch_dependents()

    @triton.jit
    def _wait(PDL: tl.constexpr):
        if PDL:
            tl.extra.cuda.gdc_wait()

    _KEY = ["N", "K", "HAS_SCALE", "NORM", "RESID", "GLU", "MAGIC", "PRMT"]
    _EVEN = {"EVEN_K": lambda a: a["K"] % a["BLOCK_K"] == 0, "EVEN_N": lambda a: a["N"] % a["BLOCK_N"] == 0}

    # Each config is timed for ~50 ms per shape instead of Triton's default 125 ms: 24 configs x
    # 10 shapes (1B and 7B, bf16 and int8) would otherwise add about 30 s to a process's first steps.
    @triton.autotune(configs=_configs(), key=_KEY, do_bench=_bench)
    @triton.heuristics(_EVEN)
    @triton.jit
    def _gemv_kernel(x_ptr, w_ptr, s_ptr, y_ptr, g_ptr, r_ptr, N, K, eps, stride_xm, stride_wn, stride_ym,
                     stride_rm, HAS_SCALE: tl.constexpr, NORM: tl.constexpr, RESID: tl.constexpr,
                     GLU: tl.constexpr, MAGIC: tl.constexpr, PRMT: tl.constexpr, PDL: tl.constexpr, TRIGGER: tl.constexpr,
                     PREFETCH: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     EVEN_K: tl.constexpr, EVEN_N: tl.constexpr):
        """PREFETCH: the weight tiles (a [BLOCK_N, PREFETCH * BLOCK_K] block, PREFETCH * BLOCK_K
        <= K, the launcher's clamp) requested before the wait for the previous kernel; their dot
        products are summed apart and added at the end. 1 is the kernel as it was before run 11."""
        pid_n = tl.program_id(0)
        row = tl.program_id(1)
        offs_n, n_mask, cols = _rows(pid_n, N, BLOCK_N, GLU)
        rows_w = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn
        x_row = x_ptr + row * stride_xm
        PRE_K: tl.constexpr = PREFETCH * BLOCK_K
        offs_p = tl.arange(0, PRE_K)
        w_pre = _w_tile(rows_w + offs_p[None, :], n_mask[:, None], offs_p[None, :], 0, K, EVEN_K and EVEN_N)
        _trigger(TRIGGER, 1)
        _wait(PDL)
        x_pre, ss_pre = _x_block(x_row, g_ptr, offs_p, 0, K, EVEN_K, NORM)
        offs_k = tl.arange(0, BLOCK_K)
        w_ptrs = rows_w + offs_k[None, :]
        if PREFETCH == 1:
            acc = _f32(w_pre, MAGIC, PRMT) * x_pre[None, :]
            ss = ss_pre
        else:
            head = tl.sum(_f32(w_pre, MAGIC, PRMT) * x_pre[None, :], axis=1)
            head_ss = tl.sum(ss_pre, axis=0)
            acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
            ss = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(PRE_K, K, BLOCK_K):
            w = _w_tile(w_ptrs, n_mask[:, None], offs_k[None, :], k0, K, EVEN_K and EVEN_N)
            x, sq = _x_block(x_row, g_ptr, offs_k, k0, K, EVEN_K, NORM)
            acc += _f32(w, MAGIC, PRMT) * x[None, :]
            ss += sq
        _trigger(TRIGGER, 2)
        out = tl.sum(acc, axis=1)
        sum_sq = tl.sum(ss, axis=0)
        if PREFETCH > 1:
            out += head
            sum_sq += head_ss
        _epilogue(_normed(out, sum_sq, K, eps, NORM), s_ptr, r_ptr + row * stride_rm,
                  y_ptr + row * stride_ym, offs_n, n_mask, cols, N, HAS_SCALE, RESID, GLU, BLOCK_N)

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

    @triton.autotune(configs=_int8_configs(), key=_KEY, do_bench=_bench,
                     prune_configs_by={"early_config_prune": _fits})
    @triton.heuristics(_EVEN)
    @triton.jit
    def _int8_gemv_kernel(x_ptr, w_ptr, s_ptr, y_ptr, g_ptr, r_ptr, N, K, eps, stride_xm, stride_wn, stride_ym,
                          stride_rm, HAS_SCALE: tl.constexpr, NORM: tl.constexpr, RESID: tl.constexpr,
                          GLU: tl.constexpr, MAGIC: tl.constexpr, PRMT: tl.constexpr, PDL: tl.constexpr, TRIGGER: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          EVEN_K: tl.constexpr, EVEN_N: tl.constexpr):
        """The int8 GEMV: a [BLOCK_N, BLOCK_K / 16, 16] weight tile, each thread holding 16
        consecutive int8 weights (one 16-byte load), summed in registers at every K step into a
        [BLOCK_N, BLOCK_K / 16] accumulator; one cross-thread reduction at the end."""
        R: tl.constexpr = 16
        G: tl.constexpr = BLOCK_K // R
        pid_n = tl.program_id(0)
        row = tl.program_id(1)
        offs_n, n_mask, cols = _rows(pid_n, N, BLOCK_N, GLU)
        offs_k = tl.arange(0, G)[:, None] * R + tl.arange(0, R)[None, :]  # [G, R]
        w_ptrs = w_ptr + offs_n[:, None, None].to(tl.int64) * stride_wn + offs_k[None, :, :]
        x_row = x_ptr + row * stride_xm
        w = _w_tile(w_ptrs, n_mask[:, None, None], offs_k[None, :, :], 0, K, EVEN_K and EVEN_N)
        _trigger(TRIGGER, 1)
        _wait(PDL)
        x, ss = _x_block(x_row, g_ptr, offs_k, 0, K, EVEN_K, NORM)
        acc = tl.sum(_f32(w, MAGIC, PRMT) * x[None, :, :], axis=2)
        for k0 in range(BLOCK_K, K, BLOCK_K):
            w = _w_tile(w_ptrs, n_mask[:, None, None], offs_k[None, :, :], k0, K, EVEN_K and EVEN_N)
            x, sq = _x_block(x_row, g_ptr, offs_k, k0, K, EVEN_K, NORM)
            acc += tl.sum(_f32(w, MAGIC, PRMT) * x[None, :, :], axis=2)
            ss += sq
        _trigger(TRIGGER, 2)
        sum_sq = tl.sum(tl.sum(ss, axis=1), axis=0)
        _epilogue(_normed(tl.sum(acc, axis=1), sum_sq, K, eps, NORM), s_ptr, r_ptr + row * stride_rm,
                  y_ptr + row * stride_ym, offs_n, n_mask, cols, N, HAS_SCALE, RESID, GLU, BLOCK_N)


def pdl_supported(device: torch.device) -> bool:
    """Programmatic dependent launch: Hopper or later, a real GPU (not the interpreter)."""
    return (triton is not None and device.type == "cuda" and not _interpreting()
            and torch.cuda.get_device_capability(device) >= (9, 0))


_int8_choice: dict[tuple, str] = {}  # (N, K, flags, rows) -> "tile" or "grouped", INT8_KERNEL "auto"

# -- launches chosen by the decode step's time ---------------------------------------------------
# A site of the step (kernel, shape, dtypes, rows, fused flags; `gemv_site`) may have a fixed launch
# in launch_table.TUNED (filled by step_tune.py, read from the device's shipped table): it is
# launched with that config, kernel and programmatic-dependent-launch choice, ignoring the caller's
# `pdl`; other sites are autotuned as before.


def pdl_launch(wait: bool, trigger: int, device: torch.device) -> dict:
    """A kernel's keywords for programmatic dependent launch: launched as a dependent (`wait`),
    letting its own dependents launch at TRIGGER point `trigger` (0: at exit); none of it where
    PDL is not supported."""
    ok = pdl_supported(device)
    return {"PDL": bool(wait) and ok, "TRIGGER": trigger if ok else 0, **({"launch_pdl": True} if wait and ok else {})}


def launch_entry(kernel_name: str, config, pdl: bool) -> dict:
    """A launch_table entry from a triton.Config (trigger after the main loop)."""
    return {"kernel": kernel_name, **config.kwargs, "num_warps": config.num_warps,
            "num_stages": config.num_stages, "pdl": int(pdl), "trigger": 2}


# launch_table entry keys that are not the kernel's config: how it is launched, and what it
# fetches before waiting for the kernel before it (passed to the kernel apart from the config)
NOT_CONFIG = ("kernel", "num_warps", "num_stages", "pdl", "trigger", "PREFETCH", "PRE")


def entry_config(entry: dict):
    """The triton.Config of a launch_table entry."""
    meta = {k: v for k, v in entry.items() if k not in NOT_CONFIG}
    return triton.Config(meta, num_warps=entry["num_warps"], num_stages=entry["num_stages"])


def prefetch_tiles(entry: dict | None, block_k: int, k: int) -> int:
    """The weight tiles the tile kernel requests before its wait: the entry's PREFETCH (1, as
    before run 11, where it has none), halved until they fit in K."""
    n = 1 if entry is None else entry.get("PREFETCH", 1)
    while n > 1 and n * block_k > k:
        n //= 2
    return n


def gemv_site(n: int, k: int, rows: int, weight_dtype: torch.dtype, x_dtype: torch.dtype, flags: dict) -> str:
    w = str(weight_dtype).removeprefix("torch.")
    on = "".join(f" {name.lower()}" for name in ("NORM", "RESID", "GLU", "MAGIC") if flags[name])
    return f"gemv {w}/{str(x_dtype).removeprefix('torch.')} {n}x{k} rows={rows}{on}"


# Tile-kernel shapes the step tuner tries beyond the autotuning configs (step_tune.py): twice the
# K block or twice the rows, for the same bytes a CTA as the configs' with int8 rows (half the
# bytes of a bf16 one). Added for int8 weights in run 12; tried for bf16 too since run 13, where
# under the byte-permute conversion the 1B int8 step took two of them (w13 as 32 x 512 tiles).
TILE_EXTRA = ((2, 4096, 4), (4, 4096, 8), (8, 2048, 8), (16, 2048, 8), (32, 512, 8), (32, 1024, 8))


def gemv_candidates(site: str, k: int, int8: bool) -> list[dict]:
    """The launches step_tune.py tries at a GEMV site: every autotuning config of the tile kernel
    and the tile shapes of TILE_EXTRA (K blocks no longer than K), and for int8 weights the grouped
    kernel's configs too."""
    configs = list(_gemv_kernel.configs) + [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)
        for bn, bk, warps in TILE_EXTRA if bk <= k for stages in (1, 3)]
    out = [launch_entry("tile", c, False) for c in configs]
    if int8:
        out += [launch_entry("grouped", c, False) for c in _fits(_int8_gemv_kernel.configs, {"K": k})]
    return out


def _launch(x: Tensor, weight: Tensor, scales: Tensor | None, norm_weight: Tensor | None = None,
            eps: float = 0.0, resid: Tensor | None = None, glu: bool = False, pdl: bool = False) -> Tensor:
    n, k = weight.shape
    if x.shape[-1] != k:
        raise ValueError(f"input rows of {x.shape[-1]} for a [{n}, {k}] weight")
    if glu and (n % 2 or resid is not None):
        raise ValueError(f"glu takes a [gate, up] weight (an even row count, not {n}) and no residual")
    x2 = x.reshape(-1, k).contiguous()
    rows = x2.shape[0]
    width = n // 2 if glu else n
    y = torch.empty(rows, width, dtype=x.dtype, device=x.device)
    r2 = resid.reshape(rows, n).contiguous() if resid is not None else y
    flags = {"HAS_SCALE": scales is not None, "NORM": norm_weight is not None, "RESID": resid is not None,
             "GLU": glu, "MAGIC": scales is not None and INT8_CONVERT != "cvt"}
    # MAGIC in a site's key: int8 weights converted through their bits rather than the conversion
    # instruction; how those bits are made (PRMT) is passed apart, as both give the same results.
    # The interpreter has no inline assembly (nor ROCm's Triton PTX) and makes them by integer adds.
    conv = {"PRMT": flags["MAGIC"] and INT8_CONVERT == "prmt" and not _interpreting() and torch.version.hip is None}
    args = (x2, weight, weight if scales is None else scales, y, weight if norm_weight is None else norm_weight,
            r2, n, k, eps, x2.stride(0), weight.stride(0), y.stride(0), r2.stride(0))
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), rows)  # noqa: E731
    kernels = {"tile": _gemv_kernel, "grouped": _int8_gemv_kernel}
    site = gemv_site(n, k, rows, weight.dtype, x.dtype, flags)
    entry = launch_table.tuned_entry(site, x.device)

    def run(kernel, wait: bool, trigger: int, config=None):
        pre = {}
        if kernel is _gemv_kernel:  # one weight tile before the wait unless the entry says more
            pre["PREFETCH"] = 1 if config is None else prefetch_tiles(entry, config.kwargs["BLOCK_K"], k)
        if config is None:  # autotuned
            kernel[grid](*args, **flags, **conv, **pre, **pdl_launch(wait, trigger, x.device))
        else:
            kernel.fn[grid](*args, **flags, **conv, **pre, **pdl_launch(wait, trigger, x.device), **config.all_kwargs())

    if entry is not None:
        run(kernels[entry["kernel"]], entry["pdl"], entry["trigger"], entry_config(entry))
    else:
        choice = "tile" if scales is None else INT8_KERNEL
        if choice == "auto":
            key = (n, k, rows, pdl, *flags.values(), *conv.values())
            if key not in _int8_choice:  # the first call per shape (outside any graph capture)
                times = {}
                for name, kernel in kernels.items():
                    run(kernel, pdl, 2 * pdl)  # autotunes it
                    times[name] = _bench(lambda kernel=kernel: run(kernel, pdl, 2 * pdl), None) if x.is_cuda else 0.0
                _int8_choice[key] = min(times, key=times.get)
            choice = _int8_choice[key]
        run(kernels[choice], pdl, 2 * pdl)
        entry = launch_entry(choice, kernels[choice].best_config, pdl)
    launch_table.record(site, entry)
    return y.reshape(*x.shape[:-1], width)


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


@torch.library.custom_op("gpucost::gemv_fused", mutates_args=())
def gemv_fused(x: Tensor, weight: Tensor, scales: Tensor | None, norm_weight: Tensor | None, eps: float,
               resid: Tensor | None, glu: bool, pdl: bool) -> Tensor:
    """[resid +] ([RMSNorm(x) | x] @ W^T) [* scales], one kernel (bf16 or int8 W); with `glu`,
    W is [gate, up] and the output SiLU(gate) * up (half as wide)."""
    return _launch(x, weight, scales, norm_weight, eps, resid, glu, pdl)


@gemv_fused.register_fake
def _(x, weight, scales, norm_weight, eps, resid, glu, pdl):
    return x.new_empty(*x.shape[:-1], weight.shape[0] // 2 if glu else weight.shape[0])


def gemv_applies(x: Tensor, weight: Tensor) -> bool:
    """Use the kernels for decode-sized inputs on a GPU with Triton (or under Triton's CPU
    interpreter); the fallback elsewhere."""
    return (triton is not None and (x.is_cuda or _interpreting()) and weight.is_contiguous()
            and x.numel() // x.shape[-1] <= MAX_ROWS)
