"""Where a graphed decode step's time goes, kernel by kernel.

torch.profiler over CUDA-graph replays of the batch-1 decode step (as `generate` runs them:
`Decoder.graph_steps` steps a replay, each writing its token into the history), on a GPU. For
each kernel: its duration and the time from its start to the next kernel's start (its share of
the step: these shares add up to the step exactly, overlap with programmatic dependent launch
included), summed by role. For the fused step the roles are the layer's five kernels (qkv,
attention, wo, w13, w2), the head and what runs outside them; GEMV roles also get their weight
bytes over their duration.

    python3 bench/step_timeline.py [--model 1b] [--variants V1,V2] [--steps 24] [--out FILE.json]
    python3 bench/step_timeline.py --svg OUT.svg LABEL=FILE.json[:KEY] ...   # a plot, no GPU

A variant takes the suffix @table (the device's step-tuned launches, the default for fused
variants here) or @autotuned. The plot draws each variant's step as one bar of its roles' shares
(FILE.json a result of this script, or KEY the result inside a file holding several)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from xml.sax.saxutils import escape

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from optimizer import bench as B  # noqa: E402
from optimizer import launch_table  # noqa: E402
from optimizer.generate import ensure_caches, generate  # noqa: E402

LAYER_GEMVS = ("qkv", "wo", "w13", "w2")


def roles(names: list[str], n_layer: int) -> list[str]:
    """A role per kernel of one step: the fused step's GEMVs by their order (four a layer, then
    the head), its attention kernel, and everything else by name."""
    out, g = [], 0
    for name in names:
        if "gemv_kernel" in name:
            out.append("head" if g == 4 * n_layer else LAYER_GEMVS[g % 4])
            g += 1
        elif "_attention_kernel" in name:
            out.append("attention")
        else:
            out.append("other: " + name[:60])
    return out


def role_bytes(model) -> dict[str, int]:
    layer = model.layers[0]
    mods = {"qkv": layer.attention.wqkv, "wo": layer.attention.wo, "w13": layer.feed_forward.w13,
            "w2": layer.feed_forward.w2, "head": model.output}
    return {r: m.weight.numel() * m.weight.element_size() for r, m in mods.items()}


def kernels_of(trace: Path) -> list[dict]:
    events = json.loads(trace.read_text())["traceEvents"]
    ks = [e for e in events if e.get("ph") == "X" and e.get("cat") == "kernel"]
    return sorted(({"name": e["name"], "start": float(e["ts"]), "dur": float(e["dur"])} for e in ks),
                  key=lambda k: k["start"])


def timeline(model, decoder, steps: int, device) -> dict:
    from torch.profiler import ProfilerActivity, profile

    prompt = B.random_prompts(model.args.vocab_size, 1, 128, 0)
    ensure_caches(model, 1, 128 + 256)
    generate(model, prompt, 8, decoder=decoder)  # compiled, tuned launches read, graph captured
    token = torch.zeros(1, 1, dtype=torch.long, device=device)
    decoder.start(token, torch.tensor([200], device=device))
    decoder.advance(4)
    torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            decoder.advance(steps)  # as generate replays them (graph_steps a replay)
            torch.cuda.synchronize()
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        ks = kernels_of(path)
    return summarize(ks, steps, model.args.n_layer, role_bytes(model))


def summarize(ks: list[dict], steps: int, n_layer: int, nbytes: dict[str, int]) -> dict:
    """Per-role sums over `steps` consecutive steps' kernels (sorted by start, us): a kernel's
    share is its start to the next kernel's start, so a step's shares add up to its wall time."""
    if not ks or len(ks) % steps or steps < 2:
        return {"error": f"{len(ks)} kernels traced over {steps} replays (graph kernels not traced?)"}
    per = len(ks) // steps
    names = [k["name"] for k in ks[:per]]
    role = roles(names, n_layer)
    by_role: dict[str, dict] = {}
    walls = []
    for s in range(steps - 1):  # the last step has no next start
        step = ks[s * per:(s + 1) * per + 1]
        walls.append(step[-1]["start"] - step[0]["start"])
        for j in range(per):
            r = by_role.setdefault(role[j], {"count": 0, "dur_us": 0.0, "share_us": 0.0, "gap_us": 0.0})
            r["count"] += 1
            r["dur_us"] += step[j]["dur"]
            r["share_us"] += step[j + 1]["start"] - step[j]["start"]
            r["gap_us"] += step[j + 1]["start"] - (step[j]["start"] + step[j]["dur"])
    n = steps - 1
    for name, r in by_role.items():
        calls = r["count"] / n
        r.update({"calls_per_step": calls, "dur_us_per_step": r["dur_us"] / n, "share_us_per_step": r["share_us"] / n,
                  "gap_us_per_step": r["gap_us"] / n, "dur_us_per_call": r["dur_us"] / r["count"]})
        if name in nbytes:
            r["gb_s"] = nbytes[name] * calls / (r["dur_us"] / n) / 1e3
        for k in ("count", "dur_us", "share_us", "gap_us"):
            r.pop(k)
    return {"kernels_per_step": per, "step_us": statistics.median(walls), "step_us_min": min(walls),
            "step_us_max": max(walls), "roles": by_role, "names": names}


COLORS = {"qkv": "#4c78a8", "attention": "#f58518", "wo": "#54a24b", "w13": "#b279a2", "w2": "#9d755d",
          "head": "#e45756", "other": "#bab0ac"}


def svg(bars: list[tuple[str, dict]], width: int = 900) -> str:
    """Horizontal bars, one a step, split into its roles' shares (us), with a legend. The
    "other: ..." roles (everything outside the layers' kernels and the head) are one segment."""
    longest = max(t["step_us"] for _, t in bars)
    left, top, bar_h, gap = 230, 30, 26, 14
    scale = (width - left - 70) / longest
    height = top + len(bars) * (bar_h + gap) + 50
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="12"><rect width="100%" height="100%" fill="white"/>',
           f'<text x="{left}" y="18">share of the graphed decode step, us (start to next start)</text>']
    for i, (label, t) in enumerate(bars):
        y = top + i * (bar_h + gap)
        out.append(f'<text x="{left - 8}" y="{y + bar_h * 0.65}" text-anchor="end">{escape(label)}</text>')
        x = float(left)
        shares: dict[str, float] = {}
        for role, r in t["roles"].items():
            key = "other" if role.startswith("other") else role
            shares[key] = shares.get(key, 0.0) + r["share_us_per_step"]
        for role in COLORS:
            w = shares.get(role, 0.0) * scale
            if w <= 0:
                continue
            out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{COLORS[role]}">'
                       f'<title>{role}: {shares[role]:.1f} us</title></rect>')
            if w > 34:
                out.append(f'<text x="{x + w / 2:.1f}" y="{y + bar_h * 0.65}" text-anchor="middle" fill="white">'
                           f'{shares[role]:.0f}</text>')
            x += w
        out.append(f'<text x="{x + 4:.1f}" y="{y + bar_h * 0.65}">{t["step_us"]:.0f} us</text>')
    y = top + len(bars) * (bar_h + gap) + 10
    for j, (role, color) in enumerate(COLORS.items()):
        out.append(f'<rect x="{left + j * 90}" y="{y}" width="12" height="12" fill="{color}"/>'
                   f'<text x="{left + j * 90 + 16}" y="{y + 11}">{role}</text>')
    return "\n".join(out + ["</svg>"]) + "\n"


