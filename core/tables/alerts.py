"""Tables for alerting: rules (published to cost.rules), webhooks (with their signing secrets) and
the delivery outbox (one row per webhook and alert transition, stored before the first attempt)
with its attempt log."""

from __future__ import annotations

import time
import uuid

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from core.tables.base import Base


def new_id() -> str:
    return uuid.uuid4().hex


class AlertRuleRow(Base):
    __tablename__ = "alert_rules"
    __table_args__ = (Index("ix_alert_rules_tenant", "tenant"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str | None] = mapped_column(String(200), nullable=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict] = mapped_column(JSON)  # streaming.alerts.RuleSpec, normalised
    version: Mapped[int] = mapped_column(Integer, default=1)
    published_version: Mapped[int] = mapped_column(Integer, default=0)  # last version on cost.rules
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)  # until its tombstone is published
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    updated_at: Mapped[float] = mapped_column(Float, default=time.time)


class WebhookRow(Base):
    __tablename__ = "webhooks"
    __table_args__ = (Index("ix_webhooks_tenant", "tenant"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str | None] = mapped_column(String(200), nullable=True)  # None: every tenant (admin)
    name: Mapped[str] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(32), default="gpucost")  # gpucost | alertmanager | slack
    rule_ids: Mapped[list | None] = mapped_column(JSON, nullable=True)  # None: every rule
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    secret: Mapped[str] = mapped_column(String(200))
    # After a rotation the old secret keeps signing (a second signature) until it expires.
    previous_secret: Mapped[str | None] = mapped_column(String(200), nullable=True)
    previous_secret_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)


class DeliveryRow(Base):
    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # one delivery per webhook and alert transition, however often cost.alerts is re-read
        UniqueConstraint("webhook_id", "fingerprint", "state", "starts_at", name="uq_delivery_transition"),
        Index("ix_deliveries_due", "status", "next_attempt_at"),
        Index("ix_deliveries_tenant", "tenant", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    webhook_id: Mapped[str] = mapped_column(String(32), ForeignKey("webhooks.id", ondelete="CASCADE"))
    tenant: Mapped[str] = mapped_column(String(200))
    fingerprint: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    starts_at: Mapped[float] = mapped_column(Float)
    alert: Mapped[dict] = mapped_column(JSON)
    msg_id: Mapped[str] = mapped_column(String(64))  # webhook-id: the same on every attempt
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | delivered | dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, default=time.time)
    lease_until: Mapped[float] = mapped_column(Float, default=0.0)  # an attempt in flight holds it
    expires_at: Mapped[float] = mapped_column(Float)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    delivered_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class DeliveryAttemptRow(Base):
    __tablename__ = "webhook_delivery_attempts"
    __table_args__ = (Index("ix_attempts_delivery", "delivery_id", "attempt"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(String(32), ForeignKey("webhook_deliveries.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[float] = mapped_column(Float)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_ms: Mapped[float] = mapped_column(Float)
    next_attempt_at: Mapped[float | None] = mapped_column(Float, nullable=True)
