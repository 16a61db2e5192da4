"""Shared by the fault tests and bench/faults.py (no pytest needed): a deterministic fleet of usage events sent tick
by tick while a fault is injected, the exact windows they must produce (brute force, independent
of the worker's panes), and the tally of events sent / aggregated / lost / double-counted."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from dataclasses import dataclass, field

from aiokafka import TopicPartition

from core import broker, kafka
from core.settings import Settings
from contracts.aggregates import AggregateKey, PaneRecordKey
from contracts.events import UsageEvent
from ingest.producer import EventProducer
from bench.stack import expected_windows, last_aggregates, read_topic

WINDOW_S = 60
FLEET = [  # (cloud, region, instance_type, gpu_model, gpus per host)
    ("aws", "us-east-1", "p5.48xlarge", "H100", 4),
    ("aws", "us-east-1", "g6.xlarge", "L4", 1),
]


def make_ticks(n_ticks: int = 100, hosts: int = 24, seed: int = 11, t0: float | None = None) -> list[list[UsageEvent]]:
    """n_ticks intervals of a fleet: hosts alternate between 4-GPU hosts (one batch message per
    tick) and 1-GPU hosts (one single-event message). Event times span n_ticks seconds ending
    about now, so no window closes or goes late during a test."""
    rng = random.Random(seed)
    t0 = float(int(time.time()) - n_ticks - 5) if t0 is None else t0
    tenants = ["acme", "globex", "initech"]
    ticks = []
    for k in range(n_ticks):
        tick = []
        for h in range(hosts):
            cloud, region, itype, model, gpus = FLEET[h % len(FLEET)]
            tenant = tenants[h % len(tenants)]
            for g in range(gpus):
                util = round(rng.random(), 4)
                tick.append(UsageEvent(
                    ts=t0 + k + (h % 10) / 10 + g / 100, tenant=tenant, service=f"svc-{h % 2}", cloud=cloud,
                    region=region, instance_type=itype, gpu_model=model, host=f"host-{h}", gpu_index=g,
                    interval_s=1.0, util=util, mem_used_gb=1.0, mem_total_gb=80.0 if model == "H100" else 24.0,
                    power_w=300.0 * util, tokens=rng.randrange(0, 5000)))
        ticks.append(tick)
    return ticks


@dataclass
class Tally:
    fault: str
    sent: int = 0
    aggregated: int = 0
    lost: int = 0
    double_counted: int = 0
    windows: int = 0
    windows_wrong: int = 0
    notes: dict = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return self.lost == 0 and self.double_counted == 0 and self.windows_wrong == 0 and self.aggregated == self.sent

    def line(self) -> str:
        extra = "".join(f", {k} {v}" for k, v in self.notes.items())
        return (f"{self.fault:28} sent {self.sent:6}  aggregated {self.aggregated:6}  lost {self.lost:3}  "
                f"double-counted {self.double_counted:3}  windows {self.windows} ({self.windows_wrong} wrong){extra}")


def tally(fault: str, sent_events: list[UsageEvent], aggregates: dict[tuple, dict]) -> Tally:
    """Compare the newest record of every window with the expected sums. Events are counted on
    the windows that start on a multiple of the window size: those tile time, so each event is in
    exactly one of them."""
    expected = expected_windows(sent_events)
    t = Tally(fault, sent=len(sent_events), windows=len(expected))
    for key, exp in expected.items():
        got = aggregates.get(key)
        got_events = got["events"] if got else 0
        if key[-1] % WINDOW_S == 0:
            t.aggregated += got_events
            t.lost += max(0, exp["events"] - got_events)
            t.double_counted += max(0, got_events - exp["events"])
        if got is None or got_events != exp["events"] or got["tokens"] != exp["tokens"] or any(
                abs(got[f] - exp[f]) > 1e-9 * max(1.0, abs(exp[f])) for f in ("spend_usd", "gpu_seconds", "idle_usd")):
            t.windows_wrong += 1
    t.windows_wrong += sum(1 for k in aggregates if k not in expected)  # windows that should not exist
    return t


async def latest_aggregates(settings: Settings) -> dict[tuple, dict]:
    return last_aggregates(await read_topic(settings, settings.aggregates_topic), window_s=WINDOW_S)


async def converge(fault: str, settings: Settings, sent: list[UsageEvent], timeout_s: float = 90.0) -> Tally:
    """Poll cost.aggregates until every window is exact or the time is up; the last tally."""
    deadline = time.monotonic() + timeout_s
    while True:
        t = tally(fault, sent, await latest_aggregates(settings))
        if t.exact or time.monotonic() > deadline:
            return t
        await asyncio.sleep(2.0)


class TickProducer:
    """Sends ticks through the one EventProducer, each acknowledged before the next, and records
    what was acknowledged; `sent_through` lets a test inject its fault at a chosen tick."""

    def __init__(self, settings: Settings, ticks: list[list[UsageEvent]], pace_s: float = 0.1):
        self.settings, self.ticks, self.pace_s = settings, ticks, pace_s
        self.sent: list[UsageEvent] = []
        self.sent_through = -1
        self.send_retries = 0
        self.slowest_send_s = 0.0
        self.gates: dict[int, asyncio.Event] = {}  # tick -> sent only once the event is set

    async def run(self) -> None:
        async with EventProducer(self.settings) as producer:
            for k, tick in enumerate(self.ticks):
                if k in self.gates:
                    await self.gates[k].wait()
                started = time.monotonic()
                await producer.send_usage(tick)
                self.slowest_send_s = max(self.slowest_send_s, time.monotonic() - started)
                self.sent.extend(tick)
                self.sent_through = k
                await asyncio.sleep(self.pace_s)

    async def reached(self, k: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.sent_through < k:
            if time.monotonic() > deadline:
                raise AssertionError(f"producer did not reach tick {k} (at {self.sent_through})")
            await asyncio.sleep(0.05)


async def usage_group_offsets(settings: Settings) -> dict[int, int]:
    """The worker's committed offsets on the usage topic, by partition."""
    c = kafka.consumer(settings=settings, group_id=f"{settings.topic_prefix}{settings.worker_id}-usage")
    await c.start()
    try:
        tps = [TopicPartition(settings.usage_topic, p) for p in range(settings.topic_partitions)]
        return {tp.partition: (await c.committed(tp)) or 0 for tp in tps}
    finally:
        await kafka.stop_consumer(c)


