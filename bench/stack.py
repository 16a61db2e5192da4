"""The real stack (worker and API as subprocesses) on a broker, each run on its own topics (a
unique prefix), data dir and database; with the brute-force window reference. Shared by the tests
(tests/support.py re-exports it) and the benchmarks, which run without pytest."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # keep polling: the service may still be starting
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else ""))


async def async_wait_for(predicate, timeout: float = 30.0, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Stack:
    """One isolated gpucost deployment for a test: its own topics, data dir, database and port."""

    def __init__(self, tmp_path: Path, database_url: str | None = None, **env_overrides):
        self.prefix = f"t{uuid.uuid4().hex[:10]}."
        self.tmp = tmp_path
        self.port = free_port()
        self.env = os.environ.copy()
        self.env.update({
            "GPUCOST_TOPIC_PREFIX": self.prefix,
            "GPUCOST_DATA_DIR": str(tmp_path / "data"),
            "GPUCOST_API_PORT": str(self.port),
            "GPUCOST_WORKER_ID": "worker",
            "PYTHONUNBUFFERED": "1",
        })
        if database_url:
            self.env["GPUCOST_DATABASE_URL"] = database_url
        self.env.update({k: str(v) for k, v in env_overrides.items()})
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {"api": self.port}  # API instance name -> port
        self.admin_key: str | None = None  # created for this stack's database by start_api()
        self.settings = Settings(**{k[len("GPUCOST_"):].lower(): v for k, v in self.env.items()
                                    if k.startswith("GPUCOST_") and k != "GPUCOST_ENV_FILE"})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def _spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "gpucost.cli", *args], env={**self.env, **(env or {})}, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        p = self.tmp / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def start_worker(self, name: str = "worker") -> None:
        """Start a worker; further names are further members of the same worker group."""
        seen = len(self.log(name))  # a restart appends to the same log: wait for a new "Ready"
        self._spawn(name, "worker", "--loglevel", "info")
        wait_for(lambda: "Worker]: Ready" in self.log(name)[seen:] or self._dead(name), 60, what=f"{name} ready")
        assert not self._dead(name), self.log(name)[-4000:]

    @property
    def headers(self) -> dict[str, str]:
        """Authenticates a REST call as admin (for /ws, add `?api_key=` + stack.admin_key)."""
        return {"Authorization": f"Bearer {self.ensure_admin_key()}"}

    def ensure_admin_key(self) -> str:
        if self.admin_key is None:
            from api.keys import create_key

            self.admin_key = create_key(self.settings, admin=True, name="test stack").key
        return self.admin_key

    def create_key(self, tenant: str) -> str:
        """A key bound to one tenant, for tenant isolation tests."""
        from api.keys import create_key

        return create_key(self.settings, tenant=tenant, name="test tenant").key

    def start_api(self, name: str = "api") -> str:
        """Start an API instance; a name other than "api" is a further instance on a port of its
        own (same topics and database). Returns its base URL."""
        self.ensure_admin_key()
        port = self.ports.setdefault(name, self.port if name == "api" else free_port())
        url = f"http://127.0.0.1:{port}"
        self._spawn(name, "api", env={"GPUCOST_API_PORT": str(port)})
        wait_for(lambda: self._dead(name) or httpx.get(url + "/healthz", timeout=2).status_code == 200,
                 60, what=f"{name} healthz")
        assert not self._dead(name), self.log(name)[-4000:]
        return url

    def _dead(self, name: str) -> bool:
        p = self.procs.get(name)
        return p is not None and p.poll() is not None

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs.pop(name)
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        p.wait(30)

    def stop(self, graceful: bool = True) -> None:
        """Stop every process: SIGTERM, then SIGKILL what has not exited after 15 s. graceful=False
        kills at once: for a test's teardown, which checks nothing about the shutdown (a restarted
        API can take seconds to stop while its webhook consumer still waits for a rebalance)."""
        for name in list(self.procs):
            p = self.procs[name]
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM if graceful else signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for name in list(self.procs):
            try:
                self.procs[name].wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.procs[name].pid, signal.SIGKILL)
        self.procs.clear()

    def get(self, path: str, **params):
        r = httpx.get(self.url + path, params=params, headers=self.headers, timeout=10)
        r.raise_for_status()
        return r.json()


async def read_topic(settings: Settings, topic: str, idle_ms: int = 1500) -> list:
    """Every record currently on a topic (for assertions), read with a plain aiokafka consumer."""
    from core.kafka import consumer, read_to_end, stop_consumer

    c = consumer(settings=settings, group_id=None)
    await c.start()
    out = []
    try:
        await read_to_end(c, topic, out.append)
    finally:
        await stop_consumer(c)
    return out


def last_aggregates(records, window_s: int | None = None) -> dict:
    """Latest aggregate per (tenant, service, region, gpu_model, model_version, window_start) among
    the records of `cost.aggregates` (of one window size, if given)."""
    out = {}
    for r in records:
        v = json.loads(r.value)
        if window_s is None or v.get("window_s") == window_s:
            out[(v["tenant"], v["service"], v["region"], v["gpu_model"], v.get("model_version", ""),
                 v["window_start"])] = v
    return out


def expected_windows(events, price: dict[str, float] | None = None, size: int = 60, step: int = 10) -> dict:
    """Brute force, independent of the worker's panes: every window [ws, ws + size) that contains
    each event's ts, summed per key (tenant, service, region, gpu_model, model_version or "",
    window_start). `price`: USD per GPU-hour by GPU model (hand-written in a
    test), or None to price each event's instance from the catalog."""
    from core.pricing import default_catalog

    catalog = default_catalog()
    out = {}
    for e in events:
        usd_h = price[e.gpu_model] if price is not None else catalog.gpu_hour_price(
            e.cloud, e.region, e.instance_type, e.gpu_model).usd_per_gpu_hour
        cost = usd_h * e.interval_s / 3600
        first = (int(e.ts) // step) * step - size + step
        for ws in range(first, int(e.ts) + 1, step):
            if not ws <= e.ts < ws + size:
                continue
            w = out.setdefault((e.tenant, e.service, e.region, e.gpu_model, e.model_version or "", ws), {
                "spend_usd": 0.0, "gpu_seconds": 0.0, "util_s": 0.0, "idle_usd": 0.0, "events": 0, "tokens": 0})
            w["spend_usd"] += cost
            w["gpu_seconds"] += e.interval_s
            w["util_s"] += e.util * e.interval_s
            w["idle_usd"] += cost * (1 - e.util)
            w["events"] += 1
            w["tokens"] += e.tokens or 0
    for w in out.values():
        w["util_avg"] = w.pop("util_s") / w["gpu_seconds"]
        w["spend_rate_usd_h"] = w["spend_usd"] * 3600 / size
    return out
