"""The NVML agent (`gpucost agent`): reads every GPU of this host through NVIDIA's management
library once a second and, each interval, sends one message with a `UsageEvent` per GPU
(utilization averaged over the interval's readings, memory and power at its end)."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from dataclasses import dataclass

from contracts.events import UsageEvent


class NvmlUnavailable(RuntimeError):
    """No NVIDIA driver or GPU here: the agent cannot read anything."""


@dataclass
class Reading:
    index: int
    name: str
    util: float          # 0..1, the driver's busy share over its last sample period
    mem_used_gb: float
    mem_total_gb: float
    power_w: float


_FAMILIES = ("H200", "H100", "A100", "L40S", "L40", "L4", "A10G", "A10", "T4", "V100")


def gpu_model_from_nvml(name: str, mem_total_gb: float) -> str:
    """NVML's device name ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB", "Tesla T4") to the
    pricing catalog's model name ("H100-80GB", "A100-40GB", "T4")."""
    upper = name.upper()
    family = next((f for f in _FAMILIES if re.search(rf"\b{f}\b", upper.replace("-", " "))), None)
    if family is None:
        return re.sub(r"^(NVIDIA|TESLA)\s+", "", name.strip(), flags=re.I)
    if family in ("H100", "A100", "H200"):
        sizes = {"H100": (80, 94), "A100": (40, 80), "H200": (141,)}[family]
        gb = min(sizes, key=lambda s: abs(s - mem_total_gb))
        if family == "H100":
            gb = 80  # the catalog prices the 80 GB parts; H100 NVL 94 GB is priced like them
        return f"{family}-{gb}GB"
    return family


class NvmlSampler:
    def __init__(self):
        try:
            import pynvml
        except ImportError as exc:  # pragma: no cover - declared dependency
            raise NvmlUnavailable("the nvidia-ml-py package is not installed") from exc
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NvmlUnavailable(f"NVML could not start ({exc}): no NVIDIA driver or GPU on this host") from exc
        self.nvml = pynvml
        self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        if not self.handles:
            raise NvmlUnavailable("NVML sees no GPU on this host")

    def read(self) -> list[Reading]:
        n = self.nvml
        out = []
        for i, h in enumerate(self.handles):
            name = n.nvmlDeviceGetName(h)
            mem = n.nvmlDeviceGetMemoryInfo(h)
            try:
                power_w = n.nvmlDeviceGetPowerUsage(h) / 1000.0
            except n.NVMLError:  # some boards do not report power
                power_w = 0.0
            out.append(Reading(i, name.decode() if isinstance(name, bytes) else name,
                               n.nvmlDeviceGetUtilizationRates(h).gpu / 100.0,
                               mem.used / 1e9, mem.total / 1e9, power_w))
        return out

    def close(self) -> None:
        self.nvml.nvmlShutdown()


def to_events(readings: list[list[Reading]], *, ts: float, interval_s: float, host: str, tenant: str,
              service: str, cloud: str, region: str, instance_type: str) -> list[UsageEvent]:
    """One event per GPU from the interval's readings: utilization is their mean, memory and power
    the last reading."""
    last = readings[-1]
    events = []
    for r in last:
        utils = [rs[r.index].util for rs in readings if r.index < len(rs)]
        events.append(UsageEvent(
            ts=ts, tenant=tenant, service=service, cloud=cloud, region=region, instance_type=instance_type,
            gpu_model=gpu_model_from_nvml(r.name, r.mem_total_gb), host=host, gpu_index=r.index,
            interval_s=interval_s, util=min(1.0, max(0.0, sum(utils) / len(utils))),
            mem_used_gb=round(min(r.mem_used_gb, r.mem_total_gb), 3), mem_total_gb=round(r.mem_total_gb, 3),
            power_w=round(r.power_w, 1)))
    return events


async def run_agent(producer, sampler: NvmlSampler, *, interval_s: float, tenant: str, service: str,
                    cloud: str, region: str, instance_type: str, host: str | None = None,
                    intervals: int | None = None) -> int:
    """Read once a second, send every interval_s; returns the number of events sent."""
    host = host or socket.gethostname()
    sent = done = 0
    while intervals is None or done < intervals:
        start = time.monotonic()
        readings = []
        while True:
            readings.append(sampler.read())
            if time.monotonic() - start >= interval_s:
                break
            await asyncio.sleep(min(1.0, max(0.0, interval_s - (time.monotonic() - start))))
        events = to_events(readings, ts=time.time(), interval_s=interval_s, host=host, tenant=tenant,
                           service=service, cloud=cloud, region=region, instance_type=instance_type)
        await producer.send_usage(events)
        sent += len(events)
        done += 1
    return sent
