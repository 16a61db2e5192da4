"""In-flight (continuous) batching: requests join and leave the running batch at every decode step.

The model's KV cache has `max_batch_size` rows and each admitted request owns one row until its
last token. Every engine iteration (1) admits queued requests into free rows, prefilling them
together (right-padded, each row at its own positions, written into its own cache row only), then
(2) runs one greedy decode step over all rows. The step has a fixed shape, so on a GPU it is one
CUDA graph replay; rows without a request compute tokens that nothing reads, and a row is reset
before its next request. The dynamic batcher (batcher.py) instead runs a batch until its longest
answer is done, and nobody joins meanwhile: with mixed answer lengths, short requests wait for
long ones and new arrivals wait for the whole batch.

The engine is one thread that owns the model; `submit` is the same coroutine as
`DynamicBatcher.submit`, so `batcher.run_load` drives either."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from optimizer.batcher import Completion
from optimizer.generate import ensure_caches
from optimizer.model import Transformer


@dataclass(eq=False)
class _Request:
    prompt: list[int]
    max_new_tokens: int
    arrived: float
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    row: int = -1
    admitted: float = 0.0
    first_token: float = 0.0
    batch_size: int = 0
    tokens: list[int] = field(default_factory=list)


_STOP = object()


def _prefill_attention():
    """Prefills come in many shapes: keep them off cuDNN attention, which plans each new shape."""
    if not torch.cuda.is_available():
        import contextlib

        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


class ContinuousBatcher:
    """`async with ContinuousBatcher(model, 32) as b: await b.submit(prompt, max_new_tokens)`.

    `cuda_graph` replays the decode step from one graph (GPU only); `compile` runs it through
    torch.compile. `min_join` admits only once that many rows are free. `steps` records how many rows were busy at each decode step and `admissions`
    how many requests joined at each admission, for reports and tests."""

    def __init__(self, model: Transformer, max_batch_size: int = 32, max_seq_len: int | None = None,
                 cuda_graph: bool = False, compile: bool = False, eos_id: int | None = None,
                 min_join: int = 1):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        device = model.rope.device
        if cuda_graph and device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_seq_len = max_seq_len or model.args.max_seq_len
        self.device = device
        self.cuda_graph = cuda_graph
        self.eos_id = eos_id
        # Admit only once this many rows are free (or nothing is running): each prefill costs
        # about the same whatever its size, so joining in groups trades a little latency for it.
        self.min_join = max(1, min(min_join, max_batch_size))
        self.steps: list[int] = []
        self.prefill_s = 0.0  # engine time spent admitting (prefill) and decoding, for reports
        self.decode_s = 0.0
        self.admissions: list[tuple[int, int]] = []  # (requests joining, rows already busy)
        self._fn = torch.compile(self._step, fullgraph=True, dynamic=False) if compile else self._step
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._rows: list[_Request | None] = [None] * max_batch_size
        self._waiting: list[_Request] = []
        self._ready = threading.Event()
        self._failed: BaseException | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gpucost-inflight", daemon=True)
        self._thread.start()
        await asyncio.get_running_loop().run_in_executor(None, self._ready.wait)
        if self._failed is not None:
            raise RuntimeError(f"the in-flight batcher could not start: {self._failed!r}") from self._failed

    async def stop(self) -> None:
        if self._thread is not None:
            self._inbox.put(_STOP)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._thread = None

    async def __aenter__(self) -> ContinuousBatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def submit(self, prompt: list[int], max_new_tokens: int) -> Completion:
        if self._thread is None:
            raise RuntimeError("the batcher is not started")
        if not prompt:
            raise ValueError("empty prompt")
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if len(prompt) + max_new_tokens > self.max_seq_len:
            raise ValueError(f"prompt ({len(prompt)}) plus new tokens ({max_new_tokens}) exceed the "
                             f"KV cache row ({self.max_seq_len} tokens)")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._inbox.put(_Request(list(prompt), max_new_tokens, time.perf_counter(), future, loop))
        return await future

    # -- the engine thread ----------------------------------------------------------------------

    def _step(self, tokens: Tensor, pos: Tensor) -> Tensor:
        """One greedy step for every row: next tokens [B, 1]."""
        return self.model(tokens, pos)[:, -1].argmax(dim=-1, keepdim=True)

    def _setup(self) -> None:
        ensure_caches(self.model, self.max_batch_size, self.max_seq_len)
        self.model.reset_cache_state()
        b = self.max_batch_size
        self._tokens = torch.zeros(b, 1, dtype=torch.long, device=self.device)
        # Idle rows park at the last position, so they never index past the RoPE table.
        self._last_pos = self.model.cache_slots - 1
        self._pos = torch.full((b, 1), self._last_pos, dtype=torch.long, device=self.device)
        if self.cuda_graph:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):  # compile and warm up off the capture
                    self._fn(self._tokens, self._pos)
            torch.cuda.current_stream().wait_stream(stream)
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph):
                self._advance()
            self.model.reset_cache_state()  # the warm-up wrote into the rows

    def _advance(self) -> None:
        self._tokens.copy_(self._fn(self._tokens, self._pos))
        self._pos.copy_(torch.clamp(self._pos + 1, max=self._last_pos))

    def _run(self) -> None:
        try:
            with torch.no_grad():  # grad mode is per thread
                self._setup()
        except BaseException as exc:  # reported by start()
            self._failed = exc
            self._ready.set()
            return
        self._ready.set()
        stopping = False
        with torch.no_grad():
            while True:
                busy = sum(r is not None for r in self._rows)
                block = not busy and not self._waiting and not stopping
                stopping = self._drain(block) or stopping
                if stopping and not busy and not self._waiting:
                    break
                try:
                    self._admit()
                    if any(r is not None for r in self._rows):
                        self._decode()
                except Exception as exc:  # a failed step fails its requests, not the engine
                    for i, r in enumerate(self._rows):
                        if r is not None:
                            self._resolve(r, exc)
                            self._rows[i] = None

    def _drain(self, block: bool) -> bool:
        """Move arrivals into the waiting list; True once stop was asked for."""
        stop = False
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
            while True:
                if item is _STOP:
                    stop = True
                else:
                    self._waiting.append(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            pass
        return stop

    def _admit(self) -> None:
        free = [i for i, r in enumerate(self._rows) if r is None]
        joining = self._waiting[: len(free)]
        if not joining or (len(free) < self.min_join and len(free) < self.max_batch_size):
            return
        del self._waiting[: len(joining)]
        busy = self.max_batch_size - len(free)
        self.admissions.append((len(joining), busy))
        t0 = time.perf_counter()
        try:
            self._prefill(joining, free[: len(joining)], busy)
        except Exception as exc:  # a failed prefill fails the requests joining, nobody else
            for i, r in enumerate(self._rows):
                if any(r is j for j in joining):
                    self._rows[i] = None
            for r in joining:
                self._resolve(r, exc)
        self.prefill_s += time.perf_counter() - t0

    def _prefill(self, joining: list[_Request], rows: list[int], busy: int) -> None:
        now = time.perf_counter()
        lengths = [len(r.prompt) for r in joining]
        # Widths rounded up to a multiple of 32: few distinct prefill shapes for the kernels'
        # per-shape setup (cuDNN attention plans), at the price of a few pad tokens.
        width = min(-(-max(lengths) // 32) * 32, self.max_seq_len)
        # Right-padded: row j's real tokens sit at positions 0..len-1; pad keys are marked unreal
        # and the decode steps overwrite their slots.
        idx = torch.zeros(len(joining), width, dtype=torch.long)
        real = torch.zeros(len(joining), width, dtype=torch.bool)
        for j, r in enumerate(joining):
            idx[j, : lengths[j]] = torch.tensor(r.prompt, dtype=torch.long)
            real[j, : lengths[j]] = True
        rows_t = torch.tensor(rows, device=self.device)
        lengths_t = torch.tensor(lengths, device=self.device)
        pos = torch.arange(width, device=self.device).expand(len(joining), width)
        self.model.reset_rows(rows_t)
        with _prefill_attention():
            logits = self.model(idx.to(self.device), pos, real.to(self.device), rows=rows_t)
        first = logits[torch.arange(len(joining), device=self.device), lengths_t - 1].argmax(dim=-1)
        self._tokens[rows_t, 0] = first
        self._pos[rows_t, 0] = lengths_t
        first_host = first.tolist()
        t = time.perf_counter()
        for r, row, token in zip(joining, rows, first_host):
            r.row, r.admitted, r.first_token, r.batch_size = row, now, t, busy + len(joining)
            r.tokens.append(token)
            self._rows[row] = r
            self._maybe_finish(r, t)

    def _decode(self) -> None:
        t0 = time.perf_counter()
        self.steps.append(sum(r is not None for r in self._rows))
        if self._graph is not None:
            self._graph.replay()
        else:
            self._advance()
        tokens = self._tokens[:, 0].tolist()
        t = time.perf_counter()
        self.decode_s += t - t0
        for r in list(self._rows):
            if r is not None:
                r.tokens.append(tokens[r.row])
                self._maybe_finish(r, t)

    def _maybe_finish(self, r: _Request, t: float) -> None:
        if len(r.tokens) < r.max_new_tokens and (self.eos_id is None or r.tokens[-1] != self.eos_id):
            return
        self._rows[r.row] = None
        self._resolve(r, Completion(tokens=r.tokens, latency_s=t - r.arrived, queue_s=r.admitted - r.arrived,
                                    ttft_s=r.first_token - r.arrived, batch_size=r.batch_size))

    @staticmethod
    def _resolve(r: _Request, outcome) -> None:
        def settle() -> None:
            if r.future.done():
                return
            if isinstance(outcome, BaseException):
                r.future.set_exception(outcome)
            else:
                r.future.set_result(outcome)

        r.loop.call_soon_threadsafe(settle)
