"""The DCGM exporter source against a real HTTP server serving recorded exporter responses: label
spellings, MIG shares, blank sentinels, the first-scrape rule, backoff, and the mapping file."""

from __future__ import annotations

import socket
from collections import defaultdict

import pytest

from ingest.dcgm import DcgmScraper, gpu_model_from_name, is_blank, mig_share, normalise_url, parse_exposition
from ingest.mapping import MappingError, load_mapping
from tests.ingest.exporter_server import ExporterServer

MAPPING = """
tenant: {label: namespace, default: platform}
service: {label: container, fallback_labels: [pod], default: idle}
hosts:
  - {match: gpu-node-b, cloud: aws, region: us-east-1, instance_type: p4d.24xlarge, tenant: batch, service: etl}
  - {match: "gpu-node-*", cloud: aws, region: us-east-1, instance_type: p5.48xlarge}
"""
T0 = 1_700_000_000.0


@pytest.fixture
def exporters():
    with ExporterServer() as server:
        yield server


@pytest.fixture
def mapping(tmp_path):
    path = tmp_path / "map.yaml"
    path.write_text(MAPPING)
    return load_mapping(path)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/metrics"


def by_key(events):
    out = defaultdict(list)
    for e in events:
        out[(e.tenant, e.service)].append(e)
    return out


async def test_first_scrape_only_starts_the_interval_and_the_second_meters_it(exporters, mapping):
    urls = [exporters.url(h) for h in ("gpu-node-a", "gpu-node-b", "gpu-node-mig")]
    async with DcgmScraper(urls, mapping, interval_s=10) as scraper:
        assert await scraper.scrape_once(now=T0) == []
        events = await scraper.scrape_once(now=T0 + 10)
    # 8 + 8 + (7 + 2 + 6) devices, one blank each host.
    assert len(events) == 7 + 7 + 14
    assert {e.ts for e in events} == {T0 + 10}
    st = {u.split("/")[-2]: t for u, t in scraper.targets.items()}
    assert [st[h].blank_skipped for h in ("gpu-node-a", "gpu-node-b", "gpu-node-mig")] == [2, 2, 2]
    assert [st[h].first_seen for h in ("gpu-node-a", "gpu-node-b", "gpu-node-mig")] == [7, 7, 14]


async def test_labels_of_old_and_new_exporters_map_to_tenant_service_and_instance(exporters, mapping):
    async with DcgmScraper([exporters.url("gpu-node-a"), exporters.url("gpu-node-b")], mapping) as scraper:
        await scraper.scrape_once(now=T0)
        events = by_key(await scraper.scrape_once(now=T0 + 10))
    trainer = events[("research", "trainer")]
    assert sorted(e.gpu_index for e in trainer) == [0, 1, 2, 3]  # GPU 7 is blank this scrape
    assert {(e.host, e.instance_type, e.gpu_model) for e in trainer} == {("gpu-node-a", "p5.48xlarge", "H100-80GB")}
    # The profiling metric wins over DCGM_FI_DEV_GPU_UTIL (99 % on every GPU of this host).
    assert sorted(e.util for e in trainer) == [0.25, 0.5, 0.75, 1.0]
    assert trainer[0].mem_used_gb == pytest.approx(40960 / 1024)
    assert trainer[0].mem_total_gb == pytest.approx((40960 + 40000 + 551) / 1024)
    assert trainer[0].pod == "trainer-6c7d9f8b5-x2k4q" and trainer[0].namespace == "research"
    assert [e.gpu_index for e in events[("platform", "idle")]] == [6]  # empty pod labels: the defaults
    # The older `Hostname` label, percent utilization, the host's tenant and instance from the map.
    etl = events[("batch", "etl")]
    assert sorted(e.gpu_index for e in etl) == [0, 1, 2, 4, 5, 6, 7]  # GPU 3 reads NaN
    assert {(e.host, e.instance_type, e.gpu_model) for e in etl} == {("gpu-node-b", "p4d.24xlarge", "A100-40GB")}
    assert sorted(e.util for e in etl) == pytest.approx([0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.8])
    assert all(e.interval_s == 10 and e.power_w == 120.25 for e in etl)


