"""DCGM exporter source: scrapes NVIDIA dcgm-exporter's Prometheus text endpoints (default
`:9400/metrics`) and turns every GPU (or MIG slice) into one `UsageEvent` per scrape.

- Parsing is `prometheus_client`'s text parser; series are grouped per device: host (`hostname`
  label, or the older `Hostname`, else the target's host), GPU (`UUID`, else `gpu`) and MIG
  instance (`GPU_I_ID`).
- Utilization is `DCGM_FI_PROF_GR_ENGINE_ACTIVE` (a ratio, correct on MIG) when the exporter
  publishes it, else `DCGM_FI_DEV_GPU_UTIL` (percent). Memory is `FB_USED` of `FB_USED + FB_FREE
  (+ FB_RESERVED)` MiB; power is `DCGM_FI_DEV_POWER_USAGE` W.
- `interval_s` is the real time since that device's previous scrape; a device's first scrape (and
  the first after a gap longer than `max_gap_s`) emits nothing. A MIG slice is priced as its share
  of the GPU (1g of 7 is 1/7) and a GPU shared by several pods is split evenly between them: the
  share scales `interval_s` (so the worker's GPU-seconds are whole-GPU seconds and its cost is the
  share's); `wall_interval_s` and `gpu_share` travel beside it as extra fields.
- DCGM's blank sentinels (values at or above 2**31 - 16: INT32/INT64/FP64 blank, not found, not
  supported, not permissioned) and NaN are missing data: the device is skipped for that scrape and
  counted, never turned into a utilization.
- A target that fails (connection, HTTP status, unparsable text) is retried with exponential
  backoff and counted; it never holds up the other targets, which are scraped concurrently."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from pydantic import ValidationError
from prometheus_client.parser import text_string_to_metric_families

from contracts.events import UsageEvent
from core.pricing.catalog import canonical_gpu_model
from ingest.mapping import SourceMapping

log = logging.getLogger("gpucost.dcgm")

GR_ENGINE_ACTIVE = "DCGM_FI_PROF_GR_ENGINE_ACTIVE"
GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL"
FB_USED = "DCGM_FI_DEV_FB_USED"
FB_FREE = "DCGM_FI_DEV_FB_FREE"
FB_RESERVED = "DCGM_FI_DEV_FB_RESERVED"
POWER = "DCGM_FI_DEV_POWER_USAGE"
FIELDS = (GR_ENGINE_ACTIVE, GPU_UTIL, FB_USED, FB_FREE, FB_RESERVED, POWER)

#: DCGM_FT_INT32_BLANK (0x7ffffff0): the smallest of DCGM's blank sentinels. INT64 blanks
#: (9223372036854775792 and up) and FP64 blanks (2**47 and up) are all above it, and no field
#: this source reads (percent, MiB, W) comes near it.
DCGM_BLANK_MIN = 0x7FFFFFF0
#: Compute slices of a whole GPU for MIG (A100, H100, H200, B200: 7; A30: 4).
MIG_SLICES = {"A30": 4}
MIB_PER_GB = 1024.0

_MIG_SLICE = re.compile(r"(?:^|\.)(\d+)g\.")


def is_blank(value: float) -> bool:
    """DCGM's blank or not-supported sentinel, NaN or infinity, or a negative reading."""
    return not math.isfinite(value) or value >= DCGM_BLANK_MIN or value < 0


def gpu_model_from_name(model_name: str) -> str:
    """dcgm-exporter's `modelName` ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB", "Tesla T4")
    as the catalog's GPU model name; an unknown name passes through (the worker dead-letters its
    events as unpriceable unless the host's instance type is in the catalog)."""
    name = model_name.strip()
    low = name.lower().replace("nvidia", "").replace("tesla", "").strip(" -")
    if "h200" in low:
        return "H200-141GB"
    if "h100" in low:
        return "H100-80GB"
    if "a100" in low:
        return "A100-80GB" if "80g" in low else "A100-40GB"
    if "l40s" in low:
        return "L40S"
    for short, model in (("a10g", "A10G"), ("a10", "A10"), ("l4", "L4"), ("t4", "T4")):
        if re.search(rf"(^|[^a-z0-9]){short}($|[^a-z0-9])", low):
            return model
    return canonical_gpu_model(name.replace(" ", "-")) if name else "unknown"


