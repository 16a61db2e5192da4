"""Fault report: each fault injected into a real, isolated deployment on the local broker, with
events sent, aggregated, lost and double-counted (lost and double-counted must be zero).

  worker SIGKILL x2 + replay   the stream worker killed twice mid-stream; before the second
                               restart its committed offsets are rewound half way (a crash
                               between durable panes and the commit), so folded messages replay
  broker SIGTERM / SIGKILL     a second broker of its own restarted mid-stream (and once kept
                               down ~45 s, past the producer's 30 s request timeout)
  API SIGKILL                  window records published before, during and after an API restart;
                               a reconnecting WebSocket client and REST history must hold them all
  cluster                      a three-broker KRaft cluster of its own (replication 3,
                               min.insync.replicas 2), two workers, two APIs: SIGKILL one broker
                               mid-stream, restart it, then SIGKILL the controller leader; the
                               stall on the WebSocket clients and the producer is measured

    python -m bench.faults            (needs `gpucost kafka start`; ~4 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import broker  # noqa: E402
from core.settings import Settings  # noqa: E402
from bench.fault_harness import (  # noqa: E402
    ReconnectingClient, Tally, aggregate_record, free_cluster_base, publish_aggregates, run_broker_restart,
    run_cluster_faults, run_worker_crash)
from bench.stack import Stack as _Stack  # noqa: E402
from bench.stack import async_wait_for, free_port  # noqa: E402


def Stack(tmp: Path, **kw) -> _Stack:  # noqa: N802 (a test Stack in a folder of its own)
    tmp.mkdir(parents=True, exist_ok=True)
    return _Stack(tmp, **kw)


async def worker_fault(tmp: Path) -> Tally:
    stack = Stack(tmp / "worker")
    try:
        return await run_worker_crash(stack)
    finally:
        stack.stop()


async def broker_fault(tmp: Path, hard: bool, down_s: float = 2.0) -> Tally:
    name = ("sigkill" if hard else "sigterm") + f"-{down_s:.0f}s"
    bs = Settings(data_dir=tmp / f"broker-{name}", kafka_bootstrap=f"127.0.0.1:{free_port()}",
                  kafka_controller_port=free_port())
    await asyncio.to_thread(broker.start, bs)
    stack = Stack(tmp / f"stack-{name}", GPUCOST_KAFKA_BOOTSTRAP=bs.kafka_bootstrap,
                  BROKER_SESSION_TIMEOUT="10", BROKER_HEARTBEAT_INTERVAL="1")
    try:
        t = await run_broker_restart(stack, bs, hard=hard, down_s=down_s)
        if down_s > 30:  # past the producer's 30 s request timeout: sends must still not give up
            t.fault += f" {down_s:.0f}s"
        return t
    finally:
        stack.stop()
        await asyncio.to_thread(broker.stop, bs)


async def cluster_fault(tmp: Path) -> Tally:
    cs = Settings(data_dir=tmp / "cluster", kafka_cluster_port=free_cluster_base())
    nodes = await asyncio.to_thread(broker.start_cluster, cs, 3)
    stack = Stack(tmp / "stack-cluster", **broker.cluster_env(cs, 3), BROKER_SESSION_TIMEOUT="10",
                  BROKER_HEARTBEAT_INTERVAL="1")
    try:
        return await run_cluster_faults(stack, cs, nodes)
    finally:
        stack.stop()
        await asyncio.to_thread(broker.stop_cluster, cs, 3)


async def api_fault(tmp: Path, per_phase: int = 20) -> Tally:
    """Window records before, while and after the API is down: every one must be in REST history
    with its value (no gaps, no duplicates), and the client must resubscribe and get live ones."""
    stack = Stack(tmp / "api")
    try:
        stack.start_api()
        now = int(time.time()) // 60 * 60
        published: dict[tuple, float] = {}

        def batch(phase: int) -> list[dict]:
            recs = [aggregate_record(f"tenant-{i % 3}", f"svc-{phase}", now - 60 * (per_phase - i), 1.0 + phase * 100 + i)
                    for i in range(per_phase)]
            for r in recs:
                published[(r["tenant"], r["service"], r["window_start"])] = r["spend_usd"]
            return recs

        client = ReconnectingClient(stack.ws_url, stack.admin_key)
        task = asyncio.create_task(client.run())
        await async_wait_for(lambda: client.connections >= 1 and client.snapshots, 20, what="client up")
        await publish_aggregates(stack.settings, batch(0))
        stack.kill("api", signal.SIGKILL)
        down = time.monotonic()
        await publish_aggregates(stack.settings, batch(1))  # while the API is down
        await asyncio.to_thread(stack.start_api)
        down_s = time.monotonic() - down
        await async_wait_for(lambda: client.connections >= 2 and len(client.snapshots) >= 2, 30, what="reconnect")
        await publish_aggregates(stack.settings, batch(2))
        await async_wait_for(lambda: sum(1 for r in client.updates if r["service"] == "svc-2") >= per_phase, 20,
                             what="live updates after resubscribe")
        task.cancel()

        def history() -> list[dict]:
            return httpx.get(stack.url + "/api/history", params={"since": now - 3600}, headers=stack.headers).json()

        rows = await async_wait_for(lambda: (h := history()) and len(h) >= len(published) and h, 20, what="history")
        seen: dict[tuple, list[float]] = {}
        for r in rows:
            seen.setdefault((r["tenant"], r["service"], r["window_start"]), []).append(r["spend_usd"])
        t = Tally("API SIGKILL (WS + history)", sent=len(published))
        t.aggregated = sum(1 for k, v in published.items() if seen.get(k) == [v])
        t.lost = sum(1 for k in published if k not in seen)
        t.double_counted = sum(len(v) - 1 for v in seen.values() if len(v) > 1)
        t.windows = len(published)
        t.windows_wrong = sum(1 for k, v in published.items() if k in seen and seen[k] != [v])
        t.notes["API down s"] = round(down_s, 1)
        t.notes["ws reconnects"] = client.connections - 1
        t.notes["live after resubscribe"] = sum(1 for r in client.updates if r["service"] == "svc-2")
        return t
    finally:
        stack.stop()


async def main(args) -> int:
    import logging

    # aiokafka logs every retry while a broker is down; the tallies are the report.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    tallies = []
    with tempfile.TemporaryDirectory(prefix="gpucost-faults-") as d:
        tmp = Path(d)
        if not await asyncio.to_thread(broker.answers, Settings().kafka_bootstrap):
            print("needs the local broker: gpucost kafka start", file=sys.stderr)
            return 2
        runs = [("worker", lambda: worker_fault(tmp)), ("broker", lambda: broker_fault(tmp, hard=False)),
                ("broker", lambda: broker_fault(tmp, hard=True)),
                ("broker", lambda: broker_fault(tmp, hard=True, down_s=45.0)), ("api", lambda: api_fault(tmp)),
                ("cluster", lambda: cluster_fault(tmp))]
        for name, run in runs:
            if args.only and name not in args.only:
                continue
            started = time.monotonic()
            t = await run()
            t.notes["took s"] = round(time.monotonic() - started, 1)
            print(t.line(), flush=True)
            tallies.append(t)
    ok = all(t.lost == 0 and t.double_counted == 0 and t.windows_wrong == 0 and t.aggregated == t.sent for t in tallies)
    print("ALL EXACT: lost 0, double-counted 0" if ok else "FAULT REPORT HAS LOSS OR DOUBLE COUNTS")
    if args.json:
        Path(args.json).write_text(json.dumps([t.__dict__ for t in tallies], indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=["worker", "broker", "api", "cluster"])
    parser.add_argument("--json", help="also write the tallies here")
    sys.exit(asyncio.run(main(parser.parse_args())))