async def test_a_mig_slice_is_metered_as_its_share_of_the_gpu(exporters, mapping):
    async with DcgmScraper([exporters.url("gpu-node-mig")], mapping) as scraper:
        await scraper.scrape_once(now=T0)
        events = by_key(await scraper.scrape_once(now=T0 + 10))
    notebooks = events[("notebooks", "notebook")]
    assert len(notebooks) == 6  # the seventh slice reports the FP64 blank
    assert all(e.interval_s == pytest.approx(10 / 7) and e.gpu_share == pytest.approx(1 / 7) for e in notebooks)
    assert all(e.wall_interval_s == 10 and e.mig_profile == "1g.10gb" for e in notebooks)
    assert notebooks[0].mem_total_gb == pytest.approx(9864 / 1024)
    (trainer,) = events[("research", "trainer")]
    (embedder,) = events[("serving", "embedder")]
    assert (trainer.interval_s, trainer.util, trainer.mig_instance) == (pytest.approx(40 / 7), 0.75, "1")
    assert (embedder.interval_s, embedder.util) == (pytest.approx(30 / 7), 0.5)
    assert sorted(e.gpu_index for e in events[("platform", "idle")]) == [2, 3, 4, 5, 6, 7]


async def test_a_failing_exporter_backs_off_and_never_stops_the_others(exporters, mapping):
    dead = closed_port_url()
    urls = [exporters.url("broken"), dead, exporters.url("gpu-node-a")]
    async with DcgmScraper(urls, mapping, interval_s=10, backoff_max_s=40) as scraper:
        sent = [len(await scraper.scrape_once(now=T0 + 10 * i)) for i in range(8)]
    assert sent == [0] + [7] * 7
    broken, unreachable = scraper.targets[urls[0]], scraper.targets[dead]
    # Tried at 0, then after 10, 20 and 40 (capped) s: at 0, 10, 30, 70.
    assert exporters.requests["broken"] == 4
    assert broken.failures == 4 and broken.consecutive_failures == 4 and "500" in broken.last_error
    assert unreachable.failures == 4 and "Connect" in unreachable.last_error
    assert broken.next_attempt_ts == T0 + 110
    stats = scraper.stats()
    assert stats["targets_down"] == 2 and stats["events"] == 49


async def test_a_recovered_exporter_is_scraped_again(exporters, mapping):
    async with DcgmScraper([exporters.url("flaky")], mapping, interval_s=10) as scraper:
        await scraper.scrape_once(now=T0)  # 404: no such exporter yet
        assert scraper.targets[exporters.url("flaky")].next_attempt_ts == T0 + 10
        exporters.bodies["flaky"] = exporters.bodies["gpu-node-a"]
        await scraper.scrape_once(now=T0 + 10)
        assert len(await scraper.scrape_once(now=T0 + 20)) == 7
    st = scraper.targets[exporters.url("flaky")]
    assert (st.consecutive_failures, st.failures, st.scrapes_ok, st.next_attempt_ts) == (0, 1, 2, 0.0)


async def test_a_gap_longer_than_max_gap_restarts_the_interval(exporters, mapping):
    async with DcgmScraper([exporters.url("gpu-node-a")], mapping, interval_s=10, max_gap_s=30) as scraper:
        await scraper.scrape_once(now=T0)
        assert await scraper.scrape_once(now=T0 + 31) == []
        events = await scraper.scrape_once(now=T0 + 41)
    assert len(events) == 7 and {e.interval_s for e in events} == {10}
    assert scraper.targets[exporters.url("gpu-node-a")].gaps == 7


def test_a_gpu_shared_by_two_pods_is_split_between_them(mapping):
    text = "\n".join([
        "# TYPE DCGM_FI_DEV_GPU_UTIL gauge",
        'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-1",modelName="NVIDIA L4",hostname="h",namespace="a",pod="p1",container="c1"} 40',
        'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-1",modelName="NVIDIA L4",hostname="h",namespace="b",pod="p2",container="c2"} 40',
        "# TYPE DCGM_FI_DEV_FB_USED gauge",
        'DCGM_FI_DEV_FB_USED{gpu="0",UUID="GPU-1",modelName="NVIDIA L4",hostname="h",namespace="a",pod="p1",container="c1"} 100',
        'DCGM_FI_DEV_FB_USED{gpu="0",UUID="GPU-1",modelName="NVIDIA L4",hostname="h",namespace="b",pod="p2",container="c2"} 100',
        "# TYPE DCGM_FI_DEV_FB_FREE gauge",
        'DCGM_FI_DEV_FB_FREE{gpu="0",UUID="GPU-1",modelName="NVIDIA L4",hostname="h",namespace="a",pod="p1",container="c1"} 924',
        'DCGM_FI_DEV_FB_FREE{gpu="0",UUID="GPU-1",modelName="NVIDIA L4",hostname="h",namespace="b",pod="p2",container="c2"} 924',
        ""])
    (device,) = parse_exposition(text, "fallback-host")
    scraper = DcgmScraper(["h"], mapping)
    scraper.to_events([device], T0)
    events = scraper.to_events([device], T0 + 30)
    assert [(e.tenant, e.service, e.interval_s, e.gpu_model, e.util) for e in events] == [
        ("a", "c1", 15.0, "L4", 0.4), ("b", "c2", 15.0, "L4", 0.4)]


