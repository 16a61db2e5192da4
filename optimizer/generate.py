"""Generation: prefill the prompts, then decode one token a step from the KV cache.

`Decoder` runs the decode step eagerly, through `torch.compile`, and/or replayed from a CUDA
graph; a graphed step also advances its own token and position, so the host only queues
replays and never waits on the GPU inside the loop. Greedy by default, or sampled with a
temperature and top-k from a seeded generator."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from optimizer import fused_decode
from optimizer.model import Transformer

PREFILL_CHUNK = 128  # prompt tokens a windowed model takes per forward


@dataclass
class Generation:
    tokens: list[list[int]]  # new tokens per prompt, cut after the first EOS when one is given
    ttft_s: float            # prefill until the first new token is on the host
    total_s: float           # prefill and every decode step
    decode_steps: int

    @property
    def new_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)


def left_pad(prompts: list[list[int]], pad_id: int, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """[B, T] token ids with each prompt right-aligned, and the mask of real tokens."""
    length = max(len(p) for p in prompts)
    idx = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    real = torch.zeros((len(prompts), length), dtype=torch.bool)
    for row, p in enumerate(prompts):
        if not p:
            raise ValueError("empty prompt")
        idx[row, length - len(p):] = torch.tensor(p, dtype=torch.long)
        real[row, length - len(p):] = True
    return idx.to(device), real.to(device)


def sample(logits: Tensor, temperature: float = 0.0, top_k: int | None = None,
           generator: torch.Generator | None = None) -> Tensor:
    """Next token per row [B, 1] from logits [B, V]: argmax at temperature 0."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


def ensure_caches(model: Transformer, batch_size: int, seq_len: int, kind: str | None = None) -> None:
    """(Re)allocate the KV caches when there are none, they are too small, or of another kind."""
    kind = kind or model.kv_cache_kind
    # A windowed cache is a ring: it needs the window plus one prefill chunk, or the whole sequence.
    chunk = model.prefill_chunk if model.caches is not None and model.window is not None else PREFILL_CHUNK
    slots = seq_len if model.window is None else min(seq_len, model.window + chunk)
    if (model.caches is None or model.kv_cache_kind != kind or model.slot_pos.shape[0] < batch_size
            or model.cache_slots < slots):
        model.clear_caches()
        model.setup_caches(batch_size, seq_len, kind, prefill_chunk=chunk)


# greedy steps a CUDA graph replay runs (the rest of a generation: one-step replays). 8 measured
# slower than 1 on the H200 (1B: 0.668 against 0.662 ms, run 12), so one a replay by default.
GRAPH_STEPS = 1


@dataclass
class _GreedyGraphs:
    """A batch size's graphed greedy loop: the static inputs it advances (tokens, the shared
    position, the history of tokens by position, the greedy kernel's ticket and, when that kernel
    runs, the embedded tokens the fused step starts from) and its graphs, one step and the
    decoder's `graph_steps` a replay (the same graph when that is 1)."""
    tokens: Tensor
    pos: Tensor
    history: Tensor
    ticket: Tensor
    embedded: Tensor | None
    one: torch.cuda.CUDAGraph
    many: torch.cuda.CUDAGraph


