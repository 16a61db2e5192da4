"""`gpucost up`, the embedded default: broker, worker, API with dashboard and simulator come up in
one command, aggregates flow, and Ctrl-C stops every process it started."""

import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT, free_port, wait_for

pytestmark = pytest.mark.integration


def processes_with(data_dir: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if f"GPUCOST_DATA_DIR={data_dir}".encode() in (proc / "environ").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                pass
    return found


def test_up_runs_the_stack_and_ctrl_c_stops_all_of_it(kafka_broker, tmp_path):
    port = free_port()
    data_dir = str(tmp_path / "data")
    env = {**os.environ, "GPUCOST_DATA_DIR": data_dir, "GPUCOST_API_PORT": str(port),
           "GPUCOST_TOPIC_PREFIX": f"up{uuid.uuid4().hex[:8]}.", "PYTHONUNBUFFERED": "1", "COLUMNS": "250"}
    log = tmp_path / "up.log"
    proc = subprocess.Popen([sys.executable, "-m", "gpucost.cli", "up", "--simulate-hosts", "4", "--no-optimizer"],
                            env=env, cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        url = wait_for(lambda: re.search(r"dashboard on (http://\S+)", log.read_text()), 90, what="the up banner").group(1)
        key = url.split("api_key=")[1]
        assert url.startswith(f"http://127.0.0.1:{port}/?api_key=")
        assert "<title>gpucost" in httpx.get(url, timeout=5).text
        stats = wait_for(lambda: (s := httpx.get(f"http://127.0.0.1:{port}/api/stats", timeout=5,
                                                  headers={"Authorization": f"Bearer {key}"}).json())["aggregates_received"] > 0 and s,
                         90, what="aggregates from the simulator")
        assert stats["keys_live"] > 0
        # The first run bills: the simulator back-filled the previous hour and imported its FOCUS
        # export of it, so billed and metered are both there for the tenants.
        rows = wait_for(lambda: [r for r in httpx.get(f"http://127.0.0.1:{port}/api/reconciliation", timeout=5,
                                                      headers={"Authorization": f"Bearer {key}"}).json()
                                 if r["billed_usd"] > 0 and r["metered_usd"] > 0], 90, what="billed and metered cost")
        assert all(r["breakdown"]["commitment_discount_usd"] <= 0 for r in rows)
        assert list(Path(data_dir, "billing").glob("focus-*.csv"))
        assert len(processes_with(data_dir)) >= 4  # up, worker, api, simulator
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    assert "stopped" in log.read_text()
    wait_for(lambda: processes_with(data_dir) == [], 10, what="every process of up to exit")
