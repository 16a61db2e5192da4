"""Sends due outbox rows: claims each with a lease (so several API instances, or a restarted one,
never send the same attempt twice at once), signs and POSTs it, and records the attempt. A 2xx
delivers; anything else retries after an exponential backoff with jitter, never sooner than the
receiver's Retry-After, until the delivery expires and is marked dead. Transitions of one
fingerprint go to a webhook in order: a row waits while an older one for it is still pending."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from dataclasses import dataclass

import httpx
from sqlalchemy import select, update
from starlette.concurrency import run_in_threadpool

from core.tables.alerts import DeliveryAttemptRow, DeliveryRow, WebhookRow
from api.webhooks.formats import render
from api.webhooks.signing import signed_headers
from api.webhooks.urls import WebhookURLRefused, check_url
from core.db import session_scope
from core.settings import Settings

log = logging.getLogger("gpucost.webhooks")


@dataclass
class Job:
    delivery_id: str
    msg_id: str
    alert: dict
    attempts: int
    expires_at: float
    url: str
    fmt: str
    webhook_name: str
    secrets: list[str]


def backoff_s(attempt: int, base_s: float, max_s: float, retry_after_s: float | None = None) -> float:
    """Delay before the attempt after `attempt` failed ones: base * 2^(attempt-1), capped, times a
    jitter in [0.5, 1) so receivers recovering from an outage are not hit in lockstep."""
    delay = min(max_s, base_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return delay


def parse_retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


class Dispatcher:
    def __init__(self, settings: Settings, max_in_flight: int = 16):
        self.settings = settings
        self.wakeup = asyncio.Event()
        self.max_in_flight = max_in_flight
        self.in_flight: set[asyncio.Task] = set()
        self.client: httpx.AsyncClient | None = None

    def poke(self) -> None:
        self.wakeup.set()

    @property
    def lease_s(self) -> float:
        return self.settings.webhook_timeout_s + 5.0

    def claim(self, limit: int) -> list[Job]:
        now = time.time()
        jobs = []
        with session_scope(self.settings) as s:
            due = s.execute(
                select(DeliveryRow, WebhookRow).join(WebhookRow, WebhookRow.id == DeliveryRow.webhook_id)
                .where(DeliveryRow.status == "pending", DeliveryRow.next_attempt_at <= now,
                       DeliveryRow.lease_until <= now, WebhookRow.enabled.is_(True))
                .order_by(DeliveryRow.created_at).limit(limit)).all()
            for row, hook in due:
                older = s.scalar(select(DeliveryRow.id).where(
                    DeliveryRow.webhook_id == row.webhook_id, DeliveryRow.fingerprint == row.fingerprint,
                    DeliveryRow.status == "pending", DeliveryRow.created_at < row.created_at).limit(1))
                if older:
                    continue
                won = s.execute(update(DeliveryRow).where(DeliveryRow.id == row.id, DeliveryRow.lease_until <= now,
                                                          DeliveryRow.status == "pending")
                                .values(lease_until=now + self.lease_s)).rowcount
                if not won:
                    continue
                secrets = [hook.secret]
                if hook.previous_secret and (hook.previous_secret_expires_at or 0) > now:
                    secrets.append(hook.previous_secret)
                jobs.append(Job(row.id, row.msg_id, row.alert, row.attempts, row.expires_at, hook.url,
                                hook.format, hook.name, secrets))
        return jobs

    def record(self, job: Job, status_code: int | None, error: str | None, retry_after_s: float | None,
               duration_ms: float) -> None:
        now = time.time()
        attempt = job.attempts + 1
        delivered = status_code is not None and 200 <= status_code < 300
        values: dict = {"attempts": attempt, "last_status_code": status_code, "last_error": error, "lease_until": 0.0}
        next_at = None
        if delivered:
            values.update(status="delivered", delivered_at=now)
        else:
            next_at = now + backoff_s(attempt, self.settings.webhook_backoff_base_s,
                                      self.settings.webhook_backoff_max_s, retry_after_s)
            if next_at > job.expires_at or error and error.startswith("refused:"):
                values.update(status="dead", last_error=f"{error or f'HTTP {status_code}'}; gave up after "
                              f"{attempt} attempt(s)")
                next_at = None
            else:
                values.update(next_attempt_at=next_at)
        with session_scope(self.settings) as s:
            s.execute(update(DeliveryRow).where(DeliveryRow.id == job.delivery_id).values(**values))
            s.add(DeliveryAttemptRow(delivery_id=job.delivery_id, attempt=attempt, at=now, status_code=status_code,
                                     error=error, duration_ms=duration_ms, next_attempt_at=next_at))
        if next_at is not None:
            log.info("delivery %s attempt %d failed (%s); next in %.1fs", job.delivery_id, attempt,
                     error or status_code, next_at - now)

    async def attempt(self, job: Job) -> None:
        t0 = time.monotonic()
        status_code = error = retry_after = None
        try:
            await run_in_threadpool(check_url, job.url, self.settings.webhook_allow_private)  # resolves: off the loop
            body = json.dumps(render(job.fmt, job.alert, job.webhook_name), separators=(",", ":"))
            headers = signed_headers(job.secrets, job.msg_id, body, time.time())
            r = await self.client.post(job.url, content=body.encode(), headers=headers)
            status_code = r.status_code
            if not 200 <= status_code < 300:
                retry_after = parse_retry_after(r.headers.get("retry-after"), time.time())
        except WebhookURLRefused as exc:
            error = f"refused: {exc}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        await run_in_threadpool(self.record, job, status_code, error, retry_after, (time.monotonic() - t0) * 1000)

    async def run(self) -> None:
        self.client = httpx.AsyncClient(timeout=self.settings.webhook_timeout_s, follow_redirects=False)
        try:
            while True:
                try:
                    free = self.max_in_flight - len(self.in_flight)
                    jobs = await run_in_threadpool(self.claim, free) if free > 0 else []
                    for job in jobs:
                        t = asyncio.create_task(self.attempt(job))
                        self.in_flight.add(t)
                        t.add_done_callback(self._done)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("webhook dispatcher round failed")
                try:
                    await asyncio.wait_for(self.wakeup.wait(), self.settings.webhook_poll_s)
                except asyncio.TimeoutError:
                    pass
                self.wakeup.clear()
        finally:
            for t in list(self.in_flight):
                t.cancel()
            await self.client.aclose()

    def _done(self, task: asyncio.Task) -> None:
        self.in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook attempt crashed: %r", task.exception())
        self.wakeup.set()  # a freed slot, or a follow-up transition now due
