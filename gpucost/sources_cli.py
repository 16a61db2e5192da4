"""`gpucost scrape dcgm ...` (dcgm-exporter endpoints into usage events) and `gpucost import
billing ...` (cloud billing exports into billing events): the CLI of ingest/'s real sources."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    scrape = typer.Typer(help="Scrape metrics endpoints into usage events.", no_args_is_help=True)
    importer = typer.Typer(help="Import cloud billing exports into billing events.", no_args_is_help=True)
    app.add_typer(scrape, name="scrape")
    app.add_typer(importer, name="import")
    exporter = typer.Typer(help="Write data for other tools.", no_args_is_help=True)
    app.add_typer(exporter, name="export")

    @exporter.command("focus")
    def export_focus(out: Path = typer.Option(..., "--out", help="File to write (.csv or .csv.gz)."),
                     hours: float = typer.Option(24.0, help="The last N hours, up to now."),
                     seed: int = typer.Option(7, help="The simulator's seed (same fleet as `gpucost simulate`)."),
                     hosts: int = typer.Option(24, help="Simulated GPU hosts.")):
        """A FOCUS billing export for the simulated fleet: hourly lines, a savings plan on part of it,
        spot hosts, a daily credit (to import with `gpucost import billing`)."""
        import time

        from ingest.billing.synthetic import write_focus_export
        from ingest.simulator import Fleet

        end = time.time()
        n = write_focus_export(out, Fleet.build(seed=seed, hosts=hosts), end - hours * 3600, end)
        console.print(f"wrote {n:,} FOCUS rows to {out}")

    @scrape.command("dcgm")
    def dcgm(url: list[str] = typer.Option(None, "--url", help="dcgm-exporter endpoint (host, host:port or URL); "
                                                                "repeat for several. Default: GPUCOST_DCGM_URLS."),
             interval_s: float = typer.Option(None, help="Seconds between scrapes (default GPUCOST_DCGM_INTERVAL_S, 10)."),
             map_file: Path = typer.Option(None, "--map", help="Mapping file (YAML): labels to tenant and service, hosts "
                                                               "to cloud, region and instance type."),
             rounds: int = typer.Option(None, help="Stop after this many scrapes.")):
        """Scrape NVIDIA dcgm-exporter endpoints concurrently and send each GPU's usage to Kafka."""
        from core.kafka import ensure_topics
        from core.settings import get_settings
        from ingest.dcgm import DcgmScraper, stats_file
        from ingest.mapping import MappingError, load_mapping
        from ingest.producer import EventProducer

        s = get_settings()
        urls = url or s.dcgm_urls
        if not urls:
            console.print("[red]error[/]: no exporter to scrape; give --url or set GPUCOST_DCGM_URLS")
            raise typer.Exit(2)
        try:
            mapping = load_mapping(map_file or s.mapping_file)
        except MappingError as exc:
            console.print(f"[red]error[/]: {exc}")
            raise typer.Exit(2) from exc

        async def main():
            await ensure_topics(s)
            async with EventProducer(s) as producer, DcgmScraper(
                    urls, mapping, producer, interval_s=interval_s or s.dcgm_interval_s,
                    stats_path=stats_file(s.data_dir)) as scraper:
                with console.status("scraping ...") as status:
                    def report(events):
                        st = scraper.stats()
                        status.update(f"scraped {len(scraper.urls)} exporters: {st['events']} events sent, "
                                      f"{st['blank_skipped']} blank readings skipped, {st['targets_down']} exporters down")
                    await scraper.run(rounds=rounds, on_round=report)
                for t in scraper.targets.values():
                    state = "[green]up[/]" if not t.consecutive_failures else f"[red]down[/] ({t.last_error})"
                    console.print(f"{t.url}: {state}, {t.events} events, {t.blank_skipped} blank skipped")

        try:
            asyncio.run(main())
        except KeyboardInterrupt:
            pass

    @importer.command("billing")
    def billing(files: list[Path] = typer.Argument(..., exists=True, dir_okay=False, help="Export files: .csv, "
                                                   ".csv.gz, .parquet, .json/.jsonl(.gz)"),
                fmt: str = typer.Option("auto", "--format", help="auto, focus, aws-cur2, gcp or azure"),
                map_file: Path = typer.Option(None, "--map", help="Mapping file (YAML): tags and accounts to tenants."),
                usd_rate: float = typer.Option(None, help="USD per unit of the file's currency (a non-USD file "
                                                          "is refused without it)."),
                dry_run: bool = typer.Option(False, help="Read and report; send nothing.")):
        """Import cloud billing exports: GPU instance lines, and credit, tax and adjustment lines, become
        billing events on gpu.billing (idempotent: importing a file again, or a revised export, never
        double counts); the rest is reported."""
        from aiokafka.errors import KafkaError
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

        from core.kafka import ensure_topics
        from core.settings import get_settings
        from ingest.billing.importer import FORMATS, ImportRefused, Importer
        from ingest.mapping import MappingError, load_mapping
        from ingest.producer import EventProducer

        s = get_settings()
        if fmt != "auto" and fmt not in FORMATS:
            console.print(f"[red]error[/]: unknown format {fmt!r}: one of auto, {', '.join(FORMATS)}")
            raise typer.Exit(2)
        try:
            mapping = load_mapping(map_file or s.mapping_file)
        except MappingError as exc:
            console.print(f"[red]error[/]: {exc}")
            raise typer.Exit(2) from exc

        async def main(progress: Progress):
            tasks: dict[str, int] = {}

            def on_progress(source):
                if source.name not in tasks:
                    tasks[source.name] = progress.add_task(source.name, total=1.0, rows="")
                progress.update(tasks[source.name], completed=source.fraction_done(),
                                rows=f"{source.rows_read:,} rows")

            async def run(producer):
                imp = Importer(mapping, producer, usd_rate, on_progress=on_progress, keep_sent=False)
                for path in files:
                    await imp.import_file(path, fmt)
                return imp

            if dry_run:
                return await run(None)
            await ensure_topics(s)
            async with EventProducer(s) as producer:
                return await run(producer)

        columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                   TextColumn("{task.fields[rows]}"), TimeElapsedColumn())
        try:
            with Progress(*columns, console=console) as progress:
                imp = asyncio.run(main(progress))
        except ImportRefused as exc:
            console.print(f"[red]refused[/]: {exc}")
            raise typer.Exit(2) from exc
        except (OSError, KafkaError) as exc:
            console.print(f"[red]error[/]: Kafka is unavailable ({type(exc).__name__}: {exc}); run the import "
                          "again once it is back (imports are idempotent: nothing is counted twice)")
            raise typer.Exit(3) from exc
        _print_report(imp.report.to_dict(), dry_run)
        if imp.report.rows_rejected:
            raise typer.Exit(1)


