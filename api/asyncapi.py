"""The `/ws` protocol as an AsyncAPI 3.0 document, served at `GET /asyncapi.json` beside
`/openapi.json` (public, like it). The payload schemas are generated from the pydantic models in
`api/ws_protocol.py`, the ones the client parses the wire with, so the document cannot drift from
the code without a test failing (tests/api/test_asyncapi.py checks real server messages against it).

The document describes the gpucost API as the application: `receive` operations are what a
client sends, `send` operations what the API pushes."""

from __future__ import annotations

import copy
import inspect
from functools import lru_cache

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api import ws_protocol as p

router = APIRouter(tags=["meta"])

ASYNCAPI_VERSION = "3.0.0"
_REF = "#/components/schemas/{model}"

# (message name, model, title, example payload)
_MessageSpec = tuple[str, type[BaseModel], str, dict[str, Any]]
_CLIENT: list[_MessageSpec] = [
    ("subscribe", p.SubscribeRequest, "Subscribe",
     {"op": "subscribe", "channel": "aggregates", "filter": {"tenant": "acme", "service": "chat"}, "id": "acme-chat"}),
    ("unsubscribe", p.UnsubscribeRequest, "Unsubscribe", {"op": "unsubscribe", "id": "acme-chat"}),
    ("ping", p.PingRequest, "Ping", {"op": "ping"}),
]
_AGG_EXAMPLE = {"kind": "usage", "tenant": "acme", "service": "chat", "region": "us-east-1", "gpu_model": "H100-80GB",
                "model_version": "v2-canary",
                "window_start": 1764633600, "window_end": 1764633660, "window_s": 60, "spend_usd": 0.0764,
                "spend_rate_usd_h": 4.5867, "gpu_seconds": 40.0, "util_avg": 0.6, "idle_usd": 0.0306, "events": 4,
                "tokens": 1000, "requests": 0, "fallback_priced_events": 0, "revision": 0}
_ALERT_EXAMPLE = {"fingerprint": "3f2a9c", "state": "firing", "rule_id": "r-1", "rule_kind": "budget",
                  "rule_name": "acme daily", "rule_version": 1, "level": "100%", "severity": "critical",
                  "group": {"tenant": "acme"}, "tenant": "acme", "service": None, "region": None, "gpu_model": None,
                  "model_version": None,
                  "value": 512.3, "threshold": 500.0, "summary": "acme daily: day spend $512.30 reached 100% of the $500.00 budget",
                  "starts_at": 1764633600.0, "ends_at": None, "details": {}, "emitted_at": 1764633601.2}
_SERVER: list[_MessageSpec] = [
    ("subscribed", p.Subscribed, "Subscription accepted",
     {"type": "subscribed", "id": "acme-chat", "channel": "aggregates", "filter": {"tenant": "acme", "service": "chat"}}),
    ("snapshot", p.Snapshot, "Current records of a subscription",
     {"type": "snapshot", "id": "acme-chat", "channel": "aggregates", "data": [_AGG_EXAMPLE]}),
    ("aggregate", p.AggregateUpdate, "A window changed", {"type": "aggregate", "data": _AGG_EXAMPLE}),
    ("alert", p.AlertUpdate, "An alert fired or resolved", {"type": "alert", "data": _ALERT_EXAMPLE}),
    ("heartbeat", p.Heartbeat, "Still here", {"type": "heartbeat", "ts": 81234.5, "dropped": 0}),
    ("unsubscribed", p.Unsubscribed, "Subscription ended", {"type": "unsubscribed", "id": "acme-chat"}),
    ("pong", p.Pong, "Answer to ping", {"type": "pong"}),
    ("error", p.ErrorMessage, "A client message was refused",
     {"type": "error", "error": "unknown filter fields ['colour']; allowed: ['tenant', 'service', 'region', "
                                "'gpu_model', 'model_version']"}),
]

_DESCRIPTION = f"""Live window aggregates and alerts over one WebSocket at `/ws`.

Authenticate with an API key: `Authorization: Bearer <key>` on the handshake (or `X-API-Key`, or
`?api_key=` in the URL, for browsers). A missing or unknown key is refused at the handshake (HTTP
403); a key refused after the handshake gets close code {p.CLOSE_UNAUTHORIZED} (unauthorized) or
{p.CLOSE_FORBIDDEN} (forbidden). Do not retry these with the same key. A tenant-bound key sees only
its tenant: its filters are limited to it, and a filter naming another tenant is an `error`.

Send `subscribe` with a channel (`aggregates` or `alerts`) and a filter (any of
{", ".join(f"`{f}`" for f in p.FILTER_FIELDS)}; `model_version` is `""` for records of events that carry
none, and an alert carries one only when its rule filters or groups by it). The API answers `subscribed`, then a `snapshot`
of the current records, then one `aggregate` or `alert` per change. Updates are coalesced per key
for a slow client (the newest value wins; `heartbeat.dropped` counts what was skipped). After a
reconnect, subscribe again: the new snapshot replaces everything held before, so nothing is missed.
A connection holds at most 100 subscriptions. The Python client `gpucost.client.Subscription` does
all of this, reconnecting with backoff."""


