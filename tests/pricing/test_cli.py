"""`gpucost pricing ...` and `gpucost recommend` from the command line."""

import json

import pytest
from typer.testing import CliRunner

from core.pricing.effective import invalidate


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUCOST_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("GPUCOST_DATABASE_URL", raising=False)
    from core import settings as settings_module

    if hasattr(settings_module.get_settings, "cache_clear"):
        settings_module.get_settings.cache_clear()
    invalidate()
    import typer

    from gpucost.pricing_cli import register as register_pricing
    from optimizer.recommend_cli import register as register_recommend

    app = typer.Typer()
    register_pricing(app)
    register_recommend(app)
    runner = CliRunner()
    yield lambda *args: runner.invoke(app, list(args))
    invalidate()
    if hasattr(settings_module.get_settings, "cache_clear"):
        settings_module.get_settings.cache_clear()


def test_quote_prints_the_per_gpu_hour_price(cli):
    r = cli("pricing", "quote", "aws", "us-east-1", "p5.48xlarge", "H100")
    assert r.exit_code == 0 and r.output.startswith("$6.8800 per H100-80GB GPU-hour")


def test_override_set_then_quote_then_delete(cli):
    assert cli("pricing", "override", "set", "aws", "us-east-1", "p5.48xlarge",
               "--on-demand-usd-h", "40").exit_code == 0
    assert "$5.0000" in cli("pricing", "quote", "aws", "us-east-1", "p5.48xlarge", "H100").output
    assert cli("pricing", "override", "delete", "aws", "us-east-1", "p5.48xlarge").exit_code == 0
    assert "$6.8800" in cli("pricing", "quote", "aws", "us-east-1", "p5.48xlarge", "H100").output


def test_import_skypilot_csv_stores_its_prices(cli, tmp_path):
    csv_path = tmp_path / "vms.csv"
    csv_path.write_text(
        "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region\n"
        "g6.xlarge,L4,1.0,4.0,16.0,,0.7,0.3,us-east-1\n")
    r = cli("pricing", "import-skypilot", str(csv_path), "--cloud", "aws", "--as-of", "2026-11-26")
    assert r.exit_code == 0 and "stored 1 aws GPU instance prices" in r.output
    assert "$0.7000" in cli("pricing", "quote", "aws", "us-east-1", "g6.xlarge", "L4").output


def test_recommend_prints_ranks_with_reasons_and_json(cli):
    args = ["recommend", "--params", "8e9", "--n-layers", "32", "--kv-heads", "8", "--head-dim", "128",
            "--tokens-per-s", "5000", "--slo-tpot-ms", "60", "--top", "3"]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    assert r.output.startswith("#1: ") and "\n#3: " in r.output
    r = cli(*args, "--json")
    ranked = json.loads(r.output)["ranked"]
    assert [o["rank"] for o in ranked] == [1, 2, 3]


def test_recommend_without_a_model_is_an_error(cli):
    r = cli("recommend", "--tokens-per-s", "100")
    assert r.exit_code == 2 and "--params" in r.output
