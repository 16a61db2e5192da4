"""The NVML agent's pure parts: device names to catalog models, readings to events. (Reading a real
GPU is checked on the GPU machine: see docs/benchmarks.md.)"""

import time

import pytest

from core.pricing import default_catalog
from ingest.nvml import NvmlSampler, NvmlUnavailable, Reading, gpu_model_from_nvml, to_events


@pytest.mark.parametrize("name,mem_gb,model", [
    ("NVIDIA H100 80GB HBM3", 85.0, "H100-80GB"),
    ("NVIDIA H100 PCIe", 85.0, "H100-80GB"),
    ("NVIDIA A100-SXM4-40GB", 42.5, "A100-40GB"),
    ("NVIDIA A100-SXM4-80GB", 85.1, "A100-80GB"),
    ("NVIDIA H200", 150.0, "H200-141GB"),
    ("NVIDIA L40S", 48.3, "L40S"),
    ("NVIDIA L4", 24.1, "L4"),
    ("NVIDIA A10G", 24.1, "A10G"),
    ("Tesla T4", 16.0, "T4"),
])
def test_nvml_names_map_to_priced_catalog_models(name, mem_gb, model):
    assert gpu_model_from_nvml(name, mem_gb) == model
    assert default_catalog().gpu_hour_price("aws", "nowhere", "unknown", model).usd_per_gpu_hour > 0


def test_interval_utilization_is_the_mean_of_its_readings():
    def reading(util, used):
        return [Reading(0, "NVIDIA L4", util, used, 24.0, 70.0), Reading(1, "NVIDIA L4", 1.0, 1.0, 24.0, 72.0)]
    evs = to_events([reading(0.2, 3.0), reading(0.4, 4.0), reading(0.9, 5.0)], ts=time.time(), interval_s=3.0,
                    host="h", tenant="t", service="s", cloud="aws", region="us-east-1", instance_type="g6.xlarge")
    assert [e.gpu_index for e in evs] == [0, 1]
    assert evs[0].util == pytest.approx(0.5) and evs[0].mem_used_gb == 5.0 and evs[0].gpu_model == "L4"
    assert evs[1].util == 1.0


def test_without_a_gpu_the_agent_says_so_clearly():
    try:
        NvmlSampler().close()
    except NvmlUnavailable as exc:
        assert "NVIDIA" in str(exc) or "NVML" in str(exc)
    else:
        pytest.skip("this machine has an NVIDIA GPU")