class Decoder:
    """One decode step: `step(tokens [B, 1], input_pos [1]) -> logits [B, V]`.

    With `cuda_graphs`, `start(tokens, pos)` loads the static inputs and `advance(n)` replays n
    greedy steps, each running the model, writing the greedy token into the static input and
    into the history at its position, and adding one to the position: `graph_steps` steps a
    replay, so a generation needs no host work but a replay every `graph_steps` tokens and one
    read of the history at the end. A fused model's greedy tail (argmax, token, history,
    position) is one Triton kernel behind the head GEMV (`greedy_kernel`), else torch ops
    (compiled with the step under `compile`)."""

    def __init__(self, model: Transformer, compile: bool = False, cuda_graphs: bool = False,
                 graph_steps: int = GRAPH_STEPS, greedy_kernel: bool = True):
        if graph_steps < 1:
            raise ValueError(f"graph_steps must be at least 1, not {graph_steps}")
        self.model = model
        self.compiled = compile
        self.cuda_graphs = cuda_graphs
        self.graph_steps = graph_steps
        self.greedy_kernel = greedy_kernel
        self._fn = self._forward
        self._greedy_fn = self._greedy
        self._embedded_fn = model.forward_embedded
        if compile:
            self._fn = torch.compile(self._forward, fullgraph=True, dynamic=False)
            # The greedy kernel's step: the fused step compiled from its embedded input, the
            # kernel launched after it outside the compiled function (torch 2.11's compile of the
            # two together never returned on the H200 machine, run 12)
            self._embedded_fn = torch.compile(model.forward_embedded, fullgraph=True, dynamic=False)
            # the graphed step's greedy tail compiled with it: argmax, the token, history and
            # position updates in one or two generated kernels instead of eager ones (one of them
            # a 10 us reduction over the vocabulary on the H200, run 11)
            self._greedy_fn = torch.compile(self._greedy, fullgraph=True, dynamic=False)
        self._graphs: dict[tuple[int, int], _GreedyGraphs] = {}
        self._active: _GreedyGraphs | None = None

    @property
    def name(self) -> str:
        parts = (["compile"] if self.compiled else []) + (["cudagraph"] if self.cuda_graphs else [])
        return "+".join(parts) or "eager"

    def _forward(self, tokens: Tensor, input_pos: Tensor) -> Tensor:
        return self.model(tokens, input_pos)[:, -1]

    def step(self, tokens: Tensor, input_pos: Tensor) -> Tensor:
        return self._fn(tokens, input_pos)

    def _greedy(self, tokens: Tensor, input_pos: Tensor, history: Tensor, ticket: Tensor,
                embedded: Tensor | None = None) -> Tensor:
        """One greedy step in place: the next token into `tokens` and into `history` at its
        position (input_pos [1] + 1), `input_pos` one on; the logits. With `embedded` (the
        tokens' embeddings [B, 1, dim]; a fused step, `_tail_kernel`), the fused step starts
        from it and the greedy kernel writes the next one."""
        if embedded is not None:
            logits = self._embedded_fn(embedded, input_pos)[:, -1]
            torch.ops.gpucost.greedy_next(logits, tokens, input_pos, history, ticket,
                                          self.model.tok_embeddings.weight, embedded)
        else:
            logits = self._forward(tokens, input_pos)
            tokens.copy_(logits.argmax(dim=-1, keepdim=True))
            history.index_copy_(1, input_pos + 1, tokens)
            input_pos.add_(1)
        return logits

    def _tail_kernel(self, tokens: Tensor, input_pos: Tensor) -> bool:
        return self.greedy_kernel and fused_decode.greedy_applies(self.model, tokens, input_pos)

    # -- graphed greedy loop ---------------------------------------------------------------

    def _graph_for(self, batch_size: int) -> _GreedyGraphs:
        key = (batch_size, id(self.model.caches))
        if key not in self._graphs:
            device = self.model.rope.device
            tokens = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
            pos = torch.zeros(1, dtype=torch.long, device=device)
            # a token for every position the model has (the last one's successor included)
            history = torch.zeros(batch_size, self.model.args.max_seq_len + 1, dtype=torch.long, device=device)
            ticket = torch.zeros(1, dtype=torch.int32, device=device)
            embedded = None
            if self._tail_kernel(tokens, pos):
                embedded = self.model.tok_embeddings(tokens).detach()
            state = (tokens, pos, history, ticket, embedded)
            step = self._greedy if embedded is not None else self._greedy_fn  # see __init__
            # Warm-up (and compilation) off the capture, from position 0 each time; it writes
            # cache slot 0, which the next prefill overwrites, and its slot bookkeeping is reset
            # by `generate`.
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    pos.zero_()
                    step(*state)
                pos.zero_()
            torch.cuda.current_stream().wait_stream(stream)
            one = torch.cuda.CUDAGraph()
            with torch.cuda.graph(one):
                step(*state)
            many = one
            if self.graph_steps > 1:  # the same step captured `graph_steps` times, in one pool
                many = torch.cuda.CUDAGraph()
                with torch.cuda.graph(many, pool=one.pool()):
                    for _ in range(self.graph_steps):
                        step(*state)
            self._graphs[key] = _GreedyGraphs(*state, one, many)
        return self._graphs[key]

    def prepare(self, batch_size: int) -> None:
        """Capture (and compile) now, so the first timed generation does not pay for it."""
        if self.cuda_graphs:
            self._graph_for(batch_size)

    def start(self, tokens: Tensor, input_pos: Tensor) -> None:
        """Load the graphs' inputs: the tokens [B, 1] at position `input_pos` [1] (also written
        into the history there)."""
        self._active = g = self._graph_for(tokens.shape[0])
        with torch.no_grad():
            g.tokens.copy_(tokens)
            g.pos.copy_(input_pos)
            g.history.index_copy_(1, g.pos, g.tokens)
            if g.embedded is not None:
                g.embedded.copy_(self.model.tok_embeddings(g.tokens))

    def advance(self, steps: int = 1) -> Tensor:
        """Replay `steps` greedy steps; returns the static tensor holding the last new tokens [B, 1]."""
        g = self._active
        many, rest = divmod(steps, self.graph_steps)
        for _ in range(many):
            g.many.replay()
        for _ in range(rest):
            g.one.replay()
        return g.tokens

    def history(self, first: int, n: int) -> Tensor:
        """The tokens at positions first .. first + n - 1 since `start` (the one it was given
        included), [B, n]; a view of the static history, valid until the next `start`."""
        return self._active.history[:, first:first + n]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def prefill(model: Transformer, idx: Tensor, pad_mask: Tensor | None, all_positions: bool = False) -> Tensor:
    """Run the prompts through the model and its caches (in chunks when a sliding window bounds
    the cache); returns the last position's logits [B, V], or every position's [B, T, V]."""
    seqlen = idx.shape[1]
    chunk = getattr(model, "prefill_chunk", seqlen) or seqlen
    out = []
    for start in range(0, seqlen, chunk):
        end = min(seqlen, start + chunk)
        pos = torch.arange(start, end, device=idx.device)
        logits = model(idx[:, start:end], pos, None if pad_mask is None else pad_mask[:, start:end])
        out.append(logits if all_positions else logits[:, -1])
    return torch.cat(out, dim=1) if all_positions else out[-1]


