"""Webhooks and their delivery log: REST create/read/update/delete of webhooks (the signing secret
is shown on creation and on rotation only), secret rotation with a grace period in which both
secrets sign, and the outbox as a log (status, attempts, each attempt's answer), with a manual
retry for dead deliveries. Every query is limited to the key's tenant."""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from core.tables.alerts import DeliveryAttemptRow, DeliveryRow, WebhookRow, new_id
from api.auth import Principal, principal
from api.webhooks.signing import new_secret
from api.webhooks.urls import WebhookURLRefused, check_url
from core.db import session_scope

router = APIRouter(prefix="/api", tags=["webhooks"])
Format = Literal["gpucost", "alertmanager", "slack"]


class WebhookIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    url: str = Field(min_length=1, max_length=2000)
    format: Format = "gpucost"
    tenant: str | None = None
    rule_ids: list[str] | None = None
    enabled: bool = True


class WebhookPatch(BaseModel):
    name: str | None = Field(None, min_length=1, max_length=200)
    url: str | None = Field(None, min_length=1, max_length=2000)
    format: Format | None = None
    rule_ids: list[str] | None = None
    enabled: bool | None = None


class WebhookOut(BaseModel):
    id: str
    name: str
    url: str
    format: Format
    tenant: str | None
    rule_ids: list[str] | None
    enabled: bool
    created_at: float
    previous_secret_expires_at: float | None


class WebhookWithSecret(WebhookOut):
    secret: str  # shown only now: it signs every delivery (Standard Webhooks, whsec_ + base64)


class Rotate(BaseModel):
    grace_s: float = Field(86400.0, ge=0, le=30 * 86400, description="how long the old secret keeps signing too")


class Attempt(BaseModel):
    attempt: int
    at: float
    status_code: int | None
    error: str | None
    duration_ms: float
    next_attempt_at: float | None


class Delivery(BaseModel):
    id: str
    webhook_id: str
    webhook_id_header: str = Field(description="the webhook-id header: the same on every attempt")
    tenant: str
    fingerprint: str
    state: str
    status: Literal["pending", "delivered", "dead"]
    attempts: int
    next_attempt_at: float | None
    expires_at: float
    last_status_code: int | None
    last_error: str | None
    created_at: float
    delivered_at: float | None
    alert: dict


class DeliveryDetail(Delivery):
    attempt_log: list[Attempt]


def _hook_out(h: WebhookRow, with_secret: bool = False) -> dict:
    d = {f: getattr(h, f) for f in WebhookOut.model_fields}
    if with_secret:
        d["secret"] = h.secret
    return d


def _delivery_out(d: DeliveryRow) -> dict:
    return {**{f: getattr(d, f) for f in Delivery.model_fields if hasattr(d, f) and f != "next_attempt_at"},
            "webhook_id_header": d.msg_id, "next_attempt_at": d.next_attempt_at if d.status == "pending" else None}


def _check(request: Request, url: str) -> None:
    try:
        check_url(url, request.app.state.settings.webhook_allow_private)
    except WebhookURLRefused as exc:
        raise HTTPException(422, str(exc)) from None


def _hook(s, hook_id: str, p: Principal) -> WebhookRow:
    h = s.get(WebhookRow, hook_id)
    if h is None or not p.allows(h.tenant):
        raise HTTPException(404, f"no webhook {hook_id!r}")
    return h


@router.post("/webhooks", response_model=WebhookWithSecret, status_code=201)
async def create_webhook(body: WebhookIn, request: Request, p: Principal = Depends(principal)) -> dict:
    tenant = p.scope_tenant(body.tenant)
    await run_in_threadpool(_check, request, body.url)  # resolves the host: off the event loop
    with session_scope(request.app.state.settings) as s:
        h = WebhookRow(id=new_id(), tenant=tenant, name=body.name, url=body.url, format=body.format,
                       rule_ids=body.rule_ids, enabled=body.enabled, secret=new_secret(), created_at=time.time())
        s.add(h)
        s.flush()
        return _hook_out(h, with_secret=True)


@router.get("/webhooks", response_model=list[WebhookOut])
def list_webhooks(request: Request, tenant: str | None = None, p: Principal = Depends(principal)) -> list[dict]:
    q = select(WebhookRow).order_by(WebhookRow.created_at)
    scoped = p.scope_tenant(tenant)
    if scoped is not None:
        q = q.where(WebhookRow.tenant == scoped)
    with session_scope(request.app.state.settings) as s:
        return [_hook_out(h) for h in s.scalars(q)]


@router.get("/webhooks/{hook_id}", response_model=WebhookOut)
def get_webhook(hook_id: str, request: Request, p: Principal = Depends(principal)) -> dict:
    with session_scope(request.app.state.settings) as s:
        return _hook_out(_hook(s, hook_id, p))


@router.patch("/webhooks/{hook_id}", response_model=WebhookOut)
def update_webhook(hook_id: str, body: WebhookPatch, request: Request, p: Principal = Depends(principal)) -> dict:
    if body.url is not None:
        _check(request, body.url)
    with session_scope(request.app.state.settings) as s:
        h = _hook(s, hook_id, p)
        for f, v in body.model_dump(exclude_unset=True).items():
            setattr(h, f, v)
        return _hook_out(h)


@router.delete("/webhooks/{hook_id}", status_code=204)
def delete_webhook(hook_id: str, request: Request, p: Principal = Depends(principal)) -> Response:
    with session_scope(request.app.state.settings) as s:
        h = _hook(s, hook_id, p)
        for d in s.scalars(select(DeliveryRow).where(DeliveryRow.webhook_id == h.id)):
            s.delete(d)
        s.delete(h)
    return Response(status_code=204)


