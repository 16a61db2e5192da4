"""The GPU a process runs on, named as the pricing catalog names it, and the short name its
results files carry. Below the model and the kernels (nothing here imports them), so the kernel
modules can name the device whose tuned launches they read (launch_table.py)."""

from __future__ import annotations

import re

import torch


def gpu_model_name(device: torch.device | str) -> str:
    """The catalog's name for the GPU ("H100-80GB"), or "cpu"."""
    device = torch.device(device)
    if device.type != "cuda":
        return "cpu"
    from core.pricing import canonical_gpu_model

    name = torch.cuda.get_device_name(device).lower().replace("nvidia", "").strip()
    return canonical_gpu_model(name.replace(" ", "-"))


def device_slug(gpu_model: str) -> str:
    """The short name results files carry: "H200-141GB" -> "h200", "A100-80GB" -> "a100_80gb"."""
    if gpu_model == "cpu":
        return "cpu"
    base = gpu_model.lower()
    head = base.split("-")[0]
    keep_size = head in ("a100",)  # two memory sizes of one part
    return re.sub(r"[^a-z0-9]+", "_", base if keep_size else head).strip("_")
