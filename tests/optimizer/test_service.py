"""The optimizer service: HTTP generation through the batcher, its own load generator, and the
usage events it publishes to the real Kafka broker."""

import asyncio
import uuid

import httpx
import pytest

from core.settings import Settings
from optimizer.service import OptimizerService, ServiceConfig, create_app, serve
from tests.support import free_port, read_topic


def config(**kw) -> ServiceConfig:
    base = dict(model="test", variant="fp32", device="cpu", max_batch_size=4, max_queue_delay_ms=50.0,
                interval_s=0.5, publish=False, max_context=128)
    return ServiceConfig(**{**base, **kw})


@pytest.mark.asyncio
async def test_generate_over_http_batches_concurrent_requests():
    service = OptimizerService(config())
    await service.start()
    try:
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://optimizer") as client:
            responses = await asyncio.gather(*(
                client.post("/generate", json={"prompt": f"hello {i}", "max_new_tokens": 6}) for i in range(4)))
            bad = await client.post("/generate", json={"prompt": "", "max_new_tokens": 6})
            stats = (await client.get("/stats")).json()
    finally:
        await service.stop()
    bodies = [r.json() for r in responses]
    assert all(r.status_code == 200 for r in responses)
    assert all(len(b["tokens"]) == 6 and b["variant"] == "fp32" for b in bodies)
    assert max(b["batch_size"] for b in bodies) > 1
    assert all(b["latency_ms"] >= b["queue_ms"] >= 0 for b in bodies)
    assert bad.status_code == 422
    assert stats["requests"] == 4 and stats["tokens"] == 24 and stats["batches"] < 4


@pytest.mark.asyncio
async def test_usage_sample_counts_what_was_served_in_the_interval():
    service = OptimizerService(config())
    await service.start()
    try:
        await service.generate("abc", 5)
        await service.generate("defg", 3)
        await service.publish_interval(1.0)
        first = service.last_event
        await service.publish_interval(1.0)
        second = service.last_event
    finally:
        await service.stop()
    assert first.service == "optimizer/fp32" and first.tokens == 8 and first.requests == 2
    assert 0 < first.util <= 1 and first.model_extra["measured_on"] == "cpu"
    assert second.tokens == 0 and second.requests == 0 and second.util == 0


@pytest.mark.asyncio
async def test_the_built_in_load_generator_drives_the_http_service():
    stats = await serve(config(), port=free_port(), load=True, concurrency=3, arrival_rate_per_s=None,
                        max_new_tokens=4, duration_s=2.0)
    assert stats["requests"] > 0 and stats["tokens"] == 4 * stats["requests"]
    assert stats["mean_batch_size"] > 1


@pytest.mark.integration
@pytest.mark.asyncio
async def test_usage_events_reach_kafka(kafka_broker):
    settings = Settings(topic_prefix=f"opt-{uuid.uuid4().hex[:8]}.")
    stats = await serve(config(publish=True, interval_s=0.5), port=free_port(), load=True, concurrency=2,
                        arrival_rate_per_s=None, max_new_tokens=4, duration_s=2.0, settings=settings)
    records = await read_topic(settings, settings.usage_topic)
    import json

    events = [json.loads(r.value) for r in records]
    assert events and all(e["service"] == "optimizer/fp32" for e in events)
    assert sum(e["tokens"] for e in events) == stats["tokens"]
    assert sum(e["requests"] for e in events) == stats["requests"] == stats["tokens"] // 4
    assert {e["gpu_model"] for e in events} == {"A10G"} and events[0]["measured_on"] == "cpu"
