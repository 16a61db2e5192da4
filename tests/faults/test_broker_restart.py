"""Restart the broker mid-stream: the producer's sends wait and retry (idempotent, acks=all), the
worker reconnects, and the final aggregates are exact: nothing lost, nothing counted twice. Runs
on a second broker of its own (own data dir and ports); the shared test broker is never touched."""

from __future__ import annotations

import asyncio
import time

import pytest

from gpucost import broker
from gpucost.settings import Settings
from tests.faults.harness import TickProducer, converge, make_ticks
from tests.support import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture
def own_broker(tmp_path, kafka_broker):  # kafka_broker: the jars are fetched, the JVM works
    settings = Settings(data_dir=tmp_path / "own-broker", kafka_bootstrap=f"127.0.0.1:{free_port()}",
                        kafka_controller_port=free_port())
    broker.start(settings)
    try:
        yield settings
    finally:
        broker.stop(settings)


async def run_broker_restart(stack, broker_settings: Settings, n_ticks: int = 80, hard: bool = False,
                             down_s: float = 2.0):
    await asyncio.to_thread(stack.start_worker)
    producer = TickProducer(stack.settings, make_ticks(n_ticks, seed=23), pace_s=0.1)
    sending = asyncio.create_task(producer.run())
    await producer.reached(n_ticks * 4 // 10)
    down_at = time.monotonic()
    if hard:
        import os
        import signal

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


@pytest.mark.parametrize("hard", [False, True], ids=["sigterm", "sigkill"])
async def test_broker_restart_mid_stream_loses_nothing(tmp_path, own_broker, database_url, hard):
    from tests.support import Stack

    stack = Stack(tmp_path, database_url=database_url, GPUCOST_KAFKA_BOOTSTRAP=own_broker.kafka_bootstrap,
                  BROKER_SESSION_TIMEOUT="10", BROKER_HEARTBEAT_INTERVAL="1")
    try:
        t = await run_broker_restart(stack, own_broker, hard=hard)
    finally:
        stack.stop()
    print("\n" + t.line())
    assert (t.lost, t.double_counted) == (0, 0), t.line() + "\n" + stack.log("worker")[-4000:]
    assert t.aggregated == t.sent and t.windows_wrong == 0, t.line()
    assert t.notes["worker alive"], stack.log("worker")[-4000:]
