"""Choose the fused decode step's kernel launches by the step's own time.

Triton's autotuner times a kernel alone, in a loop of itself. Inside the CUDA-graphed decode step
the same kernel follows a different one, with the L2 cache and the SMs in another state, and on
the H200 the choice made alone did not carry over: the per-shape int8 kernel choice ("auto")
kept the slower kernel for 48 of the 1B step's 65 GEMVs, and the step moved from 0.719 to
0.808 ms between processes and between the order of the arms (run 9, docs/benchmarks.md).

This tuner times the step instead. It lists the sites the step launches (`launch_table.census`: a
site is a kernel at a shape, dtype and fused form, so one entry covers that projection in every
layer), starts from the autotuner's choices, and goes over the sites in turn:

1. every candidate launch of the site (`site_candidates`: the autotuning configs; for int8
   weights the grouped kernel's too), keeping one only when the graphed step gets faster by
   more than `min_gain`;
2. programmatic dependent launch (launch_table.TUNED): first at every site at once, then site by
   site, on or off, with the kernel letting its dependent launch at its start or after its
   main loop;
3. what a kernel launched early fetches before it waits for the one before (`site_prewait`: 1 to
   8 weight tiles a GEMV CTA, the first cached key and value tile an attention split), site by
   site (run 11);
4. the best few configs tried so far (`refine` a site; all of them with a large `refine`) again,
   under the choices of steps 2 and 3, and step 3 again where one of them is kept.

A step time is the best of `reps` runs of `steps` graph replays, the graph captured anew for each
candidate (the launches are read when the graph is captured). The result is launch_table.TUNED's
form (launch_table.py), written per device (`launch_table.save`) and read by the kernels where
the device is the same.

On the H200 (run 10, docs/benchmarks.md) it took the fused 1B bf16 step from 0.79 to 0.84 ms
(autotuned; it moved with the process) to 0.703 ms in every process, and the 7B step from 4.01 to
3.725 ms, mostly through programmatic dependent launch at every site with configs chosen under it.
Run 11's pass 3 (the fetches before the wait) took the 1B bf16 step from 0.701 to 0.675 ms in one
process (w13 with its whole K fetched early, the head with 4 tiles, attention with its first tile)."""

from __future__ import annotations

import math
from typing import Callable

import torch

from optimizer import fused_decode, int8_gemv, launch_table

# (launched as a dependent, where the kernel lets its own dependent launch: 1 its start, 2 after
# its main loop), launch_table.TUNED's "pdl" and "trigger"
PDL_CHOICES = ((0, 1), (0, 2), (1, 1), (1, 2))
# an entry's keys for how a kernel is launched rather than its config: PDL, and what it fetches
# before waiting for the kernel before it (the tile GEMV's PREFETCH, the attention kernel's PRE)
LAUNCH_KEYS = ("pdl", "trigger", "PREFETCH", "PRE")
PREFETCH_TILES = (1, 2, 4, 8)


def site_candidates(site: str) -> list[dict]:
    """The launches to try at a site (its key from int8_gemv.gemv_site or fused_decode.attention_site)."""
    words = site.split()
    if words[0] == "attention":
        head_dim = int(next(w for w in words if w.startswith("D="))[2:])
        return fused_decode.attention_candidates(head_dim)
    k = int(words[2].split("x")[1])
    return int8_gemv.gemv_candidates(site, k, words[1].startswith("int8/"))


def site_prewait(site: str, entry: dict) -> list[dict]:
    """`entry` with each other amount fetched before the wait: the tile GEMV's weight tiles (those
    that fit in K), the attention kernel's first cached tile or not; none for the grouped GEMV."""
    if entry["kernel"] == "attention":
        return [{**entry, "PRE": 1 - entry.get("PRE", 0)}]
    if entry["kernel"] != "tile":
        return []
    k = int(site.split()[2].split("x")[1])
    return [{**entry, "PREFETCH": n} for n in PREFETCH_TILES
            if n != entry.get("PREFETCH", 1) and n * entry["BLOCK_K"] <= k]


def _config(entry: dict) -> dict:
    """An entry's kernel and config, without how it is launched (LAUNCH_KEYS)."""
    return {k: v for k, v in entry.items() if k not in LAUNCH_KEYS}


def _same_launch(a: dict, b: dict) -> bool:
    """The same kernel and config, however launched."""
    return _config(a) == _config(b)


def _launched_like(entry: dict, like: dict) -> dict:
    """`entry`'s kernel and config, launched as `like` is (its LAUNCH_KEYS)."""
    return {**_config(entry), **{k: like[k] for k in LAUNCH_KEYS if k in like}}


