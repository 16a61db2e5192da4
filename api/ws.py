"""WebSocket `/ws`: subscribe with a filter, get a snapshot, then live deltas and heartbeats.

Client messages: {"op": "subscribe", "channel": "aggregates"|"alerts", "filter": {...}, "id"?: str}
and {"op": "unsubscribe", "id": str} (or the same channel and filter). Server messages carry a
`type`: snapshot, aggregate, alert, heartbeat, subscribed, unsubscribed, error. The messages are
typed in api/ws_protocol.py and documented as AsyncAPI 3.0 at GET /asyncapi.json."""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from api.auth import ws_principal
from api.hub import Client, Subscription
from api.ws_protocol import CHANNELS, CLOSE_UNAUTHORIZED, FILTER_FIELDS  # the protocol, as /asyncapi.json documents it

router = APIRouter()
#: Each subscription is checked against every record fanned out: bound what one client can ask.
MAX_SUBSCRIPTIONS = 100

# The hub offers one message object to every matching client: encode it once, not once per client.
_encoded: OrderedDict[int, tuple[dict, str]] = OrderedDict()


def _encode(message: dict) -> str:
    hit = _encoded.get(id(message))
    if hit is not None and hit[0] is message:
        return hit[1]
    text = json.dumps(message)
    _encoded[id(message)] = (message, text)  # holding the object keeps its id from being reused
    if len(_encoded) > 4096:
        _encoded.popitem(last=False)
    return text


def _parse_subscription(msg: dict) -> Subscription:
    channel = msg.get("channel")
    if channel not in CHANNELS:
        raise ValueError(f"channel must be one of {list(CHANNELS)}, got {channel!r}")
    flt = msg.get("filter") or {}
    if not isinstance(flt, dict):
        raise ValueError("filter must be an object")
    unknown = set(flt) - set(FILTER_FIELDS)
    if unknown:
        raise ValueError(f"unknown filter fields {sorted(unknown)}; allowed: {list(FILTER_FIELDS)}")
    if not all(isinstance(v, str) for v in flt.values()):
        raise ValueError("filter values must be strings")
    return Subscription(channel, dict(flt))


def _sub_id(sub: Subscription) -> str:
    return sub.channel + ":" + json.dumps(sub.filter, sort_keys=True)


@router.websocket("/ws")
async def websocket_endpoint(ws: WebSocket):
    principal = await asyncio.to_thread(ws_principal, ws)  # a cache miss reads the database
    if principal is None:
        await ws.close(code=CLOSE_UNAUTHORIZED, reason="missing or unknown API key")
        return
    await ws.accept()
    hub = ws.app.state.hub
    settings = ws.app.state.settings
    client = Client(principal=principal, queue_max=settings.ws_queue_max)
    hub.clients.add(client)

    async def sender():
        while True:
            try:
                await asyncio.wait_for(client.wakeup.wait(), timeout=settings.ws_heartbeat_s)
            except asyncio.TimeoutError:
                await ws.send_json({"type": "heartbeat", "ts": asyncio.get_running_loop().time(),
                                    "dropped": client.dropped + client.overflow})
                continue
            for message in client.drain():
                await ws.send_text(_encode(message))
                client.sent += 1

    async def recheck_key():
        """A revoked key's open sockets close (4401): the key is looked up again every
        `ws_key_recheck_s`; a revocation made through another API instance shows once this one's
        lookup cache (a few seconds) has let go of the key."""
        while True:
            await asyncio.sleep(settings.ws_key_recheck_s)
            if await asyncio.to_thread(ws_principal, ws) is None:
                await ws.close(code=CLOSE_UNAUTHORIZED, reason="API key revoked")
                return

    send_task = asyncio.create_task(sender())
    recheck_task = asyncio.create_task(recheck_key())
    try:
        while True:
            raw = await ws.receive_text()
            try:
                msg = json.loads(raw)
                if not isinstance(msg, dict):
                    raise ValueError("a message must be a JSON object")
                op = msg.get("op")
                if op == "subscribe":
                    sub = _parse_subscription(msg)
                    if principal.tenant is not None:
                        if sub.filter.get("tenant", principal.tenant) != principal.tenant:
                            raise ValueError(f"this key is bound to tenant {principal.tenant!r}")
                        sub.filter["tenant"] = principal.tenant
                    sid = str(msg.get("id") or _sub_id(sub))
                    if sid not in client.subscriptions and len(client.subscriptions) >= MAX_SUBSCRIPTIONS:
                        raise ValueError(f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection")
                    client.subscriptions[sid] = sub
                    # Snapshot and subscription in one step: nothing arrives between them, and a
                    # live update queued after it is newer than the snapshot.
                    await ws.send_json({"type": "subscribed", "id": sid, "channel": sub.channel, "filter": sub.filter})
                    await ws.send_text(json.dumps({"type": "snapshot", "id": sid, "channel": sub.channel,
                                                   "data": hub.snapshot(client, sub)}))
                elif op == "unsubscribe":
                    sid = msg.get("id") or _sub_id(_parse_subscription(msg))
                    if client.subscriptions.pop(str(sid), None) is None:
                        raise ValueError(f"no subscription {sid!r}")
                    await ws.send_json({"type": "unsubscribed", "id": sid})
                elif op == "ping":
                    await ws.send_json({"type": "pong"})
                else:
                    raise ValueError(f"unknown op {op!r}; use subscribe or unsubscribe")
            except ValueError as exc:
                await ws.send_json({"type": "error", "error": str(exc)})
    except (WebSocketDisconnect, RuntimeError):  # RuntimeError: receiving after recheck_key closed it
        pass
    finally:
        send_task.cancel()
        recheck_task.cancel()
        hub.clients.discard(client)