def _print_report(r: dict, dry_run: bool) -> None:
    from rich.table import Table

    rate = f", {r['rows_per_s']:,.0f} rows/s" if r["rows_per_s"] else ""
    console.print(f"{r['rows']:,} rows in {r['elapsed_s']:.1f} s{rate}: {r['gpu_lines']:,} GPU instance lines "
                  f"and {r['charge_lines']:,} credit, tax and adjustment lines "
                  f"({'not sent: dry run' if dry_run else str(r['events_sent']) + ' billing events sent'}), "
                  f"{r['other_lines']:,} other lines reported, {r['rows_rejected']:,} rows rejected")
    console.print(f"GPU instances: billed {r['gpu_billed_usd']:,.2f} USD, effective {r['gpu_effective_usd']:,.2f} USD, "
                  f"list {r['gpu_list_usd']:,.2f} USD; credits {r['credits_usd']:,.2f} USD")
    table = Table("provider", "charge category", "lines", "billed USD", "effective USD", title="all lines")
    for t in r["totals"]:
        table.add_row(t["provider"], t["charge_category"], f"{t['lines']:,}", f"{t['billed_usd']:,.4f}",
                      f"{t['effective_usd']:,.4f}")
    console.print(table)
    for e in r["errors"][:20]:
        where = f"{e['file']}:{e['line']}" + (f" column {e['column']}" if e["column"] else "")
        console.print(f"[yellow]rejected[/] {where}: {e['message']}")
    if r["rows_rejected"] > 20:
        console.print(f"... and {r['rows_rejected'] - 20} more rejected rows")