def mig_share(profile: str, gpu_model: str) -> float:
    """The share of a whole GPU a MIG profile holds ("1g.10gb" on an H100: 1/7; "1c.3g.40gb": 3/7)."""
    m = _MIG_SLICE.search(profile)
    if m is None:
        raise ValueError(f"unrecognised MIG profile {profile!r}")
    total = MIG_SLICES.get(gpu_model, 7)
    return min(1.0, int(m.group(1)) / total)


@dataclass
class Device:
    """One GPU or MIG slice in one scrape: its labels and the readings this source uses."""

    host: str
    gpu_index: int
    uuid: str
    model_name: str
    mig_profile: str = ""
    mig_instance: str = ""
    values: dict[str, float] = field(default_factory=dict)
    workloads: list[dict[str, str]] = field(default_factory=list)  # distinct pod label sets

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.host, self.uuid or str(self.gpu_index), self.mig_instance)


def parse_exposition(text: str, default_host: str) -> list[Device]:
    """Devices in one exporter response (raises ValueError on text that is not exposition format)."""
    devices: dict[tuple, Device] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name not in FIELDS:
                continue
            labels = sample.labels
            host = labels.get("hostname") or labels.get("Hostname") or default_host
            try:
                gpu_index = int(labels.get("gpu", ""))
            except ValueError:
                continue  # not a GPU series (a switch or CPU entity)
            dev_key = (host, labels.get("UUID") or labels.get("gpu", ""), labels.get("GPU_I_ID", ""))
            dev = devices.get(dev_key)
            if dev is None:
                dev = devices[dev_key] = Device(
                    host=host, gpu_index=gpu_index, uuid=labels.get("UUID", ""),
                    model_name=labels.get("modelName", "") or labels.get("model_name", ""),
                    mig_profile=labels.get("GPU_I_PROFILE", ""), mig_instance=labels.get("GPU_I_ID", ""))
            # With Kubernetes mapping the exporter repeats a device's series once per pod using it.
            workload = {k: labels[k] for k in labels if k not in _DEVICE_LABELS}
            if labels.get("pod") and workload not in dev.workloads:
                dev.workloads.append(workload)
            if sample.name not in dev.values or is_blank(dev.values[sample.name]):
                dev.values[sample.name] = float(sample.value)
    return list(devices.values())


_DEVICE_LABELS = frozenset({"gpu", "UUID", "pci_bus_id", "device", "modelName", "model_name", "Hostname",
                            "hostname", "GPU_I_PROFILE", "GPU_I_ID", "DCGM_FI_DRIVER_VERSION", "err_code", "err_msg"})


@dataclass
class TargetStats:
    url: str
    scrapes_ok: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_error: str = ""
    last_success_ts: float | None = None
    next_attempt_ts: float = 0.0  # wall clock; a failing target waits until then
    devices: int = 0
    events: int = 0
    blank_skipped: int = 0  # device scrapes skipped for a blank sentinel or NaN
    first_seen: int = 0     # device scrapes that only start an interval
    gaps: int = 0           # device scrapes after a gap longer than max_gap_s (interval restarted)
    invalid: int = 0        # device scrapes whose readings break the event contract (last_invalid says why)
    last_invalid: str = ""


