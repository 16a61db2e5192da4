"""A real three-broker KRaft cluster (`gpucost kafka start --brokers 3`, on ports and a data dir of
its own: the shared broker is never touched), topics with replication 3 and min.insync.replicas=2,
two workers and two APIs: SIGKILL one broker mid-stream, bring it back, then SIGKILL the quorum
(controller) leader. Nothing lost, nothing counted twice, every window exact on cost.aggregates and
on a WebSocket of each API; the stall is measured and printed.

Three more JVMs on a small machine: deselect with `-m "not cluster"`."""

from __future__ import annotations

import pytest

from bench.fault_harness import free_cluster_base, run_cluster_faults
from core import broker
from core.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.timeout(600), pytest.mark.one_database]


@pytest.fixture
def cluster(tmp_path, kafka_broker):  # kafka_broker: the jars are fetched, the JVM works
    # A 4 s broker session instead of Kafka's 9 s: a killed node is fenced (its partitions' leaders
    # move) and, restarted, registers again that much sooner.
    settings = Settings(data_dir=tmp_path / "cluster", kafka_cluster_port=free_cluster_base(),
                        kafka_broker_session_timeout_s=4)
    nodes = broker.start_cluster(settings, 3)
    try:
        yield settings, nodes
    finally:
        for node in nodes:  # teardown checks nothing about the shutdown: no controlled one
            broker.kill_node(node)
        broker.stop_cluster(settings, 3)


async def test_three_brokers_lose_a_broker_then_the_controller_leader_and_stay_exact(tmp_path, cluster, database_url):
    from tests.support import Stack

    settings, nodes = cluster
    stack = Stack(tmp_path, database_url=database_url, **broker.cluster_env(settings, 3),
                  BROKER_SESSION_TIMEOUT="10", BROKER_HEARTBEAT_INTERVAL="1")
    try:
        t = await run_cluster_faults(stack, settings, nodes)
    finally:
        stack.stop()
    print("\n" + t.line())
    logs = "\n".join(stack.log(n)[-1500:] for n in ("worker", "worker2"))
    assert (t.lost, t.double_counted) == (0, 0), t.line() + "\n" + logs
    assert t.aggregated == t.sent and t.windows_wrong == 0, t.line()
    assert t.notes["api1 ws exact"] and t.notes["api2 ws exact"], t.line()
    assert t.notes["workers alive"], logs
    assert t.notes["new controller leader"] not in (None, t.notes["controller leader killed"]), t.line()
