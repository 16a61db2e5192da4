"""The one configuration object: environment variables prefixed GPUCOST_ (and an optional
.env-style file named by GPUCOST_ENV_FILE); every default is the embedded single-machine one."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "gpucost"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GPUCOST_",
        env_file=os.environ.get("GPUCOST_ENV_FILE"),
        extra="ignore",
    )

    data_dir: Path = Field(default_factory=_default_data_dir)

    # Kafka
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_controller_port: int = 9093
    kafka_heap: str = "-Xms256m -Xmx512m"
    kafka_version: str = "4.1.1"
    topic_prefix: str = ""  # tests give each run its own topics on the shared broker
    topic_partitions: int = 4
    # Topics' replication: 1 on the single local broker; a cluster (`gpucost kafka start
    # --brokers 3`) prints 3 and 2 (acks=all producers then survive one broker down).
    kafka_replication_factor: int = Field(1, ge=1)
    kafka_min_insync_replicas: int = Field(1, ge=1)
    # The local brokers' session (None: Kafka's 9 s): how long before the controller fences a
    # node that stopped heartbeating, and before a node restarted after a SIGKILL may register again.
    kafka_broker_session_timeout_s: float | None = Field(None, gt=0)
    kafka_cluster_port: int = 19092  # node i listens on this + i - 1, its controller 100 higher
    kafka_cluster_heap: str = "-Xms128m -Xmx384m"  # per node: three JVMs on one small machine
    # Consumer groups (the worker's stages and Faust's own group, the API's persistence and webhook
    # outbox): a member that dies without leaving (SIGKILL, a lost host) keeps its partitions this
    # long. None keeps the clients' defaults (aiokafka 10 s / 3 s, Faust 60 s / 3 s); the tests set
    # a short one. The broker accepts 6 s and up (group.min.session.timeout.ms); the heartbeat
    # interval should stay under a third of it.
    kafka_session_timeout_s: float | None = Field(None, gt=0)
    kafka_heartbeat_interval_s: float | None = Field(None, gt=0)

    # Database: SQLite file under data_dir unless a URL is given (postgresql+psycopg://...).
    database_url: str | None = None

    # Streaming
    worker_id: str = "gpucost-worker"
    window_size_s: int = 60
    window_step_s: int = 10
    allowed_lateness_s: int = 120
    max_future_skew_s: float = 300.0  # events further ahead of the receiver's clock are dead-lettered
    flush_interval_s: float = 0.25
    flush_max_events: int = 20000
    emit_interval_s: float = 1.0  # at most one aggregate per key and window per interval
    # A source partition of gpu.usage silent this long (wall time) stops holding the event-time
    # watermark back; until then windows wait for it (a fleet whose hosts hash to fewer partitions
    # than topic_partitions sees its first windows close this late after a worker starts).
    idle_partition_s: float = Field(30.0, gt=0)

    # API
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    ws_heartbeat_s: float = 10.0
    ws_key_recheck_s: float = 5.0  # how often an open WebSocket's key is looked up again (revocation closes it)
    ws_queue_max: int = 1000
    # History (core/rollups.py): 1-minute windows, hourly and daily rollups, each kept this long.
    history_retention_s: int = Field(7 * 24 * 3600, ge=2 * 3600)  # an hour is rolled up from its 1-minute windows
    history_hourly_retention_s: int = Field(90 * 24 * 3600, ge=2 * 24 * 3600)  # a day is rolled up from its hours
    history_daily_retention_s: int = Field(0, ge=0)  # 0: daily rollups are kept for ever
    auth_disabled: bool = False  # every REST call and /ws needs an API key (`gpucost keys create`)
    max_request_bytes: int = 4 * 1024 * 1024  # whole API; larger bodies get 413
    ws_max_message_bytes: int = 64 * 1024  # client messages on /ws are small subscribe/unsubscribe ops
    events_max_batch: int = 10_000  # events in one POST /events
    events_ack_timeout_s: float = 10.0  # POST /events waits this long for Kafka's acknowledgement

    # Webhooks (api/webhooks/): private and loopback targets are refused unless allowed
    webhook_allow_private: bool = False
    webhook_backoff_base_s: float = 5.0  # first retry after about this, doubling, with jitter
    webhook_backoff_max_s: float = 3600.0
    webhook_expire_s: float = 24 * 3600.0  # then the delivery is marked dead
    webhook_timeout_s: float = 10.0
    webhook_poll_s: float = 1.0

    # Sources (ingest/): dcgm-exporter endpoints `gpucost up` scrapes (comma-separated in the
    # environment: GPUCOST_DCGM_URLS=node-1:9400,node-2:9400) and the mapping file for them and billing imports.
    dcgm_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    dcgm_interval_s: float = 10.0
    mapping_file: Path | None = None  # ingest/mapping.py: labels, tags and accounts to tenants and services

    @field_validator("dcgm_urls", mode="before")
    @classmethod
    def _split_urls(cls, value):
        if isinstance(value, str):
            return [u.strip() for u in value.split(",") if u.strip()]
        return value

    @model_validator(mode="after")
    def _retention_grows_with_resolution(self) -> "Settings":
        if self.history_hourly_retention_s < self.history_retention_s:
            raise ValueError("history_hourly_retention_s must be at least history_retention_s")
        if 0 < self.history_daily_retention_s < self.history_hourly_retention_s:
            raise ValueError("history_daily_retention_s must be 0 (keep) or at least history_hourly_retention_s")
        return self

    @property
    def database(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'core.db'}"

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    @property
    def usage_topic(self) -> str:
        return self.topic("gpu.usage")

    @property
    def billing_topic(self) -> str:
        return self.topic("gpu.billing")

    @property
    def deadletter_topic(self) -> str:
        return self.topic("gpu.deadletter")

    @property
    def panes_topic(self) -> str:
        return self.topic("cost.panes")

    @property
    def aggregates_topic(self) -> str:
        return self.topic("cost.aggregates")

    @property
    def alerts_topic(self) -> str:
        return self.topic("cost.alerts")

    @property
    def rules_topic(self) -> str:
        return self.topic("cost.rules")

    @property
    def billed_topic(self) -> str:
        return self.topic("cost.billed")

    @property
    def prices_topic(self) -> str:  # compacted: price overrides, written by the API
        return self.topic("cost.prices")



@lru_cache
def get_settings() -> Settings:
    return Settings()
