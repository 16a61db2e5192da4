"""`gpucost bench` and `gpucost optimize` end to end on the tiny model."""

import json

import typer
from typer.testing import CliRunner

from optimizer.cli import register


def app() -> typer.Typer:
    a = typer.Typer()
    register(a)
    return a


def test_bench_prints_ratios_and_writes_json(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUCOST_DATA_DIR", str(tmp_path))
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app(), [
        "bench", "--model", "test", "--variants", "fp32,fp32+int8-weight-only,fp32+kv-int4",
        "--device", "cpu", "--batch-size", "2", "--prompt-tokens", "8", "--new-tokens", "8",
        "--repeats", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "fp32+int8-weight-only" in result.output and "x base" in result.output
    doc = json.loads(out.read_text())
    assert [r["variant"] for r in doc["runs"]] == ["fp32", "fp32+int8-weight-only", "fp32+kv-int4"]
    assert doc["ratios"][0]["speedup"] == 1.0
    assert "stored 3 runs" in result.output


def test_optimize_for_memory_keeps_only_gated_steps(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUCOST_DATA_DIR", str(tmp_path))
    out = tmp_path / "optimize.json"
    result = CliRunner().invoke(app(), [
        "optimize", "--goal", "memory", "--model", "test", "--device", "cpu", "--batch-size", "2",
        "--prompt-tokens", "8", "--new-tokens", "8", "--repeats", "1", "--out", str(out), "--no-store"])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    opt = doc["optimize"]
    runs = {r["variant"]: r for r in doc["runs"]}
    assert opt["goal"] == "memory" and opt["improvement"] > 1.0
    assert runs[opt["best"]]["accepted"] is True
    kept = [t for t in opt["trials"] if t["kept"]]
    assert all(runs[t["variant"]]["accepted"] for t in kept)
    assert any("quantization" in t["variant"] or "int8" in t["variant"] for t in kept)


def test_optimize_refuses_an_unknown_goal():
    result = CliRunner().invoke(app(), ["optimize", "--goal", "speed"])
    assert result.exit_code != 0
