"""In-flight (continuous) batching: requests join and leave the running batch at every decode step.

The model's KV cache has `max_batch_size` rows and each admitted request owns one row until its
last token. Every engine iteration (1) admits queued requests into free rows, prefilling them
together (right-padded, each row at its own positions, written into its own cache row only), then
(2) runs one greedy decode step over all rows. The step has a fixed shape, so on a GPU it is one
CUDA graph replay; rows without a request compute tokens that nothing reads, and a row is reset
before its next request. The dynamic batcher (batcher.py) instead runs a batch until its longest
answer is done, and nobody joins meanwhile: with mixed answer lengths, short requests wait for
long ones and new arrivals wait for the whole batch.

Chunked prefill (`chunk` > 0, the default): a joining prompt is not prefilled by its own eager
forward (launch-bound, ~25 ms for a 1B model however short the prompt, stalling every running
row). Instead each engine step that has prompts to take in is a *mixed step*: the decode step's
B rows plus R segment rows of `chunk` prompt tokens each (one segment per joining request, its
next `chunk` tokens), in ONE forward of fixed shape [B + R*chunk tokens] that shares the weight
reads; attention runs separately for the decode rows (against rows 0..B-1) and for the segment
rows (against their own cache rows). R is bucketed (`chunk_rows`, e.g. 1, 2, 4, 8), so on a GPU
there is one CUDA graph per bucket besides the decode graph, all replaying the same static
buffers. The index math is safe by construction: real tokens sit at positions <= S-2 (prompt +
answer <= the row), padding tokens and unused segments are parked at position S-1 (the slot that
idle decode rows already park at and that no real query ever attends), segment rows are real
rows 0..B-1, and a segment's last-token index is within 0..chunk-1 (`pack_chunks`, tested).

The engine is one thread that owns the model; `submit` is the same coroutine as
`DynamicBatcher.submit`, so `batcher.run_load` drives either."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from optimizer.batcher import Completion
from optimizer.generate import ensure_caches
from optimizer.model import Transformer, apply_rope, slot_mask


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
    fed: int = 0  # prompt tokens already in the cache (chunked prefill)
    done: bool = False  # resolved: tokens of steps already launched for it are dropped


@dataclass(eq=False)
class _Step:
    """A launched engine step whose tokens are not read yet (the host runs one step ahead)."""
    decoding: list[_Request]               # rows that decode in it
    taking: list[tuple[_Request, bool]]    # prompts taking a chunk, and whether it is their last
    host: Tensor                           # the step's tokens [B], on the host once `event` is done
    event: object                          # torch.cuda.Event, or None on the CPU
    launch_s: float                        # host time spent launching it


_STOP = object()


def _prefill_attention():
    """Prefills come in many shapes: keep them off cuDNN attention, which plans each new shape."""
    if not torch.cuda.is_available():
        import contextlib

        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


# -- chunked prefill: the mixed step ---------------------------------------------------------

def packed_width(chunk: int) -> int:
    """Columns of a packed segment row: chunk tokens, chunk positions, row, last, done, next_pos."""
    return 2 * chunk + 4


def pack_chunks(segments: list[tuple[int, list[int], int, bool, int]], n_rows: int, chunk: int,
                n_slots: int) -> Tensor:
    """The mixed step's host input, one int64 tensor [n_rows, 2*chunk + 4] (one copy to the GPU).

    `segments`: (cache row, the chunk's prompt tokens (1..chunk of them), position of the first,
    whether the prompt ends with it, the prompt length). Row j of the result holds segment j's
    tokens (padding 0), their positions (padding parked at n_slots - 1), the cache row, the index
    of its last real token, done (0/1) and the position its first answer token will take. Rows
    past the segments are unused: every position parked, done 0, the cache row of segment 0.
    Every index the step makes from this is in range by construction: positions in
    [0, n_slots - 1], rows as given (the caller's rows 0..B-1), last in [0, chunk - 1]."""
    if not 1 <= len(segments) <= n_rows:
        raise ValueError(f"{len(segments)} segments for {n_rows} segment rows")
    park = n_slots - 1
    width = packed_width(chunk)
    out = [[0] * chunk + [park] * chunk + [segments[0][0], 0, 0, 0] for _ in range(n_rows)]
    for j, (row, tokens, start, done, next_pos) in enumerate(segments):
        n = len(tokens)
        if not 1 <= n <= chunk or start < 0 or start + n > park or not 0 <= next_pos <= park:
            raise ValueError(f"segment {j}: {n} tokens at {start} do not fit a chunk of {chunk} "
                             f"below position {park}")
        line = out[j]
        line[:n] = tokens
        line[chunk: chunk + n] = range(start, start + n)
        line[2 * chunk:] = [row, n - 1, int(done), next_pos]
        assert len(line) == width
    return torch.tensor(out, dtype=torch.long)


def idle_chunks(n_rows: int, chunk: int, n_slots: int) -> Tensor:
    """A packed input with every segment unused (all positions parked at n_slots - 1, row 0,
    done 0): what the mixed steps' static buffers hold for warm-up and capture."""
    out = torch.zeros(n_rows, packed_width(chunk), dtype=torch.long)
    out[:, chunk: 2 * chunk] = n_slots - 1
    return out


def mixed_step(model: Transformer, tokens: Tensor, pos: Tensor, packed: Tensor, chunk: int) -> None:
    """One engine step in one forward: greedy decode of rows 0..B-1 (`tokens`, `pos` [B, 1]) and
    a chunk of prompt for each segment row of `packed` (`pack_chunks`). Updates `tokens` and
    `pos` in place like the decode step: a segment that ends its prompt puts its first answer
    token and the next position into its row. No host work, no data-dependent shapes: the same
    code runs eagerly (CPU, tests) and inside a CUDA graph capture (static buffers).

    The B + R*chunk tokens go through every projection together (one weight read), through one
    RoPE (q and k together) and one KV-cache write; only attention is split: the decode rows
    attend over rows 0..B-1 as the decode step does, the segments over their own rows. The GPU
    step is launch-bound (a few µs a kernel), so the mixed step adds as few kernels as it can:
    per layer, the chunk's attention and its two row gathers."""
    b, r, c = tokens.shape[0], packed.shape[0], chunk
    n, n_slots = b + r * c, model.cache_slots
    device = tokens.device
    ch_tok, ch_pos = packed[:, :c], packed[:, c: 2 * c]
    ch_rows, ch_last, done, next_pos = (packed[:, 2 * c + i] for i in range(4))
    # Per token (decode rows first, then the segments row by row): cache row, position, realness.
    # Padding and unused segments sit at position n_slots - 1: the slot idle decode rows park at,
    # never attended by a real query (real positions are <= n_slots - 2).
    rows_all = torch.cat([torch.arange(b, device=device), ch_rows.view(r, 1).expand(r, c).reshape(r * c)])
    pos_all = torch.cat([pos.view(b), ch_pos.reshape(r * c)])
    real_all = torch.cat([torch.ones(b, dtype=torch.bool, device=device),
                          (ch_pos != n_slots - 1).reshape(r * c)])
    slots_all = pos_all % n_slots
    model.slot_pos[rows_all, slots_all] = pos_all
    model.slot_real[rows_all, slots_all] = real_all
    dec_mask = slot_mask(pos, model.slot_pos[:b], model.slot_real[:b], model.window)
    ch_mask = slot_mask(ch_pos, model.slot_pos[ch_rows], model.slot_real[ch_rows], model.window)
    rope = model.rope[pos_all].unsqueeze(0)  # [1, N, D/2, 2]
    x = model.tok_embeddings(torch.cat([tokens.reshape(b), ch_tok.reshape(r * c)]))  # [N, dim]
    for i, layer in enumerate(model.layers):
        attn = layer.attention
        n_head, n_kv, hd = attn.n_head, attn.n_kv_head, attn.head_dim
        qkv = attn.wqkv(layer.attention_norm(x))
        qk = apply_rope(qkv[:, : (n_head + n_kv) * hd].view(1, n, n_head + n_kv, hd), rope)[0]
        q, k = qk.split([n_head, n_kv], dim=1)  # [N, H, D], [N, Hkv, D]
        v = qkv[:, (n_head + n_kv) * hd:].view(n, n_kv, hd)
        cache = model.caches[i]
        cache.put_tokens(rows_all, slots_all, k, v)
        keys, values = cache.dense(b)  # rows 0..B-1 [B, Hkv, S, D]
        y_d = F.scaled_dot_product_attention(q[:b].view(b, 1, n_head, hd).transpose(1, 2), keys, values,
                                             attn_mask=dec_mask, enable_gqa=True)
        # Fixed shapes per bucket: the default backends (cuDNN on an H200, planned once per
        # bucket at warm-up). The eager prefill's backends ran this in fp32 GEMMs (math backend):
        # a third of a mixed step's kernel time on the H200.
        y_c = F.scaled_dot_product_attention(q[b:].view(r, c, n_head, hd).transpose(1, 2), keys[ch_rows],
                                             values[ch_rows], attn_mask=ch_mask, enable_gqa=True)
        y = torch.cat([y_d.transpose(1, 2).reshape(b, n_head * hd),
                       y_c.transpose(1, 2).reshape(r * c, n_head * hd)])
        h = x + attn.wo(y)
        x = h + layer.feed_forward(layer.ffn_norm(h))
    x = model.norm(x)
    last = x[b:].view(r, c, -1)[torch.arange(r, device=device), ch_last]  # [R, dim]
    nxt = model.output(torch.cat([x[:b], last])).argmax(dim=-1)  # [B + R]
    # Rows whose prompt ended in this step take their first token and position. A one-hot
    # [R, B] match, not an index_put: unused segments share a row with segment 0, and only
    # `done` segments (real ones, each on its own row) count.
    match = (ch_rows.view(r, 1) == torch.arange(b, device=device).view(1, b)) & (done.view(r, 1) > 0)
    hit = match.any(dim=0)
    first = (match.long() * nxt[b:].view(r, 1)).sum(dim=0)
    start = (match.long() * next_pos.view(r, 1)).sum(dim=0)
    new_tok = torch.where(hit, first, nxt[:b])
    new_pos = torch.where(hit, start, torch.clamp(pos.view(b) + 1, max=n_slots - 1))
    tokens.copy_(new_tok.view(b, 1))
    pos.copy_(new_pos.view(b, 1))


def decode_step(model: Transformer, tokens: Tensor, pos: Tensor) -> Tensor:
    """One greedy step for every row (`tokens`, `pos` [B, 1]): next tokens [B, 1]."""
    return model(tokens, pos)[:, -1].argmax(dim=-1, keepdim=True)


_COMPILED: dict[tuple[str, str], object] = {}
COMPILE_BACKEND = "inductor"  # tests use "aot_eager": the same tracing and functionalization, no codegen


def _compiled(name: str, fn):
    key = (name, COMPILE_BACKEND)
    if key not in _COMPILED:
        import torch._dynamo

        # mixed steps: one compiled graph per (bucket, chunk); the default limit of 8 would fall
        # back to eager kernels past the eighth
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        _COMPILED[key] = torch.compile(fn, dynamic=False, backend=COMPILE_BACKEND)
    return _COMPILED[key]


class ContinuousBatcher:
    """`async with ContinuousBatcher(model, 32) as b: await b.submit(prompt, max_new_tokens)`.

    `cuda_graph` replays the decode step from one graph (GPU only), and each mixed step from one
    graph per segment-row bucket; `compile` runs the decode and mixed steps through torch.compile.
    `chunk` > 0: prompts are taken in `chunk` tokens a step by mixed steps, up to the largest of
    `chunk_rows` prompts at once (buckets: a step with n prompts to take in runs the smallest
    bucket >= n); `chunk` 0: each admission is prefilled eagerly (the first form).
    `overlap` launches each step before reading the previous one's tokens.
    `min_join` admits only once that many rows are free. `steps` records how many rows were busy
    at each step, `admissions` how many requests joined at each admission, `mixed_steps` how
    many prompts each mixed step took a chunk of, for reports and tests."""

    def __init__(self, model: Transformer, max_batch_size: int = 32, max_seq_len: int | None = None,
                 cuda_graph: bool = False, compile: bool = False, eos_id: int | None = None,
                 min_join: int = 1, chunk: int = 128, chunk_rows: tuple[int, ...] = (1, 2, 4, 8),
                 overlap: bool = True):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if chunk < 0:
            raise ValueError("chunk must be 0 (eager prefill) or a number of tokens")
        if chunk and model.window is not None:
            raise ValueError("chunked prefill needs full attention (no sliding window)")
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
        self.chunk = chunk
        self.chunk_rows = tuple(sorted({min(max(1, n), max_batch_size) for n in chunk_rows})) if chunk else ()
        self.mixed_steps: list[int] = []  # prompts taking a chunk, per mixed step
        self.mixed_s = 0.0  # engine time of the mixed steps (decode and prompt chunks together)
        self._prefilling: list[_Request] = []  # admitted, prompt not all in the cache yet
        self._mixed_graphs: dict[int, torch.cuda.CUDAGraph] = {}
        # One step ahead: step k+1 is launched before step k's tokens are read, so the host's
        # bookkeeping runs while the GPU computes. A finished row is then freed one step late
        # (its extra token is dropped); nothing else changes.
        self.overlap = overlap
        self._n_launched = 0
        # Compiled once per process, not per batcher: the functions take the model as an argument,
        # so a new batcher on the same model reuses the compiled steps (one compile for the decode
        # step, one per segment-row bucket and chunk for the mixed steps).
        self._fn = _compiled("decode", decode_step) if compile else decode_step
        self._mixed_fn = _compiled("mixed", mixed_step) if compile else mixed_step
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

    def _setup(self) -> None:
        ensure_caches(self.model, self.max_batch_size, self.max_seq_len)
        self.model.reset_cache_state()
        b = self.max_batch_size
        self._tokens = torch.zeros(b, 1, dtype=torch.long, device=self.device)
        # Idle rows park at the last position, so they never index past the RoPE table.
        self._last_pos = self.model.cache_slots - 1
        self._pos = torch.full((b, 1), self._last_pos, dtype=torch.long, device=self.device)
        # The mixed steps' static inputs, one per bucket, filled with unused segments (every
        # position parked): what the warm-up and the capture read.
        self._packed = {n: idle_chunks(n, self.chunk, self.model.cache_slots).to(self.device)
                        for n in self.chunk_rows}
        # Pinned host buffers, two of each (steps alternate): the tokens read back, and the
        # packed chunks staged for an asynchronous copy. A buffer is reused two steps later,
        # after the step that used it has been read back (so its copies are done).
        pin = self.device.type == "cuda"
        self._host_tokens = [torch.zeros(b, dtype=torch.long, pin_memory=pin) for _ in range(2)]
        self._staging = {(n, k): torch.zeros(n, packed_width(self.chunk), dtype=torch.long, pin_memory=pin)
                         for n in self.chunk_rows for k in range(2)}
        if not self.cuda_graph:
            self._warm_up(1)  # the same calls as before a capture, so CPU tests run them too
        else:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._warm_up(3)  # compile and warm up off the capture
            torch.cuda.current_stream().wait_stream(stream)
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph):
                self._advance()
            for n in self.chunk_rows:  # each graph its own memory pool: nothing shared but inputs
                self._mixed_graphs[n] = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self._mixed_graphs[n]):
                    self._mixed(n)
            torch.cuda.synchronize()
        self.model.reset_cache_state()  # the warm-up wrote into the rows
        self._tokens.zero_()
        self._pos.fill_(self._last_pos)

    def _warm_up(self, times: int) -> None:
        """Every step kind on the parked state: all rows at the last slot, segments unused, so it
        writes nothing but the last slot of each row (reset after it anyway)."""
        for _ in range(times):
            self._fn(self.model, self._tokens, self._pos)
            for n in self.chunk_rows:
                self._mixed(n)

    def _advance(self) -> None:
        self._tokens.copy_(self._fn(self.model, self._tokens, self._pos))
        self._pos.copy_(torch.clamp(self._pos + 1, max=self._last_pos))

    def _mixed(self, n_rows: int) -> None:
        self._mixed_fn(self.model, self._tokens, self._pos, self._packed[n_rows], self.chunk)

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
        pending: _Step | None = None
        with torch.no_grad():
            while True:
                busy = sum(r is not None for r in self._rows)
                block = not busy and not self._waiting and not stopping and pending is None
                stopping = self._drain(block) or stopping
                if stopping and not busy and not self._waiting and pending is None:
                    break
                try:
                    self._admit()
                    launched = self._launch() if any(r is not None for r in self._rows) else None
                    if pending is not None:
                        self._collect(pending)
                    pending = launched
                    if not self.overlap and pending is not None:
                        self._collect(pending)
                        pending = None
                except Exception as exc:  # a failed step fails its requests, not the engine
                    pending = None
                    self._prefilling.clear()
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
        room = len(free)
        if self.chunk:  # at most the largest bucket of prompts are taken in at once
            room = min(room, self.chunk_rows[-1] - len(self._prefilling))
        joining = self._waiting[: max(room, 0)]
        if not joining or (len(free) < self.min_join and len(free) < self.max_batch_size):
            return
        del self._waiting[: len(joining)]
        busy = self.max_batch_size - len(free)
        self.admissions.append((len(joining), busy))
        if self.chunk:
            self._join(joining, free[: len(joining)], busy)
            return
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
            r.fed = len(r.prompt)
            r.tokens.append(token)
            self._rows[row] = r
            self._maybe_finish(r, t)

    def _join(self, joining: list[_Request], rows: list[int], busy: int) -> None:
        """Chunked admission: the rows are forgotten and parked; the mixed steps fill them."""
        t0 = time.perf_counter()
        rows_t = torch.tensor(rows, dtype=torch.long)
        if self.device.type == "cuda":  # no wait on the step in flight
            rows_t = rows_t.pin_memory().to(self.device, non_blocking=True)
        self.model.reset_rows(rows_t)
        # A freed row kept decoding garbage at its old positions: parked, it writes only the
        # last slot (never attended by a real query) until its prompt is in.
        self._pos.index_fill_(0, rows_t, self._last_pos)
        for r, row in zip(joining, rows):
            r.row, r.admitted, r.batch_size, r.fed = row, t0, busy + len(joining), 0
            self._rows[row] = r
            self._prefilling.append(r)
        self.prefill_s += time.perf_counter() - t0

    def _launch(self) -> _Step:
        """Queue one step (mixed when prompts are waiting for their chunks) and the copy of its
        tokens to the host; returns without waiting for the GPU."""
        t0 = time.perf_counter()
        self.steps.append(sum(r is not None for r in self._rows))
        decoding = [r for r in self._rows if r is not None and r.fed >= len(r.prompt)]
        taking: list[tuple[_Request, bool]] = []
        parity = self._n_launched % 2
        self._n_launched += 1
        if self._prefilling:
            n_rows = next(n for n in self.chunk_rows if n >= len(self._prefilling))
            segments = []
            for r in list(self._prefilling):
                n = min(self.chunk, len(r.prompt) - r.fed)
                last = r.fed + n == len(r.prompt)
                segments.append((r.row, r.prompt[r.fed: r.fed + n], r.fed, last, len(r.prompt)))
                r.fed += n
                taking.append((r, last))
                if last:  # decodes from the next step on (its position is set by this one)
                    self._prefilling.remove(r)
            packed = pack_chunks(segments, n_rows, self.chunk, self.model.cache_slots)
            if self.device.type == "cuda":
                stage = self._staging[(n_rows, parity)]
                stage.copy_(packed)
                self._packed[n_rows].copy_(stage, non_blocking=True)
            else:
                self._packed[n_rows].copy_(packed)
            self.mixed_steps.append(len(taking))
            if n_rows in self._mixed_graphs:
                self._mixed_graphs[n_rows].replay()
            else:
                self._mixed(n_rows)
        elif self._graph is not None:
            self._graph.replay()
        else:
            self._advance()
        if self.device.type == "cuda":
            host = self._host_tokens[parity]
            host.copy_(self._tokens[:, 0], non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host, event = self._tokens[:, 0].clone(), None
        return _Step(decoding, taking, host, event, time.perf_counter() - t0)

    def _collect(self, step: _Step) -> None:
        """Wait for a launched step's tokens and hand them to their requests."""
        t0 = time.perf_counter()
        if step.event is not None:
            step.event.synchronize()
        tokens = step.host.tolist()
        t = time.perf_counter()
        if step.taking:
            self.mixed_s += step.launch_s + t - t0
        else:
            self.decode_s += step.launch_s + t - t0
        for r in step.decoding:
            if not r.done:
                r.tokens.append(tokens[r.row])
                self._maybe_finish(r, t)
        for r, last in step.taking:
            if last and not r.done:  # its first token came out of this step
                r.first_token = t
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
        r.done = True
        def settle() -> None:
            if r.future.done():
                return
            if isinstance(outcome, BaseException):
                r.future.set_exception(outcome)
            else:
                r.future.set_result(outcome)

        r.loop.call_soon_threadsafe(settle)
