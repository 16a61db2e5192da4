"""Dynamic batching: an asyncio request queue in front of the model, and a load generator.

A batch is flushed when it holds `max_batch_size` requests or when its oldest request has
waited `max_queue_delay_ms`, whichever comes first (Triton's and Ray Serve's semantics). The
model runs in one worker thread, so the event loop keeps accepting requests while a batch runs.
Each request gets its own latency (arrival to completion) and time to first token."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from optimizer.generate import Generation

RunBatch = Callable[[list[list[int]], int], Generation]


@dataclass
class Completion:
    tokens: list[int]
    latency_s: float   # arrival in the queue to the result
    queue_s: float     # arrival to the start of its batch
    ttft_s: float      # arrival to its first token
    batch_size: int


@dataclass
class _Pending:
    prompt: list[int]
    max_new_tokens: int
    arrived: float
    future: asyncio.Future


@dataclass
class BatchRecord:
    size: int
    reason: str  # "size" or "delay"
    run_s: float


class DynamicBatcher:
    def __init__(self, run_batch: RunBatch, max_batch_size: int = 32, max_queue_delay_ms: float = 5.0):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_ms / 1000.0
        self.batches: list[BatchRecord] = []
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpucost-model")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop(), name="dynamic-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._executor.shutdown(wait=True)

    async def __aenter__(self) -> DynamicBatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def submit(self, prompt: list[int], max_new_tokens: int) -> Completion:
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(prompt, max_new_tokens, time.perf_counter(), future))
        return await future

    async def _collect(self) -> tuple[list[_Pending], str]:
        batch = [await self._queue.get()]
        deadline = batch[0].arrived + self.max_queue_delay_s
        while len(batch) < self.max_batch_size:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            timeout = deadline - time.perf_counter()
            if timeout <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), timeout))
            except (asyncio.TimeoutError, TimeoutError):
                break
        return batch, "size" if len(batch) == self.max_batch_size else "delay"

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch, reason = await self._collect()
            started = time.perf_counter()
            max_new = max(p.max_new_tokens for p in batch)
            try:
                gen = await loop.run_in_executor(self._executor, self.run_batch,
                                                 [p.prompt for p in batch], max_new)
            except Exception as exc:  # a failed batch fails its requests, not the batcher
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            done = time.perf_counter()
            self.batches.append(BatchRecord(len(batch), reason, done - started))
            for p, tokens in zip(batch, gen.tokens):
                if not p.future.done():
                    p.future.set_result(Completion(
                        tokens=tokens[: p.max_new_tokens], latency_s=done - p.arrived,
                        queue_s=started - p.arrived, ttft_s=started - p.arrived + gen.ttft_s,
                        batch_size=len(batch)))


@dataclass
class LoadResult:
    completions: list[Completion] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def tokens(self) -> int:
        return sum(len(c.tokens) for c in self.completions)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def requests_per_s(self) -> float:
        return len(self.completions) / self.wall_s if self.wall_s > 0 else 0.0


async def run_load(submit: Callable[[list[int], int], Awaitable[Completion]], prompts: list[list[int]],
                   n_requests: int, max_new_tokens: int | Sequence[int], concurrency: int = 1,
                   arrival_rate_per_s: float | None = None, seed: int = 0) -> LoadResult:
    """Send `n_requests` (cycling through `prompts`) with at most `concurrency` in flight.

    Without an arrival rate it is a closed loop: each of `concurrency` clients sends its next
    request as soon as the last one returns. With one, arrivals are Poisson at that rate
    (seeded), still capped at `concurrency` outstanding requests. `max_new_tokens` is one answer
    length for all, or a list cycled like the prompts (mixed lengths)."""
    if n_requests < 1 or concurrency < 1:
        raise ValueError("n_requests and concurrency must be at least 1")
    result = LoadResult()
    rng = random.Random(seed)
    in_flight = asyncio.Semaphore(concurrency)
    start = time.perf_counter()

    async def one(i: int) -> None:
        try:
            n_new = max_new_tokens if isinstance(max_new_tokens, int) else max_new_tokens[i % len(max_new_tokens)]
            result.completions.append(await submit(prompts[i % len(prompts)], n_new))
        finally:
            in_flight.release()

    tasks = []
    for i in range(n_requests):
        await in_flight.acquire()
        tasks.append(asyncio.create_task(one(i)))
        if arrival_rate_per_s:
            await asyncio.sleep(rng.expovariate(arrival_rate_per_s))
    await asyncio.gather(*tasks)
    result.wall_s = time.perf_counter() - start
    return result
