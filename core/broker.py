"""The local Apache Kafka broker of the embedded default: Kafka 4.x in KRaft mode, one node that is
both broker and controller, on 127.0.0.1, run with the machine's Java 17.

The jars come from Maven Central through `mvn dependency:copy-dependencies` (kafka_dist/pom.xml)
into a cache folder; storage is formatted once with a static controller quorum; `start`, `stop` and
`status` are idempotent and `start` returns only when the broker answers metadata requests."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from core.settings import Settings, get_settings


#: Brokers this process started, so stop() can reap them (no zombie left behind).
_children: dict[int, subprocess.Popen] = {}


class BrokerError(RuntimeError):
    """The local broker could not be fetched, formatted, started or stopped."""


@dataclass
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str
    answering: bool

    def __str__(self) -> str:
        if not self.running:
            return f"kafka: stopped ({self.bootstrap})"
        state = "answering" if self.answering else "starting, not answering yet"
        return f"kafka: running, pid {self.pid}, {self.bootstrap}, {state}"


def _cache_dir(settings: Settings) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "gpucost" / f"kafka-{settings.kafka_version}"


def _broker_dir(settings: Settings) -> Path:
    return settings.data_dir / "kafka"


def _host_port(bootstrap: str) -> tuple[str, int]:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    return host or "127.0.0.1", int(port)


def ensure_jars(settings: Settings | None = None) -> Path:
    """Fetch the broker's jars from Maven Central once; returns the lib folder."""
    settings = settings or get_settings()
    lib = _cache_dir(settings) / "lib"
    marker = lib / ".complete"
    if marker.exists():
        return lib
    if shutil.which("mvn") is None:
        raise BrokerError("Maven (mvn) is needed to fetch Kafka from Maven Central; install it (apt-get install maven)")
    lib.mkdir(parents=True, exist_ok=True)
    pom = resources.files("core.kafka_dist") / "pom.xml"
    with resources.as_file(pom) as pom_path:
        cmd = [
            "mvn", "-q", "-B", "-f", str(pom_path), "dependency:copy-dependencies",
            f"-DoutputDirectory={lib}", "-DincludeScope=runtime", f"-Dkafka.version={settings.kafka_version}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not any(lib.glob("kafka_2.13-*.jar")):
        raise BrokerError(f"fetching Kafka {settings.kafka_version} with Maven failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    marker.write_text(settings.kafka_version)
    return lib


def _props(node_id: int, host: str, port: int, cport: int, voters: str, log_dir: Path, partitions: int,
           replication: int, min_isr: int) -> str:
    return f"""# written by core/broker.py
process.roles=broker,controller
node.id={node_id}
controller.quorum.voters={voters}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={log_dir}
num.partitions={partitions}
auto.create.topics.enable=true
default.replication.factor={replication}
min.insync.replicas={min_isr}
unclean.leader.election.enable=false
offsets.topic.replication.factor={replication}
offsets.topic.num.partitions=8
transaction.state.log.replication.factor={replication}
transaction.state.log.min.isr={min_isr}
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor={replication}
share.coordinator.state.topic.min.isr={min_isr}
group.initial.rebalance.delay.ms=0
log.retention.hours=48
log.segment.bytes=67108864
num.network.threads=2
num.io.threads=4
"""


def _session_props(settings: Settings) -> str:
    """The broker session, when the settings give one (else Kafka's 9 s): the controller fences a
    node that has not heartbeated for this long (its partitions' leadership moves), and a node
    restarted after a SIGKILL registers again only once its previous run's session has expired
    (DUPLICATE_BROKER_REGISTRATION until then). Three heartbeats a session."""
    if settings.kafka_broker_session_timeout_s is None:
        return ""
    session_ms = int(settings.kafka_broker_session_timeout_s * 1000)
    return f"broker.session.timeout.ms={session_ms}\nbroker.heartbeat.interval.ms={max(100, session_ms // 3)}\n"


def _write_log4j(bdir: Path, raft_info: bool = False) -> None:
    # A cluster logs the quorum's leader changes (controller_leader() reads them).
    raft = "logger.raft.name = org.apache.kafka.raft\nlogger.raft.level = info\n" if raft_info else ""
    (bdir / "log4j2.properties").write_text(
        f"""status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {bdir / 'server.log'}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = info
logger.state.name = state.change.logger
logger.state.level = warn
{raft}"""
    )


def _write_config(settings: Settings) -> Path:
    bdir = _broker_dir(settings)
    bdir.mkdir(parents=True, exist_ok=True)
    host, port = _host_port(settings.kafka_bootstrap)
    cport = settings.kafka_controller_port
    (bdir / "server.properties").write_text(_props(1, host, port, cport, f"1@{host}:{cport}", bdir / "data",
                                                   settings.topic_partitions, 1, 1) + _session_props(settings))
    _write_log4j(bdir)
    return bdir


def _cluster_id(bdir: Path) -> str:
    f = bdir / "cluster.id"
    if not f.exists():
        # Like Kafka's own Uuid.randomUuid: never an id starting with "-" (1 in 64 of them), which
        # a command line reads as an option.
        cid = "-"
        while cid.startswith("-"):
            cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        f.write_text(cid)
    return f.read_text().strip()


def _java_base(lib: Path, bdir: Path, heap: str) -> list[str]:
    java = shutil.which("java")
    if java is None:
        raise BrokerError("Java 17+ is needed to run the local Kafka broker")
    return [
        java, *heap.split(), "-XX:+UseSerialGC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={bdir / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={bdir}", "-cp", f"{lib}/*",
    ]


def _format_storage(settings: Settings, lib: Path, bdir: Path) -> None:
    if (bdir / "data" / "meta.properties").exists():
        return
    cmd = [*_java_base(lib, bdir, "-Xmx256m"), "kafka.tools.StorageTool", "format",
           f"--cluster-id={_cluster_id(bdir)}", "-c", str(bdir / "server.properties"), "-g"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BrokerError(f"formatting KRaft storage failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def _read_pid(bdir: Path) -> int | None:
    try:
        pid = int((bdir / "kafka.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    # A recycled pid must still be our java process.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"kafka.Kafka" not in cmdline:
            return None
    except FileNotFoundError:
        return None
    return pid


def _port_open(bootstrap: str) -> bool:
    host, port = _host_port(bootstrap)
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


async def _answers(bootstrap: str) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await asyncio.wait_for(admin.start(), 5)
        await asyncio.wait_for(admin.describe_cluster(), 5)
        return True
    except Exception:
        return False
    finally:
        try:
            await admin.close()
        except Exception:
            pass


def answers(bootstrap: str) -> bool:
    if not _port_open(bootstrap):
        return False
    return asyncio.run(_answers(bootstrap))


def status(settings: Settings | None = None) -> BrokerStatus:
    settings = settings or get_settings()
    pid = _read_pid(_broker_dir(settings))
    return BrokerStatus(running=pid is not None, pid=pid, bootstrap=settings.kafka_bootstrap,
                        answering=pid is not None and answers(settings.kafka_bootstrap))


def start(settings: Settings | None = None, timeout_s: float = 90.0) -> BrokerStatus:
    """Start the broker unless it already runs; wait until it answers."""
    settings = settings or get_settings()
    bdir = _broker_dir(settings)
    pid = _read_pid(bdir)
    proc = None
    if pid is None:
        if _port_open(settings.kafka_bootstrap):
            if answers(settings.kafka_bootstrap):  # someone else's broker: use it, don't own it
                return BrokerStatus(True, None, settings.kafka_bootstrap, True)
            raise BrokerError(f"port of {settings.kafka_bootstrap} is taken by something that is not Kafka")
        lib = ensure_jars(settings)
        bdir = _write_config(settings)
        _format_storage(settings, lib, bdir)
        log = open(bdir / "stdout.log", "ab")
        proc = subprocess.Popen(
            [*_java_base(lib, bdir, settings.kafka_heap), "kafka.Kafka", str(bdir / "server.properties")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        (bdir / "kafka.pid").write_text(str(proc.pid))
        _children[proc.pid] = proc
        pid = proc.pid
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        exited = proc.poll() is not None if proc is not None else _read_pid(bdir) is None
        if exited:
            tail = (bdir / "stdout.log").read_text(errors="replace")[-3000:] if (bdir / "stdout.log").exists() else ""
            raise BrokerError(f"Kafka exited during start-up; see {bdir}/stdout.log and server.log\n{tail}")
        if answers(settings.kafka_bootstrap):
            return BrokerStatus(True, pid, settings.kafka_bootstrap, True)
        time.sleep(0.5)
    raise BrokerError(f"Kafka did not answer on {settings.kafka_bootstrap} within {timeout_s:.0f}s; see {bdir}/server.log")


def stop(settings: Settings | None = None, timeout_s: float = 30.0) -> bool:
    """Stop the broker we started (SIGTERM, then SIGKILL); True if one was running."""
    settings = settings or get_settings()
    bdir = _broker_dir(settings)
    pid = _read_pid(bdir)
    if pid is None:
        (bdir / "kafka.pid").unlink(missing_ok=True)
        return False
    os.killpg(pid, signal.SIGTERM) if _is_group_leader(pid) else os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _read_pid(bdir) is not None:
        time.sleep(0.2)
    if _read_pid(bdir) is not None:
        os.kill(pid, signal.SIGKILL)
        while _read_pid(bdir) is not None:
            time.sleep(0.1)
    (bdir / "kafka.pid").unlink(missing_ok=True)
    child = _children.pop(pid, None)
    if child is not None:
        child.wait(5)
    return True


def _is_group_leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


# -- a local three-node cluster ------------------------------------------------------------
# `gpucost kafka start --brokers 3`: KRaft nodes that are each broker and controller, on ports of
# their own (settings.kafka_cluster_port and up; controllers 100 higher) and in a data dir of
# their own, so a cluster never collides with the single broker on 9092/9093. Topics get
# replication factor 3 and min.insync.replicas=2 (settings.kafka_replication_factor and
# kafka_min_insync_replicas, which the printed environment sets for every gpucost process).


@dataclass
class ClusterNode:
    node_id: int
    port: int
    controller_port: int
    dir: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def cluster_dir(settings: Settings) -> Path:
    return settings.data_dir / "kafka-cluster"


def cluster_nodes(settings: Settings, brokers: int = 3) -> list[ClusterNode]:
    base = settings.kafka_cluster_port
    return [ClusterNode(i, base + i - 1, base + 100 + i - 1, cluster_dir(settings) / f"node-{i}")
            for i in range(1, brokers + 1)]


def cluster_bootstrap(settings: Settings, brokers: int = 3) -> str:
    return ",".join(n.bootstrap for n in cluster_nodes(settings, brokers))


def cluster_env(settings: Settings, brokers: int = 3) -> dict[str, str]:
    """The environment every gpucost process needs to use the cluster."""
    return {"GPUCOST_KAFKA_BOOTSTRAP": cluster_bootstrap(settings, brokers),
            "GPUCOST_KAFKA_REPLICATION_FACTOR": str(min(3, brokers)),
            "GPUCOST_KAFKA_MIN_INSYNC_REPLICAS": str(min(2, brokers))}


def _prepare_node(settings: Settings, node: ClusterNode, nodes: list[ClusterNode], lib: Path) -> None:
    node.dir.mkdir(parents=True, exist_ok=True)
    voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in nodes)
    (node.dir / "server.properties").write_text(_props(
        node.node_id, "127.0.0.1", node.port, node.controller_port, voters, node.dir / "data",
        settings.topic_partitions, min(3, len(nodes)), min(2, len(nodes))) + _session_props(settings))
    _write_log4j(node.dir, raft_info=True)
    if (node.dir / "data" / "meta.properties").exists():
        return
    cmd = [*_java_base(lib, node.dir, "-Xmx256m"), "kafka.tools.StorageTool", "format",
           f"--cluster-id={_cluster_id(cluster_dir(settings))}", "-c", str(node.dir / "server.properties"), "-g"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BrokerError(f"formatting node {node.node_id} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def start_node(settings: Settings, node: ClusterNode, lib: Path | None = None) -> int:
    """Start one cluster node unless it runs (does not wait); returns its pid."""
    pid = _node_pid(node)
    if pid is not None:
        return pid
    if _port_open(node.bootstrap):
        raise BrokerError(f"port {node.port} for cluster node {node.node_id} is taken by another process")
    lib = lib or ensure_jars(settings)
    log = open(node.dir / "stdout.log", "ab")
    proc = subprocess.Popen(
        [*_java_base(lib, node.dir, settings.kafka_cluster_heap), "kafka.Kafka", str(node.dir / "server.properties")],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    (node.dir / "kafka.pid").write_text(str(proc.pid))
    _children[proc.pid] = proc
    return proc.pid


def _node_pid(node: ClusterNode) -> int | None:
    """The running node's pid. Our own child is asked directly: right after the fork its cmdline
    is still Python's, not kafka.Kafka, which _read_pid checks for."""
    try:
        pid = int((node.dir / "kafka.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    child = _children.get(pid)
    if child is not None:
        return pid if child.poll() is None else None
    return _read_pid(node.dir)


def _node_exited(node: ClusterNode) -> bool:
    return _node_pid(node) is None


def wait_answering(nodes: list[ClusterNode], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    pending = list(nodes)
    while pending:
        for n in list(pending):
            if _node_exited(n):
                tail = (n.dir / "stdout.log").read_text(errors="replace")[-3000:] if (n.dir / "stdout.log").exists() else ""
                raise BrokerError(f"cluster node {n.node_id} exited; see {n.dir}/server.log\n{tail}")
            if answers(n.bootstrap):
                pending.remove(n)
        if pending and time.monotonic() > deadline:
            raise BrokerError(f"cluster nodes {[n.node_id for n in pending]} did not answer within {timeout_s:.0f}s")
        if pending:
            time.sleep(0.5)


def start_cluster(settings: Settings | None = None, brokers: int = 3, timeout_s: float = 120.0) -> list[ClusterNode]:
    """Start a local KRaft cluster of `brokers` nodes (each broker and controller) unless it runs;
    returns when every node answers."""
    settings = settings or get_settings()
    if brokers < 1:
        raise BrokerError("a cluster needs at least one broker")
    lib = ensure_jars(settings)
    nodes = cluster_nodes(settings, brokers)
    cluster_dir(settings).mkdir(parents=True, exist_ok=True)
    for n in nodes:
        _prepare_node(settings, n, nodes, lib)
    try:
        for n in nodes:
            start_node(settings, n, lib)
        wait_answering(nodes, timeout_s)
    except BaseException:
        stop_cluster(settings, brokers)  # nothing left running when start fails
        raise
    return nodes


def kill_node(node: ClusterNode, sig: int = signal.SIGKILL) -> bool:
    """Signal one node's JVM (SIGKILL: a crash) and reap it; True if it was running."""
    pid = _node_pid(node)
    if pid is None:
        return False
    os.kill(pid, sig)
    child = _children.pop(pid, None)
    if child is not None:
        child.wait(30)
    else:
        while _node_pid(node) is not None:
            time.sleep(0.1)
    (node.dir / "kafka.pid").unlink(missing_ok=True)
    return True


def stop_cluster(settings: Settings | None = None, brokers: int = 3, timeout_s: float = 30.0) -> int:
    """Stop every node of the local cluster (SIGTERM, then SIGKILL); returns how many ran."""
    settings = settings or get_settings()
    nodes = [n for n in cluster_nodes(settings, brokers) if _node_pid(n) is not None]
    for n in nodes:
        os.kill(_node_pid(n), signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_node_pid(n) is not None for n in nodes):
        time.sleep(0.2)
    for n in nodes:
        kill_node(n, signal.SIGKILL)  # those still running; reaps and removes the pid file
        (n.dir / "kafka.pid").unlink(missing_ok=True)
    return len(nodes)


def controller_leader(nodes: list[ClusterNode]) -> int | None:
    """The quorum leader among the running nodes: the newest "transition to Leader" (highest
    epoch) that a node still running logged about itself."""
    import re

    best: tuple[int, int] | None = None  # (epoch, node id)
    pattern = re.compile(r"\[RaftManager id=(\d+)\] Completed transition to Leader\(.*?epoch=(\d+)")
    for n in nodes:
        log = n.dir / "server.log"
        if _node_pid(n) is None or not log.exists():
            continue
        for m in pattern.finditer(log.read_text(errors="replace")):
            cand = (int(m.group(2)), int(m.group(1)))  # (epoch, node id)
            if best is None or cand > best:
                best = cand
    return best[1] if best else None
