"""The `gpucost` command: one subcommand per box (`worker`, `api`, `simulate`, ...), the local
broker (`kafka start|stop|status`) and `up`, which runs the whole embedded default on one machine."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


def get_settings():
    """The settings, loaded on first use: `gpucost bench` must start where only torch is installed
    (a bare GPU machine has no pydantic), so nothing at import time may need them."""
    from core.settings import get_settings as load

    return load()


app = typer.Typer(help="gpucost: real-time GPU cost monitor.", no_args_is_help=True, add_completion=False)
kafka_app = typer.Typer(help="The local Apache Kafka broker (KRaft, one node) or a local cluster (--brokers 3).",
                        no_args_is_help=True)
app.add_typer(kafka_app, name="kafka")
console = Console(stderr=True)

@kafka_app.command("start")
def kafka_start(brokers: int = typer.Option(1, min=1, max=9, help="3: a local KRaft cluster (replication 3, "
                                            "min.insync.replicas 2) on its own ports and data dir")):
    """Fetch Kafka from Maven Central if needed, format storage once, start, wait until it answers."""
    from core import broker

    if brokers > 1:
        s = get_settings()
        with console.status(f"starting a {brokers}-node Kafka cluster ..."):
            nodes = broker.start_cluster(s, brokers)
        console.print(f"kafka cluster: {len(nodes)} nodes answering on {broker.cluster_bootstrap(s, brokers)} "
                      f"(data in {broker.cluster_dir(s)}); run gpucost with:")
        for k, v in broker.cluster_env(s, brokers).items():
            print(f"export {k}={v}")  # stdout: eval-able
        return
    with console.status("starting Kafka ..."):
        st = broker.start()
    console.print(str(st))


@kafka_app.command("stop")
def kafka_stop(brokers: int = typer.Option(1, min=1, max=9, help="the size given to `kafka start --brokers`")):
    """Stop the local broker, or the local cluster (nothing is left running)."""
    from core import broker

    if brokers > 1:
        n = broker.stop_cluster(get_settings(), brokers)
        console.print(f"kafka cluster: stopped {n} node(s)" if n else "kafka cluster: was not running")
        return
    console.print("kafka: stopped" if broker.stop() else "kafka: was not running")


@kafka_app.command("status")
def kafka_status():
    from core import broker

    st = broker.status()
    console.print(str(st))
    raise typer.Exit(0 if st.answering else 1)


@app.command()
def worker(loglevel: str = typer.Option("warning", help="Faust log level")):
    """Run the stream worker (Faust) until interrupted."""
    from streaming.worker import run_worker

    run_worker(get_settings(), loglevel=loglevel)


@app.command()
def api(host: str = typer.Option(None), port: int = typer.Option(None)):
    """Run the API and dashboard (FastAPI + uvicorn)."""
    import uvicorn

    from api.app import create_app

    s = get_settings()
    uvicorn.run(create_app(s), host=host or s.api_host, port=port or s.api_port, log_level="warning",
                ws_ping_interval=20, ws_max_size=s.ws_max_message_bytes, ws_per_message_deflate=False)


@app.command()
def simulate(
    seed: int = typer.Option(7, help="Same seed and start time, same events."),
    hosts: int = typer.Option(24, help="Simulated GPU hosts."),
    interval_s: float = typer.Option(10.0, help="Seconds each sample covers."),
    duration_s: float = typer.Option(None, help="Stop after this many seconds (simulated time when --fast)."),
    fast: bool = typer.Option(False, help="As fast as possible over [now - duration, now] instead of real time."),
    speed: float = typer.Option(1.0, help="Real-time mode: intervals per interval_s (2 = twice as often)."),
    start_ts: float = typer.Option(None, help="--fast: first interval's start (epoch s)."),
    billing_dir: Path = typer.Option(None, help="Where the fleet's hourly FOCUS exports are written before they are "
                                               "imported (default: <data dir>/billing)."),
    billing: bool = typer.Option(True, help="Bill the fleet: a FOCUS export per closed hour, imported onto gpu.billing."),
    backfill: bool = typer.Option(True, help="Real-time mode: first simulate from the start of the previous hour "
                                             "(or where the last run stopped), so a whole hour is billed at once."),
):
    """Feed simulated fleet usage into Kafka, and its bill as a FOCUS export imported hour by hour."""
    import json
    import math

    from core.kafka import ensure_topics
    from ingest.billing.synthetic import HourlyExport
    from ingest.producer import EventProducer
    from ingest.simulator import Fleet, backfill_start, run

    s = get_settings()
    fleet = Fleet.build(seed=seed, hosts=hosts, interval_s=interval_s)
    billing_dir = Path(billing_dir or Path(s.data_dir) / "billing")
    # Where the last real-time run stopped (simulated and billed), so a restart neither simulates
    # the same time twice nor leaves a gap in the bill.
    state_file = billing_dir / f"simulator-{seed}-{hosts}.json"
    state = json.loads(state_file.read_text()) if not fast and state_file.exists() else {}
    now = time.time()
    if fast:
        first = start_ts if start_ts is not None else now - (duration_s or 0)
        backfill_from = None
    else:
        backfill_from = backfill_start(now, state.get("simulated_upto")) if backfill else None
        first = backfill_from if backfill_from is not None else now
    bill_from = state.get("billed_upto") or (first if fast else math.floor(first / 3600) * 3600)
    export = HourlyExport(fleet, billing_dir, bill_from) if billing else None

    def remember(ts: float) -> None:
        if not fast:
            billing_dir.mkdir(parents=True, exist_ok=True)
            state_file.write_text(json.dumps({"simulated_upto": ts,
                                              "billed_upto": export.billed_upto if export else None}))

    async def main():
        await ensure_topics(s)
        async with EventProducer(s) as producer:
            total = None if not fast else int(duration_s / interval_s) * fleet.gpus
            with Progress(TextColumn("simulate"), BarColumn(), TextColumn("{task.completed} events"),
                          TimeElapsedColumn(), console=console, transient=False) as progress:
                task = progress.add_task("events", total=total)
                n = await run(producer, fleet, duration_s=duration_s, realtime=not fast, speed=speed,
                              start_ts=start_ts, on_tick=lambda k: progress.advance(task, k), billing=export,
                              backfill_from=backfill_from, on_progress=remember)
        console.print(f"sent {n} usage events from {fleet.gpus} GPUs on {len(fleet.hosts)} hosts")
        if export is not None:
            lines = sum(r.events_sent for r in export.reports)
            console.print(f"billed {len(export.reports)} export(s), {lines} line item(s), in {billing_dir}")

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


@app.command()
def agent(
    tenant: str = typer.Option(..., help="Tenant this host's GPUs are billed to."),
    service: str = typer.Option(..., help="Service running on them."),
    cloud: str = typer.Option(..., help="aws, gcp, azure, lambda, ..."),
    region: str = typer.Option(...),
    instance_type: str = typer.Option(..., help="As in the pricing catalog, e.g. p5.48xlarge."),
    interval_s: float = typer.Option(10.0, help="Seconds each sample covers (read once a second)."),
    intervals: int = typer.Option(None, help="Stop after this many intervals."),
):
    """Report this host's NVIDIA GPUs (NVML) as usage events."""
    from core.kafka import ensure_topics
    from ingest.nvml import NvmlSampler, NvmlUnavailable, run_agent
    from ingest.producer import EventProducer

    s = get_settings()
    try:
        sampler = NvmlSampler()
    except NvmlUnavailable as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2)

    async def main():
        await ensure_topics(s)
        async with EventProducer(s) as producer:
            n = await run_agent(producer, sampler, interval_s=interval_s, tenant=tenant, service=service,
                                cloud=cloud, region=region, instance_type=instance_type, intervals=intervals)
        console.print(f"sent {n} usage events")

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        sampler.close()


