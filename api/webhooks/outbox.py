"""cost.alerts -> the outbox: a consumer group that writes one delivery row per matching webhook
and alert transition, and commits its offsets only after those rows are durable. A crash before
the commit re-reads the alerts; the unique (webhook, fingerprint, state, starts_at) makes that a
no-op, so every transition is stored exactly once before its first attempt."""

from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from core.tables.alerts import DeliveryRow, WebhookRow, new_id
from contracts.aggregates import AlertEvent
from core import kafka
from core.db import session_scope
from core.settings import Settings

log = logging.getLogger("gpucost.webhooks")


def webhook_wants(hook: WebhookRow, alert: dict) -> bool:
    if hook.tenant is not None and hook.tenant != alert.get("tenant"):
        return False
    return not hook.rule_ids or alert.get("rule_id") in hook.rule_ids


def store_alerts(settings: Settings, alerts: list[dict]) -> int:
    """Outbox rows for these alerts (idempotent); returns how many were new."""
    now = time.time()
    new = 0
    with session_scope(settings) as s:
        hooks = list(s.scalars(select(WebhookRow).where(WebhookRow.enabled.is_(True))))
        for alert in alerts:
            for hook in hooks:
                if not webhook_wants(hook, alert):
                    continue
                exists = s.scalar(select(DeliveryRow.id).where(
                    DeliveryRow.webhook_id == hook.id, DeliveryRow.fingerprint == alert["fingerprint"],
                    DeliveryRow.state == alert["state"], DeliveryRow.starts_at == float(alert["starts_at"])))
                if exists:
                    continue
                delivery_id = new_id()
                try:
                    with s.begin_nested():  # another API instance may have stored it meanwhile
                        s.add(DeliveryRow(
                            id=delivery_id, webhook_id=hook.id, tenant=alert.get("tenant") or "",
                            fingerprint=alert["fingerprint"], state=alert["state"],
                            starts_at=float(alert["starts_at"]), alert=alert, msg_id=f"msg_{delivery_id}",
                            status="pending", attempts=0, next_attempt_at=now, lease_until=0.0,
                            expires_at=now + settings.webhook_expire_s, created_at=now))
                    new += 1
                except IntegrityError:
                    pass
    return new


class AlertOutbox:
    def __init__(self, settings: Settings, on_stored=None):
        self.settings = settings
        self.on_stored = on_stored or (lambda: None)
        self.stored = 0

    async def run(self) -> None:
        s = self.settings
        while True:
            c = kafka.consumer(s.alerts_topic, settings=s, group_id=f"{s.topic_prefix}gpucost-webhooks",
                               auto_offset_reset="earliest", enable_auto_commit=False)
            try:
                await c.start()
                while True:
                    batches = await c.getmany(timeout_ms=500, max_records=500)
                    alerts = []
                    for records in batches.values():
                        for r in records:
                            try:
                                alerts.append(AlertEvent.model_validate_json(r.value).model_dump())
                            except ValueError as exc:
                                log.warning("skipping malformed alert at offset %s: %s", r.offset, exc)
                    if not batches:
                        continue
                    if alerts:
                        self.stored += await run_in_threadpool(store_alerts, s, alerts)
                        self.on_stored()
                    await c.commit()  # only now: the outbox rows are durable
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("alert outbox consumer failed; restarting in 1 s")
                await asyncio.sleep(1.0)
            finally:
                await kafka.stop_consumer(c)
