"""The Triton GEMVs (optimizer/int8_gemv.py) on the CPU, under Triton's interpreter: the same kernel
source the GPU runs, masks and the unmasked fast path included. The interpreter is chosen when
Triton is imported, so the checks run in a child process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
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
        default = int8_gemv.INT8_CONVERT
        for kernel in ("grouped", "tile"):  # both int8 kernels, both ways of making int8 fp32
            for convert in ("cvt", "magic"):  # (on a GPU also "prmt": magic's bits by inline asm)
                int8_gemv.INT8_KERNEL, int8_gemv.INT8_CONVERT = kernel, convert
                for rows in (1, 3):
                    x = torch.randn(rows, k)
                    y = torch.ops.gpucost.int8_gemv(x, q, s)
                    ref = (x.double() @ q.double().t()) * s.double()
                    assert y.shape == (rows, n), y.shape
                    assert torch.allclose(y.double(), ref, rtol=1e-5, atol=1e-4), \\
                        (kernel, convert, (y.double() - ref).abs().max())
        int8_gemv.INT8_CONVERT = default
        int8_gemv.INT8_KERNEL = "auto"  # the faster kernel per shape, chosen once
        x = torch.randn(1, k)
        y = torch.ops.gpucost.int8_gemv(x, q, s)
        assert torch.allclose(y.double(), (x.double() @ q.double().t()) * s.double(), rtol=1e-5, atol=1e-4)
        assert [c for key, c in int8_gemv._int8_choice.items() if key[:2] == (n, k)] in (["tile"], ["grouped"])
        int8_gemv.INT8_KERNEL = "tile"  # the default
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
    want = generate(plain, prompts, 4, decoder=dec).tokens
    model, dec = build_variant("test", Variant(precision="fp32", quantization="gemv"), "cpu")
    assert sum(isinstance(m, GemvLinear) for m in model.modules()) == 2 * 4 + 1  # 2 layers x (wqkv, wo, w13, w2), the head
    orig = GemvLinear.forward
    def forward(self, x):
        if int8_gemv.gemv_applies(x, self.weight):
            calls["gemv"] += 1
        return orig(self, x)
    GemvLinear.forward = forward
    got = generate(model, prompts, 4, decoder=dec).tokens
    assert got == want, (got, want)
    assert calls["gemv"] >= 3 * 9, calls  # every decode step, every linear layer
    model, dec = build_variant("test", Variant(precision="fp32", quantization="int8-weight-only"), "cpu")
    int8_gemv.ENABLED = False
    fallback = generate(model, prompts, 4, decoder=dec).tokens
    int8_gemv.ENABLED = True
    assert generate(model, prompts, 4, decoder=dec).tokens == fallback
    print("ok")
""")


@pytest.fixture(scope="module")
def interpreted():
    """The interpreter's scripts (CHECK, FUSED_KERNELS, FUSED_STEP), each in a child process under
    Triton's interpreter, all started at once: they are single-threaded Python, so on a machine of
    two cores they take about half the time they take one after another. A test waits for its own."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # each child writes to a file of its own: a pipe read only when its test comes could fill and stall it
    logs = {name: tempfile.TemporaryFile("w+") for name in ("CHECK", "FUSED_KERNELS", "FUSED_STEP")}
    children = {name: subprocess.Popen([sys.executable, "-c", globals()[name]], cwd=ROOT, env=env, text=True,
                                       stdout=logs[name], stderr=subprocess.STDOUT)
                for name in logs}

    def wait(name: str) -> None:
        """The child must exit 0 having printed "ok" last."""
        rc = children[name].wait(timeout=600)
        logs[name].seek(0)
        out = logs[name].read()
        assert rc == 0 and out.strip().endswith("ok"), out

    yield wait
    for name, child in children.items():
        if child.poll() is None:
            child.kill()
            child.wait()
        logs[name].close()


def test_gemv_kernels_under_the_triton_interpreter(interpreted):
    interpreted("CHECK")


def _prmt(a: int, b: int, selector: int) -> int:
    """PTX prmt.b32 (default mode): byte i of the result is byte (nibble i of the selector) of the
    8 bytes b:a (a the low four), with the sign of that byte spread when the nibble's bit 3 is set."""
    pool = (a | b << 32).to_bytes(8, "little")
    out = 0
    for i in range(4):
        nib = selector >> 4 * i & 0xF
        byte = pool[nib & 7]
        out |= ((0xFF if byte & 0x80 else 0) if nib & 8 else byte) << 8 * i
    return out


