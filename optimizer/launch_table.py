"""The fused decode step's fixed launches: a table from call site to launch, per device.

A site is one kernel at one shape, dtype, row count and fused form (int8_gemv.gemv_site,
fused_decode.attention_site), so one entry covers that projection in every layer. An entry is
{"kernel": "tile" | "grouped" | "attention", the config's block sizes, "num_warps", "num_stages",
"pdl": 0 | 1, "trigger": 1 | 2, and since run 11 optionally "PREFETCH" (the tile GEMV's weight
tiles requested before its wait, 1 when absent) or "PRE" (1: the attention split's first cached
tile before its wait, 0 when absent)}: pdl 1 launches the kernel as a programmatic dependent of
the one before (Hopper); every tuned kernel lets its own dependent launch once its first weight
tile is requested (trigger 1) or once past its main loop (2), so PDL at one site overlaps it with
the kernel before, whatever that one's entry. Entries written before run 11 have neither key and
launch as they did. step_tune.py fills the table by timing the whole
CUDA-graphed step for each candidate (a kernel timed alone does not predict it in the step).

The kernels read TUNED when they are launched, so a CUDA graph keeps the launches it was captured
with. On a GPU TUNED starts as the table tuned for that device and shipped in
data/kernels/<device>_step_tuned.json, read at the first launch on the GPU (GPUCOST_STEP_TUNED:
"1", the default; "0": none; or the path of another table). Sites not in it are autotuned."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import torch

from optimizer.devices import device_slug, gpu_model_name

TUNED: dict[str, dict] = {}
USE_TUNED = True  # False: ignore TUNED (the autotuned launches, for side-by-side runs)
_census: dict[str, dict] | None = None  # while a dict: each site launched -> its launch (census())
_tuned_read = False


def tuned_entry(site: str, device: torch.device) -> dict | None:
    """The site's fixed launch, if any (the device's shipped table read at the first GPU launch)."""
    global _tuned_read
    if not USE_TUNED:
        return None
    if not _tuned_read and device.type == "cuda":
        _tuned_read = True
        setting = os.environ.get("GPUCOST_STEP_TUNED", "1")
        if setting != "0":
            gpu = gpu_model_name(device)
            for key, entry in load(table_path(gpu) if setting == "1" else Path(setting), gpu).items():
                TUNED.setdefault(key, entry)
    return TUNED.get(site)


class census:
    """`with census() as sites:` records every site launched inside (its key -> the launch used:
    the tuned entry or the autotuner's choice), for step_tune.py."""

    def __enter__(self) -> dict[str, dict]:
        global _census
        _census = {}
        return _census

    def __exit__(self, *exc) -> None:
        global _census
        _census = None


def record(site: str, entry: dict) -> None:
    """A launch made at `site` (kept while a census is open)."""
    if _census is not None:
        _census[site] = entry


# -- tables on disk, per device ----------------------------------------------------------------

def table_path(gpu_model: str, data_dir: Path = Path(__file__).parent / "data" / "kernels") -> Path:
    """The table shipped for a device: data/kernels/<device>_step_tuned.json."""
    return data_dir / f"{device_slug(gpu_model)}_step_tuned.json"


def save(path: Path, table: dict[str, dict], gpu_model: str, meta: dict | None = None) -> None:
    """Merge `table` into the file at `path` (sites of other models kept); refuses another device's."""
    doc = {"gpu_model": gpu_model, "sites": {}}
    if path.exists():
        doc = json.loads(path.read_text())
        if doc.get("gpu_model") != gpu_model:
            raise ValueError(f"{path} holds launches tuned on {doc.get('gpu_model')}, not {gpu_model}")
    doc["sites"].update(table)
    if meta:
        doc.setdefault("runs", []).append(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def load(path: Path, gpu_model: str) -> dict[str, dict]:
    """The sites of a table tuned on `gpu_model` ({} when the file is missing or of another device).
    A table tuned under another Triton version is used (its launches stay correct) with a warning
    (they may no longer be the fastest)."""
    if not path.exists():
        return {}
    doc = json.loads(path.read_text())
    if doc.get("gpu_model") != gpu_model:
        return {}
    tuned_with = {run.get("triton") for run in doc.get("runs", [])} - {None}
    running = getattr(sys.modules.get("triton"), "__version__", None)
    if tuned_with and running not in tuned_with:
        warnings.warn(f"{path} was tuned under Triton {', '.join(sorted(tuned_with))}, this is {running}: "
                      f"re-tune it (bench/optimizer_gpu.py, @tuned arms) or set GPUCOST_STEP_TUNED=0", stacklevel=2)
    return doc["sites"]
