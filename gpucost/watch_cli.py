"""`gpucost watch`: live spend in the terminal, built on the Python client (`gpucost/client.py`).

One row per key (tenant, service, region, GPU model, model version) from its newest ended window: spend rate,
spend in the window, utilization and idle share, sorted by spend; below, the alerts firing now. It survives
an API restart (the client reconnects and the fresh snapshot replaces the table) and stops with a
clear message when the key is refused."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import typer
from rich.console import Console, Group, JustifyMethod
from rich.live import Live
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:  # the client (pydantic, websockets) is imported when watch runs, not when the CLI starts
    from gpucost.client import LiveState, Subscription


def spend_table(state: LiveState, top: int = 30, window_s: int | None = None, now: float | None = None) -> Table:
    # Each key's newest window that has ended: the one still filling would understate the rate.
    now = time.time() if now is None else now
    rows = sorted(state.windows(window_s, complete_before=now), key=lambda r: r.spend_usd, reverse=True)
    filling = sum(1 for r in rows if r.window_end > now)
    total_rate_usd_h = sum(r.spend_rate_usd_h for r in rows)
    shown_window_s = rows[0].window_s if rows else window_s
    newest = max((r.window_end for r in rows if r.window_end <= now), default=None)
    title = (f"{len(rows)} key{'' if len(rows) == 1 else 's'}, {shown_window_s} s windows"
             + (f" ended by {time.strftime('%H:%M:%S', time.gmtime(newest))} UTC" if newest else "")
             + f", total ${total_rate_usd_h:,.2f}/h")
    table = Table(title=title, title_justify="left", expand=False)
    columns: list[tuple[str, JustifyMethod]] = [
        ("tenant", "left"), ("service", "left"), ("region", "left"), ("GPU", "left"), ("version", "left"),
        ("spend $/h", "right"),
        ("spend in window $", "right"), ("util %", "right"), ("idle %", "right")]
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=True)
    for r in rows[:top]:
        idle_share = f"{100 * r.idle_usd / r.spend_usd:.1f}" if r.spend_usd > 0 else "-"
        # Text, never markup: tenant and service names come from the data.
        table.add_row(Text(r.tenant), Text(r.service), Text(r.region), Text(r.gpu_model), Text(r.model_version or "-"),
                      f"{r.spend_rate_usd_h:,.2f}", f"{r.spend_usd:,.4f}", f"{100 * r.util_avg:.1f}", idle_share)
    notes = []
    if len(rows) > top:
        notes.append(f"and {len(rows) - top} more keys (--top)")
    if filling:
        notes.append(f"{filling} key(s) have no ended window yet: their figures cover the window so far")
    if not rows:
        notes.append("no spend yet: is the worker running and are events arriving?")
    table.caption = "; ".join(notes) or None
    return table


def alerts_line(state: LiveState, limit: int = 3) -> Text:
    firing = state.firing()
    if not firing:
        return Text("alerts: none firing", style="green")
    line = Text(f"alerts: {len(firing)} firing: ", style="bold red")
    for i, a in enumerate(reversed(firing[-limit:])):  # newest first
        if i:
            line.append("; ")
        line.append(f"[{a.severity}] {a.summary}")  # append() takes plain text: no markup from data
    return line


def frame(state: LiveState, sub: Subscription, top: int, window_s: int | None) -> Group:
    if sub.connected:
        status = Text(f"live from {sub.url}" + (f" (reconnected {sub.connections - 1}x)" if sub.connections > 1 else ""),
                      style="dim")
    else:
        down_s = time.monotonic() - (sub.dropped_at or time.monotonic())
        status = Text(f"connection lost {down_s:.0f} s ago, reconnecting to {sub.url}; the figures above are "
                      "as of then", style="bold yellow")
    return Group(spend_table(state, top, window_s), alerts_line(state), status)


async def watch(url: str, api_key: str, flt: dict[str, str], console: Console, updates: int | None,
                top: int, window_s: int | None, refresh_s: float = 0.25) -> int:
    """In a terminal, redraw in place every `refresh_s` until interrupted. Otherwise print frames:
    with `updates`, the first frame and then one per update, `updates` of them; without, at most
    one a second until interrupted. The first frame waits for both channels' snapshots, never
    shows half of them. Returns the frames printed."""
    from gpucost.client import LiveState, Snapshot, Subscription

    state = LiveState()
    channels = ("aggregates", "alerts")
    snapshots_seen: set[str] = set()
    drawn = 0

    def ready() -> bool:
        return len(snapshots_seen) == len(channels)

    async with Subscription(url, api_key, channel=channels, filter=flt) as sub:
        if updates is None and console.is_terminal:
            # Redrawn on a timer in this loop (not on Rich's thread, which would read the state
            # while messages change it): the frame rate does not follow the message rate.
            async def redraw(live: Live) -> None:
                while True:
                    if ready():
                        live.update(frame(state, sub, top, window_s), refresh=True)
                    await asyncio.sleep(refresh_s)

            with Live(console=console, auto_refresh=False) as live:
                task = asyncio.create_task(redraw(live))
                try:
                    async for msg in sub:
                        state.apply(msg)
                        if isinstance(msg, Snapshot):
                            snapshots_seen.add(msg.channel)
                finally:
                    task.cancel()
            return drawn
        last_print = 0.0
        async for msg in sub:
            state.apply(msg)
            if isinstance(msg, Snapshot):
                snapshots_seen.add(msg.channel)
            if not ready():
                continue
            if updates is None and time.monotonic() - last_print < 1.0:
                continue  # piped and open-ended: a frame a second, not one per message
            console.print(frame(state, sub, top, window_s))
            last_print = time.monotonic()
            drawn += 1
            if updates is not None and drawn > updates:
                break
    return drawn


def _default_url() -> str:
    from core.settings import get_settings

    s = get_settings()
    host = "127.0.0.1" if s.api_host in ("0.0.0.0", "::", "") else s.api_host
    return f"ws://{host}:{s.api_port}/ws"


def _default_key() -> str | None:
    """The admin key `gpucost up` keeps for this machine, if there is one."""
    from api.keys import admin_key_file
    from core.settings import get_settings

    path = admin_key_file(get_settings())
    return path.read_text().strip() if path.exists() else None


def register(app: typer.Typer) -> None:
    @app.command("watch")
    def watch_cmd(
        tenant: str = typer.Option(None, help="Only this tenant."),
        service: str = typer.Option(None, help="Only this service."),
        region: str = typer.Option(None, help="Only this region."),
        gpu_model: str = typer.Option(None, help="Only this GPU model."),
        model_version: str = typer.Option(None, help="Only this model version (e.g. a canary)."),
        url: str = typer.Option(None, help="The API's WebSocket address (default: ws://api_host:api_port/ws from the settings)."),
        api_key: str = typer.Option(None, envvar="GPUCOST_API_KEY",
                                    help="API key (default: the admin key that `gpucost up` keeps on this machine)."),
        top: int = typer.Option(30, help="Rows shown (the biggest spenders)."),
        window_s: int = typer.Option(None, help="Window size shown (default: the shortest the API sends)."),
        updates: int = typer.Option(None, help="Print the first frame and this many updates, then exit (for scripts)."),
        once: bool = typer.Option(False, "--once", help="Print one frame and exit (same as --updates 0)."),
    ):
        """Live spend per key in the terminal (sorted by spend), with the alerts firing now."""
        from gpucost.client import AuthenticationError, ClientError, SubscriptionRejected

        key = api_key or _default_key()
        if not key:
            typer.echo("error: no API key: pass --api-key, set GPUCOST_API_KEY, or run `gpucost up` on this machine "
                       "(it keeps an admin key)", err=True)
            raise typer.Exit(2)
        flt = {k: v for k, v in (("tenant", tenant), ("service", service), ("region", region),
                                 ("gpu_model", gpu_model), ("model_version", model_version)) if v}
        console = Console()  # width: the terminal's, or $COLUMNS when printing to a pipe
        try:
            asyncio.run(watch(url or _default_url(), key, flt, console, 0 if once else updates, top, window_s))
        except AuthenticationError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        except SubscriptionRejected as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except ClientError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            pass
