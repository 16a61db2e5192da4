"""bench/step_timeline.py's accounting, on a made-up trace: each kernel's share of a step is its
start to the next kernel's start, so the shares add up to the step exactly, overlap included."""

from __future__ import annotations

import json

from bench import step_timeline as T

# one layer: embedding, qkv, attention, wo, w13, w2, head, argmax; (start offset, duration) in us.
# attention starts before qkv ends and wo before attention ends (launched early): negative gaps
STEP = [("embed", 0.0, 1.0), ("_gemv_kernel", 2.0, 5.0), ("_attention_kernel", 5.0, 4.0),
        ("_gemv_kernel", 8.0, 6.0), ("_gemv_kernel", 14.0, 20.0), ("_gemv_kernel", 33.0, 10.0),
        ("_gemv_kernel", 44.0, 30.0), ("at::native::reduce_kernel<argmax>", 75.0, 9.0)]
WALLS = [90.0, 92.0, 91.0]  # step s+1 starts this long after step s


def trace(steps: int) -> list[dict]:
    out, t0 = [], 0.0
    for s in range(steps):
        out += [{"name": n, "start": t0 + at, "dur": d} for n, at, d in STEP]
        t0 += WALLS[s % len(WALLS)]
    return out


def test_shares_add_up_to_the_step_and_roles_follow_the_gemv_order():
    got = T.summarize(trace(4), 4, n_layer=1, nbytes={"w13": 40_000, "qkv": 6_000})
    assert got["kernels_per_step"] == 8
    assert got["names"][1] == "_gemv_kernel"
    assert (got["step_us"], got["step_us_min"], got["step_us_max"]) == (91.0, 90.0, 92.0)
    roles = got["roles"]
    assert set(roles) == {"other: embed", "qkv", "attention", "wo", "w13", "w2", "head",
                          "other: at::native::reduce_kernel<argmax>"}
    # the three measured steps' shares: every kernel's to the next one's start; the last kernel's
    # runs to the next step's first, so the step's total is its wall time
    assert sum(r["share_us_per_step"] for r in roles.values()) == sum(WALLS) / 3
    assert roles["qkv"]["share_us_per_step"] == 3.0 and roles["qkv"]["gap_us_per_step"] == -2.0
    assert roles["attention"]["share_us_per_step"] == 3.0 and roles["attention"]["dur_us_per_call"] == 4.0
    assert roles["w13"]["gb_s"] == 40_000 / 20.0 / 1e3  # bytes over its duration (us) -> GB/s
    tail = roles["other: at::native::reduce_kernel<argmax>"]["share_us_per_step"]
    assert tail == sum(w - 75.0 for w in WALLS) / 3
    assert T.summarize(trace(3)[:-1], 3, 1, {})["error"].startswith("23 kernels")


def test_the_plot_has_a_bar_per_variant_and_escapes_kernel_names(tmp_path):
    got = T.summarize(trace(3), 3, n_layer=1, nbytes={})
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"run": {"variants": {"bf16+gemv+fused": got, "bf16+int8-weight-only+fused": got}}}))
    out = tmp_path / "t.svg"
    T.plot(str(out), [f"<a>={path}:run"])
    text = out.read_text()
    assert text.startswith("<svg") and text.rstrip().endswith("</svg>")
    assert "&lt;a&gt; bf16" in text and "&lt;a&gt; int8" in text and "<a>" not in text
    assert text.count("<title>w13:") == 2 and text.count("<title>other:") == 2