@router.post("/webhooks/{hook_id}/rotate-secret", response_model=WebhookWithSecret)
def rotate_secret(hook_id: str, request: Request, body: Rotate | None = None, p: Principal = Depends(principal)) -> dict:
    """A new signing secret; the old one keeps signing (a second signature) for `grace_s`."""
    body = body or Rotate()
    with session_scope(request.app.state.settings) as s:
        h = _hook(s, hook_id, p)
        h.previous_secret, h.previous_secret_expires_at = h.secret, time.time() + body.grace_s
        h.secret = new_secret()
        return _hook_out(h, with_secret=True)


def _deliveries_query(p: Principal, tenant: str | None):
    q = select(DeliveryRow).join(WebhookRow, WebhookRow.id == DeliveryRow.webhook_id)
    scoped = p.scope_tenant(tenant)
    if scoped is not None:
        q = q.where(DeliveryRow.tenant == scoped)
    if not p.is_admin:
        q = q.where(WebhookRow.tenant == p.tenant)  # the tenant's own webhooks only
    return q


@router.get("/webhooks/{hook_id}/deliveries", response_model=list[Delivery])
def webhook_deliveries(hook_id: str, request: Request, status: Literal["pending", "delivered", "dead"] | None = None,
                       limit: int = Query(100, gt=0, le=1000), p: Principal = Depends(principal)) -> list[dict]:
    with session_scope(request.app.state.settings) as s:
        _hook(s, hook_id, p)
        q = _deliveries_query(p, None).where(DeliveryRow.webhook_id == hook_id)
        if status:
            q = q.where(DeliveryRow.status == status)
        return [_delivery_out(d) for d in s.scalars(q.order_by(DeliveryRow.created_at.desc()).limit(limit))]


@router.get("/deliveries", response_model=list[Delivery])
def deliveries(request: Request, tenant: str | None = None, status: Literal["pending", "delivered", "dead"] | None = None,
               fingerprint: str | None = None, limit: int = Query(100, gt=0, le=1000),
               p: Principal = Depends(principal)) -> list[dict]:
    q = _deliveries_query(p, tenant)
    if status:
        q = q.where(DeliveryRow.status == status)
    if fingerprint:
        q = q.where(DeliveryRow.fingerprint == fingerprint)
    with session_scope(request.app.state.settings) as s:
        return [_delivery_out(d) for d in s.scalars(q.order_by(DeliveryRow.created_at.desc()).limit(limit))]


def _delivery(s, delivery_id: str, p: Principal) -> DeliveryRow:
    d = s.scalar(_deliveries_query(p, None).where(DeliveryRow.id == delivery_id))
    if d is None:
        raise HTTPException(404, f"no delivery {delivery_id!r}")
    return d


@router.get("/deliveries/{delivery_id}", response_model=DeliveryDetail)
def delivery(delivery_id: str, request: Request, p: Principal = Depends(principal)) -> dict:
    with session_scope(request.app.state.settings) as s:
        d = _delivery(s, delivery_id, p)
        attempts = s.scalars(select(DeliveryAttemptRow).where(DeliveryAttemptRow.delivery_id == d.id)
                             .order_by(DeliveryAttemptRow.attempt))
        log = [{f: getattr(a, f) for f in Attempt.model_fields} for a in attempts]
        return {**_delivery_out(d), "attempt_log": log}


@router.post("/deliveries/{delivery_id}/retry", response_model=Delivery)
def retry_delivery(delivery_id: str, request: Request, p: Principal = Depends(principal)) -> dict:
    """Send a dead delivery again (same webhook-id), with a fresh expiry."""
    settings = request.app.state.settings
    with session_scope(settings) as s:
        d = _delivery(s, delivery_id, p)
        if d.status != "dead":
            raise HTTPException(409, f"delivery is {d.status}, only dead deliveries are retried by hand")
        now = time.time()
        d.status, d.next_attempt_at, d.expires_at, d.lease_until = "pending", now, now + settings.webhook_expire_s, 0.0
        out = _delivery_out(d)
    request.app.state.webhook_dispatcher.poke()
    return out


@router.post("/webhooks/{hook_id}/test", response_model=Delivery, status_code=201)
def test_delivery(hook_id: str, request: Request, p: Principal = Depends(principal)) -> dict:
    """Queue a test alert for this webhook: it goes through the outbox like any alert (signed,
    retried, logged with every attempt)."""
    settings = request.app.state.settings
    now = time.time()
    with session_scope(settings) as s:
        h = _hook(s, hook_id, p)
        delivery_id = new_id()
        alert = {"rule_id": "test", "rule_kind": "test", "rule_name": "test delivery", "severity": "info",
                 "fingerprint": f"test-{delivery_id}", "state": "firing", "starts_at": now, "emitted_at": now,
                 "tenant": h.tenant or p.tenant or "", "summary": f"test delivery to {h.name} from the dashboard",
                 "value": 0, "threshold": 0}
        d = DeliveryRow(id=delivery_id, webhook_id=h.id, tenant=alert["tenant"], fingerprint=alert["fingerprint"],
                        state="firing", starts_at=now, alert=alert, msg_id=f"msg_{delivery_id}", status="pending",
                        attempts=0, next_attempt_at=now, lease_until=0.0,
                        expires_at=now + settings.webhook_expire_s, created_at=now)
        s.add(d)
        s.flush()
        out = _delivery_out(d)
    request.app.state.webhook_dispatcher.poke()
    return out
