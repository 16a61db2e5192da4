"""`gpucost optimizer`: the optimizer as a running service.

POST /generate {"prompt": str, "max_new_tokens": int} goes through the dynamic batcher to the
model and answers with the text, the tokens and the request's latency. Every `interval_s` the
service publishes one usage event (service "optimizer/<variant>") with the tokens and requests
it served and the share of the interval the model was busy, so the dashboard shows this
workload's cost as it runs. With `load`, the built-in load generator drives the service over
HTTP on the loopback interface."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import torch
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from optimizer.batcher import Completion, DynamicBatcher, run_load
from optimizer.bench import SMOLLM2, Variant, build_variant
from optimizer.generate import generate
from optimizer.measure import Instance, gpu_model_name, weight_bytes
from optimizer.publish import usage_event

log = logging.getLogger("gpucost.optimizer")


class GenerateRequest(BaseModel):
    prompt: str = Field(min_length=1, max_length=8192)
    max_new_tokens: int = Field(default=32, ge=1, le=1024)


class GenerateResponse(BaseModel):
    text: str
    tokens: list[int]
    latency_ms: float
    queue_ms: float
    ttft_ms: float
    batch_size: int
    variant: str


@dataclass
class ServiceConfig:
    model: str = "10m"
    variant: str = "fp32"
    device: str = "cpu"
    max_batch_size: int = 8
    max_queue_delay_ms: float = 10.0
    interval_s: float = 5.0
    publish: bool = True
    tenant: str = "optimizer"
    instance: Instance = Instance(instance_type="g5.xlarge")
    max_context: int = 512


class OptimizerService:
    def __init__(self, cfg: ServiceConfig, settings=None):
        self.cfg = cfg
        self.settings = settings
        self.variant = Variant.parse(cfg.variant)
        self.device = torch.device(cfg.device)
        self.model, self.decoder = build_variant(cfg.model, self.variant, self.device)
        if cfg.model == SMOLLM2:
            from optimizer.tokenizer import BPETokenizer

            self.tokenizer = BPETokenizer.from_gguf()
        else:
            from optimizer.tokenizer import ByteTokenizer

            self.tokenizer = ByteTokenizer(self.model.args.vocab_size)
        self.batcher = DynamicBatcher(self._run_batch, cfg.max_batch_size, cfg.max_queue_delay_ms)
        self.tokens_served = 0
        self.requests_served = 0
        self.events_published = 0
        self._producer = None
        self._publisher: asyncio.Task | None = None
        self._published_batches = 0
        self._tokens_mark = self._requests_mark = 0
        self._last_publish = time.monotonic()
        self.last_event = None

    @property
    def variant_name(self) -> str:
        return self.variant.name

    def _run_batch(self, prompts: list[list[int]], max_new: int):
        # Keep the prompt's tail when it would not fit the cache with the answer.
        limit = self.cfg.max_context - max_new
        return generate(self.model, [p[-limit:] for p in prompts], max_new, decoder=self.decoder,
                        eos_id=self.tokenizer.eos_id)

    async def start(self) -> None:
        await self.batcher.start()
        if self.cfg.publish:
            from ingest.producer import EventProducer

            self._producer = EventProducer(self.settings)
            await self._producer.start()
        self._publisher = asyncio.create_task(self._publish_loop(), name="optimizer-usage")

    async def stop(self) -> None:
        if self._publisher is not None:
            self._publisher.cancel()
            try:
                await self._publisher
            except asyncio.CancelledError:
                pass
        await self.batcher.stop()
        if self._producer is not None:
            await self.publish_interval(max(time.monotonic() - self._last_publish, 1e-3))
            await self._producer.stop()

    async def generate(self, prompt: str, max_new_tokens: int) -> GenerateResponse:
        if max_new_tokens >= self.cfg.max_context:
            raise ValueError(f"max_new_tokens must be below the context of {self.cfg.max_context}")
        ids = self.tokenizer.encode(prompt)
        if not ids:
            raise ValueError("the prompt encodes to no tokens")
        done: Completion = await self.batcher.submit(ids, max_new_tokens)
        self.tokens_served += len(done.tokens)
        self.requests_served += 1
        return GenerateResponse(text=self.tokenizer.decode(done.tokens), tokens=done.tokens,
                                latency_ms=done.latency_s * 1e3, queue_ms=done.queue_s * 1e3,
                                ttft_ms=done.ttft_s * 1e3, batch_size=done.batch_size,
                                variant=self.variant_name)

    def memory_used_gb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) / 1e9
        import psutil

        return psutil.Process().memory_info().rss / 1e9

    def usage(self, interval_s: float, tokens: int, requests: int, busy_s: float):
        return usage_event(variant=self.variant_name, instance=self.cfg.instance,
                           gpu_model=gpu_model_name(self.device), interval_s=interval_s,
                           util=busy_s / interval_s, mem_used_gb=self.memory_used_gb(), tokens=tokens,
                           requests=requests, tenant=self.cfg.tenant)

    async def publish_interval(self, interval_s: float) -> None:
        batches = self.batcher.batches[self._published_batches:]
        self._published_batches += len(batches)
        tokens, requests = self.tokens_served - self._tokens_mark, self.requests_served - self._requests_mark
        self._tokens_mark, self._requests_mark = self.tokens_served, self.requests_served
        self._last_publish = time.monotonic()
        event = self.usage(interval_s, tokens, requests, min(sum(b.run_s for b in batches), interval_s))
        if self._producer is not None:
            await self._producer.send_usage([event])
            self.events_published += 1
        self.last_event = event

    async def _publish_loop(self) -> None:
        self._last_publish = time.monotonic()
        while True:
            await asyncio.sleep(self.cfg.interval_s)
            try:
                await self.publish_interval(time.monotonic() - self._last_publish)
            except Exception:  # a broker hiccup costs one sample, not the service
                log.exception("publishing the optimizer's usage failed")

    def stats(self) -> dict:
        sizes = [b.size for b in self.batcher.batches]
        return {"variant": self.variant_name, "model": self.cfg.model, "device": str(self.device),
                "params": self.model.n_params, "model_bytes": weight_bytes(self.model),
                "requests": self.requests_served, "tokens": self.tokens_served,
                "batches": len(sizes), "mean_batch_size": sum(sizes) / len(sizes) if sizes else 0.0,
                "events_published": self.events_published}


def create_app(service: OptimizerService) -> FastAPI:
    app = FastAPI(title="gpucost optimizer", version="1")

    @app.post("/generate", response_model=GenerateResponse)
    async def generate_endpoint(req: GenerateRequest) -> GenerateResponse:
        try:
            return await service.generate(req.prompt, req.max_new_tokens)
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc

    @app.get("/stats")
    async def stats() -> dict:
        return service.stats()

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"ok": True, "variant": service.variant_name}

    return app


LOAD_PROMPTS = [
    "Summarise the cost of running a GPU for an hour.",
    "Write a haiku about memory bandwidth.",
    "What is dynamic batching?",
    "Explain the KV cache in one sentence.",
]


async def drive_http(base_url: str, n_requests: int, concurrency: int, max_new_tokens: int,
                     arrival_rate_per_s: float | None = None, seed: int = 0):
    """The load generator over HTTP: `n_requests` POST /generate calls to `base_url`."""
    import httpx

    async with httpx.AsyncClient(base_url=base_url, timeout=120.0) as client:
        async def submit(prompt_ids: list[int], max_new: int) -> Completion:
            body = {"prompt": LOAD_PROMPTS[prompt_ids[0] % len(LOAD_PROMPTS)], "max_new_tokens": max_new}
            resp = await client.post("/generate", json=body)
            resp.raise_for_status()
            r = resp.json()
            return Completion(tokens=r["tokens"], latency_s=r["latency_ms"] / 1e3,
                              queue_s=r["queue_ms"] / 1e3, ttft_s=r["ttft_ms"] / 1e3,
                              batch_size=r["batch_size"])

        prompts = [[i] for i in range(len(LOAD_PROMPTS))]
        return await run_load(submit, prompts, n_requests, max_new_tokens, concurrency,
                              arrival_rate_per_s, seed)


async def serve(cfg: ServiceConfig, host: str = "127.0.0.1", port: int = 8010, load: bool = False,
                concurrency: int = 4, arrival_rate_per_s: float | None = 2.0, max_new_tokens: int = 32,
                duration_s: float = 0.0, settings=None) -> dict:
    """Run the HTTP service (and the load generator with `load`) until cancelled or `duration_s`."""
    import uvicorn

    service = OptimizerService(cfg, settings)
    await service.start()
    server = uvicorn.Server(uvicorn.Config(create_app(service), host=host, port=port, log_level="warning",
                                           lifespan="off"))
    server_task = asyncio.create_task(server.serve(), name="optimizer-http")
    tasks = [server_task]
    try:
        while not server.started:
            if server_task.done():
                server_task.result()  # raises the bind error
            await asyncio.sleep(0.02)
        if load:
            async def load_forever():
                while True:
                    await drive_http(f"http://{host}:{port}", max(concurrency * 4, 8), concurrency,
                                     max_new_tokens, arrival_rate_per_s)

            tasks.append(asyncio.create_task(load_forever(), name="optimizer-load"))
        if duration_s > 0:
            await asyncio.sleep(duration_s)
        else:
            await asyncio.Event().wait()
    finally:
        for t in tasks[1:]:
            t.cancel()
        server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        await service.stop()
    return service.stats()