@app.command()
def up(
    simulate_hosts: int = typer.Option(24, help="Simulated GPU hosts (0: no simulator)."),
    optimizer: bool = typer.Option(True, help="Also run the optimizer's measured workloads."),
    demo: bool = typer.Option(True, help="Demo alert rules for the simulated tenants and a webhook to the "
                                         "built-in receiver (loopback webhooks allowed for this run)."),
):
    """The embedded default in one command: local Kafka, the stream worker, the API with the
    dashboard, the simulator and the optimizer. Ctrl-C stops all of it."""
    from core import broker
    from core.db import init_db

    s = get_settings()
    with console.status("starting Kafka (first run fetches it from Maven Central) ..."):
        broker.start(s)
    init_db(s)
    from api.keys import ensure_admin_key

    admin_key = ensure_admin_key(s)  # reused across runs from data_dir/admin.key
    env = os.environ.copy()
    if demo and simulate_hosts:
        # The demo webhook calls this API's own receiver on 127.0.0.1, which is refused by default.
        env.setdefault("GPUCOST_WEBHOOK_ALLOW_PRIVATE", "true")
    exe = [sys.executable, "-m", "gpucost.cli"]
    procs: dict[str, subprocess.Popen] = {}
    plan = [("worker", [*exe, "worker"]), ("api", [*exe, "api"])]
    if simulate_hosts:
        plan.append(("simulator", [*exe, "simulate", "--hosts", str(simulate_hosts)]))
    if s.dcgm_urls:  # GPUCOST_DCGM_URLS: scrape these dcgm-exporters as a service of its own
        plan.append(("dcgm", [*exe, "scrape", "dcgm"]))
    if optimizer and _has_command("optimizer"):
        plan.append(("optimizer", [*exe, "optimizer", "--load"]))
    for name, cmd in plan:
        procs[name] = subprocess.Popen(cmd, env=env, start_new_session=True,
                                       stdout=None if name != "simulator" else subprocess.DEVNULL)
        time.sleep(0.5)
    _wait_for_api(s, procs["api"])
    if demo and simulate_hosts:
        from ingest.simulator import Fleet

        try:
            made = demo_setup(f"http://{s.api_host}:{s.api_port}", admin_key, Fleet.build(hosts=simulate_hosts))
            console.print(f"demo: {made['rules']} alert rule(s) for the simulated tenants, webhook log on "
                          f"http://{s.api_host}:{s.api_port}/webhooks/log", soft_wrap=True)
        except Exception as exc:  # noqa: BLE001 - the stack runs without the demo
            console.print(f"[yellow]demo rules not created: {exc!r}[/]")
    # soft_wrap: the URL with its key must stay on one line to be copied or clicked.
    console.print(f"[bold green]gpucost is up[/]: dashboard on http://{s.api_host}:{s.api_port}/?api_key={admin_key}",
                  soft_wrap=True)
    console.print(f"Kafka {s.kafka_bootstrap}, database {s.database}; Ctrl-C stops everything", soft_wrap=True)

    stopping = False

    def _stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stopping:
            for name, p in procs.items():
                if p.poll() is not None:
                    console.print(f"[red]{name} exited with {p.returncode}[/]; stopping")
                    stopping = True
                    break
            time.sleep(0.5)
    finally:
        for name, p in reversed(list(procs.items())):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for name, p in procs.items():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        with console.status("stopping Kafka ..."):
            broker.stop(s)
        console.print("stopped")