@torch.no_grad()
def generate(model: Transformer, prompts: list[list[int]], max_new_tokens: int, *,
             decoder: Decoder | None = None, temperature: float = 0.0, top_k: int | None = None,
             seed: int = 0, eos_id: int | None = None, pad_id: int = 0) -> Generation:
    """Generate `max_new_tokens` for each prompt, batched; the model's KV caches are (re)used."""
    device = model.rope.device
    idx, real = left_pad(prompts, pad_id, device)
    batch_size, prompt_len = idx.shape
    ensure_caches(model, batch_size, prompt_len + max_new_tokens)
    if model.window is None and prompt_len + max_new_tokens > model.cache_slots:
        raise ValueError("prompt plus new tokens exceed the KV cache")
    decoder = decoder or Decoder(model)
    greedy_graph = decoder.cuda_graphs and temperature <= 0
    if greedy_graph:
        decoder.prepare(batch_size)
    generator = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
    model.reset_cache_state()

    _sync(device)
    t0 = time.perf_counter()
    token = sample(prefill(model, idx, real), temperature, top_k, generator)
    out = torch.empty(batch_size, max_new_tokens, dtype=torch.long, device=device)
    out[:, :1] = token
    first = out[:, 0].tolist()  # the first token on the host: time to first token
    ttft = time.perf_counter() - t0
    pos = torch.tensor([prompt_len], device=device)
    if greedy_graph and max_new_tokens > 1:
        decoder.start(token, pos)
        decoder.advance(max_new_tokens - 1)
        out = decoder.history(prompt_len, max_new_tokens)
    else:
        for i in range(1, max_new_tokens):
            logits = decoder.step(token, pos)
            token = sample(logits, temperature, top_k, generator)
            out[:, i:i + 1] = token
            pos += 1
    rows = out.tolist()
    total = time.perf_counter() - t0
    assert [r[0] for r in rows] == first
    if eos_id is not None:
        rows = [r[: r.index(eos_id) + 1] if eos_id in r else r for r in rows]
    return Generation(tokens=rows, ttft_s=ttft, total_s=total, decode_steps=max_new_tokens - 1)
