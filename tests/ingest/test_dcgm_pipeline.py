"""End to end: recorded dcgm-exporter responses served over real HTTP (three hosts of 8 GPUs, one
with MIG, blank sentinels, an exporter answering 500), scraped into the real broker, metered by
the real worker: spend per tenant and service on /ws and in REST history equals hand-computed values."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import defaultdict

import httpx
import pytest
import websockets

from ingest.dcgm import DcgmScraper, stats_file
from ingest.mapping import load_mapping
from ingest.producer import EventProducer
from tests.ingest.exporter_server import ExporterServer
from tests.ingest.test_dcgm import MAPPING
from tests.support import ROOT, async_wait_for, read_topic

pytestmark = pytest.mark.integration

H100_P5_USD_H = 55.04 / 8       # aws us-east-1 p5.48xlarge, per GPU
A100_P4D_USD_H = 21.957642 / 8  # aws us-east-1 p4d.24xlarge, per GPU


def gpu(seconds: float, util: float) -> tuple[float, float]:
    return seconds, util


# What one 10 s interval of the recorded responses holds, per (tenant, service): (GPU-seconds, util)
# of each device, written from the files (tests/data/dcgm/README.md), not from the scraper.
H100_DEVICES = {
    ("research", "trainer"): [gpu(10, 0.5), gpu(10, 0.75), gpu(10, 0.25), gpu(10, 1.0), gpu(40 / 7, 0.75)],
    ("serving", "llm-api"): [gpu(10, 0.5), gpu(10, 0.125)],
    ("serving", "embedder"): [gpu(30 / 7, 0.5)],
    ("platform", "idle"): [gpu(10, 0.0)] * 7,
    ("notebooks", "notebook"): [gpu(10 / 7, 0.0), gpu(10 / 7, 0.25), gpu(10 / 7, 0.5), gpu(10 / 7, 0.75),
                                gpu(10 / 7, 0.0), gpu(10 / 7, 0.25)],
}
A100_DEVICES = {("batch", "etl"): [gpu(10, u) for u in (0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.8)]}


def expected() -> dict[tuple, dict]:
    out = {}
    for devices, model, usd_h in ((H100_DEVICES, "H100-80GB", H100_P5_USD_H), (A100_DEVICES, "A100-40GB", A100_P4D_USD_H)):
        for (tenant, service), ds in devices.items():
            seconds = sum(s for s, _ in ds)
            out[(tenant, service, "us-east-1", model)] = {
                "spend_usd": usd_h * seconds / 3600,
                "gpu_seconds": seconds,
                "util_avg": sum(s * u for s, u in ds) / seconds,
                "idle_usd": sum(usd_h * s / 3600 * (1 - u) for s, u in ds),
                "events": len(ds),
            }
    return out


def exact(rec: dict, exp: dict) -> bool:
    return rec["events"] == exp["events"] and all(rec[k] == pytest.approx(v, rel=1e-9) for k, v in exp.items())


async def test_scraped_fleet_is_metered_exactly_on_websocket_and_rest_history(stack, tmp_path):
    # The hand computation checks itself on one key: 4 whole H100s and a 4g slice for 10 s.
    assert expected()[("research", "trainer", "us-east-1", "H100-80GB")]["spend_usd"] == pytest.approx(
        55.04 / 8 * (40 + 40 / 7) / 3600)
    stack.start_worker()
    stack.start_api()
    ws = await websockets.connect(stack.ws_url, additional_headers=stack.headers)
    await ws.send(json.dumps({"op": "subscribe", "channel": "aggregates", "filter": {}}))
    latest: dict[tuple, dict] = {}

    async def read_ws():
        async for raw in ws:
            msg = json.loads(raw)
            for r in msg["data"] if msg["type"] == "snapshot" else [msg["data"]] if msg["type"] == "aggregate" else []:
                latest[(r["tenant"], r["service"], r["region"], r["gpu_model"], r["window_start"])] = r

    reader = asyncio.create_task(read_ws())
    (tmp_path / "map.yaml").write_text(MAPPING)
    T = (int(time.time()) // 60) * 60 - 120
    with ExporterServer() as exporters:
        urls = [exporters.url(h) for h in ("gpu-node-a", "gpu-node-b", "gpu-node-mig", "broken")]
        async with EventProducer(stack.settings) as producer, DcgmScraper(
                urls, load_mapping(tmp_path / "map.yaml"), producer, interval_s=10,
                stats_path=stats_file(stack.settings.data_dir)) as scraper:
            assert await scraper.scrape_once(now=T + 15) == []
            sent = await scraper.scrape_once(now=T + 25)
    assert len(sent) == 28
    assert scraper.targets[urls[3]].failures == 2
    # The exporter that answers 500 is reported by the API (the scraper shares its data dir).
    stats = httpx.get(stack.url + "/api/stats", headers=stack.headers, timeout=5).json()["dcgm"]
    assert stats["targets_down"] == 1 and stats["blank_skipped"] == 6
    down = [t for t in stats["targets"] if t["consecutive_failures"]]
    assert [t["url"] for t in down] == [urls[3]] and "HTTP 500" in down[0]["last_error"]

    want = {(*k, T): v for k, v in expected().items()}
    await async_wait_for(lambda: all(k in latest and exact(latest[k], v) for k, v in want.items()), 60,
                         what="exact aggregates on /ws")

    def history_exact():
        rows = httpx.get(stack.url + "/api/history", params={"since": T, "until": T + 1}, headers=stack.headers,
                         timeout=5).json()
        got = {(r["tenant"], r["service"], r["region"], r["gpu_model"], r["window_start"]): r for r in rows}
        return set(got) == set(want) and all(exact(got[k], v) for k, v in want.items())

    await async_wait_for(history_exact, 30, what="exact REST history")
    # Every event counted once in each of the six 60 s windows that hold its ts, none dead-lettered.
    await asyncio.sleep(1.0)
    per_window = defaultdict(int)
    for k, r in latest.items():
        per_window[k[4]] += r["events"]
    assert dict(per_window) == {T - 30 + 10 * i: 28 for i in range(6)}
    assert await read_topic(stack.settings, stack.settings.deadletter_topic) == []
    reader.cancel()
    await ws.close()


async def test_the_scrape_command_sends_every_scraped_gpu_to_kafka(kafka_broker, tmp_path):
    from core.kafka import ensure_topics
    from core.settings import Settings

    prefix = f"t{os.urandom(5).hex()}."
    settings = Settings(topic_prefix=prefix, data_dir=tmp_path / "data")
    await ensure_topics(settings)
    (tmp_path / "map.yaml").write_text(MAPPING)
    env = {**os.environ, "GPUCOST_TOPIC_PREFIX": prefix, "GPUCOST_DATA_DIR": str(tmp_path / "data")}
    with ExporterServer() as exporters:
        cmd = [sys.executable, "-m", "gpucost.cli", "scrape", "dcgm", "--url", exporters.url("gpu-node-a"),
               "--url", exporters.url("broken"), "--interval-s", "1", "--rounds", "3", "--map", str(tmp_path / "map.yaml")]
        done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "down" in done.stderr and "HTTP 500" in done.stderr
    records = await read_topic(settings, settings.usage_topic)
    events = [e for r in records for e in json.loads(r.value)]
    assert len(events) == 2 * 7 and {e["host"] for e in events} == {"gpu-node-a"}
    stats = json.loads((tmp_path / "data" / "sources" / "dcgm.json").read_text())
    assert stats["events"] == 14 and stats["targets_down"] == 1


async def test_a_bad_mapping_file_stops_the_scrape_command_with_its_reason(tmp_path):
    (tmp_path / "bad.yaml").write_text("tenant: {lable: namespace}\n")
    done = subprocess.run([sys.executable, "-m", "gpucost.cli", "scrape", "dcgm", "--url", "x", "--map",
                           str(tmp_path / "bad.yaml")], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "GPUCOST_DATA_DIR": str(tmp_path)})
    assert done.returncode == 2
    assert "tenant.lable" in done.stderr


def test_gpucost_up_scrapes_the_exporters_named_in_its_settings(kafka_broker, tmp_path):
    import re
    import signal
    import uuid

    from tests.support import free_port, wait_for

    port = free_port()
    (tmp_path / "map.yaml").write_text(MAPPING)
    with ExporterServer() as exporters:
        env = {**os.environ, "GPUCOST_DATA_DIR": str(tmp_path / "data"), "GPUCOST_API_PORT": str(port),
               "GPUCOST_TOPIC_PREFIX": f"up{uuid.uuid4().hex[:8]}.", "PYTHONUNBUFFERED": "1", "COLUMNS": "250",
               "GPUCOST_DCGM_URLS": f"{exporters.url('gpu-node-a')}, {exporters.url('broken')}",
               "GPUCOST_DCGM_INTERVAL_S": "2", "GPUCOST_MAPPING_FILE": str(tmp_path / "map.yaml")}
        log = tmp_path / "up.log"
        proc = subprocess.Popen([sys.executable, "-m", "gpucost.cli", "up", "--simulate-hosts", "0", "--no-optimizer"],
                                env=env, cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        try:
            url = wait_for(lambda: re.search(r"dashboard on (http://\S+)", log.read_text()), 90, what="the up banner").group(1)
            headers = {"Authorization": f"Bearer {url.split('api_key=')[1]}"}

            def scraped():
                stats = httpx.get(f"http://127.0.0.1:{port}/api/stats", headers=headers, timeout=5).json()
                return stats.get("dcgm", {}).get("events", 0) >= 7 and stats["aggregates_received"] > 0 and stats

            stats = wait_for(scraped, 90, what="DCGM usage metered under gpucost up")
            assert stats["dcgm"]["targets_down"] == 1
            rows = httpx.get(f"http://127.0.0.1:{port}/api/latest", headers=headers, timeout=5).json()
            assert {(r["tenant"], r["service"]) for r in rows} >= {("research", "trainer"), ("serving", "llm-api")}
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
    assert "stopped" in log.read_text()
