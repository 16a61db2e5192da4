"""Ratios you can trust: variants measured interleaved in one process, reported as median and spread.

Every variant is built and warmed up first; then each round times one generation of every
variant, the order alternating (A B, then B A) so that drift within the process (clocks, heat,
allocator state) falls on both sides. Each round gives one ratio per variant against the
baseline of that same round; the report is their median and range, and a goal counts as met only
when the whole range clears it ("not met" when the spread crosses the goal). The GPU's clocks are
read after every timed generation where NVML is importable, so a slow round can be told apart."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch

from optimizer.generate import Decoder, ensure_caches, generate
from optimizer.model import Transformer


@dataclass
class Arm:
    name: str
    model: Transformer
    decoder: Decoder


def spread(values: list[float]) -> dict:
    """Median and range of a list of measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "values": list(values)}


def verdict(values: list[float], goal: float) -> str:
    """"met" only when every round clears the goal; "not met" (saying why) otherwise."""
    if min(values) >= goal:
        return "met"
    if max(values) >= goal:
        return "not met (spread crosses the goal)"
    return "not met"


def gpu_clocks(device: torch.device | str = "cuda") -> dict | None:
    """SM and memory clocks (MHz), temperature and power now, from NVML; None without it."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        return {"sm_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
                "mem_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM),
                "temp_c": pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
                "power_w": pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0}
    except Exception:  # NVML present but not answering (a container without the driver's library)
        return None


def interleaved_decode(arms: list[Arm], prompts: list[list[int]], new_tokens: int, rounds: int,
                       on_measure: Callable[[str, int, float], None] | None = None) -> dict:
    """Decode step times (s) per arm over `rounds` interleaved rounds, and the clocks seen.

    The step time of a generation is its decode part (first token to last) over its steps."""
    if rounds < 1 or len(arms) < 1:
        raise ValueError("need at least one arm and one round")
    batch = len(prompts)
    length = max(len(p) for p in prompts) + new_tokens
    for arm in arms:  # caches, compilation and graphs before any timing
        ensure_caches(arm.model, batch, length)
        generate(arm.model, prompts, min(new_tokens, 8), decoder=arm.decoder)
    steps: dict[str, list[float]] = {a.name: [] for a in arms}
    clocks: dict[str, list] = {a.name: [] for a in arms}
    tokens: dict[str, list] = {}
    for r in range(rounds):
        for arm in (arms if r % 2 == 0 else arms[::-1]):
            g = generate(arm.model, prompts, new_tokens, decoder=arm.decoder)
            step_s = (g.total_s - g.ttft_s) / max(g.decode_steps, 1)
            steps[arm.name].append(step_s)
            tokens.setdefault(arm.name, g.tokens)
            clocks[arm.name].append(gpu_clocks(arm.model.rope.device))
            if on_measure:
                on_measure(arm.name, r, step_s)
    return {"step_s": steps, "clocks": clocks, "rounds": rounds, "order": "alternating (A B, B A)",
            "same_tokens": same_tokens(tokens)}


def same_tokens(tokens: dict[str, list]) -> dict[str, list[str]]:
    """For each arm, the other arms whose first round generated exactly its tokens (arms that
    differ only in how the step is launched should all list each other)."""
    return {a: [b for b in tokens if b != a and tokens[b] == tokens[a]] for a in tokens}


def ratios_against(steps: dict[str, list[float]], baseline: str) -> dict[str, dict]:
    """Per-round speedup of each arm over the baseline (baseline step / arm step), as a spread."""
    base = steps[baseline]
    return {name: spread([b / s for b, s in zip(base, values)]) for name, values in steps.items()}
