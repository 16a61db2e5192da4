"""Can the recommender's projections be trusted? Project every measured configuration of a model
on a GPU from every other one (batch, lengths; and across model sizes), compare with what was
measured, and report the error per pair (goal: within 15 %). The GPU matrix (bench/optimizer_gpu.py)
writes the measurements; this reads them.

    python3 -m optimizer.recommend_check optimizer/data/h100_measurements.json [--json out.json]"""

from __future__ import annotations

import argparse
import json
import math
import sys
from itertools import permutations
from pathlib import Path

from optimizer.recommend import Measurement, projection_error
from optimizer.recommend_data import _runs_in


def comparable(runs: list[dict]) -> list[Measurement]:
    """bf16 full-KV, full-attention, resident runs on a GPU: the configurations the roofline models."""
    out = []
    for r in runs:
        if r.get("gpu_model", "cpu") == "cpu" or r.get("quantization", "none") not in ("none", "", None):
            continue
        if r.get("kv_cache", "full") not in ("full", "bf16") or r.get("window"):
            continue
        if (r.get("extra") or {}).get("resident_weight_bytes"):
            continue  # offloaded
        try:
            m = Measurement.from_run(r)
        except (KeyError, TypeError, ValueError):
            continue
        label = (f"{r.get('model')} {r.get('precision')} {m.engine} b{m.batch_size} "
                 f"{m.prompt_tokens}+{m.output_tokens}")
        out.append(Measurement(**{**m.__dict__, "label": label}))
    # one measurement per configuration (the first seen)
    seen, unique = set(), []
    for m in out:
        key = (m.gpu_model, m.precision, m.engine, m.params, m.batch_size, m.prompt_tokens,
               m.output_tokens)
        if key not in seen:
            seen.add(key)
            unique.append(m)
    return unique


def check(measurements: list[Measurement]) -> list[dict]:
    """Every ordered pair on one GPU, precision and engine; `nearest` marks the pair the recommender
    itself would use (the same-model measurement closest to the target's configuration)."""
    rows = []
    for source, target in permutations(measurements, 2):
        if (source.gpu_model, source.precision, source.engine) != \
                (target.gpu_model, target.precision, target.engine):
            continue
        result = projection_error(source, target)
        result["same_model"] = abs(source.params - target.params) <= 0.05 * target.params
        result["nearest"] = False
        rows.append(result)
    for target in measurements:
        candidates = [r for r in rows if r["target"] == target.label and r["same_model"]]
        if candidates:
            sources = {m.label: m for m in measurements}

            def distance(r):
                m = sources[r["source"]]
                return (abs(math.log(m.batch_size / target.batch_size))
                        + abs(math.log(m.prompt_tokens / target.prompt_tokens))
                        + abs(math.log(m.output_tokens / target.output_tokens)), r["source"])

            min(candidates, key=distance)["nearest"] = True
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    runs = []
    for f in args.files:
        runs += _runs_in(json.loads(Path(f).read_text()))
    measurements = comparable(runs)
    rows = check(measurements)
    if not rows:
        print("fewer than two comparable measurements on one GPU", file=sys.stderr)
        return 1
    print(f"{'source':34} {'target':34} {'metric':17} {'projected':>10} {'measured':>10} {'error':>8}")
    for r in rows:
        print(f"{r['source']:34} {r['target']:34} {r['metric']:17} {r['projected']:10.1f} "
              f"{r['measured']:10.1f} {r['error']:+8.1%}")
    same = [r for r in rows if r["same_model"]]
    for name, subset in (("same model, from the nearest measured configuration (what the "
                          "recommender uses)", [r for r in rows if r["nearest"]]),
                         ("same model, from any other configuration", same),
                         ("across model sizes (the recommender does not project these)",
                          [r for r in rows if not r["same_model"]])):
        if subset:
            worst = max(abs(r["error"]) for r in subset)
            ok = sum(r["within_15pct"] for r in subset)
            print(f"{name}: {ok}/{len(subset)} within 15 %, worst {worst:.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