class DcgmScraper:
    """Scrapes every target once per `interval_s`, concurrently, and sends the events.

    `producer` is anything with `async send_usage(events)` (ingest.producer.EventProducer)."""

    def __init__(self, urls: Iterable[str], mapping: SourceMapping | None = None, producer=None,
                 interval_s: float = 10.0, timeout_s: float = 5.0, backoff_max_s: float = 300.0,
                 max_gap_s: float | None = None, stats_path: Path | None = None):
        self.urls = [normalise_url(u) for u in urls]
        if not self.urls:
            raise ValueError("no DCGM exporter URL given")
        self.mapping = mapping or SourceMapping()
        self.producer = producer
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.backoff_max_s = backoff_max_s
        self.max_gap_s = max_gap_s if max_gap_s is not None else max(3 * interval_s, 60.0)
        self.stats_path = stats_path
        self.targets = {u: TargetStats(u) for u in self.urls}
        self._last_seen: dict[tuple, float] = {}  # device key -> wall time of its previous scrape
        self.send_failures = 0
        self.last_send_error = ""
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> "DcgmScraper":
        self._client = httpx.AsyncClient(timeout=self.timeout_s)
        return self

    async def __aexit__(self, *exc) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- one round ------------------------------------------------------------------------
    async def scrape_once(self, now: float | None = None) -> list[UsageEvent]:
        """Scrape every target that is due, convert, send; returns the events sent."""
        now = time.time() if now is None else now
        due = [u for u in self.urls if self.targets[u].next_attempt_ts <= now]
        results = await asyncio.gather(*(self._fetch(u) for u in due), return_exceptions=True)
        events: list[UsageEvent] = []
        for url, result in zip(due, results):
            st = self.targets[url]
            if isinstance(result, BaseException):
                self._failed(st, now, result)
                continue
            try:
                devices = parse_exposition(result, default_host=urlsplit(url).hostname or url)
            except ValueError as exc:
                self._failed(st, now, exc)
                continue
            st.scrapes_ok += 1
            st.consecutive_failures = 0
            st.last_error = ""
            st.last_success_ts = now
            st.next_attempt_ts = 0.0
            st.devices = len(devices)
            new = self.to_events(devices, now, st)
            st.events += len(new)
            events.extend(new)
        if events and self.producer is not None:
            try:
                await self.producer.send_usage(events)
            except Exception as exc:  # Kafka down past the producer's own retries: report, keep scraping
                self.send_failures += 1
                self.last_send_error = f"{type(exc).__name__}: {exc}"[:300]
                log.error("could not send %d DCGM events: %s", len(events), self.last_send_error)
                events = []
        self.write_stats()
        return events

    async def _fetch(self, url: str) -> str:
        client = self._client
        if client is None:
            raise RuntimeError("DcgmScraper is used outside `async with`")
        r = await client.get(url)
        if r.status_code != 200:
            raise httpx.HTTPStatusError(f"HTTP {r.status_code} from {url}", request=r.request, response=r)
        return r.text

    def _failed(self, st: TargetStats, now: float, exc: BaseException) -> None:
        st.failures += 1
        st.consecutive_failures += 1
        st.last_error = f"{type(exc).__name__}: {exc}"[:300]
        # Doubling from one interval, capped: a dead exporter costs a request now and then.
        st.next_attempt_ts = now + min(self.backoff_max_s, self.interval_s * 2 ** (st.consecutive_failures - 1))
        log.warning("dcgm target %s failed (%d in a row, next try in %.0fs): %s", st.url,
                    st.consecutive_failures, st.next_attempt_ts - now, st.last_error)

    # -- conversion -----------------------------------------------------------------------
    def to_events(self, devices: list[Device], now: float, st: TargetStats | None = None) -> list[UsageEvent]:
        st = st or TargetStats("")
        out = []
        for dev in devices:
            reading = _reading(dev.values)
            previous = self._last_seen.get(dev.key)
            self._last_seen[dev.key] = now
            if reading is None:
                st.blank_skipped += 1
                continue
            if previous is None:
                st.first_seen += 1
                continue
            wall_s = now - previous
            if wall_s <= 0:
                continue
            if wall_s > self.max_gap_s:
                st.gaps += 1
                continue
            try:
                out.extend(self._device_events(dev, reading, now, wall_s))
            except (ValueError, ValidationError) as exc:  # one odd device never stops the scrape
                st.invalid += 1
                st.last_invalid = f"{dev.host} gpu {dev.gpu_index}: {exc}"[:300]
        return out

    def _device_events(self, dev: Device, reading: tuple, now: float, wall_s: float) -> list[UsageEvent]:
        util, used_mib, total_mib, power_w = reading
        gpu_model = gpu_model_from_name(dev.model_name)
        share = mig_share(dev.mig_profile, gpu_model) if dev.mig_profile else 1.0
        place = self.mapping.placement(dev.host)
        workloads = dev.workloads or [{}]
        each = share / len(workloads)
        out = []
        for wl in workloads:
            extras = {"source": "dcgm", "wall_interval_s": wall_s, "gpu_share": each, "gpu_uuid": dev.uuid}
            if dev.mig_profile:
                extras.update(mig_profile=dev.mig_profile, mig_instance=dev.mig_instance)
            for k in ("namespace", "pod", "container"):
                if wl.get(k):
                    extras[k] = wl[k]
            out.append(UsageEvent(
                ts=now, tenant=self.mapping.tenant.resolve(wl, place.tenant),
                service=self.mapping.service.resolve(wl, place.service),
                cloud=place.cloud, region=place.region, instance_type=place.instance_type,
                gpu_model=gpu_model, host=dev.host, gpu_index=dev.gpu_index,
                interval_s=wall_s * each, util=util, mem_used_gb=used_mib / MIB_PER_GB,
                mem_total_gb=total_mib / MIB_PER_GB, power_w=power_w * share / len(workloads), **extras))
        return out

    # -- service --------------------------------------------------------------------------
    async def run(self, rounds: int | None = None, on_round=None) -> None:
        """Scrape every `interval_s` (on a fixed schedule, not drifting by scrape time)."""
        n = 0
        next_at = time.monotonic()
        while rounds is None or n < rounds:
            events = await self.scrape_once()
            n += 1
            if on_round is not None:
                on_round(events)
            # A round that overran (slow exporters) starts the next one now, without a burst of catch-ups.
            next_at = max(next_at + self.interval_s, time.monotonic())
            await asyncio.sleep(next_at - time.monotonic())

    def stats(self) -> dict:
        targets = [asdict(t) for t in self.targets.values()]
        return {"targets": targets, "targets_down": sum(1 for t in self.targets.values() if t.consecutive_failures),
                "events": sum(t.events for t in self.targets.values()),
                "blank_skipped": sum(t.blank_skipped for t in self.targets.values()),
                "invalid": sum(t.invalid for t in self.targets.values()),
                "send_failures": self.send_failures, "last_send_error": self.last_send_error, "updated_ts": time.time()}

    def write_stats(self) -> None:
        """The API reads this file for `/api/sources/dcgm` and `/metrics` (same machine, same data dir)."""
        if self.stats_path is None:
            return
        self.stats_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.stats()))
        os.replace(tmp, self.stats_path)