def test_the_byte_permute_conversion_gives_the_magic_bits_of_every_int8_weight():
    # The inline assembly of _prmt_magic (GPUs only: the interpreter runs the integer-add form),
    # read from its source and played here: for every int8 weight at every byte of a register,
    # the bits of 2^23 + 128 + w, so the fp32 subtract gives back w exactly (as the integer-add form).
    import inspect
    import re
    import struct

    from optimizer import int8_gemv

    src = inspect.getsource(int8_gemv._prmt_magic.fn)
    flip = int(re.search(r"xor\.b32 t, \$4, (0x[0-9A-Fa-f]+);", src).group(1), 16)
    high = int(re.search(r"mov\.b32 m, (0x[0-9A-Fa-f]+);", src).group(1), 16)
    selectors = {int(k): int(v, 16) for k, v in re.findall(r"prmt\.b32 \$(\d), t, m, (0x[0-9A-Fa-f]+);", src)}
    assert sorted(selectors) == [0, 1, 2, 3]
    for w in range(-128, 128):
        for at in range(4):
            others = [(w * 7 + 13 * j) % 256 for j in range(4)]  # the register's other weights
            others[at] = w & 0xFF
            packed = int.from_bytes(bytes(others), "little")
            bits = _prmt(packed ^ flip, high, selectors[at])
            assert struct.unpack("<f", bits.to_bytes(4, "little"))[0] - 8388736.0 == w, (w, at)


def test_the_byte_permute_gemv_compiles_for_hopper():
    # The tile GEMV with the byte-permute conversion, compiled for sm_90 by Triton's own ptxas (no
    # GPU needed): the inline assembly assembles, and the kernel permutes bytes instead of adding.
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from optimizer import int8_gemv

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter is on in this process: nothing is compiled")
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists() and not shutil.which("ptxas"):
        pytest.skip("no ptxas here (a Triton without its CUDA tools)")
    fn = int8_gemv._gemv_kernel.fn.fn
    sig = {"x_ptr": "*bf16", "w_ptr": "*i8", "s_ptr": "*bf16", "y_ptr": "*bf16", "g_ptr": "*bf16", "r_ptr": "*bf16",
           "N": "i32", "K": "i32", "eps": "fp32", "stride_xm": "i32", "stride_wn": "i32", "stride_ym": "i32",
           "stride_rm": "i32"}
    ptx = {}
    for prmt in (False, True):
        consts = {"HAS_SCALE": True, "NORM": True, "RESID": False, "GLU": False, "MAGIC": True, "PRMT": prmt,
                  "PDL": True, "TRIGGER": 2, "PREFETCH": 1, "BLOCK_N": 16, "BLOCK_K": 512, "EVEN_K": True,
                  "EVEN_N": True}
        full = {n: "constexpr" if n in consts else sig[n] for n in fn.arg_names}
        src = ASTSource(fn, full, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()},
                        attrs={(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in sig if n != "eps"})
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        assert compiled.asm["cubin"]
        ptx[prmt] = compiled.asm["ptx"]
    assert "prmt.b32" in ptx[True] and "0x4B000000" in ptx[True]
    assert "1258291328" not in ptx[True] and "1258291328" in ptx[False]  # 0x4B000080: the integer add's constant


def test_gemv_applies_only_where_the_kernel_runs():
    import torch

    from optimizer import int8_gemv

    w = torch.zeros(8, 16)
    if os.environ.get("TRITON_INTERPRET") != "1":
        assert not int8_gemv.gemv_applies(torch.zeros(1, 16), w)  # CPU tensors, no interpreter
    assert not int8_gemv.gemv_applies(torch.zeros(int8_gemv.MAX_ROWS + 1, 16), w)
    assert not int8_gemv.gemv_applies(torch.zeros(1, 16), w.t().contiguous().t())  # not contiguous


_FUSED_IMPORTS = """
    import asyncio
    import torch
    import torch.nn.functional as F
    from optimizer import fused_decode, int8_gemv, launch_table
    from optimizer.bench import Variant, build_variant
    from optimizer.continuous import ContinuousBatcher
    from optimizer.generate import generate
    from optimizer.model import slot_mask
    from optimizer.quantize import quantize_per_channel

    torch.manual_seed(0)
"""

