"""`POST /events`: batch ingest into Kafka for producers that speak HTTP, not Kafka. The batch is
validated against the event contract (contracts/events.py) and the key's tenant, all or nothing: one
bad or foreign event rejects the request (422 / 403, every problem listed by index) and nothing is
sent. Accepted events go through the one EventProducer; the 202 says whether Kafka acknowledged
them (acks=all) in time or they are queued for delivery. A 503 means nothing was queued."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel

from api.auth import Principal, principal
from contracts.events import BillingEvent, UsageEvent, decode_billing, decode_usage
from ingest.producer import EventProducer

router = APIRouter(tags=["ingest"])

def _batch_schema() -> dict:
    def members(model):
        schema = model.model_json_schema()
        schema.pop("title", None)
        return {"type": "array", "items": schema}

    return {"type": "object", "additionalProperties": False,
            "properties": {"usage": members(UsageEvent), "billing": members(BillingEvent)},
            "description": "Usage and billing events (either list may be empty or absent)."}


class Accepted(BaseModel):
    accepted: int
    usage: int
    billing: int
    durable: bool  # acknowledged by Kafka (acks=all); False: queued in this API, delivered later
    message: str | None = None


async def start(app) -> None:
    app.state.event_producer = None
    app.state.event_producer_lock = asyncio.Lock()


async def stop(app) -> None:
    producer = getattr(app.state, "event_producer", None)
    if producer is not None:
        await producer.stop()


async def _producer(app) -> EventProducer:
    """Started on first use: the API serves reads even while the broker is still coming up."""
    if app.state.event_producer is None:
        async with app.state.event_producer_lock:
            if app.state.event_producer is None:
                app.state.event_producer = await EventProducer(app.state.settings).start()
    return app.state.event_producer


def _validate(members: Any, kind: str, decode, p: Principal, errors: list[dict]) -> list:
    if members is None:
        return []
    if not isinstance(members, list):
        errors.append({"kind": kind, "index": None, "reason": f"'{kind}' must be a JSON array of events"})
        return []
    out = []
    for index, member in enumerate(members):
        good, bad = decode(json.dumps(member, allow_nan=False).encode())
        if bad:
            reason = bad[0].reason.split(": ", 1)[-1]
            errors.append({"kind": kind, "index": index, "reason": reason})
        elif not p.allows(good[0].tenant):
            errors.append({"kind": kind, "index": index, "status": 403,
                           "reason": f"tenant {good[0].tenant!r} is not this key's tenant {p.tenant!r}"})
        elif getattr(good[0], "charge_category", "usage") != "usage" and not p.is_admin:
            # A tenant's own key must not lower its own bill: credits, tax and adjustments come
            # from billing imports or an admin key.
            errors.append({"kind": kind, "index": index, "status": 403,
                           "reason": f"a {good[0].charge_category} line needs an admin key (or a billing import)"})
        else:
            out.append(good[0])
    return out


@router.post("/events", status_code=202, response_model=Accepted,
             openapi_extra={"requestBody": {"required": True,
                                            "content": {"application/json": {"schema": _batch_schema()}}}},
             responses={403: {"description": "An event of another tenant, or a charge (credit, tax, "
                                              "adjustment) sent with a tenant key"},
                        413: {"description": "Body or batch too large"},
                        422: {"description": "Events that break the contract, by index"},
                        503: {"description": "Kafka unavailable and nothing queued; resend later"}})
async def ingest(request: Request, p: Principal = Depends(principal)) -> dict:
    settings = request.app.state.settings
    try:
        body = await asyncio.to_thread(json.loads, await request.body())
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise HTTPException(400, f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise HTTPException(422, 'body must be a JSON object: {"usage": [...], "billing": [...]}')
    unknown = set(body) - {"usage", "billing"}
    if unknown:
        raise HTTPException(422, f"unknown fields {sorted(unknown)}; allowed: usage, billing")
    total = sum(len(v) for v in body.values() if isinstance(v, list))
    if total > settings.events_max_batch:
        raise HTTPException(413, f"{total} events in one request; at most {settings.events_max_batch}")
    errors: list[dict] = []

    def validate():  # ~20 µs an event: off the event loop, which serves the WebSocket fan-out
        return (_validate(body.get("usage"), "usage", decode_usage, p, errors),
                _validate(body.get("billing"), "billing", decode_billing, p, errors))

    try:
        usage, billing = await asyncio.to_thread(validate)
    except ValueError as exc:  # NaN/Infinity in the JSON, which the contract forbids
        raise HTTPException(422, f"non-finite number in the body: {exc}") from exc
    if errors:
        status = 403 if all(e.get("status") == 403 for e in errors) else 422
        raise HTTPException(status, {"message": f"{len(errors)} event(s) rejected; nothing was sent",
                                     "errors": errors[:100]})
    if not usage and not billing:
        raise HTTPException(422, "no events: send a non-empty 'usage' or 'billing' array")
    try:
        producer = await _producer(request.app)
    except (OSError, KafkaError) as exc:  # nothing was queued: safe to resend
        raise HTTPException(503, f"Kafka is unavailable ({exc.__class__.__name__}); nothing was queued, "
                                 "resend the request later", headers={"Retry-After": "5"}) from exc
    # Once queued, the idempotent producer delivers the events whenever Kafka is back (it does not
    # give up on an outage). Telling the client to resend then would count them twice, so a slow
    # acknowledgement is a 202 that says so, never a 503.
    try:
        futures = (await producer.send_usage(usage, wait=False) if usage else []) + \
                  (await producer.send_billing(billing, wait=False) if billing else [])
    except (OSError, KafkaError) as exc:
        raise HTTPException(503, f"Kafka is unavailable ({exc.__class__.__name__}) and only part of the batch "
                                 "may have been queued; check before resending") from exc
    acked = asyncio.gather(*futures)
    done, _ = await asyncio.wait({acked}, timeout=settings.events_ack_timeout_s)
    if not done:
        acked.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieve, never log as unhandled
        return {"accepted": len(usage) + len(billing), "usage": len(usage), "billing": len(billing), "durable": False,
                "message": "queued; Kafka has not acknowledged yet and will get it when it is back: do not resend"}
    acked.result()  # raises if Kafka refused a message outright
    return {"accepted": len(usage) + len(billing), "usage": len(usage), "billing": len(billing), "durable": True}
