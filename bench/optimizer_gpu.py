"""The optimizer's GPU matrix, in one process, side by side (docs/benchmarks.md, optimizer section).

    python3 bench/optimizer_gpu.py --out optimizer/data/h100_measurements.json

Sections, in priority order, each saved to the JSON file as soon as it is measured:
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
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from optimizer import bench as B  # noqa: E402
from optimizer.measure import gpu_model_name, kv_cache_bytes, peak_bandwidth_bytes_s  # noqa: E402
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
    ap.add_argument("--out", default="optimizer/data/h100_measurements.json")
    ap.add_argument("--sections", default="bandwidth,quant,kv,batching,configs,precision,window,offload")
    ap.add_argument("--budget-s", type=float, default=470.0, help="start no compiled variant past this")
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

    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    gpu = gpu_model_name(device)
    doc: dict = {
        "schema": "gpucost.optimizer.gpu_measurements/1",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python3 " + " ".join(sys.argv),
        "device": torch.cuda.get_device_name(device), "gpu_model": gpu,
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
    log(f"{doc['device']} ({gpu}); copy {doc['copy_bandwidth_gb_s']:.0f} GB/s, spec {doc['peak_bandwidth_gb_s_spec']:.0f} GB/s")
    save()
    base_cfg = B.BenchConfig(model=args.model, device="cuda", batch_size=1, prompt_tokens=128,
                             new_tokens=256, repeats=3)
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
                    log(f"skip {model_name} {name}: past the time budget")
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
                log(f"skip {name}: torchao not importable")
                continue
            if "compile" in name and not compiled_ok():
                log(f"skip {name}: past the time budget")
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
                log(f"skip {model_name} {name}: past the time budget")
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
                            new_tokens=128, repeats=2)
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
                                new_tokens=128, repeats=2)
            rows.append(decode_row(cfg, V("bf16+cudagraph")))
        for size in ("350m", "3b"):
            cfg = B.BenchConfig(model=size, device="cuda", batch_size=1, prompt_tokens=128,
                                new_tokens=128, repeats=2)
            rows.append(decode_row(cfg, V("bf16+cudagraph")))
        return {"rows": rows}

    def configs_compiled():
        """The roofline data again with torch.compile + CUDA graph: sizes and batches, memory-bound."""
        rows = []
        doc["sections"]["configs_compiled"] = {"rows": rows}
        for size, bs in ((args.model, 1), (args.model, 8), (args.big_model, 1), (args.big_model, 8),
                         ("3b", 1), (args.model, 32)):
            if not compiled_ok():
                log(f"skip {size} b{bs}: past the time budget")
                continue
            cfg = B.BenchConfig(model=size, device="cuda", batch_size=bs, prompt_tokens=128,
                                new_tokens=128, repeats=2)
            rows.append(decode_row(cfg, V("bf16+compile+cudagraph")))
            save()
        return {"rows": rows}

    def precision():
        return {"rows": [decode_row(base_cfg, V(v)) for v in ("bf16+cudagraph", "fp16+cudagraph", "fp32+cudagraph")]}

    def window():
        cfg = B.BenchConfig(model=args.model, device="cuda", batch_size=8, prompt_tokens=1792,
                            new_tokens=256, repeats=2)
        return {"rows": [decode_row(cfg, V(v)) for v in ("bf16+cudagraph", "bf16+window-256+cudagraph")]}

    def offload():
        cfg = B.BenchConfig(model=args.model, device="cuda", batch_size=1, prompt_tokens=32,
                            new_tokens=8, repeats=1)
        return {"rows": [decode_row(cfg, V("bf16")), decode_row(cfg, V("bf16+offload"))]}

    # Cheap sections first; the compiled quantized variants last, under the time budget.
    for name, fn in (("quant_gemv", quant_gemv), ("configs_compiled", configs_compiled), ("bandwidth", bandwidth), ("kv", kv), ("batching", batching), ("configs", configs),
                     ("window", window), ("precision", precision), ("offload", offload), ("quant", quant)):
        section(name, fn)
    # Side by side: each row against the first row of its section with the same model and batch.
    for name, section_doc in doc["sections"].items():
        rows = [r for r in section_doc.get("rows", []) if "error" not in r] if isinstance(section_doc, dict) else []
        for r in rows:
            base = next(b for b in rows if b["model"] == r["model"] and b["batch_size"] == r["batch_size"])
            ratio = r["extra"]["decode_tokens_per_s"] / base["extra"]["decode_tokens_per_s"]
            print(f"{name:16s} {r['model']:4s} b{r['batch_size']:<3d} {r['variant']:48s} {ratio:5.2f}x {base['variant']}")
    log("done")


if __name__ == "__main__":
    main()
