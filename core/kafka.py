"""The one place that opens Kafka connections: producers, consumers and topic creation, all with
the settings' bootstrap servers."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from core.settings import Settings, get_settings


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
    if options.get("group_id") is not None:
        if settings.kafka_session_timeout_s is not None:
            options.setdefault("session_timeout_ms", int(settings.kafka_session_timeout_s * 1000))
        if settings.kafka_heartbeat_interval_s is not None:
            options.setdefault("heartbeat_interval_ms", int(settings.kafka_heartbeat_interval_s * 1000))
    return AIOKafkaConsumer(*topics, **options)


def admin(settings: Settings | None = None) -> AIOKafkaAdminClient:
    settings = settings or get_settings()
    return AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)


async def ensure_topics(settings: Settings | None = None) -> None:
    """Create gpucost's topics with the configured partition counts (idempotent)."""
    settings = settings or get_settings()
    p = settings.topic_partitions
    rf = settings.kafka_replication_factor
    # On a cluster an acknowledged write (acks=all) is on at least min.insync.replicas brokers.
    isr = {"min.insync.replicas": str(settings.kafka_min_insync_replicas)} if rf > 1 else {}
    compact = {"cleanup.policy": "compact"}
    wanted = [
        NewTopic(settings.usage_topic, p, rf, topic_configs=isr),
        NewTopic(settings.billing_topic, p, rf, topic_configs=isr),
        NewTopic(settings.deadletter_topic, 1, rf, topic_configs=isr),
        # Pane state: compacted, it is the worker's durable state (see streaming/panes.py).
        NewTopic(settings.panes_topic, p, rf, topic_configs={**compact, "segment.ms": "600000", **isr}),
        NewTopic(settings.aggregates_topic, p, rf, topic_configs=isr),
        NewTopic(settings.alerts_topic, 1, rf, topic_configs=isr),
        NewTopic(settings.rules_topic, 1, rf, topic_configs={**compact, **isr}),
        # Price overrides: the whole set as one record (contracts/prices.py).
        NewTopic(settings.prices_topic, 1, rf, topic_configs={**compact, **isr}),
        # Validated billing line items, keyed by line item: compaction keeps the latest of each.
        NewTopic(settings.billed_topic, p, rf, topic_configs={**compact, **isr}),
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


async def stop_consumer(c: AIOKafkaConsumer) -> None:
    """Stop a consumer; yields once first because aiokafka 0.14 raises CancelledError from stop()
    when its no-group coordinator task is cancelled before it ever ran (a start-then-stop)."""
    import asyncio

    await asyncio.sleep(0)
    await c.stop()


async def partitions_of(c: AIOKafkaConsumer, topic: str) -> set[int]:
    """A topic's partitions from fresh cluster metadata (consumer.partitions_for_topic only knows
    topics the consumer subscribed to, and topics() does not refresh that cache)."""
    metadata = await c._client.fetch_all_metadata()
    return set(metadata.partitions_for_topic(topic) or ())


async def read_to_end(c: AIOKafkaConsumer, topic: str, on_record, partitions: set[int] | None = None) -> int:
    """Assign every partition of topic (or those given), read from the beginning to the current end, call
    on_record(record) for each; returns the count. For restoring state from compacted topics."""
    from aiokafka import TopicPartition

    tps = [TopicPartition(topic, p) for p in sorted(await partitions_of(c, topic))
           if partitions is None or p in partitions]
    if not tps:
        return 0
    # The end first, before anything is assigned: once a partition is assigned the consumer
    # fetches it in the background, and a request sent after that waits behind the fetch's
    # long-poll on the broker connection (fetch_max_wait_ms, 0.5 s on an idle topic).
    end = await c.end_offsets(tps)
    c.assign(tps)
    await c.seek_to_beginning(*tps)
    remaining = {tp for tp in tps if end[tp] > 0}
    n = 0
    while remaining:
        batches = await c.getmany(*remaining, timeout_ms=1000)
        for records in batches.values():
            for r in records:
                on_record(r)
                n += 1
        for tp in list(remaining):
            if await c.position(tp) >= end[tp]:
                remaining.discard(tp)
    return n