FUSED_KERNELS = textwrap.dedent(_FUSED_IMPORTS + """
    op = torch.ops.gpucost.gemv_fused
    # The fused GEMV forms against their unfused PyTorch definitions (fp32: exact up to summation order)
    for n, k in ((64, 128), (70, 200)):
        w = torch.randn(n, k)
        q, s = quantize_per_channel(w)
        g, r = torch.randn(k), torch.randn(2, n)
        x = torch.randn(2, k) * 3
        normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * g
        def glu(z):  # the weight's rows are [gate, up]
            return F.silu(z[:, :n // 2]) * z[:, n // 2:]
        def check(label):
            for weight, scales, dense in ((w, None, w), (q, s, q.float() * s[:, None])):
                cases = [(op(x, weight, scales, g, 1e-5, None, False, False), normed @ dense.t()),
                         (op(x, weight, scales, g, 1e-5, None, True, False), glu(normed @ dense.t())),
                         (op(x, weight, scales, None, 0.0, None, True, False), glu(x @ dense.t())),
                         (op(x, weight, scales, g, 1e-5, r, False, False), r + normed @ dense.t())]
                for got, want in cases:
                    assert got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-3), \\
                        (label, n, k, scales is None, (got - want).abs().max())
        for kernel in ("tile", "grouped"):
            int8_gemv.INT8_KERNEL = kernel
            with launch_table.census() as sites:
                check(kernel)
        int8_gemv.INT8_KERNEL = "tile"
        # weight tiles requested before the wait for the kernel before (PREFETCH, halved until they
        # fit in K: 4 x 32 of K 128 whole, 4 x 32 of a ragged K 200 with a masked tail)
        for prefetch in (2, 4):
            launch_table.TUNED.update({site: {"kernel": "tile", "BLOCK_N": 16, "BLOCK_K": 32, "num_warps": 4,
                                              "num_stages": 1, "pdl": 1, "trigger": 1, "PREFETCH": prefetch}
                                       for site in sites})
            check(f"PREFETCH {prefetch}")
        launch_table.TUNED.clear()
    for bad in ((torch.randn(1, 10), torch.randn(4, 8), None, False), (torch.randn(1, 8), torch.randn(5, 8), None, True),
                (torch.randn(1, 8), torch.randn(4, 8), torch.randn(1, 4), True)):
        try:
            op(bad[0], bad[1], None, None, 0.0, bad[2], bad[3], False)
            raise SystemExit(f"accepted: {bad}")
        except ValueError:
            pass

    # Decode attention (RoPE, the KV write, attention over split slots) against apply_rope, an
    # indexed write and SDPA with the model's slot mask: ragged slots (masked tail), unreal and
    # stale slots, a shared and per-row query positions, full and windowed, one split and three
    from optimizer.model import apply_rope, precompute_rope
    b, h, hkv, d = 2, 4, 2, 16
    table = precompute_rope(64, d, 10000.0)
    counts = torch.zeros(b * h, dtype=torch.int32)
    for s in (37, 10):
        qkv = torch.randn(b, 1, (h + 2 * hkv) * d)
        kc, vc = torch.randn(b + 1, hkv, s, d), torch.randn(b + 1, hkv, s, d)
        for q_pos in (torch.tensor([s - 3]), torch.tensor([[s - 7], [s - 1]])):
            before_pos = torch.randint(-1, s, (b + 1, s))  # bookkeeping before the step (row b: not ours)
            before_real = torch.rand(b + 1, s) > 0.2
            rows = torch.arange(b)[:, None]
            slots = (q_pos % s).view(-1, 1).expand(b, 1)  # where the model writes
            pos, real = before_pos.clone(), before_real.clone()  # and after it, as the model updates it
            pos[rows, slots] = q_pos.view(-1, 1).expand(b, 1)
            real[rows, slots] = True
            rope = table[q_pos]
            for window, pre in ((0, None), (6, None), (0, 1), (6, 1)):
                # pre: the split's first cached tile requested before the wait, two tiles a split
                # (BLOCK_S 2 of S 37: 19 tiles in 16 splits, the last ones empty) or one (S 10)
                site = fused_decode.attention_site(torch.float32, h, hkv, d, s, b, window)
                if pre:
                    launch_table.TUNED[site] = {"kernel": "attention", "BLOCK_S": 2 if s == 37 else 4, "num_warps": 2,
                                                "num_stages": 1, "pdl": 1, "trigger": 1, "PRE": pre}
                k2, v2 = kc.clone(), vc.clone()
                pos2, real2 = before_pos.clone(), before_real.clone()
                got = torch.ops.gpucost.decode_attention(qkv, table, k2, v2, pos2, real2, q_pos, counts,
                                                         h, window, False)
                launch_table.TUNED.clear()
                qq, kk, vv = qkv.split([h * d, hkv * d, hkv * d], dim=-1)
                qq = apply_rope(qq.view(b, 1, h, d), rope)
                kk = apply_rope(kk.view(b, 1, hkv, d), rope)
                kw, vw = kc.clone(), vc.clone()
                kw[rows, :, slots] = kk
                vw[rows, :, slots] = vv.view(b, 1, hkv, d)
                mask = slot_mask(q_pos.view(-1, 1) if q_pos.numel() > 1 else q_pos.view(1, 1), pos[:b], real[:b],
                                 window or None)
                want = F.scaled_dot_product_attention(qq.transpose(1, 2), kw[:b], vw[:b], attn_mask=mask,
                                                      enable_gqa=True).transpose(1, 2).reshape(b, 1, h * d)
                assert torch.allclose(got, want, atol=1e-5), (s, window, pre, (got - want).abs().max())
                assert torch.equal(k2, kw) and torch.equal(v2, vw), (s, window)  # written where the model writes
                assert torch.equal(pos2, pos) and torch.equal(real2, real), (s, window)  # the bookkeeping too
                assert not counts.any(), counts  # the split counters are left at zero
    print("ok")
""")

