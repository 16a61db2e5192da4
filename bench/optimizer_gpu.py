"""The optimizer's GPU matrix, in one process, side by side (docs/benchmarks.md, optimizer section).

    python3 bench/optimizer_gpu.py                      # -> optimizer/data/<device>_measurements.json
    python3 bench/optimizer_gpu.py --sections ab,batchers --instance aws/us-east-1/p5en.48xlarge

It needs only torch (and Triton) on the GPU machine: prices and device facts come from the
catalog files shipped in core/pricing (standard library only), the results are written as JSON
first, and `gpucost bench import FILE` stores them later where the database is. The instance
the rows are priced on is the catalog's instance for the GPU present (H200 -> p5en.48xlarge)
unless --instance names one. The default output file is named by the device, and a file of
another device is never overwritten. A row not measured (time budget, missing package) is a
row with `skipped` and the reason.

Sections, each saved to the JSON file as soon as it is measured:
  ab         interleaved side by side, per model (--ab-models): bf16 vs int8 weight-only, both
             torch.compile + CUDA graph, gated on the same run; rounds A B / B A; median and
             spread of the bandwidth share and of the speedup, goals met only when the whole
             spread clears them; clocks per round; the first measurement after each build
             (how the old per-section rows were taken) kept beside; a profile of one step
             (kernels per step, kernel time against step time)
  batchers   32 clients, mixed prompt and answer lengths: the dynamic batcher against the
             in-flight (continuous) batcher, interleaved rounds
  bandwidth  batch-1 decode of the 1B model (bf16): CUDA graph alone and torch.compile + graph,
             achieved bandwidth as a share of the catalog's HBM peak and of a measured copy
  quant      int8 weight-only / fp8 decode against bf16, each through the accuracy gate
             (top-1 agreement and perplexity vs the fp32 model on the same device)
  kv         KV cache full / int8 / int4: bytes for 32 x 2048 tokens and decode speed
  batching   32 concurrent clients through the dynamic batcher vs one at a time
  configs    the same model at batch 1 / 8 / 32 and three model sizes at batch 1 (roofline data)
  configs_compiled  the same with torch.compile + CUDA graph (1b and 7b at batch 1 and 8, 3b, 1b b32)
  precision  fp16 and fp32 against bf16
  window     sliding window 256 against full attention at a 2k context
  offload    layer-by-layer from pinned host memory against resident weights
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from optimizer import bench as B  # noqa: E402
from optimizer.measure import (  # noqa: E402
    device_slug, gpu_model_name, instance_for_gpu, kv_cache_bytes, parse_instance,
    peak_bandwidth_bytes_s, usd_per_gpu_hour,
)
from optimizer.quantize import torchao_available  # noqa: E402

START = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - START


def log(msg: str) -> None:
    print(f"[{elapsed():6.1f}s] {msg}", flush=True)


def copy_bandwidth(device: torch.device, nbytes: int = 2 << 30) -> float:
    """Device-to-device copy, bytes read plus written per second (median of 20)."""
    a = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).normal_()
    b = torch.empty_like(a)
    times = []
    for _ in range(23):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    return 2 * nbytes / sorted(times[3:])[len(times[3:]) // 2]


def results_path(out: str | None, gpu_model: str, data_dir: Path = Path("optimizer/data")) -> Path:
    """The output file: the one named, else <data_dir>/<device>_measurements.json."""
    return Path(out) if out else data_dir / f"{device_slug(gpu_model)}_measurements.json"


def check_not_other_device(path: Path, gpu_model: str) -> None:
    """Refuse to overwrite a results file measured on another device (its rows would be lost)."""
    if not path.exists():
        return
    try:
        existing = json.loads(path.read_text()).get("gpu_model")
    except (OSError, ValueError, AttributeError):
        raise SystemExit(f"{path} exists and is not a results file: choose another --out")
    if existing and existing != gpu_model:
        raise SystemExit(f"{path} holds {existing} measurements; this is {gpu_model}: choose another --out")


def skipped_row(model: str, variant: str, reason: str, batch_size: int = 1) -> dict:
    """A row that was not measured, with why: the matrix shows the gap instead of hiding it."""
    log(f"skip {model} b{batch_size} {variant}: {reason}")
    return {"model": model, "variant": variant, "batch_size": batch_size, "skipped": reason}


def decode_row(cfg: B.BenchConfig, variant: B.Variant, ref=None) -> dict:
    t = time.perf_counter()
    row = B.run_variant(cfg, variant, ref)
    d = row.as_dict()
    d["build_and_measure_s"] = time.perf_counter() - t
    gate_txt = "" if row.gate is None else f" gate agree={row.gate['agreement']:.3f} ppl+={row.gate['ppl_increase']:+.4f} {'ACCEPT' if row.accepted else 'REJECT'}"
    share = "" if row.bandwidth_share is None else f" bw={row.bandwidth_gb_s:.0f}GB/s ({row.bandwidth_share:.1%})"
    log(f"{cfg.model} b{cfg.batch_size} {variant.name}: {row.extra['decode_tokens_per_s']:.1f} decode tok/s, "
        f"step {row.extra['decode_step_ms']:.3f} ms{share}, kv={row.kv_cache_bytes/1e6:.1f}MB, "
        f"peak={row.peak_memory_bytes/1e9:.2f}GB{gate_txt} [{d['build_and_measure_s']:.0f}s]")
    return d


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="default: optimizer/data/<device>_measurements.json")
    ap.add_argument("--instance", default="", help="TYPE or CLOUD/REGION/TYPE the rows are priced on "
                                                   "(default: the catalog's instance for the GPU present)")
    ap.add_argument("--sections", default="ab,batchers,bandwidth,quant,kv,batching,configs,precision,window,offload")
    ap.add_argument("--budget-s", type=float, default=470.0, help="start no compiled variant past this")
    ap.add_argument("--ab-models", default="1b,7b")
    ap.add_argument("--ab-rounds", type=int, default=6)
    ap.add_argument("--ab-variants", default="bf16+compile+cudagraph,bf16+int8-weight-only+compile+cudagraph",
                    help="first is the baseline; a name ending in @nocdt compiles without coordinate-descent "
                         "tuning (cuBLAS GEMVs instead of Inductor's tuned reductions); @cvt / @magic / @prmt: "
                         "the int8 GEMVs make their weights fp32 by a conversion instruction / by the bits of "
                         "2^23 + 128 + w from an integer add / from a byte permute "
                         "(int8_gemv.INT8_CONVERT, chosen when the arm's CUDA graph is captured; default prmt); "
                         "@pdl: the fused step with programmatic dependent launch (fused_decode.PDL); "
                         "@tuned: the fused step's launches chosen by the step's time (optimizer/step_tune.py, "
                         "tuned in this process after the build, written to --tuned-out); @table: the launches "
                         "of the device's table on disk (optimizer/launch_table.py, as a fused step reads it by default); "
                         "arms with neither capture with the autotuned launches. Caveat, seen on the "
                         "H200: Dynamo reuses one arm's compiled step for the next arm of the same variant "
                         "and shapes, so two arms differing only in Inductor settings run the same kernels "
                         "(whichever compiled first); compare them in separate processes")
    ap.add_argument("--tuned-out", default=None,
                    help="where @tuned arms merge their launches (default: optimizer/data/kernels/<device>_step_tuned.json)")
    ap.add_argument("--tune-steps", type=int, default=48, help="@tuned: graph replays a trial times (best of --tune-reps)")
    ap.add_argument("--tune-reps", type=int, default=3)
    ap.add_argument("--tune-refine", type=int, default=4, help="@tuned: configs per site tried again under the PDL choices")
    ap.add_argument("--tune-from", choices=("autotune", "table"), default="autotune",
                    help="@tuned: each site starts from the autotuner's launch, or from the shipped table's entry")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--model", default="1b")
    ap.add_argument("--big-model", default="7b", help="second model of the bandwidth section")
    ap.add_argument("--quant-model", default="1b")
    ap.add_argument("--quant-variants", default=",".join((
        "bf16+int8-weight-only+compile+cudagraph", "bf16+fp8+cudagraph", "bf16+fp8+compile+cudagraph",
        "bf16+torchao-int8-weight-only+compile+cudagraph", "bf16+torchao-fp8+compile+cudagraph")))
    args = ap.parse_args()
    sections = args.sections.split(",")
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    import torch._inductor.config as inductor_config

    # gpt-fast's settings: with coordinate descent tuning, Inductor turns a batch-1 matmul into
    # a tuned reduction that fuses an int8 weight's conversion (a GEMV at full bandwidth).
    inductor_config.coordinate_descent_tuning = True
    inductor_config.triton.unique_kernel_names = True
    inductor_config.fx_graph_cache = True

    gpu = gpu_model_name(device)
    out_path = results_path(args.out, gpu)
    check_not_other_device(out_path, gpu)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    instance = parse_instance(args.instance) if args.instance else instance_for_gpu(gpu)
    price, price_fallback = usd_per_gpu_hour(instance, gpu)
    doc: dict = {
        "schema": "gpucost.optimizer.gpu_measurements/1",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python3 " + " ".join(sys.argv),
        "device": torch.cuda.get_device_name(device), "gpu_model": gpu,
        "instance": instance.__dict__, "usd_per_gpu_hour": price, "price_fallback": price_fallback,
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "peak_bandwidth_gb_s_spec": (peak_bandwidth_bytes_s(gpu) or 0) / 1e9,
        "sections": {},
    }

    def save() -> None:
        out_path.write_text(json.dumps(doc, indent=1, default=str))
        out = os.environ.get("OUT")
        if out:
            Path(out, out_path.name).write_text(json.dumps(doc, indent=1, default=str))

    doc["copy_bandwidth_gb_s"] = copy_bandwidth(device) / 1e9
    log(f"{doc['device']} ({gpu}); copy {doc['copy_bandwidth_gb_s']:.0f} GB/s, spec {doc['peak_bandwidth_gb_s_spec']:.0f} GB/s; "
        f"priced as {instance.cloud}/{instance.region}/{instance.instance_type} at ${price}/GPU-hour")
    save()
    base_cfg = B.BenchConfig(model=args.model, device="cuda", batch_size=1, prompt_tokens=128,
                             new_tokens=256, repeats=3, instance=instance)
    V = B.Variant.parse

    def section(name: str, fn) -> None:
        if name not in sections:
            return
        log(f"== {name}")
        try:
            doc["sections"][name] = fn()
        except Exception as exc:  # one broken section must not cost the others
            import traceback

            traceback.print_exc()
            doc["sections"][name] = {"error": repr(exc)}
        save()
        gc.collect()
        torch.cuda.empty_cache()

    def compiled_ok() -> bool:
        return elapsed() < args.budget_s

    def bandwidth():
        rows = []
        doc["sections"]["bandwidth"] = {"rows": rows}
        for model_name in (args.model, args.big_model):
            cfg = replace(base_cfg, model=model_name)
            for name in ("bf16+cudagraph", "bf16+compile+cudagraph"):
                if "compile" in name and not compiled_ok():
                    rows.append(skipped_row(model_name, name, "past the time budget (--budget-s)"))
                    continue
                rows.append(decode_row(cfg, V(name)))
                rows[-1]["inductor_coordinate_descent_tuning"] = inductor_config.coordinate_descent_tuning
                save()
        if compiled_ok():  # the same step with cuBLAS GEMVs instead of Inductor's tuned reductions
            inductor_config.coordinate_descent_tuning = False
            try:
                rows.append(decode_row(base_cfg, V("bf16+compile+cudagraph")))
                rows[-1]["inductor_coordinate_descent_tuning"] = False
            finally:
                inductor_config.coordinate_descent_tuning = True
        return {"rows": rows}

    def quant():
        qcfg = replace(base_cfg, model=args.quant_model)
        ref = B.gate_reference(args.quant_model, device, 0, 32)
        rows = []
        doc["sections"]["quant"] = {"rows": rows, "reference_perplexity": ref.perplexity}
        rows.append(decode_row(qcfg, V("bf16+compile+cudagraph"), ref))
        save()
        for name in args.quant_variants.split(","):
            if "torchao" in name and not torchao_available():
                rows.append(skipped_row(args.quant_model, name, "torchao is not importable here"))
                continue
            if "compile" in name and not compiled_ok():
                rows.append(skipped_row(args.quant_model, name, "past the time budget (--budget-s)"))
                continue
            try:
                rows.append(decode_row(qcfg, V(name), ref))
            except Exception as exc:
                import traceback

                traceback.print_exc()
                rows.append({"variant": name, "error": repr(exc)})
            save()
        return {"rows": rows, "reference_perplexity": ref.perplexity}

    def quant_gemv():
        """int8 weight-only through the Triton GEMV against bf16, both compiled + graphed."""
        from optimizer import int8_gemv

        rows = []
        doc["sections"]["quant_gemv"] = {"rows": rows}
        plan = [(args.model, "bf16+compile+cudagraph", True), (args.model, "bf16+int8-weight-only+compile+cudagraph", True),
                (args.model, "bf16+int8-weight-only+cudagraph", True), (args.model, "bf16+fp8+cudagraph", True),
                (args.big_model, "bf16+compile+cudagraph", True), (args.big_model, "bf16+int8-weight-only+compile+cudagraph", True),
                (args.model, "bf16+int8-weight-only+compile+cudagraph", False)]
        ref = B.gate_reference(args.model, device, 0, 32)
        for model_name, name, gemv in plan:
            if "compile" in name and not compiled_ok():
                rows.append(skipped_row(model_name, name, "past the time budget (--budget-s)"))
                continue
            int8_gemv.ENABLED = gemv
            try:
                rows.append(decode_row(replace(base_cfg, model=model_name), V(name),
                                       ref if model_name == args.model else None))
                rows[-1]["int8_triton_gemv"] = gemv and "int8" in name
            except Exception as exc:
                import traceback

                traceback.print_exc()
                rows.append({"model": model_name, "variant": name, "error": repr(exc)})
            finally:
                int8_gemv.ENABLED = True
            save()
        return {"rows": rows, "reference_perplexity": ref.perplexity}

    def kv():
        model, _ = B.build_variant(args.model, V("bf16"), device)
        sizes = {}
        for kind in ("full", "int8", "int4"):
            model.clear_caches()
            gc.collect()
            torch.cuda.empty_cache()
            before = torch.cuda.memory_allocated(device)
            model.setup_caches(32, 2048, kind)
            sizes[kind] = {"cache_bytes": kv_cache_bytes(model),
                           "allocator_delta_bytes": torch.cuda.memory_allocated(device) - before}
            log(f"kv {kind}: {sizes[kind]}")
        del model
        cfg = B.BenchConfig(model=args.model, device="cuda", batch_size=8, prompt_tokens=1024,
                            new_tokens=128, repeats=2, instance=instance)
        ref = B.gate_reference(args.model, device, 0, 32)
        rows = [decode_row(cfg, V(f"bf16+kv-{k}+cudagraph" if k != "full" else "bf16+cudagraph"), ref)
                for k in ("full", "int8", "int4")]
        return {"sizes_32x2048": sizes, "rows": rows}

    def batching():
        model, decoder = B.build_variant(args.model, V("bf16+cudagraph"), device)
        out = {}
        for conc, n in ((1, 12), (32, 160)):
            m = B.measure_serving(model, decoder, concurrency=conc, n_requests=n, prompt_tokens=128,
                                  new_tokens=128, max_batch_size=32, max_queue_delay_ms=5.0)
            lat = B.latency_summary_ms(m["latencies_s"])
            out[f"concurrency_{conc}"] = {**{k: v for k, v in m.items() if k not in ("latencies_s", "ttfts_s")},
                                          **lat, "ttft_p50_ms": B.latency_summary_ms(m["ttfts_s"])["p50_ms"],
                                          "requests": n}
            sizes = m["batch_sizes"]
            log(f"serving c={conc}: {m['tokens_per_s']:.0f} tok/s, p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms, "
                f"batches {min(sizes)}..{max(sizes)} (mean {sum(sizes)/len(sizes):.1f})")
        one, many = out["concurrency_1"], out["concurrency_32"]
        out["throughput_ratio"] = many["tokens_per_s"] / one["tokens_per_s"]
        out["p99_ratio"] = many["p99_ms"] / one["p99_ms"]
        log(f"batching: {out['throughput_ratio']:.1f}x tokens/s, p99 {out['p99_ratio']:.2f}x single")
        return out

    def configs():
        rows = []
        for bs in (1, 8, 32):
            cfg = B.BenchConfig(model=args.model, device="cuda", batch_size=bs, prompt_tokens=128,
                                new_tokens=128, repeats=2, instance=instance)
            rows.append(decode_row(cfg, V("bf16+cudagraph")))
        for size in ("350m", "3b"):
            cfg = B.BenchConfig(model=size, device="cuda", batch_size=1, prompt_tokens=128,
                                new_tokens=128, repeats=2, instance=instance)
            rows.append(decode_row(cfg, V("bf16+cudagraph")))
        return {"rows": rows}

    def configs_compiled():
        """The roofline data again with torch.compile + CUDA graph: sizes and batches, memory-bound."""
        rows = []
        doc["sections"]["configs_compiled"] = {"rows": rows}
        for size, bs in ((args.model, 1), (args.model, 8), (args.big_model, 1), (args.big_model, 8),
                         ("3b", 1), (args.model, 32)):
            if not compiled_ok():
                rows.append(skipped_row(size, "bf16+compile+cudagraph", "past the time budget (--budget-s)", bs))
                continue
            cfg = B.BenchConfig(model=size, device="cuda", batch_size=bs, prompt_tokens=128,
                                new_tokens=128, repeats=2, instance=instance)
            rows.append(decode_row(cfg, V("bf16+compile+cudagraph")))
            save()
        return {"rows": rows}

    def ab():
        """bf16 vs int8 weight-only per model, interleaved rounds, gated on the same run."""
        from optimizer import abtest, fused_decode, int8_gemv, launch_table
        from optimizer.accuracy import gate
        from optimizer.measure import decode_step_bytes, weight_bytes

        spec = doc["peak_bandwidth_gb_s_spec"] * 1e9
        copy = doc["copy_bandwidth_gb_s"] * 1e9
        out = {"goal_bandwidth_share": 0.70, "goal_int8_speedup": 1.3, "prompt_tokens": 128, "new_tokens": 256,
               "models": {}}
        doc["sections"]["ab"] = out
        names = tuple(args.ab_variants.split(","))
        for model_name in args.ab_models.split(","):
            if not compiled_ok():
                out["models"][model_name] = {"rows": [skipped_row(model_name, n, "past the time budget (--budget-s)")
                                                      for n in names]}
                save()
                continue
            res: dict = {"arms": {}}
            out["models"][model_name] = res
            ref = B.gate_reference(model_name, device, 0, 32)
            res["reference_perplexity"] = ref.perplexity
            arms = []
            for name in names:
                t = time.perf_counter()
                model, decoder = B.build_variant(model_name, V(name.split("@")[0]), device)
                verdict = gate(model, ref)
                # Measured right after its build, as the old one-row-at-a-time sections did; the
                # step is compiled here, under this arm's Inductor settings.
                inductor_config.coordinate_descent_tuning = "@nocdt" not in name
                convert, pdl = int8_gemv.INT8_CONVERT, fused_decode.PDL
                int8_gemv.INT8_CONVERT = next((c for c in ("cvt", "magic", "prmt") if f"@{c}" in name), convert)
                fused_decode.PDL = pdl or "@pdl" in name
                launch_table.USE_TUNED = "@tuned" in name or "@table" in name
                try:
                    tuned = step_tuned(model_name, model, decoder) if "@tuned" in name else None
                    first = B.measure_decode(model, decoder, 1, 128, 256, repeats=3)
                finally:
                    inductor_config.coordinate_descent_tuning = True
                    int8_gemv.INT8_CONVERT, fused_decode.PDL = convert, pdl
                    launch_table.USE_TUNED = True
                step_bytes = decode_step_bytes(model, 1, 128 + 256 / 2)
                res["arms"][name] = {
                    "gate": verdict.as_dict(), "accepted": verdict.accepted, "weight_bytes": weight_bytes(model),
                    "step_bytes": step_bytes, "first_after_build_step_ms": first["decode_step_ms"],
                    "first_after_build_clocks": abtest.gpu_clocks(device),
                    "build_gate_first_s": time.perf_counter() - t}
                if tuned:
                    res["arms"][name]["step_tune"] = tuned
                log(f"{model_name} {name}: built+gated+first in {time.perf_counter() - t:.0f}s; first step "
                    f"{first['decode_step_ms']:.3f} ms; gate agree={verdict.agreement:.3f} "
                    f"{'ACCEPT' if verdict.accepted else 'REJECT'}")
                arms.append(abtest.Arm(name, model, decoder))
                save()
            prompts = B.random_prompts(arms[0].model.args.vocab_size, 1, 128, 0)
            m = abtest.interleaved_decode(arms, prompts, 256, args.ab_rounds)
            res["same_tokens"] = m["same_tokens"]  # arms launched differently, the same weights: equal
            for name, same in m["same_tokens"].items():
                log(f"{model_name} {name}: the same 256 tokens as {same or 'no other arm'}")
            base = names[0]
            speedups = abtest.ratios_against(m["step_s"], base)
            for name in names:
                a = res["arms"][name]
                steps = m["step_s"][name]
                shares = [a["step_bytes"] / s / spec for s in steps]
                a.update({
                    "step_ms": abtest.spread([s * 1e3 for s in steps]),
                    "decode_tokens_per_s": abtest.spread([1 / s for s in steps]),
                    "bandwidth_share_of_spec": abtest.spread(shares),
                    "bandwidth_share_of_copy": abtest.spread([a["step_bytes"] / s / copy for s in steps]),
                    "speedup_vs_bf16": speedups[name], "clocks": m["clocks"][name],
                    "usd_per_million_tokens": (price / (3600 / statistics.median(steps)) * 1e6) if price else None})
                a["bandwidth_goal"] = abtest.verdict(shares, 0.70)
                log(f"{model_name} {name}: step {a['step_ms']['median']:.3f} ms "
                    f"[{a['step_ms']['min']:.3f}..{a['step_ms']['max']:.3f}], share {a['bandwidth_share_of_spec']['median']:.1%} "
                    f"[{a['bandwidth_share_of_spec']['min']:.1%}..{a['bandwidth_share_of_spec']['max']:.1%}] of spec, "
                    f"{a['bandwidth_share_of_copy']['median']:.1%} of copy; x{speedups[name]['median']:.3f} "
                    f"[{speedups[name]['min']:.3f}..{speedups[name]['max']:.3f}]")
            for name in names:
                if "int8" in name:
                    res.setdefault("int8_goal", {})[name] = abtest.verdict(res["arms"][name]["speedup_vs_bf16"]["values"], 1.3)
                    res.setdefault("int8_gate", {})[name] = "accepted" if res["arms"][name]["accepted"] else "rejected"
                    like = name.replace("int8-weight-only", "gemv")  # the bf16 arm launched alike, if any
                    if like in names and like != base:
                        ratio = abtest.ratios_against({like: m["step_s"][like], name: m["step_s"][name]}, like)[name]
                        res["arms"][name]["speedup_vs_like_bf16"] = {"arm": like, **ratio}
                        res.setdefault("int8_goal_like", {})[name] = abtest.verdict(ratio["values"], 1.3)
                        log(f"{model_name} {name} vs {like}: x{ratio['median']:.3f} "
                            f"[{ratio['min']:.3f}..{ratio['max']:.3f}]")
            save()
            for arm in arms:  # kernels per step and where the step's time goes (1B: fixed kernel cost)
                try:
                    launch_table.USE_TUNED = "@tuned" in arm.name or "@table" in arm.name
                    res["arms"][arm.name]["profile"] = profile_step(arm)
                    pr = res["arms"][arm.name]["profile"]
                    log(f"{model_name} {arm.name}: {pr['kernels_per_step']:.0f} kernels/step, "
                        f"kernel time {pr['kernel_us_per_step']:.0f} us/step")
                except Exception as exc:
                    res["arms"][arm.name]["profile"] = {"error": repr(exc)}
                finally:
                    launch_table.USE_TUNED = True
            save()
            del arms, model, decoder
            gc.collect()
            torch.cuda.empty_cache()
        return out

    def step_tuned(model_name: str, model, decoder) -> dict:
        """The arm's launches tuned by the graphed step's time, merged into --tuned-out."""
        from optimizer import launch_table, step_tune

        t = time.perf_counter()
        out = step_tune.tune_decoder(model, decoder, log=lambda msg: log(f"{model_name} tune: {msg}"),
                                     steps=args.tune_steps, reps=args.tune_reps, refine=args.tune_refine,
                                     from_table=args.tune_from == "table")
        path = Path(args.tuned_out) if args.tuned_out else launch_table.table_path(gpu)
        launch_table.save(path, out["table"], gpu, {"model": model_name, "torch": torch.__version__,
                                                 "triton": getattr(sys.modules.get("triton"), "__version__", None),
                                                 "step_ms_start": out["step_s_start"] * 1e3,
                                                 "step_ms": out["step_s"] * 1e3, "trials": out["trials"],
                                                 "trial_steps": args.tune_steps, "trial_reps": args.tune_reps,
                                                 "refine": args.tune_refine, "from": args.tune_from})
        for site, entry in out["table"].items():
            log(f"{model_name} tuned {site}: {step_tune.describe(entry)} (was {step_tune.describe(out['start'][site])})")
        return {"step_ms_start": out["step_s_start"] * 1e3, "step_ms": out["step_s"] * 1e3, "trials": out["trials"],
                "tune_s": time.perf_counter() - t, "start": out["start"], "table": out["table"],
                "accepted": [{"step_ms": h["step_s"] * 1e3,
                              "launches": {site: step_tune.describe(e) for site, e in h["launches"].items()}}
                             for h in out["accepted"]]}

    def profile_step(arm, steps: int = 5) -> dict:
        """torch.profiler over `steps` compiled decode steps launched without the graph."""
        from torch.profiler import ProfilerActivity, profile

        tokens = torch.zeros(1, 1, dtype=torch.long, device=device)
        pos = torch.tensor([200], device=device)
        with torch.no_grad():
            for _ in range(3):
                arm.decoder.step(tokens, pos)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(steps):
                    arm.decoder.step(tokens, pos)
                torch.cuda.synchronize()
        kernels = []
        for e in prof.key_averages():
            us = getattr(e, "self_device_time_total", None)
            if us is None:
                us = getattr(e, "self_cuda_time_total", 0.0)
            if us and us > 0:
                kernels.append({"name": e.key[:120], "calls_per_step": e.count / steps, "us_per_step": us / steps})
        kernels.sort(key=lambda k: -k["us_per_step"])
        return {"kernels_per_step": sum(k["calls_per_step"] for k in kernels),
                "kernel_us_per_step": sum(k["us_per_step"] for k in kernels),
                "distinct_kernels": len(kernels), "top": kernels[:15]}

    def batchers():
        """32 clients, mixed lengths: dynamic batcher vs in-flight batcher forms, interleaved rounds
        (optimizer/batcher_compare.py; the best form: chunked prefill in mixed steps)."""
        from optimizer.batcher_compare import BEST, INFLIGHT_CONFIGS, compare_batchers

        # Both batchers' steps compiled (torch.compile + CUDA graphs): the dynamic batcher's
        # decode step at its batch size, the in-flight decode step and its mixed steps.
        variant = "bf16+compile+cudagraph"
        model, decoder = B.build_variant(args.model, V(variant), device)
        out = {"variant": variant, "model": args.model}
        doc["sections"]["batchers"] = out
        compare_batchers(model, decoder, INFLIGHT_CONFIGS, best=BEST, clients=args.clients,
                         n_requests=4 * args.clients, seq=512, rounds=3, cuda_graph=True, compile=True,
                         log=log, on_round=save, out=out)
        del model, decoder
        return out

    def precision():
        return {"rows": [decode_row(base_cfg, V(v)) for v in ("bf16+cudagraph", "fp16+cudagraph", "fp32+cudagraph")]}

    def window():
        cfg = B.BenchConfig(model=args.model, device="cuda", batch_size=8, prompt_tokens=1792,
                            new_tokens=256, repeats=2, instance=instance)
        return {"rows": [decode_row(cfg, V(v)) for v in ("bf16+cudagraph", "bf16+window-256+cudagraph")]}

    def offload():
        cfg = B.BenchConfig(model=args.model, device="cuda", batch_size=1, prompt_tokens=32,
                            new_tokens=8, repeats=1, instance=instance)
        return {"rows": [decode_row(cfg, V("bf16")), decode_row(cfg, V("bf16+offload"))]}

    # Cheap sections first; the compiled quantized variants last, under the time budget.
    for name, fn in (("batchers", batchers), ("ab", ab), ("quant_gemv", quant_gemv), ("configs_compiled", configs_compiled), ("bandwidth", bandwidth), ("kv", kv), ("batching", batching), ("configs", configs),
                     ("window", window), ("precision", precision), ("offload", offload), ("quant", quant)):
        section(name, fn)
    # Side by side: each row against the first row of its section with the same model and batch.
    for name, section_doc in doc["sections"].items():
        rows = [r for r in section_doc.get("rows", []) if "error" not in r and "skipped" not in r
                and "extra" in r] if isinstance(section_doc, dict) else []
        for r in rows:
            base = next(b for b in rows if b["model"] == r["model"] and b["batch_size"] == r["batch_size"])
            ratio = r["extra"]["decode_tokens_per_s"] / base["extra"]["decode_tokens_per_s"]
            print(f"{name:16s} {r['model']:4s} b{r['batch_size']:<3d} {r['variant']:48s} {ratio:5.2f}x {base['variant']}")
    log("done")


if __name__ == "__main__":
    main()
