"""`gpucost pricing ...`: look up a GPU-hour price, list the catalog, import a SkyPilot catalog CSV
as stored prices, and manage price overrides."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pricing = typer.Typer(help="The pricing catalog and price overrides.", no_args_is_help=True)
    app.add_typer(pricing, name="pricing")

    @pricing.command("quote")
    def quote(cloud: str, region: str, instance_type: str, gpu_model: str,
              spot: bool = typer.Option(False, "--spot")):
        """Price of one GPU-hour on an instance (fallback flagged)."""
        from core.pricing import PricingError
        from core.pricing.effective import effective_catalog

        try:
            q = effective_catalog().gpu_hour_price(cloud, region, instance_type, gpu_model,
                                                   "spot" if spot else "on_demand")
        except PricingError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        flag = " (fallback)" if q.fallback else " (override)" if q.override else ""
        typer.echo(f"${q.usd_per_gpu_hour:.4f} per {q.gpu_model} GPU-hour{flag}; {q.source}; as of {q.as_of}")

    @pricing.command("catalog")
    def catalog(gpu_model: str = typer.Option(None), cloud: str = typer.Option(None)):
        """Catalog rows, cheapest per GPU-hour first."""
        from core.pricing.effective import effective_catalog

        cat = effective_catalog()
        model = cat.canonical(gpu_model) if gpu_model else None
        rows = [r for r in cat.rows if (not model or r.gpu_model == model)
                and (not cloud or r.cloud == cloud.lower())]
        for r in sorted(rows, key=lambda r: r.on_demand_usd_h / r.gpu_count):
            spot = f"{r.spot_usd_h / r.gpu_count:8.3f}" if r.spot_usd_h else "       -"
            typer.echo(f"{r.cloud:9} {r.region:15} {r.instance_type:26} {r.gpu_count}x {r.gpu_model:11}"
                       f" {r.on_demand_usd_h / r.gpu_count:8.3f} {spot}  $/GPU-h  as of {r.as_of}")

    @pricing.command("import-skypilot")
    def import_skypilot(path: str, cloud: str = typer.Option(..., help="aws | gcp | azure | lambda | ..."),
                        as_of: str = typer.Option(None, help="Date of the prices (default today).")):
        """Store the GPU instances of a SkyPilot catalog CSV (vms.csv) as price overrides."""
        from core.db import init_db, session_scope
        from core.pricing.effective import invalidate
        from core.pricing.overrides import OverrideRequest, set_override
        from core.pricing.skypilot import load_skypilot_csv

        rows = load_skypilot_csv(path, cloud, as_of=as_of)
        init_db()
        with session_scope() as session:
            for r in rows:
                set_override(session, OverrideRequest(
                    r.cloud, r.region, r.instance_type, r.on_demand_usd_h, r.spot_usd_h,
                    r.gpu_model, r.gpu_count, note=f"{r.source} as of {r.as_of}"))
        invalidate()
        typer.echo(f"stored {len(rows)} {cloud} GPU instance prices from {path}")

    override = typer.Typer(help="User price overrides (applied by every lookup).", no_args_is_help=True)
    pricing.add_typer(override, name="override")

    @override.command("set")
    def override_set(cloud: str, region: str, instance_type: str,
                     on_demand_usd_h: float = typer.Option(..., help="Whole instance, USD per hour."),
                     spot_usd_h: float = typer.Option(None), gpu_model: str = typer.Option(None),
                     gpu_count: int = typer.Option(None), note: str = typer.Option("")):
        from core.db import init_db, session_scope
        from core.pricing import PricingError
        from core.pricing.effective import invalidate
        from core.pricing.overrides import OverrideRequest, set_override

        init_db()
        try:
            with session_scope() as session:
                o = set_override(session, OverrideRequest(cloud, region, instance_type, on_demand_usd_h,
                                                          spot_usd_h, gpu_model, gpu_count, note))
                typer.echo(f"{o.cloud}/{o.region}/{o.instance_type}: ${o.on_demand_usd_h}/h "
                           f"({o.gpu_count}x {o.gpu_model})")
        except PricingError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        invalidate()

    @override.command("list")
    def override_list():
        from core.db import init_db, session_scope
        from core.pricing.overrides import list_overrides

        init_db()
        with session_scope() as session:
            for o in list_overrides(session):
                typer.echo(f"{o.cloud}/{o.region}/{o.instance_type}: {o.gpu_count}x {o.gpu_model} "
                           f"${o.on_demand_usd_h}/h spot {o.spot_usd_h} {o.note}")

    @override.command("delete")
    def override_delete(cloud: str, region: str, instance_type: str):
        from core.db import init_db, session_scope
        from core.pricing.effective import invalidate
        from core.pricing.overrides import delete_override

        init_db()
        with session_scope() as session:
            found = delete_override(session, cloud, region, instance_type)
        invalidate()
        typer.echo("deleted" if found else "no such override")
        raise typer.Exit(0 if found else 1)