def plot(out: str, specs: list[str]) -> None:
    bars = []
    for spec in specs:
        label, _, ref = spec.partition("=")
        path, _, key = ref.partition(":")
        doc = json.loads(Path(path).read_text())
        for part in key.split("/") if key else []:
            doc = doc[part]
        for name, t in doc["variants"].items():
            if "error" not in t:
                bars.append((f"{label} {'int8' if 'int8' in name else 'bf16'}", t))
    Path(out).write_text(svg(bars))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--svg", help="draw the results named after it into this SVG file (no GPU)")
    ap.add_argument("results", nargs="*", help="with --svg: LABEL=FILE.json[:KEY]")
    ap.add_argument("--model", default="1b")
    ap.add_argument("--variants",
                    default="bf16+gemv+fused+compile+cudagraph,bf16+int8-weight-only+fused+compile+cudagraph")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.svg:
        plot(args.svg, args.results)
        return
    device = torch.device("cuda")
    result = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__, "model": args.model,
              "variants": {}}
    for name in args.variants.split(","):
        launch_table.USE_TUNED = "@autotuned" not in name
        model, decoder = B.build_variant(args.model, B.Variant.parse(name.split("@")[0]), device)
        t = timeline(model, decoder, args.steps, device)
        result["variants"][name] = t
        if "error" in t:
            print(f"{name}: {t['error']}", flush=True)
            continue
        print(f"{args.model} {name}: {t['kernels_per_step']} kernels, step {t['step_us']:.1f} us "
              f"[{t['step_us_min']:.1f}..{t['step_us_max']:.1f}]", flush=True)
        for role, r in sorted(t["roles"].items(), key=lambda kv: -kv[1]["share_us_per_step"]):
            print(f"  {role:40} x{r['calls_per_step']:4.0f}  share {r['share_us_per_step']:7.1f} us  "
                  f"dur {r['dur_us_per_step']:7.1f} us ({r['dur_us_per_call']:6.2f} a call)  "
                  f"gap {r['gap_us_per_step']:7.1f} us" + (f"  {r['gb_s']:6.0f} GB/s" if "gb_s" in r else ""),
                  flush=True)
        del model, decoder
        torch.cuda.empty_cache()
    launch_table.USE_TUNED = True
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
