"""Reads this host's GPUs through the NVML agent's sampler for a few seconds and prints the usage
events it would send (run on a GPU machine; no Kafka needed)."""

import csv
import time
from pathlib import Path

from ingest.nvml import NvmlSampler, to_events

sampler = NvmlSampler()
readings = []
start = time.monotonic()
while time.monotonic() - start < 3.0:
    readings.append(sampler.read())
    time.sleep(0.5)
events = to_events(readings, ts=time.time(), interval_s=3.0, host="gpu-box", tenant="gpucost-dev",
                   service="nvml-check", cloud="aws", region="us-east-1", instance_type="p5.48xlarge")
models = {r["gpu_model"] for r in csv.DictReader(open(Path(__file__).parent.parent / "gpucost/pricing/catalog.csv"))}
for r, e in zip(readings[-1], events):
    print(f"NVML name {r.name!r} -> gpu_model {e.gpu_model!r} (in catalog: {e.gpu_model in models})")
    print(e.model_dump_json())
sampler.close()