FUSED_STEP = textwrap.dedent(_FUSED_IMPORTS + """
    # The fused decode step gives the unfused model's tokens (gemv and int8 weights, a sliding
    # window, the in-flight batcher's per-row positions) and really runs. A small model, and the
    # unfused side off the kernels (plain linears, or int8 through F.linear), to keep the
    # interpreter's time down.
    from optimizer.model import ModelArgs, build_model
    from optimizer.quantize import quantize_model
    args = ModelArgs(dim=64, n_layer=2, n_head=4, n_kv_head=2, ffn_dim=96, vocab_size=128, max_seq_len=128)
    from optimizer.model import TransformerBlock
    calls = {"n": 0}
    layer = TransformerBlock.forward_fused
    def counted(*a, **kw):
        calls["n"] += 1
        return layer(*a, **kw)
    TransformerBlock.forward_fused = counted
    def tokens(model, p, n, fused):
        model.fused_decode = fused
        int8_gemv.ENABLED = fused
        try:
            return generate(model, p, n).tokens
        finally:
            int8_gemv.ENABLED = True
    for scheme, window in (("gemv", None), ("int8-weight-only", None), ("gemv", 6)):
        model = quantize_model(build_model(args, seed=2), scheme)
        if window:
            model.set_sliding_window(window)
        p = [list(range(3, 20))] if window else [[5, 9, 17, 3, 100, 11]]
        want = tokens(model, p, 5, False)
        before = calls["n"]
        assert tokens(model, p, 5, True) == want, (scheme, window)
        assert calls["n"] - before == 4 * 2, calls  # 4 decode steps x 2 layers
    # The graphed step's greedy tail (Decoder._greedy): a fused model's argmax, token, history and
    # position updates in one kernel (ties go to the first index, as torch.argmax), continuing
    # generate's tokens; positions one a row, or shared by the rows (moved once, after every row
    # has read it: the ticket), and no history written past its width
    for v, rows, shared in ((1000, 1, True), (40000, 3, False), (40000, 3, True)):
        logits = torch.randn(rows, v).bfloat16()
        logits[0, 7] = logits[0, 900] = logits.max() + 1
        nxt, hist, ticket = torch.zeros(rows, 1, dtype=torch.long), torch.zeros(rows, 16, dtype=torch.long), torch.zeros(1, dtype=torch.int32)
        at = torch.tensor([7]) if shared else torch.arange(rows) * 4 + 3  # rows at 3, 7 and 11 -> 15 is the last
        emb, x = torch.randn(v, 1500).bfloat16(), torch.zeros(rows, 1, 1500).bfloat16()  # rows of two blocks, ragged
        torch.ops.gpucost.greedy_next(logits, nxt, at, hist, ticket, emb, x)
        assert torch.equal(nxt, logits.argmax(-1, keepdim=True)) and nxt[0, 0] == 7, nxt
        assert torch.equal(x[:, 0], emb[nxt[:, 0]]), "the next step's input: the tokens' embeddings"
        assert at.tolist() == ([8] if shared else [4, 8, 12][:rows]) and int(ticket) == 0, (at, ticket)
        cols = [8] * rows if shared else [4, 8, 12][:rows]
        assert [int(hist[b, c]) for b, c in enumerate(cols)] == nxt[:, 0].tolist() and int(hist.ne(0).sum()) == rows
        torch.ops.gpucost.greedy_next(logits, nxt, torch.tensor([15]), hist, ticket, emb, x)  # 16 is past the width
        assert int(hist.ne(0).sum()) == rows, hist
    from optimizer.generate import Decoder, prefill
    model = quantize_model(build_model(args, seed=2), "gemv")
    p = [[5, 9, 17, 3, 100, 11], [8, 8, 1, 2, 3, 4]]
    want = tokens(model, p, 5, False)
    model.reset_cache_state()
    model.fused_decode = True
    nxt = prefill(model, torch.tensor(p), None).argmax(dim=-1, keepdim=True)
    at, before = torch.tensor([6]), calls["n"]
    hist, ticket = torch.zeros(2, model.args.max_seq_len + 1, dtype=torch.long), torch.zeros(1, dtype=torch.int32)
    hist[:, 6] = nxt[:, 0]
    x = model.tok_embeddings(nxt)  # the kernel's tail: the fused step starts from the embedded tokens
    for _ in range(4):
        Decoder(model)._greedy(nxt, at, hist, ticket, x)
        assert torch.equal(x, model.tok_embeddings(nxt)), "the next step's input"
    assert hist[:, 6:11].tolist() == want and int(at) == 10 and calls["n"] - before == 4 * 2, (hist[:, 6:11], want)
    # Launches fixed per site (launch_table.TUNED, what step_tune.py fills): the census lists the
    # step's sites and the launches they got; other configs and the grouped int8 kernel fixed
    # there are the launches made, and give the same tokens (PDL asked for, off on a CPU).
    from optimizer import step_tune
    model = quantize_model(build_model(args, seed=2), "int8-weight-only")
    p = [[5, 9, 17, 3, 100, 11]]
    want = tokens(model, p, 5, False)
    with launch_table.census() as sites:
        assert tokens(model, p, 5, True) == want
    # a site is a kernel at a shape and form: the qkv projection and the head (vocabulary 128)
    # are one site here, each in every layer
    assert sorted(sites) == ["attention float32 H=4 Hkv=2 D=16 S=11 rows=1",
                             "gemv int8/float32 128x64 rows=1 norm magic",
                             "gemv int8/float32 192x64 rows=1 norm glu magic",
                             "gemv int8/float32 64x64 rows=1 resid magic",
                             "gemv int8/float32 64x96 rows=1 resid magic"], sorted(sites)
    fixed = {}
    for site, launch in sites.items():
        assert any(step_tune._same_launch(c, launch) for c in step_tune.site_candidates(site)), (site, launch)
        if site.startswith("attention"):  # 11 cache slots: three splits of 4
            fixed[site] = {"kernel": "attention", "BLOCK_S": 4, "num_warps": 2, "num_stages": 1, "pdl": 1, "trigger": 1}
        else:
            fixed[site] = {"kernel": "grouped", "BLOCK_N": 8, "BLOCK_K": 32, "num_warps": 2, "num_stages": 1,
                           "pdl": 1, "trigger": 2}
    launch_table.TUNED.update(fixed)
    with launch_table.census() as used:
        assert tokens(model, p, 5, True) == want
    assert used == fixed, used
    # run 11's pre-wait fetches: two weight tiles a GEMV, the first cached tile a split
    for site, launch in fixed.items():
        if site.startswith("attention"):
            fixed[site] = {**launch, "PRE": 1}
        else:
            fixed[site] = {**launch, "kernel": "tile", "PREFETCH": 2}
    launch_table.TUNED.update(fixed)
    with launch_table.census() as used:
        assert tokens(model, p, 5, True) == want
    assert used == fixed, used
    launch_table.TUNED.clear()
    model = quantize_model(build_model(args, seed=3), "gemv")
    prompts = [[5, 9, 17, 3], [7, 8, 9] * 5, [1, 2], [4] * 12, [9, 9]]
    want = [tokens(model, [p], 4, False)[0] for p in prompts]
    model.fused_decode = True
    async def inflight():
        async with ContinuousBatcher(model, 4, 48, chunk=8, chunk_rows=(1, 2, 4)) as batcher:
            return [r.tokens for r in await asyncio.gather(*(batcher.submit(p, 4) for p in prompts))]
    before = calls["n"]
    assert asyncio.run(inflight()) == want
    assert calls["n"] > before
    try:
        Variant(quantization="none", fused=True).check(torch.device("cpu"))
        raise SystemExit("fused without GEMV weights was accepted")
    except ValueError:
        pass
    assert Variant.parse("bf16+int8-weight-only+fused+compile+cudagraph").fused
    print("ok")
""")


def test_fused_gemv_and_attention_kernels_under_the_triton_interpreter(interpreted):
    interpreted("FUSED_KERNELS")


def test_fused_decode_step_under_the_triton_interpreter(interpreted):
    interpreted("FUSED_STEP")
