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
            mapping = load_mapping(map_file or s.dcgm_map)
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
