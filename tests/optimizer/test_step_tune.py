"""The step tuner (optimizer/step_tune.py): its search against a known step-time function, and
its per-device tables on disk. The launches it fixes are checked on real kernels, under Triton's
interpreter, in test_gemv.py."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("triton")

from optimizer import int8_gemv, launch_table, step_tune  # noqa: E402


def entry(block_n: int, pdl: int = 0, trigger: int = 2, kernel: str = "tile") -> dict:
    return {"kernel": kernel, "BLOCK_N": block_n, "BLOCK_K": 512, "num_warps": 4, "num_stages": 1,
            "pdl": pdl, "trigger": trigger}


@pytest.fixture(autouse=True)
def empty_table():
    saved = dict(launch_table.TUNED)
    launch_table.TUNED.clear()
    yield
    launch_table.TUNED.clear()
    launch_table.TUNED.update(saved)


def test_tune_finds_the_fastest_launch_of_each_site_by_the_step_time():
    # A step of two sites. Site "a" is fastest at BLOCK_N 8, and launched as a dependent whose
    # kernel lets the next launch at its start (trigger 1), but most so at BLOCK_N 4 (an
    # interaction the refine pass must find); site "b" at BLOCK_N 2 without PDL; a 1e-5 gain is
    # noise (under min_gain) and must not be taken.
    def cost(site: str, e: dict) -> float:
        if site == "a":
            base = {1: 10.0, 2: 9.0, 4: 8.0, 8: 7.0}[e["BLOCK_N"]]
            if e["pdl"] == 1 and e["trigger"] == 1:
                base -= 3.0 if e["BLOCK_N"] == 4 else 0.5
            return base
        return {1: 5.0, 2: 3.0, 4: 4.0, 8: 3.0 - 1e-5}[e["BLOCK_N"]] + (0.7 if e["pdl"] else 0.0)

    calls = []

    def measure() -> float:
        calls.append(dict(launch_table.TUNED))
        return sum(cost(site, launch_table.TUNED[site]) for site in ("a", "b"))

    cands = lambda site: [entry(n) for n in (1, 2, 4, 8)]  # noqa: E731
    out = step_tune.tune(measure, {"a": entry(1), "b": entry(1)}, cands)
    assert out["table"] == {"a": entry(4, pdl=1, trigger=1), "b": entry(2)}
    assert out["step_s_start"] == 15.0 and out["step_s"] == 5.0 + 3.0
    assert out["trials"] == len(out["history"]) == len(calls) - 1  # the first measure is the start
    assert [h["step_s"] for h in out["accepted"]] == [14.0, 13.0, 12.0, 10.0, 9.5, 8.0]
    assert out["accepted"][-1]["launches"] == {"a": entry(4, pdl=1, trigger=1)}
    assert launch_table.TUNED == out["table"]  # left in place for the next capture
    # without the PDL passes, only configs: a at 8, b at 2
    launch_table.TUNED.clear()
    out = step_tune.tune(measure, {"a": entry(1), "b": entry(1)}, cands, pdl=False)
    assert out["table"] == {"a": entry(8), "b": entry(2)} and out["step_s"] == 10.0


def test_tune_takes_pdl_everywhere_when_only_all_sites_together_gain():
    # PDL pays only when every site has it (one site alone loses 0.1): the per-site pass would
    # never find it, the all-sites trial does
    def measure() -> float:
        on = sum(e["pdl"] for e in launch_table.TUNED.values())
        return 10.0 - (3.0 if on == 3 else -0.1 * on)

    out = step_tune.tune(measure, {s: entry(4) for s in "abc"}, lambda site: [entry(4)])
    assert out["table"] == {s: entry(4, pdl=1) for s in "abc"} and out["step_s"] == 7.0


def test_tune_fetches_before_the_wait_where_it_pays_and_keeps_it_through_the_refine_pass():
    # Site "a" gains from 4 weight tiles before the wait (and loses from 8), only when launched as
    # a dependent; BLOCK_N 8 is its best config until then. BLOCK_N 4 with 4 tiles early beats it,
    # which only the refine pass can find, and only if it keeps the fetch choice; and BLOCK_N 4
    # with 2 tiles is best of all, which the fetch pass after the refine finds. Site "b"
    # (attention) gains from its first cached tile early; "c", the grouped kernel, has nothing to
    # fetch.
    def cost(site: str, e: dict) -> float:
        if site == "a":
            early = e.get("PREFETCH", 1) * e["pdl"]
            base = {2: 9.0, 4: 8.0, 8: 7.5}[e["BLOCK_N"]] + (0.0 if e["pdl"] else 1.0)
            bonus = {4: 1.0, 2: 2.0}.get(early, 0.0) if e["BLOCK_N"] == 4 else 0.0
            return base - {0: 0.0, 1: 0.0, 2: 0.5, 4: 1.0, 8: -1.0}[early] - bonus
        if site == "b":
            return 5.0 - 0.5 * e.get("PRE", 0) * e["pdl"]
        return 2.0 - 0.1 * e["pdl"]

    a_site = "gemv bfloat16/bfloat16 2048x4096 rows=1 resid"  # K 4096: up to 8 tiles of 512
    sites = {a_site: "a", "attention bfloat16 H=32 Hkv=8 D=64 S=384 rows=1": "b",
             "gemv int8/bfloat16 2048x2048 rows=1 resid magic": "c"}
    attn = {"kernel": "attention", "BLOCK_S": 64, "num_warps": 4, "num_stages": 1, "pdl": 0, "trigger": 2}
    start = {site: (attn if name == "b" else entry(2, kernel="tile" if name == "a" else "grouped"))
             for site, name in sites.items()}

    def candidates(site):
        return [entry(n) for n in (2, 4, 8)] if sites[site] == "a" else [start[site]]

    def step() -> float:
        return sum(cost(sites[site], launch_table.TUNED[site]) for site in sites)

    assert step_tune.site_prewait(a_site, entry(8)) == [{**entry(8), "PREFETCH": n} for n in (2, 4, 8)]
    assert step_tune.site_prewait("gemv bfloat16/bfloat16 2048x2048 rows=1 resid", {**entry(8), "BLOCK_K": 1024}) \
        == [{**entry(8), "BLOCK_K": 1024, "PREFETCH": 2}]  # 4 tiles of 1024 do not fit in K 2048
    assert step_tune.site_prewait("x", attn) == [{**attn, "PRE": 1}]
    assert step_tune.site_prewait("x", entry(2, kernel="grouped")) == []
    out = step_tune.tune(step, start, candidates, prewait=step_tune.site_prewait, refine=2)
    assert out["table"][a_site] == {**entry(4, pdl=1), "PREFETCH": 2}
    assert out["table"]["attention bfloat16 H=32 Hkv=8 D=64 S=384 rows=1"] == {**attn, "pdl": 1, "PRE": 1}
    assert out["step_s"] == (8.0 - 2.5) + 4.5 + 1.9
    kept = [h["launches"][a_site] for h in out["accepted"] if a_site in h["launches"]]
    assert kept[-3:] == [{**entry(8, pdl=1), "PREFETCH": 4}, {**entry(4, pdl=1), "PREFETCH": 4},
                         {**entry(4, pdl=1), "PREFETCH": 2}], kept
    # without the pass (prewait None) nothing is fetched early
    launch_table.TUNED.clear()
    out = step_tune.tune(step, start, candidates)
    assert not any("PREFETCH" in e or "PRE" in e for e in out["table"].values())


def test_tables_are_kept_per_device(tmp_path):
    path = tmp_path / "h200_step_tuned.json"
    launch_table.save(path, {"gemv x": entry(4)}, "H200-141GB", {"model": "1b"})
    launch_table.save(path, {"gemv y": entry(8, pdl=2)}, "H200-141GB")  # merged, the first site kept
    assert launch_table.load(path, "H200-141GB") == {"gemv x": entry(4), "gemv y": entry(8, pdl=2)}
    assert json.loads(path.read_text())["runs"] == [{"model": "1b"}]
    assert launch_table.load(path, "H100-80GB") == {}  # another device's launches are not used
    assert launch_table.load(tmp_path / "missing.json", "H200-141GB") == {}
    with pytest.raises(ValueError, match="H200-141GB"):
        launch_table.save(path, {"gemv z": entry(2)}, "H100-80GB")
    assert launch_table.table_path("H200-141GB").name == "h200_step_tuned.json"
    # tuned under another Triton: still used (the launches are correct), with a warning
    launch_table.save(path, {}, "H200-141GB", {"model": "7b", "triton": "0.0.1"})
    with pytest.warns(UserWarning, match="re-tune"):
        assert launch_table.load(path, "H200-141GB") == {"gemv x": entry(4), "gemv y": entry(8, pdl=2)}


def test_site_candidates_cover_both_int8_kernels_and_the_attention_configs():
    bf16 = step_tune.site_candidates("gemv bfloat16/bfloat16 2048x2048 rows=1 resid")
    int8 = step_tune.site_candidates("gemv int8/bfloat16 2048x8192 rows=1 resid magic")
    attn = step_tune.site_candidates("attention bfloat16 H=32 Hkv=8 D=64 S=384 rows=1")
    assert {e["kernel"] for e in bf16} == {"tile"} and {e["kernel"] for e in int8} == {"tile", "grouped"}
    # beyond the autotuning configs, tile shapes of twice the K block or rows, none longer than K
    shape = lambda entries: {(e["BLOCK_N"], e["BLOCK_K"], e["num_warps"]) for e in entries if e["kernel"] == "tile"}  # noqa: E731
    assert (32, 512, 8) in shape(bf16) and (32, 512, 8) in shape(int8)
    assert (2, 4096, 4) in shape(int8) and (2, 4096, 4) not in shape(bf16)  # K 2048: no 4096 block
    assert len(bf16) == len(int8_gemv._gemv_kernel.configs) + 2 * sum(bk <= 2048 for _, bk, _ in int8_gemv.TILE_EXTRA)
    small = step_tune.site_candidates("gemv int8/bfloat16 3072x2048 rows=1 norm magic")
    assert max(e["BLOCK_K"] for e in small if e["kernel"] == "tile") == 2048
    assert attn and all(e["kernel"] == "attention" and e["BLOCK_S"] * 64 <= 32768 for e in attn)
    assert all(e["pdl"] == 0 for e in bf16 + int8 + attn)


@pytest.mark.filterwarnings("ignore:.*tuned under Triton")  # the shipped table, read under another Triton here
@pytest.mark.parametrize("setting", ["1", "table", "0"])
def test_a_fused_step_reads_its_devices_table_by_default(monkeypatch, tmp_path, setting):
    # On a GPU the first launch reads the table shipped for that device (GPUCOST_STEP_TUNED "1",
    # the default), or the one at a path, or none ("0"); the device name is faked here (no GPU).
    import torch

    site = "gemv bfloat16/bfloat16 2048x2048 rows=1 resid"
    own = tmp_path / "t.json"
    launch_table.save(own, {site: entry(16, pdl=1)}, "H200-141GB")
    monkeypatch.setenv("GPUCOST_STEP_TUNED", str(own) if setting == "table" else setting)
    monkeypatch.setattr(launch_table, "gpu_model_name", lambda device: "H200-141GB")
    monkeypatch.setattr(launch_table, "_tuned_read", False)
    assert launch_table.tuned_entry(site, torch.device("cpu")) is None  # a CPU reads no table
    got = launch_table.tuned_entry(site, torch.device("cuda"))
    shipped = launch_table.load(launch_table.table_path("H200-141GB"), "H200-141GB")
    assert shipped[site]["pdl"] == 1  # the H200 table ships this 1B site (run 10)
    assert got == {"1": shipped[site], "table": entry(16, pdl=1), "0": None}[setting]
    monkeypatch.setattr(launch_table, "USE_TUNED", False)
    assert launch_table.tuned_entry(site, torch.device("cuda")) is None
