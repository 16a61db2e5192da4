"""The optimizer's commands: `gpucost bench`, `gpucost optimize` and `gpucost optimizer`."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

# A wide table even when stdout is a pipe or a CI log (Rich would fold it to 80 columns).
console = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)

MODEL_HELP = "Workload: a seeded preset (test, 10m, 125m, 350m, 1b, 3b, 7b) or smollm2-135m (GGUF)."


def _device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _fmt(x: float | None, spec: str = ".1f", none: str = "-") -> str:
    return none if x is None else format(x, spec)


def _instance(cloud: str, region: str, instance_type: str):
    from optimizer.measure import Instance

    return Instance(cloud=cloud, region=region, instance_type=instance_type)


def _results_path(out: Path | None, stem: str) -> Path:
    if out is not None:
        return out
    from core.settings import get_settings

    return get_settings().data_dir / "optimizer" / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def _save_and_report(rows, doc: dict, out: Path, store: bool, publish: bool, instance, source: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, default=str))
    console.print(f"results: {out}")
    if store:
        from optimizer.publish import store_runs

        ids = store_runs(rows, source=source)
        console.print(f"stored {len(ids)} runs in benchmark_runs")
    if publish:
        from optimizer.publish import publish_runs

        try:
            n = asyncio.run(asyncio.wait_for(publish_runs(rows, instance), timeout=30))
            console.print(f"published {n} usage events to gpu.usage")
        except Exception as exc:
            err.print(f"[yellow]could not publish usage events ({exc!r}); is Kafka running? (gpucost kafka start)")


def results_table(rows, title: str) -> Table:
    from optimizer.bench import ratios

    table = Table(title=title)
    for col in ("variant", "tok/s", "x base", "p50 ms", "p99 ms", "TTFT ms", "peak MB", "model MB",
                "KV MB", "BW share", "$/1M tok", "top-1", "ppl Δ", "gate"):
        table.add_column(col, justify="left" if col in ("variant", "gate") else "right")
    for row, ratio in zip(rows, ratios(rows)):
        gate = row.gate or {}
        verdict = "-" if row.accepted is None else ("[green]accepted" if row.accepted else f"[red]rejected ({gate.get('reason')})")
        table.add_row(
            row.variant, _fmt(row.tokens_per_s), _fmt(ratio["speedup"], ".2f"), _fmt(row.latency_p50_ms),
            _fmt(row.latency_p99_ms), _fmt(row.ttft_p50_ms), _fmt(row.peak_memory_bytes / 2**20, ".0f"),
            _fmt(row.model_bytes / 2**20, ".1f"), _fmt(row.kv_cache_bytes / 2**20, ".2f"),
            _fmt(None if row.bandwidth_share is None else 100 * row.bandwidth_share, ".1f") +
            ("%" if row.bandwidth_share is not None else ""),
            _fmt(row.cost_per_million_tokens_usd, ".3f"),
            _fmt(None if "agreement" not in gate else 100 * gate["agreement"], ".1f"),
            _fmt(None if "ppl_increase" not in gate else 100 * gate["ppl_increase"], "+.2f"), verdict)
    return table


def register(app: typer.Typer) -> None:
    @app.command()
    def bench(
        model: str = typer.Option("test", help=MODEL_HELP),
        variants: str = typer.Option("", help="Comma-separated variants, e.g. fp32,bf16+int8-weight-only+kv-int8 "
                                               "(default: the device's matrix). The first is the baseline."),
        device: str = typer.Option("auto", help="cpu, cuda or auto"),
        batch_size: int = typer.Option(1, min=1),
        prompt_tokens: int = typer.Option(32, min=1),
        new_tokens: int = typer.Option(32, min=2),
        repeats: int = typer.Option(3, min=1),
        gate: bool = typer.Option(True, help="Run the accuracy gate against the fp32 baseline."),
        out: Path = typer.Option(None, help="JSON results file (default: <data dir>/optimizer/bench-<time>.json)"),
        store: bool = typer.Option(True, help="Store the runs in the benchmark_runs table."),
        publish: bool = typer.Option(False, help="Publish each run as a usage event (needs Kafka)."),
        cloud: str = typer.Option("aws"), region: str = typer.Option("us-east-1"),
        instance_type: str = typer.Option("p5.48xlarge", help="Catalog instance the runs are priced on."),
    ):
        """Measure a matrix of variants side by side: table with ratios against the first, JSON results."""
        from optimizer.bench import BenchConfig, Variant, default_variants, gate_reference, results_document, run_variant

        dev = _device(device)
        chosen = [Variant.parse(v) for v in variants.split(",") if v.strip()] or default_variants(dev)
        instance = _instance(cloud, region, instance_type)
        cfg = BenchConfig(model=model, device=dev, batch_size=batch_size, prompt_tokens=prompt_tokens,
                          new_tokens=new_tokens, repeats=repeats, instance=instance)
        rows = []
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err) as progress:
            task = progress.add_task("gate reference", total=len(chosen))
            ref = gate_reference(model, dev, cfg.seed, cfg.gate_new_tokens) if gate else None
            for v in chosen:
                progress.update(task, description=v.name)
                rows.append(run_variant(cfg, v, ref))
                progress.advance(task)
        console.print(results_table(rows, f"{model} on {rows[0].device}, batch {batch_size}, "
                                          f"{prompt_tokens}+{new_tokens} tokens"))
        command = "gpucost " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        doc = results_document(rows, command)
        _save_and_report(rows, doc, _results_path(out, "bench"), store, publish, instance, "bench")

    @app.command()
    def optimize(
        goal: str = typer.Option("latency", help="latency | cost | memory"),
        model: str = typer.Option("test", help=MODEL_HELP),
        device: str = typer.Option("auto"),
        batch_size: int = typer.Option(8, min=1, help="Batch the cost and memory goals are measured at."),
        prompt_tokens: int = typer.Option(32, min=1),
        new_tokens: int = typer.Option(32, min=2),
        repeats: int = typer.Option(3, min=1),
        min_agreement: float = typer.Option(0.95), max_ppl_increase: float = typer.Option(0.02),
        out: Path = typer.Option(None), store: bool = typer.Option(True),
        publish: bool = typer.Option(False),
        cloud: str = typer.Option("aws"), region: str = typer.Option("us-east-1"),
        instance_type: str = typer.Option("p5.48xlarge"),
    ):
        """Search variants for the goal; every step is validated by the accuracy gate."""
        from optimizer.bench import BenchConfig, results_document
        from optimizer.optimize import GOALS, optimize as run_optimize

        if goal not in GOALS:
            raise typer.BadParameter(f"goal must be one of {', '.join(GOALS)}")
        dev = _device(device)
        instance = _instance(cloud, region, instance_type)
        cfg = BenchConfig(model=model, device=dev, batch_size=batch_size, prompt_tokens=prompt_tokens,
                          new_tokens=new_tokens, repeats=repeats, min_agreement=min_agreement,
                          max_ppl_increase=max_ppl_increase, instance=instance)
        with err.status("optimizing ...") as status:
            result = run_optimize(cfg, goal, progress=lambda name: status.update(f"trying {name}"))
        table = Table(title=f"optimize {goal}: {model} on {result.baseline.device}")
        for col in ("variant", "score", "kept", "why"):
            table.add_column(col)
        for t in result.trials:
            table.add_row(t.variant, _fmt(t.score, ".4g"), "yes" if t.kept else "no", t.why)
        console.print(table)
        console.print(f"best: [bold]{result.best.variant}[/bold] ({result.improvement:.2f}x better {goal} "
                      f"than {result.baseline.variant}, accepted by the gate)")
        rows = [t.row for t in result.trials if t.row is not None]
        command = "gpucost " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        doc = results_document(rows, command, optimize={
            "goal": goal, "best": result.best.variant, "improvement": result.improvement,
            "trials": [{"variant": t.variant, "score": t.score, "kept": t.kept, "why": t.why} for t in result.trials]})
        _save_and_report(rows, doc, _results_path(out, f"optimize-{goal}"), store, publish, instance, "optimize")

    @app.command("optimizer")
    def optimizer_service(
        host: str = typer.Option("127.0.0.1", envvar="GPUCOST_OPTIMIZER_HOST"),
        port: int = typer.Option(8010, envvar="GPUCOST_OPTIMIZER_PORT"),
        model: str = typer.Option("10m", help=MODEL_HELP),
        variant: str = typer.Option("", help="Variant served (default: fp32 on a CPU, bf16+cudagraph on a GPU)."),
        device: str = typer.Option("auto"),
        max_batch_size: int = typer.Option(8, min=1),
        max_queue_delay_ms: float = typer.Option(10.0, min=0.0),
        load: bool = typer.Option(False, help="Drive the service with the built-in load generator."),
        concurrency: int = typer.Option(4, min=1, help="Load generator: requests in flight at most."),
        rate: float = typer.Option(2.0, help="Load generator: Poisson arrivals per second (0: closed loop)."),
        max_new_tokens: int = typer.Option(32, min=1),
        interval_s: float = typer.Option(5.0, min=0.1, help="Seconds between published usage events."),
        publish: bool = typer.Option(True, help="Publish usage events to Kafka."),
        duration_s: float = typer.Option(0.0, help="Stop after this long (0: run until interrupted)."),
        cloud: str = typer.Option("aws"), region: str = typer.Option("us-east-1"),
        instance_type: str = typer.Option("g5.xlarge", help="Catalog instance the workload is priced as."),
    ):
        """Serve generation requests over HTTP through the dynamic batcher and publish their usage."""
        from optimizer.service import ServiceConfig, serve

        dev = _device(device)
        cfg = ServiceConfig(model=model, variant=variant or ("bf16+cudagraph" if dev == "cuda" else "fp32"),
                            device=dev, max_batch_size=max_batch_size, max_queue_delay_ms=max_queue_delay_ms,
                            interval_s=interval_s, publish=publish,
                            instance=_instance(cloud, region, instance_type))
        err.print(f"optimizer: serving {model} ({cfg.variant}) on http://{host}:{port}/generate"
                  + (" with the load generator" if load else ""))
        try:
            stats = asyncio.run(serve(cfg, host, port, load=load, concurrency=concurrency,
                                      arrival_rate_per_s=rate or None, max_new_tokens=max_new_tokens,
                                      duration_s=duration_s))
        except KeyboardInterrupt:
            return
        console.print_json(json.dumps(stats))