def tune(measure: Callable[[], float], start: dict[str, dict], candidates: Callable[[str], list[dict]],
         log: Callable[[str], None] = lambda msg: None, min_gain: float = 1e-3, pdl: bool = True,
         refine: int = 4, progress: Callable[[int], None] | None = None,
         prewait: Callable[[str, dict], list[dict]] | None = None) -> dict:
    """Coordinate descent over the sites' launches (steps 1 to 4 of the module's docstring; step 3
    when `prewait(site, entry)` gives the variants to try).

    `measure()` returns the step time with launch_table.TUNED as it is now; `start` maps each site
    to its launch to begin with. Returns {"table", "step_s_start", "step_s", "trials", "history"
    (every trial), "accepted" (the trials kept, in order)}."""
    table = {site: dict(entry) for site, entry in start.items()}
    launch_table.TUNED.update(table)
    best = measure()
    first = best
    trials = 0
    history: list[dict] = []
    accepted: list[dict] = []
    scores: dict[str, list[tuple[float, dict]]] = {}

    def trial(changes: dict[str, dict]) -> float:
        nonlocal trials
        launch_table.TUNED.update(changes)
        t = measure()
        launch_table.TUNED.update({site: table[site] for site in changes})
        trials += 1
        history.append({"launches": changes, "step_s": t})
        if progress:
            progress(trials)
        return t

    def consider(site: str, entries: list[dict]) -> None:
        nonlocal best
        for entry in entries:
            t = trial({site: entry})
            scores.setdefault(site, []).append((t, entry))
            if t < best * (1 - min_gain):
                log(f"{site}: {describe(entry)} {best * 1e3:.4f} -> {t * 1e3:.4f} ms")
                best, table[site] = t, entry
                launch_table.TUNED[site] = entry
                accepted.append(history[-1])

    for site in table:  # 1. configs (and kernels)
        consider(site, [_launched_like(c, table[site]) for c in candidates(site) if not _same_launch(c, table[site])])
    if pdl:  # 2. programmatic dependent launch: everywhere at once, then site by site
        everywhere = {site: {**entry, "pdl": 1} for site, entry in table.items()}
        t = trial(everywhere)
        if t < best * (1 - min_gain):
            log(f"PDL at every site {best * 1e3:.4f} -> {t * 1e3:.4f} ms")
            best, table = t, dict(everywhere)  # (a copy: the trial's record keeps what it tried)
            launch_table.TUNED.update(table)
            accepted.append(history[-1])
        for site in table:
            consider(site, [{**table[site], "pdl": p, "trigger": g} for p, g in PDL_CHOICES
                            if (p, g) != (table[site]["pdl"], table[site]["trigger"])])
        if prewait:  # 3. fetches before the wait
            for site in table:
                consider(site, prewait(site, table[site]))
        for site in table:  # 4. the best few configs of step 1 again, under the choices of steps 2 and 3
            ranked = sorted(scores.get(site, []), key=lambda s: s[0])
            again, seen = [], []
            for _, entry in ranked:
                if len(again) == refine:
                    break
                if not _same_launch(entry, table[site]) and not any(_same_launch(entry, e) for e in seen):
                    seen.append(entry)
                    again.append(_launched_like(entry, table[site]))
            config = table[site]
            consider(site, again)
            if prewait and table[site] is not config:  # a new config: its fetches before the wait again
                consider(site, prewait(site, table[site]))
    return {"table": table, "step_s_start": first, "step_s": best, "trials": trials, "history": history,
            "accepted": accepted}


def describe(entry: dict) -> str:
    meta = " ".join(f"{k}={v}" for k, v in entry.items() if k not in ("kernel", "pdl", "trigger"))
    return f"{entry['kernel']} {meta} pdl={entry['pdl']} trigger={entry['trigger']}"


@torch.no_grad()
def graphed_step_s(decoder, steps: int = 48, reps: int = 3, pos: int = 128) -> float:
    """The decode step's time (s): its CUDA graph captured anew (so the current launches are the
    ones captured), then the best of `reps` runs of `steps` replays from position `pos`."""
    device = decoder.model.rope.device
    tokens = torch.zeros(1, 1, dtype=torch.long, device=device)
    start = torch.tensor([pos], device=device)
    decoder._graphs.clear()
    decoder.start(tokens, start)
    decoder.advance(4)
    best = math.inf
    for _ in range(reps):
        decoder.start(tokens, start)
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        decoder.advance(steps)  # as generate replays them (graph_steps a replay)
        e.record()
        torch.cuda.synchronize(device)
        best = min(best, s.elapsed_time(e) / 1e3 / steps)
    return best


@torch.no_grad()
def step_sites(decoder, pos: int = 128) -> dict[str, dict]:
    """The sites one decode step launches, with the launch each gets now (launch_table.census)."""
    device = decoder.model.rope.device
    tokens = torch.zeros(1, 1, dtype=torch.long, device=device)
    decoder.step(tokens, torch.tensor([pos], device=device))  # compiled and autotuned off the census
    with launch_table.census() as sites:
        decoder.step(tokens, torch.tensor([pos], device=device))
    return dict(sites)


def tune_decoder(model, decoder, log: Callable[[str], None] = lambda msg: None, steps: int = 48,
                 reps: int = 3, seq_len: int = 384, from_table: bool = False, **kwargs) -> dict:
    """Tune the launches of `decoder`'s graphed batch-1 step (a fused model on a GPU); leaves the
    result in launch_table.TUNED and the decoder's graphs dropped (the next use captures the tuned
    launches). A site starts from the autotuner's launch, or with `from_table` from its entry in
    launch_table.TUNED where it has one (the shipped table: the descent goes on from there, each
    candidate launched as that entry is). Returns `tune`'s result with the sites' starting launches."""
    from optimizer.generate import ensure_caches

    ensure_caches(model, 1, seq_len)
    if not from_table:
        for site in step_sites(decoder):  # a site tuned before starts from the autotuner again
            launch_table.TUNED.pop(site, None)
    start = step_sites(decoder)
    log(f"{len(start)} sites; {sum(len(site_candidates(s)) for s in start)} candidate launches")
    out = tune(lambda: graphed_step_s(decoder, steps, reps), start, site_candidates, log, prewait=site_prewait,
               **kwargs)
    decoder._graphs.clear()
    log(f"step {out['step_s_start'] * 1e3:.4f} -> {out['step_s'] * 1e3:.4f} ms in {out['trials']} trials")
    return {**out, "start": start}