async def rewind_usage_group(settings: Settings, to: dict[int, int], timeout_s: float = 40.0) -> None:
    """Move the worker's committed offsets back (the worker must be down): everything after them
    is delivered again, as after a crash between persisting panes and committing. Retries until
    the killed member's session has expired and the group accepts a commit from outside."""
    group = f"{settings.topic_prefix}{settings.worker_id}-usage"
    deadline = time.monotonic() + timeout_s
    while True:
        c = kafka.consumer(settings=settings, group_id=group)
        await c.start()
        try:
            tps = {TopicPartition(settings.usage_topic, p): off for p, off in to.items()}
            c.assign(list(tps))
            await c.commit(tps)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
        finally:
            await kafka.stop_consumer(c)
        await asyncio.sleep(1.0)


async def pane_offsets(settings: Settings) -> dict[int, int]:
    """Newest source offset folded into a durable pane record, by source partition."""
    out: dict[int, int] = {}
    for r in await read_topic(settings, settings.panes_topic):
        if r.value is not None:
            p = PaneRecordKey.decode(r.key.decode()).partition
            out[p] = max(out.get(p, -1), json.loads(r.value)["last_offset"])
    return out


def aggregate_record(tenant: str, service: str, window_start: int, spend_usd: float) -> dict:
    """A window record as the worker emits it, for tests of the API alone."""
    return {"kind": "usage", "tenant": tenant, "service": service, "region": "us-east-1", "gpu_model": "H100",
            "window_start": window_start, "window_end": window_start + WINDOW_S, "window_s": WINDOW_S,
            "spend_usd": spend_usd, "spend_rate_usd_h": spend_usd * 3600 / WINDOW_S, "gpu_seconds": 60.0,
            "util_avg": 0.5, "idle_usd": spend_usd / 2, "events": 6, "tokens": 0, "requests": 0,
            "fallback_priced_events": 0}