def demo_setup(base_url: str, admin_key: str, fleet, fail_first: bool = True) -> dict:
    """Through the API, as a user would: the demo rules (ingest.simulator.demo_rules) and one webhook
    to the built-in receiver, whose first attempt of each delivery fails so the log shows a retry.
    Idempotent: rules and webhook named "demo: ..." are made once."""
    import httpx

    from ingest.simulator import demo_rules

    h = {"Authorization": f"Bearer {admin_key}"}
    with httpx.Client(base_url=base_url, headers=h, timeout=30) as c:
        have = {r["name"] for r in c.get("/api/rules").raise_for_status().json()}
        made = 0
        for spec in demo_rules(fleet):
            if spec["name"] not in have:
                c.post("/api/rules", json=spec).raise_for_status()
                made += 1
        hooks = [w for w in c.get("/api/webhooks").raise_for_status().json() if w["name"] == "demo: built-in receiver"]
        if not hooks:
            hook = c.post("/api/webhooks", json={"name": "demo: built-in receiver",
                                                 "url": base_url + "/api/receiver/pending"}).raise_for_status().json()
            url = f"{base_url}/api/receiver/{hook['id']}" + ("?fail_first=1" if fail_first else "")
            c.patch(f"/api/webhooks/{hook['id']}", json={"url": url}).raise_for_status()
    return {"rules": made}


def _wait_for_api(s, proc: subprocess.Popen, timeout_s: float = 90.0) -> None:
    """Print the dashboard's address only once it answers."""
    import httpx

    deadline = time.monotonic() + timeout_s
    with console.status("waiting for the API ..."):
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://{s.api_host}:{s.api_port}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)


def _has_command(name: str) -> bool:
    return any(getattr(c, "name", None) == name or (c.callback and c.callback.__name__ == name)
               for c in app.registered_commands)


def _register_commands() -> None:
    from gpucost import keys_cli, pricing_cli, sources_cli, watch_cli
    from optimizer import cli as optimizer_cli
    from optimizer import recommend_cli

    for module in (pricing_cli, recommend_cli, keys_cli, optimizer_cli, sources_cli, watch_cli):
        module.register(app)


def main():
    _register_commands()
    app()


if __name__ == "__main__":
    main()
