"""The one place that opens Kafka connections: producers, consumers and topic creation, all with
the settings' bootstrap servers."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from gpucost.settings import Settings, get_settings


def producer(settings: Settings | None = None, **overrides) -> AIOKafkaProducer:
    settings = settings or get_settings()
    options = dict(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,  # retries after a broker restart never duplicate
        linger_ms=5,
        max_batch_size=1 << 20,
        compression_type=None,
        request_timeout_ms=30000,
        retry_backoff_ms=200,
    )
    options.update(overrides)
    return AIOKafkaProducer(**options)


def consumer(*topics: str, settings: Settings | None = None, **overrides) -> AIOKafkaConsumer:
    settings = settings or get_settings()
    options = dict(bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
                   enable_auto_commit=False, max_partition_fetch_bytes=4 << 20)
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


def admin(settings: Settings | None = None) -> AIOKafkaAdminClient:
    settings = settings or get_settings()
    return AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)


async def ensure_topics(settings: Settings | None = None) -> None:
    """Create gpucost's topics with the configured partition counts (idempotent)."""
    settings = settings or get_settings()
    p = settings.topic_partitions
    wanted = [
        NewTopic(settings.usage_topic, p, 1),
        NewTopic(settings.billing_topic, p, 1),
        NewTopic(settings.deadletter_topic, 1, 1),
        # Pane state: compacted, it is the worker's durable state (see streaming/panes.py).
        NewTopic(settings.panes_topic, p, 1, topic_configs={"cleanup.policy": "compact", "segment.ms": "600000"}),
        NewTopic(settings.aggregates_topic, p, 1),
        NewTopic(settings.alerts_topic, 1, 1),
        NewTopic(settings.rules_topic, 1, 1, topic_configs={"cleanup.policy": "compact"}),
    ]
    client = admin(settings)
    await client.start()
    try:
        existing = set(await client.list_topics())
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            try:
                await client.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
    finally:
        await client.close()
