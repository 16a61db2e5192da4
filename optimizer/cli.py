"""The optimizer's commands: `gpucost bench` (and `gpucost bench import FILE`), `gpucost optimize`
and `gpucost optimizer`.

`gpucost bench` runs where only torch is installed (a bare GPU machine): it writes its JSON
results first, stores them only where the database layer imports, and `gpucost bench import FILE`
stores them later on the machine that has the database."""

from __future__ import annotations

import asyncio
import json
import os
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


def _instance(cloud: str, region: str, instance_type: str, device: str = "cpu"):
    """The instance runs are priced on: the one named, or the catalog's instance for the GPU
    actually present (an H200 is priced as a p5en.48xlarge, not as the H100's p5)."""
    from optimizer.measure import Instance, gpu_model_name, instance_for_gpu, parse_instance

    if instance_type:
        try:
            return parse_instance(instance_type, Instance(cloud, region))
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    return instance_for_gpu(gpu_model_name(device), cloud, region)


def _data_dir() -> Path:
    try:
        from core.settings import get_settings
    except ImportError:  # a bare GPU machine (no pydantic): the settings' own default location
        home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return Path(os.environ.get("GPUCOST_DATA_DIR") or Path(home) / "gpucost")
    return get_settings().data_dir


def _results_path(out: Path | None, stem: str, device: str = "cpu") -> Path:
    """The file named, or one named by the device and time (never another run's file)."""
    if out is not None:
        return out
    from optimizer.measure import device_slug, gpu_model_name

    slug = device_slug(gpu_model_name(device))
    return _data_dir() / "optimizer" / f"{stem}-{slug}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def _store(rows, source: str, results: Path | None = None) -> int | None:
    """Insert into benchmark_runs; None (with a hint) where the database layer is not installed."""
    try:
        from optimizer.publish import store_runs

        import core.db  # noqa: F401  (SQLAlchemy and the settings)
    except ImportError as exc:
        hint = f" gpucost bench import {results}" if results else " gpucost bench import FILE"
        err.print(f"[yellow]not stored: the database layer is not installed here ({exc.name}); "
                  f"store the results later with:{hint}")
        return None
    return len(store_runs(rows, source=source))


def _save_and_report(rows, doc: dict, out: Path, store: bool, publish: bool, instance, source: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, default=str))
    console.print(f"results: {out}")
    if store:
        n = _store(rows, source, out)
        if n is not None:
            console.print(f"stored {n} runs in benchmark_runs")
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


def runs_from_document(doc: dict) -> list:
    """The measured rows of a results file: `gpucost bench`'s ("runs") or
    bench/optimizer_gpu.py's (rows of every section). Skipped and failed rows are not runs."""
    from dataclasses import MISSING, fields

    from optimizer.measure import RunMetrics

    names = {f.name for f in fields(RunMetrics)}
    required = {f.name for f in fields(RunMetrics) if f.default is MISSING and f.default_factory is MISSING}
    candidates = list(doc.get("runs", []))
    for section in (doc.get("sections") or {}).values():
        if isinstance(section, dict):
            candidates += section.get("rows", [])
    rows = []
    for c in candidates:
        if not isinstance(c, dict) or "skipped" in c or "error" in c or not required <= c.keys():
            continue
        rows.append(RunMetrics(**{k: v for k, v in c.items() if k in names}))
    return rows


def register(app: typer.Typer) -> None:
    bench_app = typer.Typer(invoke_without_command=True, no_args_is_help=False,
                            help="Measure a matrix of variants side by side (`bench import FILE`: store results).")
    app.add_typer(bench_app, name="bench")

    @bench_app.command("import")
    def bench_import(
        file: Path = typer.Argument(..., exists=True, dir_okay=False, help="A results JSON file."),
    ):
        """Store a results file written elsewhere (e.g. on a GPU machine with only torch) in benchmark_runs."""
        try:
            doc = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"{file}: not a JSON results file ({exc})") from exc
        if not isinstance(doc, dict) or not str(doc.get("schema", "")).startswith("gpucost.optimizer."):
            raise typer.BadParameter(f"{file}: not a gpucost optimizer results file (no gpucost.optimizer schema)")
        rows = runs_from_document(doc)
        if not rows:
            raise typer.BadParameter(f"{file}: no measured runs in it")
        n = _store(rows, source=f"import:{file.name}")
        if n is None:
            raise typer.Exit(1)
        console.print(f"stored {n} runs from {file} ({doc.get('device') or rows[0].device}) in benchmark_runs")

    @bench_app.callback()
    def bench(
        ctx: typer.Context,
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
        store: bool = typer.Option(True, help="Store the runs in the benchmark_runs table (where the "
                                                  "database layer is installed; else `bench import` later)."),
        publish: bool = typer.Option(False, help="Publish each run as a usage event (needs Kafka)."),
        cloud: str = typer.Option("aws"), region: str = typer.Option("us-east-1"),
        instance_type: str = typer.Option("", "--instance", "--instance-type",
                                          help="Catalog instance the runs are priced on: TYPE or CLOUD/REGION/TYPE "
                                               "(default: the catalog's instance for the GPU present)."),
    ):
        """Measure a matrix of variants side by side: table with ratios against the first, JSON results."""
        if ctx.invoked_subcommand is not None:
            return
        from optimizer.bench import BenchConfig, Variant, default_variants, gate_reference, results_document, run_variant

        dev = _device(device)
        chosen = [Variant.parse(v) for v in variants.split(",") if v.strip()] or default_variants(dev)
        instance = _instance(cloud, region, instance_type, dev)
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
        doc = results_document(rows, command, instance=instance.__dict__)
        _save_and_report(rows, doc, _results_path(out, "bench", dev), store, publish, instance, "bench")

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
        instance_type: str = typer.Option("", "--instance", "--instance-type",
                                          help="TYPE or CLOUD/REGION/TYPE (default: the GPU present's instance)."),
    ):
        """Search variants for the goal; every step is validated by the accuracy gate."""
        from optimizer.bench import BenchConfig, results_document
        from optimizer.optimize import GOALS, optimize as run_optimize

        if goal not in GOALS:
            raise typer.BadParameter(f"goal must be one of {', '.join(GOALS)}")
        dev = _device(device)
        instance = _instance(cloud, region, instance_type, dev)
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
        _save_and_report(rows, doc, _results_path(out, f"optimize-{goal}", dev), store, publish, instance, "optimize")

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