async def publish_aggregates(settings: Settings, records: list[dict]) -> None:
    """Put window records on cost.aggregates as the worker would (key: the aggregate key)."""
    p = kafka.producer(settings)
    await p.start()
    try:
        for rec in records:
            key = AggregateKey.of(rec).encode().encode()
            await p.send_and_wait(settings.aggregates_topic, json.dumps(rec).encode(), key=key)
    finally:
        await p.stop()


class ReconnectingClient:
    """A client as a program would write one: websockets' reconnecting iterator (exponential
    backoff), subscribing again on every new connection."""

    def __init__(self, url: str, key: str):
        self.url = url + "?api_key=" + key
        self.connections = 0
        self.snapshots: list[list[dict]] = []
        self.updates: list[dict] = []

    async def run(self) -> None:
        import websockets
        from websockets.exceptions import ConnectionClosed

        async for ws in websockets.connect(self.url, open_timeout=2):
            self.connections += 1
            try:
                await ws.send(json.dumps({"op": "subscribe", "channel": "aggregates", "filter": {}}))
                async for raw in ws:
                    msg = json.loads(raw)
                    if msg["type"] == "snapshot":
                        self.snapshots.append(msg["data"])
                    elif msg["type"] == "aggregate":
                        self.updates.append(msg["data"])
            except ConnectionClosed:
                continue

    def saw(self, spend_usd: float) -> bool:
        return any(r["spend_usd"] == spend_usd for r in self.updates) or any(
            r["spend_usd"] == spend_usd for snap in self.snapshots for r in snap)


