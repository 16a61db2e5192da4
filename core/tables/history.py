"""Tables the API persists: aggregate history (latest value per key and window; the key is tenant,
service, region, GPU model and model version). One table holds
every resolution: 1-minute windows as the stream emits them (window_s = the window size) and the
hourly and daily rollups the API computes from them (window_s = 3600 and 86400, same fields)."""

from __future__ import annotations

from sqlalchemy import Float, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from core.tables.base import Base


class AggregateRow(Base):
    __tablename__ = "aggregates"
    __table_args__ = (
        UniqueConstraint("tenant", "service", "region", "gpu_model", "model_version", "window_s", "window_start",
                         name="uq_aggregate_window"),  # model_version: migration 0003
        Index("ix_aggregates_tenant_time", "tenant", "window_start"),
        Index("ix_aggregates_time", "window_start"),
        Index("ix_aggregates_tenant_size_time", "tenant", "window_s", "window_start"),  # migration 0002
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(200))
    service: Mapped[str] = mapped_column(String(200))
    region: Mapped[str] = mapped_column(String(200))
    gpu_model: Mapped[str] = mapped_column(String(200))
    # "" for events without a model version (and every row from before it was a key part).
    model_version: Mapped[str] = mapped_column(String(200), default="", server_default="")
    window_start: Mapped[int] = mapped_column(Integer)
    window_end: Mapped[int] = mapped_column(Integer)
    window_s: Mapped[int] = mapped_column(Integer)
    spend_usd: Mapped[float] = mapped_column(Float)
    spend_rate_usd_h: Mapped[float] = mapped_column(Float)
    gpu_seconds: Mapped[float] = mapped_column(Float)
    util_avg: Mapped[float] = mapped_column(Float)
    idle_usd: Mapped[float] = mapped_column(Float)
    events: Mapped[int] = mapped_column(Integer)
    tokens: Mapped[int] = mapped_column(Integer, default=0)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    fallback_priced_events: Mapped[int] = mapped_column(Integer, default=0)

    FIELDS = ("tenant", "service", "region", "gpu_model", "model_version", "window_start", "window_end", "window_s",
              "spend_usd", "spend_rate_usd_h", "gpu_seconds", "util_avg", "idle_usd", "events",
              "tokens", "requests", "fallback_priced_events")

    def to_dict(self) -> dict:
        d = {f: getattr(self, f) for f in self.FIELDS}
        d["kind"] = "usage"
        return d


class BilledLineItem(Base):
    """A validated billing line item (from `cost.billed`); one row per line item, however often
    it was sent: a GPU usage line, or a charge beside the usage (`charge_category` credit, tax,
    adjustment: `gpu_count` 0, `gpu_model` "none" where it names no GPU instance, `cost_usd` may be
    negative). `cost_usd` is what the reconciliation counts as billed (the effective cost, with
    commitments amortised); the columns after it are what an imported export says beside it
    (migration 0003), so the gap to metered cost can be explained: NULL where the source did not
    say (the simulator's own events, older rows)."""

    __tablename__ = "billed_line_items"
    __table_args__ = (
        UniqueConstraint("cloud", "instance_id", "period_start", "source", name="uq_billed_line_item"),
        Index("ix_billed_tenant_period", "tenant", "period_start"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(200))
    service: Mapped[str] = mapped_column(String(200))
    cloud: Mapped[str] = mapped_column(String(200))
    region: Mapped[str] = mapped_column(String(200))
    instance_type: Mapped[str] = mapped_column(String(200))
    instance_id: Mapped[str] = mapped_column(String(200))
    gpu_model: Mapped[str] = mapped_column(String(200))
    gpu_count: Mapped[int] = mapped_column(Integer)
    period_start: Mapped[int] = mapped_column(Integer)
    period_end: Mapped[int] = mapped_column(Integer)
    cost_usd: Mapped[float] = mapped_column(Float)
    pricing: Mapped[str] = mapped_column(String(20))
    source: Mapped[str] = mapped_column(String(200))
    charge_category: Mapped[str] = mapped_column(String(20), default="usage", server_default="usage")
    list_cost_usd: Mapped[float | None] = mapped_column(Float, nullable=True)       # FOCUS ListCost
    effective_cost_usd: Mapped[float | None] = mapped_column(Float, nullable=True)  # EffectiveCost
    billed_cost_usd: Mapped[float | None] = mapped_column(Float, nullable=True)     # BilledCost (invoiced)
    line_id: Mapped[str | None] = mapped_column(String(64), nullable=True)          # stable across re-imports
    account: Mapped[str | None] = mapped_column(String(200), nullable=True)

    FIELDS = ("tenant", "service", "cloud", "region", "instance_type", "instance_id", "gpu_model", "gpu_count",
              "period_start", "period_end", "cost_usd", "pricing", "source")
    #: Optional fields of a billing event (the importer's extras), stored where present.
    EXTRA_FIELDS = ("charge_category", "list_cost_usd", "effective_cost_usd", "billed_cost_usd", "line_id", "account")