def _reading(values: dict[str, float]) -> tuple[float, float, float, float] | None:
    """(util 0..1, used MiB, total MiB, power W), or None when a reading it needs is blank."""
    if GR_ENGINE_ACTIVE in values:
        util = values[GR_ENGINE_ACTIVE]  # a ratio; on MIG the device-level GPU_UTIL is not valid
        if is_blank(util):
            return None
    elif GPU_UTIL in values:
        util = values[GPU_UTIL]
        if is_blank(util):
            return None
        util /= 100.0
    else:
        return None
    used, free = values.get(FB_USED), values.get(FB_FREE)
    if used is None or free is None or is_blank(used) or is_blank(free):
        return None
    reserved = values.get(FB_RESERVED, 0.0)
    reserved = 0.0 if is_blank(reserved) else reserved
    power = values.get(POWER, 0.0)
    power = 0.0 if is_blank(power) else power
    total = used + free + reserved
    if total <= 0:
        return None
    return min(1.0, max(0.0, util)), used, total, power


def normalise_url(url: str) -> str:
    """`host`, `host:9400` or a full URL; the exporter's defaults fill in what is missing."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.port is None and parts.hostname and not parts.path.strip("/"):
        url = f"{parts.scheme}://{parts.hostname}:9400"
        parts = urlsplit(url)
    if not parts.path.strip("/"):
        url = url.rstrip("/") + "/metrics"
    return url


def stats_file(data_dir: Path) -> Path:
    return Path(data_dir) / "sources" / "dcgm.json"