@lru_cache(maxsize=1)
def _schemas() -> dict:
    models = [m for _, m, _, _ in _CLIENT + _SERVER]
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
    return top["$defs"]


def _message(name: str, model: type[BaseModel], title: str, example: dict[str, Any]) -> dict[str, Any]:
    doc = inspect.cleandoc(model.__doc__ or "")
    return {
        "name": name,
        "title": title,
        "summary": " ".join(doc.split("\n\n")[0].split()),
        **({"description": doc} if "\n\n" in doc else {}),
        "contentType": "application/json",
        "payload": {"$ref": _REF.format(model=model.__name__)},
        "examples": [{"name": name, "payload": example}],
    }


def build_document(host: str, secure: bool = False, version: str = "0.1.0") -> dict:
    """The AsyncAPI 3.0 document for a server reached at `host` (host:port)."""
    channel_ref = {"$ref": "#/channels/live"}

    def msg_ref(name: str) -> dict:
        return {"$ref": f"#/channels/live/messages/{name}"}

    security = [{"$ref": "#/components/securitySchemes/bearer"}, {"$ref": "#/components/securitySchemes/apiKeyHeader"},
                {"$ref": "#/components/securitySchemes/apiKeyQuery"}]
    operations = {
        "subscribe": {
            "action": "receive", "channel": channel_ref, "title": "Subscribe to a channel with a filter",
            "summary": "Answered by subscribed and a snapshot, then live updates (or by error).",
            "messages": [msg_ref("subscribe")],
            "reply": {"channel": channel_ref, "messages": [msg_ref("subscribed"), msg_ref("snapshot"), msg_ref("error")]},
        },
        "unsubscribe": {
            "action": "receive", "channel": channel_ref, "title": "End a subscription",
            "messages": [msg_ref("unsubscribe")],
            "reply": {"channel": channel_ref, "messages": [msg_ref("unsubscribed"), msg_ref("error")]},
        },
        "ping": {
            "action": "receive", "channel": channel_ref, "title": "Application-level ping",
            "messages": [msg_ref("ping")], "reply": {"channel": channel_ref, "messages": [msg_ref("pong")]},
        },
        "pushAggregate": {"action": "send", "channel": channel_ref, "title": "A subscribed window changed",
                          "messages": [msg_ref("aggregate")]},
        "pushAlert": {"action": "send", "channel": channel_ref, "title": "A subscribed alert fired or resolved",
                      "messages": [msg_ref("alert")]},
        "heartbeat": {"action": "send", "channel": channel_ref, "title": "Heartbeat while nothing else is sent",
                      "messages": [msg_ref("heartbeat")]},
    }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "gpucost live API",
            "version": version,
            "description": _DESCRIPTION,
            "externalDocs": {"description": "the REST API (OpenAPI)",
                             "url": f"{'https' if secure else 'http'}://{host}/openapi.json"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "api": {
                "host": host, "protocol": "wss" if secure else "ws", "pathname": "/ws",
                "title": "this gpucost API", "security": security,
            },
        },
        "channels": {
            "live": {
                "address": "/ws",
                "title": "Live aggregates and alerts",
                "description": "One connection carries every subscription of a client, both directions.",
                "servers": [{"$ref": "#/servers/api"}],
                "messages": {name: _message(name, model, title, example)
                             for name, model, title, example in _CLIENT + _SERVER},
                "bindings": {"ws": {
                    "method": "GET",
                    "query": {"type": "object", "properties": {
                        "api_key": {"type": "string", "description": "the API key, where a header cannot be set"}}},
                    "bindingVersion": "0.1.0",
                }},
            },
        },
        "operations": operations,
        "components": {
            "schemas": copy.deepcopy(_schemas()),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"},
                "apiKeyHeader": {"type": "httpApiKey", "name": "X-API-Key", "in": "header"},
                "apiKeyQuery": {"type": "httpApiKey", "name": "api_key", "in": "query",
                                "description": "for browsers, which cannot set headers on a WebSocket"},
            },
        },
    }


@router.get("/asyncapi.json", summary="The /ws protocol as an AsyncAPI 3.0 document")
def asyncapi_json(request: Request) -> dict:
    """Public, like /openapi.json: it describes the protocol, not data."""
    secure = request.url.scheme in ("https", "wss") or request.headers.get("x-forwarded-proto") == "https"
    return build_document(request.url.netloc, secure=secure, version=request.app.version)
