"""`gpucost recommend`: the recommender from the command line (same engine as POST
/api/recommendations). Prints the ranked instances with their reasons, or JSON with --json."""

from __future__ import annotations

import json
from dataclasses import asdict

import typer


def _mix(spec: list[str] | None):
    from optimizer.recommend import RequestClass

    out = []
    for item in spec or []:
        try:
            prompt, output, share = item.split(":")
            out.append(RequestClass(int(prompt), int(output), float(share)))
        except ValueError:
            raise typer.BadParameter(f"--mix wants PROMPT:OUTPUT:SHARE, got {item!r}") from None
    return tuple(out) or None


def register(app: typer.Typer) -> None:
    @app.command()
    def recommend(
        params: float = typer.Option(None, help="Model parameters, e.g. 8e9."),
        precision: str = typer.Option("bf16", help="fp32 | bf16 | fp16 | fp8 | int8 | int4"),
        prompt_tokens: int = typer.Option(512, "--prompt", help="Prompt (context) tokens."),
        output_tokens: int = typer.Option(256, "--output", help="Output tokens per request."),
        tokens_per_s: float = typer.Option(None, "--tokens-per-s", help="Demand, output tokens/s."),
        requests_per_s: float = typer.Option(None, "--requests-per-s", help="Demand, requests/s."),
        kv_bytes_per_token: float = typer.Option(None, help="KV-cache bytes per token, all layers."),
        n_layers: int = typer.Option(None, help="Layers (with --kv-heads and --head-dim, for KV size)."),
        kv_heads: int = typer.Option(None, help="KV heads."),
        head_dim: int = typer.Option(None, help="Head dimension."),
        slo_tpot_ms: float = typer.Option(None, "--slo-tpot-ms", help="Max time per output token."),
        slo_ttft_ms: float = typer.Option(None, "--slo-ttft-ms", help="Max time to first token."),
        slo_latency_ms: float = typer.Option(None, "--slo-latency-ms", help="Max request latency."),
        spot: bool = typer.Option(False, "--spot", help="Allow spot instances."),
        max_batch: int = typer.Option(None, help="Serving engine's cap on concurrent sequences."),
        cloud: list[str] = typer.Option(None, help="Only these clouds (repeatable)."),
        gpu: list[str] = typer.Option(None, help="Only these GPU models (repeatable)."),
        mix: list[str] = typer.Option(None, help="Request class PROMPT:OUTPUT:SHARE (repeatable)."),
        run_json: str = typer.Option(None, "--run", help="A benchmark run (RunMetrics JSON file): "
                                                         "the workload it served, measured."),
        top: int = typer.Option(10, help="How many ranks to show."),
        all_regions: bool = typer.Option(False, help="Show every region, not the cheapest per instance."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ):
        """Which cloud GPU instance serves a workload cheapest within its latency SLO. Without
        --params or --run: a recommendation for every live service (demand from the stream)."""
        if params is None and run_json is None and tokens_per_s is None and requests_per_s is None:
            _live(as_json, top)
            return
        from core.pricing.effective import effective_catalog
        from optimizer.recommend import Measurement, RecommendError, Workload
        from optimizer.recommend import recommend as run_recommend
        from optimizer.recommend_data import load_measurements

        measurements = list(load_measurements().measurements)
        fields = dict(precision=precision, prompt_tokens=prompt_tokens, output_tokens=output_tokens,
                      tokens_per_s=tokens_per_s, requests_per_s=requests_per_s,
                      kv_bytes_per_token=kv_bytes_per_token, n_layers=n_layers, n_kv_heads=kv_heads,
                      head_dim=head_dim, slo_tpot_ms=slo_tpot_ms, slo_ttft_ms=slo_ttft_ms,
                      slo_latency_ms=slo_latency_ms, spot_allowed=spot, max_batch_size=max_batch,
                      clouds=tuple(cloud) if cloud else None,
                      gpu_models=tuple(gpu) if gpu else None, request_mix=_mix(mix))
        try:
            if run_json:
                with open(run_json) as f:
                    run = Measurement.from_run(json.load(f))
                measurements.append(run)
                keep = {k: v for k, v in fields.items() if v is not None
                        and k not in ("precision", "prompt_tokens", "output_tokens")}
                workload = Workload.from_measurement(run, **keep)
            else:
                if params is None:
                    raise RecommendError("give --params (or --run with a benchmark run)")
                workload = Workload(params=params, **fields)
            try:
                catalog = effective_catalog()
            except Exception:  # noqa: BLE001 - no database: the shipped catalog
                from core.pricing import default_catalog

                catalog = default_catalog()
            result = run_recommend(workload, measurements, catalog=catalog, limit=top,
                                   cheapest_region_only=not all_regions)
        except (RecommendError, OSError, KeyError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        if as_json:
            typer.echo(json.dumps({"ranked": [asdict(o) for o in result.ranked],
                                   "rejected": [asdict(o) for o in result.rejected],
                                   "mix": asdict(result.mix) if result.mix else None}, indent=2,
                                  default=str))
            return
        if not result.ranked:
            typer.echo("no instance serves this workload within its SLO:")
            for o in result.rejected[:top]:
                typer.echo(f"  {o.name}: {o.reason}")
            raise typer.Exit(1)
        for o in result.ranked:
            typer.echo(o.reason)
        if result.mix:
            typer.echo(f"mix: {result.mix.reason}")
        typer.echo(f"({len(result.rejected)} instance(s) rejected: do not fit or miss the SLO; "
                   f"{len(measurements)} measured run(s) used)")


def _live(as_json: bool, top: int) -> None:
    """Every service with usage in the last hour, as GET /api/recommendations/live shows it."""
    from core.settings import get_settings
    from optimizer.recommend_live import live_services

    from core.db import init_db

    try:
        init_db(get_settings())
        rows = live_services(get_settings())
    except Exception as exc:  # noqa: BLE001 - no database yet
        typer.echo(f"error: cannot read live services from the database: {exc}", err=True)
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(rows[:top] if top else rows, indent=2, default=str))
        return
    if not rows:
        typer.echo("no live services in the last hour: start `gpucost up` (or the simulator), or give "
                   "--params and --tokens-per-s to size a workload by hand")
        raise typer.Exit(1)
    from rich.console import Console
    from rich.table import Table

    t = Table(title="Live services: the same demand on the current and the recommended fleet")
    for col in ("service", "demand tok/s", "now $/h (metered)", "best alternative", "$/h", "saves $/month", "basis"):
        t.add_column(col)
    for r in rows:
        name = f"{r['tenant']}/{r['service']}" + (f" [{r['hardware']}]" if r.get("hardware") else "")
        if r["status"] != "ok":
            t.add_row(name, f"{r['demand_tokens_per_s']:,.0f}", f"{r['spend_rate_usd_h']:,.2f}", r["message"], "", "", "")
            continue
        t.add_row(name, f"{r['demand_tokens_per_s']:,.0f}", f"{r['spend_rate_usd_h']:,.2f}", r["best_alternative"],
                  f"{r['best_usd_per_hour']:,.2f}", f"{r['savings_usd_per_month']:,.0f}", r["best_basis"])
    Console().print(t)
