"""`gpucost watch` against the real API: known window records and alerts on the stream's topics
come out as rows sorted by spend with the right spend rate, spend in window, utilization and idle
share, a filter narrows them, a live update draws a new frame, and a refused key ends it with a
message instead of retrying."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import httpx
import pytest

from bench.fault_harness import alert_record, publish_aggregates, publish_alerts
from tests.support import ROOT, async_wait_for


NOW = int(time.time()) // 60 * 60


def window(tenant, service, gpu_model, window_start, spend_usd, util_avg, idle_usd, model_version=""):
    return {"kind": "usage", "tenant": tenant, "service": service, "region": "us-east-1", "gpu_model": gpu_model,
            "model_version": model_version,
            "window_start": window_start, "window_end": window_start + 60, "window_s": 60, "spend_usd": spend_usd,
            "spend_rate_usd_h": spend_usd * 60, "gpu_seconds": 60.0, "util_avg": util_avg, "idle_usd": idle_usd,
            "events": 6, "tokens": 0, "requests": 0, "fallback_priced_events": 0}


RECORDS = [
    window("acme", "chat", "H100-80GB", NOW - 120, 0.1147, 0.25, 0.0860, "v2-canary"),
    window("acme", "chat", "H100-80GB", NOW - 110, 0.2294, 0.5, 0.1147, "v2-canary"),  # newer window of the same key: shown
    window("globex", "ocr", "L4", NOW - 110, 0.0134, 0.9, 0.00134),
    window("initech", "train", "A100-80GB", NOW - 110, 0.5012, 1.0, 0.0),
]


def watch_cmd(stack, *args: str) -> list[str]:
    return [sys.executable, "-m", "gpucost.cli", "watch", "--url", stack.ws_url, *args]


def run_watch(stack, *args: str, key: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(watch_cmd(stack, "--api-key", key or stack.admin_key, *args), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def rows(output: str) -> list[list[str]]:
    """The table's data rows as cells (Rich draws cells between │ characters)."""
    out = []
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells and cells[0] not in ("tenant", ""):
            out.append(cells)
    return out


@pytest.mark.integration
@pytest.mark.one_database
async def test_watch_prints_spend_per_key_sorted_with_the_alerts_firing(stack):
    stack.start_api()
    await publish_aggregates(stack.settings, RECORDS)
    await publish_alerts(stack.settings, [alert_record("acme"), {**alert_record("globex"), "state": "resolved"}])

    def api_has_all():
        stats = httpx.get(stack.url + "/api/stats", headers=stack.headers, timeout=5).json()
        return stats["aggregates_received"] == len(RECORDS)

    await async_wait_for(api_has_all, 30, what="the API to read the records")
    await asyncio.sleep(1.0)  # the alerts topic is read by its own consumer

    r = await asyncio.to_thread(run_watch, stack, "--once")
    assert r.returncode == 0, r.stderr
    assert rows(r.stdout) == [
        # tenant, service, region, GPU, model version, spend $/h, spend in window $, util %, idle %
        ["initech", "train", "us-east-1", "A100-80GB", "-", "30.07", "0.5012", "100.0", "0.0"],
        ["acme", "chat", "us-east-1", "H100-80GB", "v2-canary", "13.76", "0.2294", "50.0", "50.0"],
        ["globex", "ocr", "us-east-1", "L4", "-", "0.80", "0.0134", "90.0", "10.0"],
    ], r.stdout
    assert "3 keys, 60 s windows" in r.stdout and "total $44.64/h" in r.stdout  # (0.5012+0.2294+0.0134)*60
    assert "alerts: 1 firing: [critical] acme daily: day spend $12.50 reached 100% of the $10.00 budget" in r.stdout
    assert "globex daily" not in r.stdout  # resolved: not firing

    only_acme = await asyncio.to_thread(run_watch, stack, "--once", "--tenant", "acme")
    assert [row[0] for row in rows(only_acme.stdout)] == ["acme"], only_acme.stdout
    canary = await asyncio.to_thread(run_watch, stack, "--once", "--model-version", "v2-canary")
    assert [row[:5] for row in rows(canary.stdout)] == [["acme", "chat", "us-east-1", "H100-80GB", "v2-canary"]], \
        canary.stdout

    # --updates 1: the first frame, then one more when a live update arrives.
    env = {**os.environ, "COLUMNS": "200"}
    proc = await asyncio.create_subprocess_exec(*watch_cmd(stack, "--api-key", stack.admin_key, "--updates", "1",
                                                           "--service", "ocr"),
                                                cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    first = b""
    while b"0.0134" not in first:  # the first frame is out: the subscription is live
        chunk = await asyncio.wait_for(proc.stdout.read(4096), 30)
        assert chunk, f"watch ended before its first frame: {(await proc.stderr.read()).decode()}"
        first += chunk
    await publish_aggregates(stack.settings, [window("globex", "ocr", "L4", NOW - 100, 0.0268, 0.5, 0.0134)])
    rest, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    frames = (first + rest).decode().split("1 key, 60 s windows")
    assert len(frames) == 3, (first + rest).decode()  # text before the first frame, then two frames
    assert rows(frames[1]) == [["globex", "ocr", "us-east-1", "L4", "-", "0.80", "0.0134", "90.0", "10.0"]]
    assert rows(frames[2]) == [["globex", "ocr", "us-east-1", "L4", "-", "1.61", "0.0268", "50.0", "50.0"]]


@pytest.mark.integration
@pytest.mark.one_database
async def test_watch_stops_with_a_message_on_a_refused_key(stack):
    stack.start_api()
    started = time.monotonic()
    r = await asyncio.to_thread(run_watch, stack, "--once", key="gpc_wrong")
    assert r.returncode == 1
    assert "refused the API key (HTTP 403)" in r.stderr, r.stderr
    assert time.monotonic() - started < 30


def test_registering_watch_imports_neither_pydantic_nor_websockets():
    """`gpucost bench` must start on a bare GPU machine (torch only), and every command module is
    imported to register it: the client is imported when watch runs."""
    code = ("import sys, typer; from gpucost import watch_cli; watch_cli.register(typer.Typer()); "
            "print(sorted(m for m in ('pydantic', 'websockets', 'gpucost.client') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_names_from_the_data_are_printed_as_text_not_as_rich_markup():
    from rich.console import Console

    from api.ws_protocol import AggregateRecord, AlertRecord
    from gpucost.client import AggregateUpdate, AlertUpdate, LiveState
    from gpucost.watch_cli import alerts_line, spend_table

    state = LiveState()
    planted = window("[red]acme[/red]", "[link=https://example.invalid]chat[/link]", "H100-80GB", NOW - 120, 0.1, 0.5, 0.05)
    state.apply(AggregateUpdate(type="aggregate", data=AggregateRecord.model_validate(planted)))
    state.apply(AlertUpdate(type="alert", data=AlertRecord.model_validate({**alert_record("acme"), "summary": "[blink]x[/blink]"})))
    console = Console(record=True, width=200)
    console.print(spend_table(state, now=NOW))
    console.print(alerts_line(state))
    text = console.export_text()
    assert "[red]acme[/red]" in text and "[link=https://example.invalid]chat[/link]" in text
    assert "[critical] [blink]x[/blink]" in text
