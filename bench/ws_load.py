"""WebSocket fan-out under load: N concurrent /ws clients on loopback while window records flow
through cost.aggregates into the API (a real `gpucost api` process on the local broker). Each
record carries the time it was published; each client notes when it arrives. Prints push latency
percentiles (publish on Kafka -> hub -> client socket), messages delivered, the API's memory, and
how slow clients fared (they stop reading for a while: their queues coalesce, latest value per key
wins, and the fast clients' latency must not move).

    python -m bench.ws_load --clients 1000 --tenants 10 --keys-per-tenant 5 --rate 50 --duration 30 --slow 5
"""

from __future__ import annotations

import argparse
import base64
import random
import asyncio
import json
import os
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import kafka  # noqa: E402
from tests.support import Stack  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    """utime + stime of a process, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


class LoadClient:
    def __init__(self, url: str, tenant: str | None, rcvbuf: int | None = None):
        self.url, self.tenant, self.rcvbuf = url, tenant, rcvbuf  # tenant None: every tenant
        self.latencies_ms: list[float] = []
        self.received = 0
        self.latest: dict[tuple, int] = {}  # (service, window_start) -> seq of the newest value seen
        self.ws = None
        self.reading = asyncio.Event()
        self.reading.set()

    async def connect(self) -> None:
        sock = None
        if self.rcvbuf:  # a small receive buffer: backpressure reaches the server quickly
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            sock.setblocking(False)
            host, port = self.url.split("//", 1)[1].split("/", 1)[0].split(":")
            await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        self.ws = await websockets.connect(self.url, max_queue=4, open_timeout=60, ping_interval=None, sock=sock)
        flt = {"tenant": self.tenant} if self.tenant else {}
        await self.ws.send(json.dumps({"op": "subscribe", "channel": "aggregates", "filter": flt}))
        while json.loads(await self.ws.recv())["type"] != "snapshot":
            pass

    async def run(self, measuring: asyncio.Event) -> None:
        ws = self.ws
        try:
            while True:
                await self.reading.wait()
                raw = await ws.recv()
                now = time.time()
                msg = json.loads(raw)
                if msg.get("type") != "aggregate":
                    continue
                rec = msg["data"]
                self.received += 1
                if measuring.is_set():
                    self.latencies_ms.append((now - rec["bench_sent_ts"]) * 1000)
                key = (rec["tenant"], rec["service"], rec["window_start"])
                self.latest[key] = max(self.latest.get(key, -1), rec["bench_seq"])
        except (websockets.ConnectionClosed, asyncio.CancelledError):
            pass


async def publish(settings, tenants: int, keys_per_tenant: int, rate: float, duration_s: float,
                  latest_seq: dict, stop: asyncio.Event, pad_bytes: int) -> int:
    """rate records/s, round robin over tenants x keys; each with its publish time and a sequence."""
    p = kafka.producer(settings, linger_ms=0)
    await p.start()
    now = int(time.time()) // 60 * 60
    n = 0
    started = time.monotonic()
    rng = random.Random(1)
    try:
        while time.monotonic() - started < duration_s and not stop.is_set():
            due = started + n / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            t, k = n % tenants, (n // tenants) % keys_per_tenant
            rec = {"kind": "usage", "tenant": f"tenant-{t}", "service": f"svc-{k}", "region": "us-east-1",
                   "gpu_model": "H100", "window_start": now, "window_end": now + 60, "window_s": 60,
                   "spend_usd": float(n), "spend_rate_usd_h": float(n) * 60, "gpu_seconds": 60.0, "util_avg": 0.5,
                   "idle_usd": 0.0, "events": 1, "tokens": 0, "requests": 0, "fallback_priced_events": 0,
                   "bench_seq": n, "bench_sent_ts": time.time()}
            if pad_bytes:  # incompressible: permessage-deflate must not shrink it
                rec["bench_pad"] = base64.b64encode(rng.randbytes(pad_bytes * 3 // 4)).decode()
            await p.send(settings.aggregates_topic, json.dumps(rec).encode(), key=f"{t}|{k}".encode())
            latest_seq[(f"tenant-{t}", f"svc-{k}", now)] = n
            n += 1
        await p.flush()
    finally:
        await p.stop()
    return n


async def run(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="gpucost-wsload-"))
    stack = Stack(tmp)
    stack.start_api()
    api_pid = stack.procs["api"].pid
    out: dict = {"clients": args.clients, "slow_clients": args.slow, "rate_records_s": args.rate,
                 "duration_s": args.duration, "tenants": args.tenants, "keys_per_tenant": args.keys_per_tenant}
    try:
        out["api_rss_idle_mb"] = round(rss_mb(api_pid), 1)
        url = stack.ws_url + "?api_key=" + stack.admin_key
        clients = [LoadClient(url, f"tenant-{i % args.tenants}") for i in range(args.clients)]
        clients += [LoadClient(url, None, rcvbuf=4096) for _ in range(args.slow)]  # every tenant
        slow = clients[args.clients:]
        fast = clients[:args.clients]
        t0 = time.monotonic()
        sem = asyncio.Semaphore(100)

        async def connect(c):
            async with sem:
                await c.connect()

        await asyncio.gather(*(connect(c) for c in clients))
        out["connect_all_s"] = round(time.monotonic() - t0, 2)
        out["api_rss_connected_mb"] = round(rss_mb(api_pid), 1)
        measuring = asyncio.Event()
        readers = [asyncio.create_task(c.run(measuring)) for c in clients]
        for c in slow:
            c.reading.clear()  # stop reading: the server must coalesce for these alone
        latest_seq: dict = {}
        stop = asyncio.Event()
        pub = asyncio.create_task(publish(stack.settings, args.tenants, args.keys_per_tenant, args.rate,
                                          args.duration, latest_seq, stop, args.pad_bytes))
        await asyncio.sleep(min(3.0, args.duration / 5))  # warm-up: not measured
        measuring.set()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        api_cpu0, measured_from = cpu_s(api_pid), time.monotonic()
        peak_rss = 0.0
        while not pub.done():
            peak_rss = max(peak_rss, rss_mb(api_pid))
            await asyncio.sleep(0.5)
        published = pub.result()
        await asyncio.sleep(2.0)  # let the last updates land
        measuring.clear()
        out["api_cpu_share"] = round((cpu_s(api_pid) - api_cpu0) / (time.monotonic() - measured_from), 2)
        out["api_rss_peak_mb"] = round(peak_rss, 1)
        out["published"] = published
        lat = [x for c in fast for x in c.latencies_ms]
        out["delivered_fast"] = sum(c.received for c in fast)
        out["load_avg_1m"] = os.getloadavg()[0]
        out["latency_ms"] = {"p50": round(pct(lat, 50), 1), "p95": round(pct(lat, 95), 1),
                             "p99": round(pct(lat, 99), 1), "max": round(max(lat), 1) if lat else None,
                             "mean": round(statistics.fmean(lat), 1) if lat else None, "samples": len(lat)}
        # Fast clients: every key's newest value arrived.
        fast_behind = sum(1 for c in fast for key, seq in latest_seq.items()
                          if key[0] == c.tenant and c.latest.get(key, -1) != seq)
        out["fast_clients_missing_latest"] = fast_behind
        if slow:
            stats = httpx.get(stack.url + "/api/stats", headers=stack.headers, timeout=10).json()
            out["ws_dropped_by_coalescing"] = stats.get("ws_dropped")
            before = [c.received for c in slow]
            for c in slow:
                c.reading.set()  # catch up: they must end on the newest value of every key
            await asyncio.sleep(3.0)
            out["slow_received_while_paused"] = sum(before)
            out["slow_received_total"] = sum(c.received for c in slow)
            out["slow_published_for_them"] = published * len(slow)
            out["slow_clients_missing_latest"] = sum(1 for c in slow for (t, s, w), seq in latest_seq.items()
                                                     if c.latest.get((t, s, w), -1) != seq)
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        out["client_cpu_s"] = round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 1)
        out["bench_rss_mb"] = round(rss_mb(os.getpid()), 1)
        for t in readers:
            t.cancel()
        await asyncio.gather(*(c.ws.close() for c in clients), return_exceptions=True)
    finally:
        stack.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--slow", type=int, default=5, help="extra clients that stop reading")
    parser.add_argument("--tenants", type=int, default=10, help="clients subscribe to one tenant each")
    parser.add_argument("--keys-per-tenant", type=int, default=5)
    parser.add_argument("--rate", type=float, default=50.0, help="window records published per second")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--pad-bytes", type=int, default=0,
                        help="extra incompressible bytes per record (fills a stuck client's socket buffers sooner)")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    out = asyncio.run(run(args))
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