def test_a_device_that_breaks_the_contract_is_counted_and_the_others_still_report(mapping):
    def series(host, gpu, extra=""):
        labels = f'gpu="{gpu}",UUID="GPU-{gpu}",modelName="NVIDIA H100 80GB HBM3",hostname="{host}"{extra}'
        return [f"DCGM_FI_DEV_GPU_UTIL{{{labels}}} 50", f"DCGM_FI_DEV_FB_USED{{{labels}}} 10",
                f"DCGM_FI_DEV_FB_FREE{{{labels}}} 90"]
    text = "\n".join(series("good", 0) + series("bad\\nhost", 1) + series("mig", 2, ',GPU_I_PROFILE="odd",GPU_I_ID="3"')) + "\n"
    devices = parse_exposition(text, "x")
    scraper = DcgmScraper(["h"], mapping)
    st = scraper.targets["http://h:9400/metrics"]
    scraper.to_events(devices, T0, st)
    events = scraper.to_events(devices, T0 + 10, st)
    assert [e.host for e in events] == ["good"]
    assert st.invalid == 2 and "MIG profile 'odd'" in st.last_invalid


def test_a_service_can_be_cut_out_of_the_pod_name(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("service: {label: pod, pattern: '^(?P<service>.+?)(-[a-z0-9]{6,10})?-[a-z0-9]{5}$'}\n"
                    "tenant: {label: namespace, rename: {ml-prod: research}}\n")
    m = load_mapping(path)
    assert m.service.resolve({"pod": "llm-api-5f6d7c8b9-abcde"}) == "llm-api"
    assert m.service.resolve({"pod": "etl-x7k2p"}) == "etl"
    assert m.tenant.resolve({"namespace": "ml-prod"}) == "research"
    assert m.tenant.resolve({}) == "unassigned"


@pytest.mark.parametrize("text, message", [
    ("tenant: {lable: namespace}\n", "tenant.lable: Extra inputs are not permitted"),
    ("service: {label: pod, pattern: '(unclosed'}\n", "service.pattern"),
    ("service: {label: pod, pattern: 'no-group'}\n", "needs a group"),
    ("hosts: [{cloud: aws}]\n", "hosts.0.match: Field required"),
    ("- just\n- a list\n", "expected a mapping"),
    ("tenant: [unbalanced\n", "not valid YAML"),
])
def test_a_bad_mapping_file_is_refused_with_the_key_that_is_wrong(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(MappingError) as err:
        load_mapping(path)
    assert message in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("name, model", [
    ("NVIDIA H100 80GB HBM3", "H100-80GB"), ("NVIDIA H100 PCIe", "H100-80GB"), ("NVIDIA H200", "H200-141GB"),
    ("NVIDIA A100-SXM4-40GB", "A100-40GB"), ("NVIDIA A100-SXM4-80GB", "A100-80GB"), ("NVIDIA A100 80GB PCIe", "A100-80GB"),
    ("NVIDIA L40S", "L40S"), ("NVIDIA L4", "L4"), ("NVIDIA A10G", "A10G"), ("NVIDIA A10", "A10"), ("Tesla T4", "T4"),
])
def test_exporter_model_names_map_to_catalog_models(name, model):
    assert gpu_model_from_name(name) == model


def test_mig_profiles_are_shares_of_seven_slices():
    assert mig_share("1g.10gb", "H100-80GB") == pytest.approx(1 / 7)
    assert mig_share("3g.40gb", "H100-80GB") == pytest.approx(3 / 7)
    assert mig_share("1c.3g.40gb", "A100-80GB") == pytest.approx(3 / 7)
    assert mig_share("7g.80gb", "H100-80GB") == 1.0
    with pytest.raises(ValueError):
        mig_share("mystery", "H100-80GB")


def test_blank_sentinels_and_nan_are_missing_data():
    for v in (9223372036854775794, 9223372036854775792, 2147483632, 140737488355328.0, float("nan"), float("inf"), -1):
        assert is_blank(float(v))
    for v in (0, 0.5, 100, 81920, 700.5):
        assert not is_blank(float(v))


def test_exporter_addresses_get_the_exporters_defaults():
    assert normalise_url("node-1") == "http://node-1:9400/metrics"
    assert normalise_url("node-1:9500") == "http://node-1:9500/metrics"
    assert normalise_url("https://x.example/dcgm/metrics") == "https://x.example/dcgm/metrics"
