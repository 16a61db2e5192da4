"""The worker (`gpucost worker`): one Faust app that assembles the stages of DESIGN.md.

    gpu.usage   -> meter (meter.py, bulk consumer)        -> cost.panes, gpu.deadletter
    cost.panes  -> window stage (windows.py, bulk)        -> cost.aggregates
                -> alert stage (alerts.py, alert_eval.py) -> cost.alerts (+ its Faust table)
    gpu.billing -> billing (billing.py, a Faust agent)    -> cost.billed, gpu.deadletter
    cost.prices -> the meter's prices (prices.py);  cost.rules -> the alert stage

Faust owns the lifecycle, the producer every stage writes through, the billing agent, the alert
stage's table (changelog recovery) and the timers (emit, stats); the two stages that see every
event or pane consume in bulk because of Faust's per-message cost (docs/design-changes.md says
which parts use Faust and why, with the figures)."""

from __future__ import annotations

import asyncio
import gc
import logging

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from core.settings import Settings, get_settings
from streaming.alerts import AlertStage, totals_table
from streaming.billing import add_billing_agent
from streaming.deadletter import DeadLetters, WorkerStats
from streaming.meter import UsageMeter
from streaming.panes import PaneStore, WindowSpec
from streaming.prices import Metering, PriceFollower
from streaming.windows import WindowStage

log = logging.getLogger("gpucost.worker")


#: The long-poll of Faust's own consumer (its billing agent, the alert table's changelog). Faust
#: fixes it at 1.5 s, and each request its recovery sends after a fetch (changelog highwaters and
#: offsets, seeks, at every start and rebalance) waits behind that fetch on the broker connection:
#: up to 4.5 s of a worker's start on idle topics. aiokafka's default is 0.5 s. The three classes
#: below only reach that one number, through private hooks of faust-streaming 0.15.3 (pinned with
#: aiokafka in pyproject.toml).
FAUST_FETCH_MAX_WAIT_MS = 100


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        c = super()._create_worker_consumer(transport)
        c._fetch_max_wait_ms = FAUST_FETCH_MAX_WAIT_MS  # read when the consumer starts its fetcher
        return c


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self):
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class _App(faust.App):
    def _new_transport(self):
        return _Transport(self.conf.broker_consumer, self)


def create_app(settings: Settings | None = None) -> faust.App:
    settings = settings or get_settings()
    app = _App(
        f"{settings.topic_prefix}{settings.worker_id}",
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.kafka_replication_factor,  # the alert table's changelog too
        topic_allow_declare=True,
        producer_acks=-1,
        producer_linger_ms=5,
        # A flush writes hundreds of pane records per partition; with aiokafka's 16 KB batches
        # they went out ~60 at a time, each batch waiting for the one before to be sent (a
        # broker round trip), which stalled the meter 70-700 ms per flush. 512 KB stays under
        # the broker's default message.max.bytes (1 MB) for one record batch.
        producer_max_batch_size=512 * 1024,
        broker_commit_every=10_000,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=8192,
        consumer_max_fetch_size=4 * 1024 * 1024,
        stream_wait_empty=False,
        web_enabled=False,
        logging_config=None,
    )

    # Set after construction: Faust lets its own environment variables (BROKER_SESSION_TIMEOUT)
    # win over constructor arguments, and Settings is the one configuration.
    if settings.kafka_session_timeout_s is not None:
        app.conf.broker_session_timeout = settings.kafka_session_timeout_s
    if settings.kafka_heartbeat_interval_s is not None:
        app.conf.broker_heartbeat_interval = settings.kafka_heartbeat_interval_s

    def raw_topic(name: str):
        return app.topic(name, key_type=bytes, value_type=bytes, value_serializer="raw")

    spec = WindowSpec(settings.window_size_s, settings.window_step_s, settings.allowed_lateness_s)
    metering = Metering()
    stats = WorkerStats()
    dead_letters = DeadLetters(raw_topic(settings.deadletter_topic), stats)
    store = PaneStore(spec, metering, expected_partitions=frozenset(range(settings.topic_partitions)),
                      idle_partition_s=settings.idle_partition_s)
    meter = UsageMeter(settings, store, PriceFollower(settings, metering), raw_topic(settings.panes_topic),
                       dead_letters, stats)
    windows = WindowStage(settings, spec, metering, raw_topic(settings.aggregates_topic))
    alerts = AlertStage(settings, raw_topic(settings.alerts_topic), totals_table(app))
    app.service(meter)
    app.service(windows)
    add_billing_agent(app, settings, raw_topic(settings.billing_topic), raw_topic(settings.billed_topic), dead_letters)
    # for the benchmark, the tests and debugging
    app.gpucost_store, app.gpucost_stats, app.gpucost_alerts = store, stats, alerts.evaluator

    @app.task
    async def alert_rules():
        await alerts.run()

    @app.timer(interval=settings.emit_interval_s)
    async def emit_aggregates():
        if windows.ready:
            await alerts.observe(await windows.emit(), windows.combined.watermark)

    @app.timer(interval=30.0)
    async def report_stats():
        log.info("messages=%d events=%d late=%d late-after-close=%d replay-skipped=%d deadletters=%s keys=%d",
                 stats.messages, stats.events, store.late_events, windows.combined.late_after_close,
                 store.replayed_events, stats.deadletters, len(store.panes))

    return app


def run_worker(settings: Settings | None = None, loglevel: str = "warning") -> None:
    """Run the worker in this process until SIGINT/SIGTERM."""
    from faust.worker import Worker

    from core.kafka import ensure_topics

    settings = settings or get_settings()
    asyncio.run(ensure_topics(settings))
    app = create_app(settings)
    # The hot path allocates many short-lived objects and no cycles worth collecting often:
    # move what start-up built out of the collector's way and collect young objects less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    logging.basicConfig(level=getattr(logging, loglevel.upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("gpucost").setLevel(logging.INFO)
    # aiokafka logs every send at debug level; building those records cost ~3 % of the hot path.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
