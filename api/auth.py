"""Who is asking: every REST call and WebSocket subscription resolves to a Principal, bound to
one tenant or to admin, and every query is filtered by it."""

from __future__ import annotations

from fastapi import Depends, HTTPException, Request, WebSocket

from api import keys
from api.principal import ADMIN, Principal
from core.settings import Settings


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def _key_from(headers, query) -> str | None:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get("x-api-key") or query.get("api_key")


def resolve_key(settings: Settings, key: str | None) -> Principal | None:
    """Returns the key's principal, or None for a missing or unknown key."""
    if settings.auth_disabled:
        return ADMIN
    if not key:
        return None
    return keys.lookup(settings, key)


def principal(request: Request, settings: Settings = Depends(get_settings_dep)) -> Principal:
    p = resolve_key(settings, _key_from(request.headers, request.query_params))
    if p is None:
        raise HTTPException(401, "missing or unknown API key: send 'Authorization: Bearer <key>'",
                            headers={"WWW-Authenticate": "Bearer"})
    return p


def ws_principal(ws: WebSocket) -> Principal | None:
    return resolve_key(ws.app.state.settings, _key_from(ws.headers, ws.query_params))


def admin_only(p: Principal = Depends(principal)) -> Principal:
    if not p.is_admin:
        raise HTTPException(403, "this needs an admin key")
    return p
