"""docker-compose.yml: the whole stack on the official apache/kafka image in KRaft mode."""

import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_runs_every_box_on_apache_kafka_in_kraft_mode():
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:4.")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    for box in ("worker", "api", "simulator", "optimizer"):
        assert services[box]["environment"]["GPUCOST_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert services["api"]["ports"] == ["8000:8000"]
    # `docker compose up` prints the dashboard's URL with an admin key, as `gpucost up` does
    assert services["dashboard-url"]["command"][:2] == ["keys", "dashboard-url"]


def test_compose_file_validates_with_the_docker_compose_client():
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        cmd = ["docker", "compose"]
    else:
        cmd = ["docker-compose"] if shutil.which("docker-compose") else None
    assert cmd is not None, "no docker compose client: scripts/install.sh installs docker-compose for the tests"
    proc = subprocess.run([*cmd, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
