"""The pricing catalog as a specification: exact instance prices per GPU-hour, the flagged
fallback to a model's cheapest on-demand price, and a clear error for an unknown GPU model."""

import csv
import re
from datetime import date
from importlib import resources

import pytest

from core.pricing import (
    CATALOG_COLUMNS,
    CatalogRow,
    PriceCatalog,
    PriceQuote,
    UnknownGPUModel,
    default_catalog,
)


def row(cloud, region, instance, model, count, on_demand, spot=None, source="test", as_of="2025-01-01"):
    return CatalogRow(cloud=cloud, region=region, instance_type=instance, gpu_model=model,
                      gpu_count=count, gpu_mem_gb=80, vcpus=8 * count, ram_gb=64 * count,
                      on_demand_usd_h=on_demand, spot_usd_h=spot, source=source, as_of=as_of)


@pytest.fixture
def small_catalog():
    return PriceCatalog([
        row("aws", "us-east-1", "p5.48xlarge", "H100-80GB", 8, 55.04, spot=20.0),
        row("lambda", "us-east-1", "gpu_1x_h100_pcie", "H100-80GB", 1, 2.49),
        row("gcp", "us-central1", "g2-standard-4", "L4", 1, 0.7068, spot=0.2),
    ])


def test_exact_match_is_the_instance_price_divided_by_its_gpus(small_catalog):
    quote = small_catalog.gpu_hour_price("aws", "us-east-1", "p5.48xlarge", "H100-80GB")
    assert isinstance(quote, PriceQuote)
    assert quote.usd_per_gpu_hour == pytest.approx(6.88)  # 55.04 / 8
    assert quote.fallback is False
    assert quote.source == "test" and quote.as_of == "2025-01-01"


def test_spot_price_is_used_when_asked_and_published(small_catalog):
    quote = small_catalog.gpu_hour_price("aws", "us-east-1", "p5.48xlarge", "H100-80GB", pricing="spot")
    assert quote.usd_per_gpu_hour == pytest.approx(2.5)  # 20.0 / 8
    assert quote.fallback is False and quote.pricing == "spot"


def test_spot_without_a_published_price_falls_back_to_the_instance_on_demand_flagged(small_catalog):
    quote = small_catalog.gpu_hour_price("lambda", "us-east-1", "gpu_1x_h100_pcie", "H100-80GB", pricing="spot")
    assert quote.usd_per_gpu_hour == pytest.approx(2.49)
    assert quote.fallback is True


def test_unknown_instance_falls_back_to_the_models_cheapest_on_demand_gpu_hour(small_catalog):
    # H100: p5 gives 6.88 per GPU, Lambda 2.49: the cheapest wins.
    quote = small_catalog.gpu_hour_price("azure", "westeurope", "ND96isr_H100_v5", "H100-80GB")
    assert quote.usd_per_gpu_hour == pytest.approx(2.49)
    assert quote.fallback is True
    assert "gpu_1x_h100_pcie" in quote.source


def test_lookup_ignores_case_and_accepts_model_aliases(small_catalog):
    assert small_catalog.gpu_hour_price("AWS", "US-EAST-1", "P5.48XLARGE", "h100").fallback is False
    assert small_catalog.gpu_hour_price("x", "y", "z", "h100").usd_per_gpu_hour == pytest.approx(2.49)


def test_unknown_gpu_model_raises_a_specific_error_naming_the_known_ones(small_catalog):
    with pytest.raises(UnknownGPUModel) as info:
        small_catalog.gpu_hour_price("aws", "us-east-1", "p6-b200.48xlarge", "B200")
    assert info.value.gpu_model == "B200"
    assert "B200" in str(info.value) and "H100-80GB" in str(info.value) and "L4" in str(info.value)


def test_default_catalog_is_cached_and_holds_rows_with_the_catalog_columns():
    catalog = default_catalog()
    assert catalog is default_catalog()
    assert len(catalog.rows) >= 10
    header = next(csv.reader(resources.files("core.pricing").joinpath("catalog.csv").open()))
    assert tuple(header) == CATALOG_COLUMNS


def test_every_catalog_row_has_a_source_and_an_as_of_date():
    for r in default_catalog().rows:
        assert r.source.strip(), r
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", r.as_of), r
        assert date(2023, 1, 1) <= date.fromisoformat(r.as_of) <= date.today(), r


def test_every_catalog_row_has_a_positive_price_and_sane_shape():
    for r in default_catalog().rows:
        assert r.on_demand_usd_h > 0 and r.gpu_count >= 1, r
        assert r.spot_usd_h is None or 0 < r.spot_usd_h <= r.on_demand_usd_h, r


def test_catalog_keys_are_unique():
    keys = [r.key for r in default_catalog().rows]
    assert len(keys) == len(set(keys))


def test_every_priced_gpu_model_has_a_spec():
    catalog = default_catalog()
    for model in catalog.gpu_models:
        spec = catalog.spec(model)
        assert spec.memory_gb > 0 and spec.mem_bandwidth_gb_s > 0 and spec.bf16_tflops > 0
        assert spec.source


def test_shipped_p5_price_per_gpu_hour_is_hand_computed():
    # AWS p5.48xlarge us-east-1 on-demand $55.04/h for 8 H100s -> $6.88 per GPU-hour.
    quote = default_catalog().gpu_hour_price("aws", "us-east-1", "p5.48xlarge", "H100-80GB")
    assert quote.usd_per_gpu_hour == pytest.approx(55.04 / 8) and not quote.fallback


def test_spec_of_unknown_model_raises():
    with pytest.raises(UnknownGPUModel):
        default_catalog().spec("Voodoo2")


def test_shipped_gcp_price_is_vm_plus_gpu_per_gpu_hour():
    # a2-highgpu-1g us-central1: VM $0.73948 + one A100 40GB $2.93391 = $3.67339 per GPU-hour.
    quote = default_catalog().gpu_hour_price("gcp", "us-central1", "a2-highgpu-1g", "A100-40GB")
    assert quote.usd_per_gpu_hour == pytest.approx(0.73948 + 2.93391)


def test_azure_instance_matches_with_or_without_the_standard_prefix():
    catalog = default_catalog()
    plain = catalog.gpu_hour_price("azure", "eastus", "ND96amsr_A100_v4", "A100-80GB")
    prefixed = catalog.gpu_hour_price("azure", "eastus", "Standard_ND96amsr_A100_v4", "A100-80GB")
    assert plain == prefixed and plain.usd_per_gpu_hour == pytest.approx(32.77 / 8)
    assert not plain.fallback


def test_catalog_covers_the_clouds_and_gpus_the_issue_asks_for():
    catalog = default_catalog()
    clouds = {r.cloud for r in catalog.rows}
    assert {"aws", "gcp", "azure", "lambda", "coreweave", "runpod"} <= clouds
    assert {"H100-80GB", "H200-141GB", "A100-80GB", "A100-40GB", "L40S", "L4", "A10G", "T4"} <= set(catalog.gpu_models)


def test_lookup_is_a_dict_hit_fast_enough_for_the_hot_path():
    import time
    catalog = default_catalog()
    start = time.perf_counter()
    for _ in range(100_000):
        catalog.gpu_hour_price("aws", "us-east-1", "p5.48xlarge", "H100-80GB")
    per_lookup_s = (time.perf_counter() - start) / 100_000
    assert per_lookup_s < 5e-6
