"""The built-in webhook receiver: a demo target for webhooks (`gpucost up` points its demo webhook
here) that checks each delivery's Standard Webhooks signature against the webhook's own secrets and
keeps the last deliveries it got, for the dashboard's webhook log (/webhooks/log).

`POST /api/receiver/{webhook_id}` needs no API key (a webhook carries none: the signature is the
proof); `?fail_first=1` answers 503 to the first attempt of each webhook-id, so the log shows a
retry. `GET /api/receiver/log` lists what arrived, limited to the key's tenant."""

from __future__ import annotations

import json
import threading
import time
from collections import deque

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from standardwebhooks import Webhook, WebhookVerificationError

from api.auth import Principal, principal
from core.db import session_scope
from core.tables.alerts import WebhookRow

router = APIRouter(prefix="/api/receiver", tags=["webhooks"])
MAX_BODY_BYTES = 256 * 1024
_log: deque[dict] = deque(maxlen=500)
_seen_ids: deque[str] = deque(maxlen=5000)
_lock = threading.Lock()


def _secrets(hook_id: str, settings) -> tuple[list[str], str | None] | None:
    with session_scope(settings) as s:
        h = s.get(WebhookRow, hook_id)
        if h is None:
            return None
        valid = [h.secret]
        if h.previous_secret and (h.previous_secret_expires_at or 0) > time.time():
            valid.append(h.previous_secret)
        return valid, h.tenant


@router.post("/{hook_id}", include_in_schema=True)
async def receive(hook_id: str, request: Request, fail_first: bool = False) -> Response:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise HTTPException(413, "too large")
    found = _secrets(hook_id, request.app.state.settings)
    if found is None:
        raise HTTPException(404, f"no webhook {hook_id!r}")
    valid, tenant = found
    headers = {k.lower(): v for k, v in request.headers.items()}
    verified, error = False, None
    for secret in valid:
        try:
            Webhook(secret).verify(body, headers)
            verified = True
            break
        except WebhookVerificationError as exc:
            error = str(exc)
    msg_id = headers.get("webhook-id", "")
    with _lock:
        first = msg_id not in _seen_ids
        if first:
            _seen_ids.append(msg_id)
        status = 503 if (fail_first and first and verified) else (204 if verified else 401)
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        _log.appendleft({"at": time.time(), "webhook": hook_id, "tenant": tenant, "webhook_id_header": msg_id,
                         "verified": verified, "error": None if verified else error, "answered": status,
                         "payload": payload})
    return Response(status_code=status)


@router.get("/log")
def log(request: Request, limit: int = Query(100, gt=0, le=500), p: Principal = Depends(principal)) -> list[dict]:
    with _lock:
        rows = [r for r in _log if p.is_admin or r["tenant"] == p.tenant]
    return rows[:limit]