async def run_worker_crash(stack, n_ticks: int = 100) -> Tally:
    """SIGKILL the worker twice mid-stream; before the second restart rewind its committed offsets
    half way (a crash between durable panes and the commit), so folded messages are replayed."""
    stack.env.update({"BROKER_SESSION_TIMEOUT": "10", "BROKER_HEARTBEAT_INTERVAL": "1"})  # Faust's own group
    await asyncio.to_thread(stack.start_worker)
    producer = TickProducer(stack.settings, make_ticks(n_ticks), pace_s=0.15)
    sending = asyncio.create_task(producer.run())

    await producer.reached(n_ticks * 3 // 10)
    stack.kill("worker", signal.SIGKILL)  # mid-stream: the producer keeps going
    await asyncio.to_thread(stack.start_worker)

    await producer.reached(n_ticks * 6 // 10)
    stack.kill("worker", signal.SIGKILL)
    committed = await usage_group_offsets(stack.settings)
    durable = await pane_offsets(stack.settings)
    # Rewind half way, not to the start: a replay from offset 0 would come out right even with no
    # state restored at all. From half way, a lost restore loses the first half and a missing
    # offset check counts the second half twice.
    rewound = {p: off // 2 for p, off in committed.items()}
    await rewind_usage_group(stack.settings, rewound)
    await asyncio.to_thread(stack.start_worker)

    await sending
    t = await converge("worker SIGKILL x2 + replay", stack.settings, producer.sent)
    t.notes["replayed msgs"] = sum(committed.values()) - sum(rewound.values())
    t.notes["durable before replay"] = sum(off + 1 for off in durable.values())
    return t


async def run_broker_restart(stack, broker_settings: Settings, n_ticks: int = 80, hard: bool = False,
                             down_s: float = 2.0) -> Tally:
    """Stop (or SIGKILL) a broker of its own mid-stream, keep it down a while, start it again."""
    await asyncio.to_thread(stack.start_worker)
    producer = TickProducer(stack.settings, make_ticks(n_ticks, seed=23), pace_s=0.1)
    sending = asyncio.create_task(producer.run())
    await producer.reached(n_ticks * 4 // 10)
    down_at = time.monotonic()
    if hard:
        pid = int((broker_settings.data_dir / "kafka" / "kafka.pid").read_text())
        os.killpg(pid, signal.SIGKILL)
        await asyncio.to_thread(broker.stop, broker_settings)  # reaps it, removes the pid file
    else:
        await asyncio.to_thread(broker.stop, broker_settings)
    await asyncio.sleep(down_s)  # down for a while: sends pile up behind it
    await asyncio.to_thread(broker.start, broker_settings)
    downtime_s = time.monotonic() - down_at
    await sending  # raises if any send was given up on
    t = await converge("broker " + ("SIGKILL" if hard else "restart"), stack.settings, producer.sent, timeout_s=120)
    t.notes["broker down s"] = round(downtime_s, 1)
    t.notes["slowest send s"] = round(producer.slowest_send_s, 1)
    t.notes["worker alive"] = stack.procs["worker"].poll() is None
    return t


def free_cluster_base(brokers: int = 3) -> int:
    """A base port with `brokers` free ports from it and `brokers` free ports 100 above it, below
    Linux's ephemeral range (32768 and up), where an outgoing connection could take one between
    this check and the broker's start."""
    import socket

    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32768 - 200)
        try:
            socks = []
            for p in [*range(base, base + brokers), *range(base + 100, base + 100 + brokers)]:
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range for a local cluster")


class GapWatch:
    """Arrival times of window records on WebSocket clients: the longest silence after a moment
    (a broker killed) is how long the stream stalled for those clients."""

    def __init__(self):
        self.arrivals: list[float] = []

    def saw(self) -> None:
        self.arrivals.append(time.monotonic())

    def stall_between(self, t0: float, t1: float) -> float:
        """Longest silence from t0 (a kill) to t1, up to the first arrival after t1 if none came."""
        pts = [t0] + [a for a in self.arrivals if t0 < a <= t1]
        pts += [a for a in self.arrivals if a > t1][:1]
        return max(b - a for a, b in zip(pts, pts[1:])) if len(pts) > 1 else float("inf")


async def wait_full_isr(settings: Settings, timeout_s: float = 120.0) -> float:
    """Wait until every partition of this run's topics has all its replicas in sync; seconds waited."""
    started = time.monotonic()
    client = kafka.admin(settings)
    await client.start()
    try:
        while True:
            names = [t for t in await client.list_topics() if t.startswith(settings.topic_prefix)]
            parts = [p for t in await client.describe_topics(names) for p in t["partitions"]]
            # every replica in sync (Faust's own internal topics have fewer replicas than ours)
            if parts and all(set(p["isr"]) >= set(p["replicas"]) for p in parts):
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise AssertionError(f"ISR not full after {timeout_s}s")
            await asyncio.sleep(0.5)
    finally:
        await client.close()


async def run_cluster_faults(stack, cluster_settings: Settings, nodes, n_ticks: int = 150) -> Tally:
    """Two workers and two APIs on a three-node cluster: SIGKILL a broker that is not the quorum
    leader mid-stream, bring it back, then SIGKILL the quorum (controller) leader. The final
    windows must be exact (nothing lost, nothing counted twice), on cost.aggregates and on a
    WebSocket of each API; the stall each kill causes is measured on the WebSocket clients and
    on the producer's acknowledged sends."""
    import websockets

    for name in ("worker", "worker2"):
        await asyncio.to_thread(stack.start_worker, name)
    urls = [await asyncio.to_thread(stack.start_api, name) for name in ("api", "api2")]
    watch = GapWatch()
    latest: list[dict] = [{}, {}]

    async def client(i: int, url: str) -> None:
        async for ws in websockets.connect(url.replace("http", "ws") + "/ws?api_key=" + stack.ensure_admin_key()):
            try:
                await ws.send(json.dumps({"op": "subscribe", "channel": "aggregates", "filter": {}}))
                async for raw in ws:
                    msg = json.loads(raw)
                    recs = msg["data"] if msg["type"] == "snapshot" else [msg["data"]] if msg["type"] == "aggregate" else []
                    for r in recs:
                        if r["window_s"] == WINDOW_S:
                            latest[i][(r["tenant"], r["service"], r["region"], r["gpu_model"], r["model_version"],
                                       r["window_start"])] = r
                    if msg["type"] == "aggregate":
                        watch.saw()
            except Exception:
                await asyncio.sleep(0.5)

    clients = [asyncio.create_task(client(i, u)) for i, u in enumerate(urls)]
    producer = TickProducer(stack.settings, make_ticks(n_ticks, seed=31), pace_s=0.1)
    # The stream pauses at 50 % while the killed broker restarts (tens of seconds here), so the
    # controller leader is killed with events still flowing.
    resume = producer.gates[n_ticks // 2] = asyncio.Event()
    sending = asyncio.create_task(producer.run())
    notes = {}
    try:
        await producer.reached(n_ticks * 3 // 10)
        leader = broker.controller_leader(nodes)
        victim = next(n for n in nodes if n.node_id != leader)
        killed_at = time.monotonic()
        broker.kill_node(victim)
        await producer.reached(n_ticks // 2 - 1, timeout_s=120)
        notes["broker killed"] = victim.node_id
        paused_at = time.monotonic()
        await asyncio.to_thread(broker.start_node, cluster_settings, victim)
        await asyncio.to_thread(broker.wait_answering, [victim])
        back_at = time.monotonic()
        # Its replicas catch up and rejoin the ISR before the next kill: with one of two in-sync
        # replicas gone, acks=all writes to min.insync.replicas=2 would wait (correctly) instead.
        notes["isr full after restart s"] = round(await wait_full_isr(stack.settings), 1)
        resume.set()
        await producer.reached(n_ticks * 6 // 10, timeout_s=120)
        leader = broker.controller_leader(nodes)
        leader_node = next(n for n in nodes if n.node_id == leader)
        slow_before = producer.slowest_send_s
        producer.slowest_send_s = 0.0
        leader_killed_at = time.monotonic()
        broker.kill_node(leader_node)
        notes["controller leader killed"] = leader
        await sending
        done_at = time.monotonic()
        for _ in range(60):  # the remaining voters elect a new leader
            new_leader = broker.controller_leader(nodes)
            if new_leader not in (None, leader):
                break
            await asyncio.sleep(0.5)
        notes["new controller leader"] = new_leader
        notes["ws stall after broker kill s"] = round(watch.stall_between(killed_at, min(back_at, paused_at)), 2)
        notes["ws stall after leader kill s"] = round(watch.stall_between(leader_killed_at, done_at), 2)
        notes["slowest send after broker kill s"] = round(slow_before, 2)
        notes["slowest send after leader kill s"] = round(producer.slowest_send_s, 2)
        t = await converge("3 brokers: kill 1, leader", stack.settings, producer.sent, timeout_s=180)
        expected = {k for k in expected_windows(producer.sent)}
        for i in range(2):  # the same exact windows on a WebSocket of each API
            deadline = time.monotonic() + 60
            while True:
                ws_t = tally("ws", producer.sent, dict(latest[i]))
                if ws_t.exact or time.monotonic() > deadline:
                    break
                await asyncio.sleep(1.0)
            notes[f"api{i + 1} ws exact"] = ws_t.exact and set(latest[i]) == expected
        t.notes.update(notes)
        t.notes["workers alive"] = all(stack.procs[n].poll() is None for n in ("worker", "worker2"))
        return t
    finally:
        for c in clients:
            c.cancel()
        sending.cancel()


def alert_record(tenant: str, state: str = "firing") -> dict:
    """An alert transition as the worker's evaluator writes it on cost.alerts."""
    now = time.time()
    return {"fingerprint": f"fp-{tenant}", "state": state, "rule_id": "r1", "rule_kind": "budget",
            "rule_name": f"{tenant} daily", "rule_version": 1, "level": "100%", "severity": "critical",
            "group": {"tenant": tenant}, "tenant": tenant, "service": None, "region": None, "gpu_model": None,
            "value": 12.5, "threshold": 10.0, "summary": f"{tenant} daily: day spend $12.50 reached 100% of the $10.00 budget",
            "starts_at": now, "ends_at": None, "details": {"period": "day"}, "emitted_at": now}


async def publish_alerts(settings: Settings, alerts: list[dict]) -> None:
    """Put alert transitions on cost.alerts as the worker would (key: the fingerprint)."""
    p = kafka.producer(settings)
    await p.start()
    try:
        for a in alerts:
            await p.send_and_wait(settings.alerts_topic, json.dumps(a).encode(), key=a["fingerprint"].encode())
    finally:
        await p.stop()
