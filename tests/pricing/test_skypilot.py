"""Loading SkyPilot-catalog-format CSVs: one row per region and instance, zone rows folded
(lowest on-demand, median spot), GCP machines priced as VM plus accelerator."""

import pytest

from core.pricing import PriceCatalog, default_catalog
from core.pricing.catalog import CatalogFormatError
from core.pricing.skypilot import load_skypilot_csv

AWS_CSV = """InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone,Arch
m5.large,,,2.0,8.0,,0.096,0.04,us-east-1,use1-az1,x86_64
p5.48xlarge,H100,8.0,192.0,2048.0,"{'Gpus': [{'Name': 'H100', 'Count': 8, 'MemoryInfo': {'SizeInMiB': 81920}}]}",55.04,19.2531,us-east-1,use1-az2,x86_64
p5.48xlarge,H100,8.0,192.0,2048.0,"{'Gpus': [{'Name': 'H100', 'Count': 8, 'MemoryInfo': {'SizeInMiB': 81920}}]}",55.04,21.1543,us-east-1,use1-az3,x86_64
p5.48xlarge,H100,8.0,192.0,2048.0,"{'Gpus': [{'Name': 'H100', 'Count': 8, 'MemoryInfo': {'SizeInMiB': 81920}}]}",55.04,17.6289,us-east-1,use1-az6,x86_64
g6.xlarge,L4,1.0,4.0,16.0,,0.8048,,us-west-2,usw2-az1,x86_64
"""

GCP_CSV = """InstanceType,vCPUs,MemoryGiB,AcceleratorName,AcceleratorCount,GpuInfo,Region,AvailabilityZone,Price,SpotPrice
a2-highgpu-1g,12.0,85.0,,,,us-central1,us-central1-a,0.73948,0.36975
a2-highgpu-8g,96.0,680.0,,,,us-central1,us-central1-a,5.91582,2.958
n2-standard-8,8.0,32.0,,,,us-central1,us-central1-a,0.38,0.09
,,,A100,1,{'Gpus': [{'MemoryInfo': {'SizeInMiB': 40960}}]},us-central1,us-central1-a,2.93391,1.4341
,,,A100,8,{'Gpus': [{'MemoryInfo': {'SizeInMiB': 40960}}]},us-central1,us-central1-a,23.47126,11.4728
"""


def test_zone_rows_fold_into_one_row_with_median_spot():
    rows = load_skypilot_csv(AWS_CSV, "aws", as_of="2026-11-26")
    by_instance = {r.instance_type: r for r in rows}
    assert set(by_instance) == {"p5.48xlarge", "g6.xlarge"}  # CPU-only m5.large left out
    p5 = by_instance["p5.48xlarge"]
    assert (p5.gpu_model, p5.gpu_count, p5.gpu_mem_gb) == ("H100-80GB", 8, 80.0)
    assert p5.on_demand_usd_h == 55.04
    assert p5.spot_usd_h == pytest.approx(19.2531)  # median of 17.6289, 19.2531, 21.1543
    assert p5.as_of == "2026-11-26" and p5.source
    g6 = by_instance["g6.xlarge"]
    assert g6.spot_usd_h is None and g6.gpu_mem_gb == 24  # nominal L4 memory without GpuInfo


def test_gcp_machine_price_is_vm_plus_its_accelerators():
    rows = {r.instance_type: r for r in load_skypilot_csv(GCP_CSV, "gcp", as_of="2026-11-26")}
    assert set(rows) == {"a2-highgpu-1g", "a2-highgpu-8g"}
    assert rows["a2-highgpu-1g"].on_demand_usd_h == pytest.approx(0.73948 + 2.93391)
    assert rows["a2-highgpu-1g"].spot_usd_h == pytest.approx(0.36975 + 1.4341)
    assert rows["a2-highgpu-8g"].on_demand_usd_h == pytest.approx(5.91582 + 23.47126)
    assert rows["a2-highgpu-8g"].gpu_model == "A100-40GB"


def test_loaded_rows_replace_catalog_rows_of_the_same_instance():
    refreshed = default_catalog().with_rows(load_skypilot_csv(AWS_CSV.replace("55.04", "40.0"), "aws"))
    quote = refreshed.gpu_hour_price("aws", "us-east-1", "p5.48xlarge", "H100-80GB")
    assert quote.usd_per_gpu_hour == pytest.approx(5.0) and not quote.fallback
    assert isinstance(refreshed, PriceCatalog)
    assert refreshed.spec("H100-80GB").mem_bandwidth_gb_s == 3350


def test_a_csv_without_the_skypilot_columns_is_rejected():
    with pytest.raises(CatalogFormatError):
        load_skypilot_csv("a,b\n1,2\n", "aws")
