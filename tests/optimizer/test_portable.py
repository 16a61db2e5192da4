"""Portable runs: `gpucost bench` where only torch is installed (no settings, no database), its
results stored later by `gpucost bench import FILE`; runs priced on the GPU actually present;
result files named by device and never written over another device's."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from bench.optimizer_gpu import check_not_other_device, results_path, skipped_row
from optimizer.cli import register, runs_from_document
from optimizer.measure import Instance, device_slug, instance_for_gpu, parse_instance, usd_per_gpu_hour

ROOT = Path(__file__).resolve().parents[2]
# What a bare GPU machine lacks: the settings, the database, Kafka, the web stack, psutil.
# (pydantic itself stays: this venv's typer needs it; the GPU image's typer does not.)
BLOCKER = """
import runpy, sys
BLOCKED = {"pydantic_settings", "sqlalchemy", "psutil", "aiokafka", "faust", "fastapi", "gguf", "httpx", "uvicorn"}
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Blocker())
sys.argv = ["gpucost"] + sys.argv[1:]
runpy.run_module("gpucost.cli", run_name="__main__")
"""


def flat(text: str) -> str:
    """Rich's error box folds lines: one line of words to match against."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def app() -> typer.Typer:
    a = typer.Typer()
    register(a)
    return a


def test_bench_runs_without_the_database_and_import_stores_it_later(tmp_path, monkeypatch):
    out = tmp_path / "bench.json"
    env = {**os.environ, "GPUCOST_DATA_DIR": str(tmp_path), "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER, "bench", "--model", "test", "--variants", "fp32,fp32+kv-int8",
         "--device", "cpu", "--prompt-tokens", "4", "--new-tokens", "4", "--repeats", "1", "--no-gate",
         "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "not stored" in flat(proc.stderr) and "gpucost bench import" in flat(proc.stderr)
    doc = json.loads(out.read_text())
    assert [r["variant"] for r in doc["runs"]] == ["fp32", "fp32+kv-int8"]
    assert not (tmp_path / "core.db").exists()

    monkeypatch.setenv("GPUCOST_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(app(), ["bench", "import", str(out)])
    assert result.exit_code == 0, result.output
    assert "stored 2 runs" in result.output
    from sqlalchemy import select

    from core.db import session_scope
    from core.settings import Settings
    from core.tables.benchmarks import BenchmarkRun

    settings = Settings(data_dir=tmp_path)
    with session_scope(settings) as session:
        rows = session.scalars(select(BenchmarkRun).order_by(BenchmarkRun.id)).all()
    assert [(r.variant, r.source) for r in rows] == [("fp32", "import:bench.json"), ("fp32+kv-int8", "import:bench.json")]


def test_import_refuses_files_that_are_not_results(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"hello": 1}))
    result = CliRunner().invoke(app(), ["bench", "import", str(bad)])
    assert result.exit_code != 0 and "not a gpucost optimizer results file" in flat(result.output)
    bad.write_text("{not json")
    result = CliRunner().invoke(app(), ["bench", "import", str(bad)])
    assert result.exit_code != 0 and "not a JSON results file" in flat(result.output)


def test_gpu_matrix_rows_import_but_skipped_and_failed_rows_do_not():
    h100 = json.loads((ROOT / "optimizer/data/h100_measurements.json").read_text())
    rows = runs_from_document(h100)
    assert rows and all(r.gpu_model == "H100-80GB" for r in rows)
    doc = {"schema": "gpucost.optimizer.gpu_measurements/1", "sections": {"x": {"rows": [
        skipped_row("7b", "bf16+compile+cudagraph", "past the time budget (--budget-s)"),
        {"variant": "bf16", "error": "RuntimeError()"}, h100["sections"]["bandwidth"]["rows"][0]]}}}
    assert len(runs_from_document(doc)) == 1
    assert doc["sections"]["x"]["rows"][0]["skipped"] == "past the time budget (--budget-s)"


def test_runs_are_priced_on_the_gpu_present():
    assert instance_for_gpu("H200-141GB") == Instance("aws", "us-east-1", "p5en.48xlarge")
    assert instance_for_gpu("H100-80GB") == Instance("aws", "us-east-1", "p5.48xlarge")
    price, fallback = usd_per_gpu_hour(instance_for_gpu("H200-141GB"), "H200-141GB")
    assert price == pytest.approx(63.296 / 8) and not fallback
    assert parse_instance("gcp/us-central1/a3-ultragpu-8g") == Instance("gcp", "us-central1", "a3-ultragpu-8g")
    assert parse_instance("p5en.48xlarge", Instance("aws", "us-east-2")) == Instance("aws", "us-east-2", "p5en.48xlarge")
    with pytest.raises(ValueError):
        parse_instance("aws/p5en.48xlarge")


def test_result_files_are_named_by_device_and_never_replace_another_devices(tmp_path):
    assert device_slug("H200-141GB") == "h200" and device_slug("A100-80GB") == "a100_80gb"
    assert results_path(None, "H200-141GB", tmp_path) == tmp_path / "h200_measurements.json"
    assert results_path(None, "H100-80GB") == Path("optimizer/data/h100_measurements.json")
    h100 = tmp_path / "h100_measurements.json"
    h100.write_text(json.dumps({"gpu_model": "H100-80GB"}))
    with pytest.raises(SystemExit, match="holds H100-80GB measurements"):
        check_not_other_device(h100, "H200-141GB")
    check_not_other_device(h100, "H100-80GB")  # the same device may rerun into its own file
    check_not_other_device(tmp_path / "new.json", "H200-141GB")
