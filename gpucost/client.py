"""A typed Python client for the live API (`/ws`, described by `GET /asyncapi.json`).

    async with Subscription("ws://127.0.0.1:8000/ws", api_key, filter={"tenant": "acme"}) as sub:
        async for msg in sub:          # Snapshot, then AggregateUpdate / AlertUpdate
            ...

After a dropped connection it reconnects with exponential backoff and jitter, subscribes again
and yields a fresh `Snapshot`, which replaces everything held before (`LiveState` does that
bookkeeping). A refused key raises `AuthenticationError` at once instead of retrying forever.
It imports only the protocol models (pydantic) and `websockets`, never the server."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Union

import websockets
from pydantic import ValidationError
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from api.ws_protocol import (CHANNELS, CLOSE_FORBIDDEN, CLOSE_UNAUTHORIZED, FILTER_FIELDS, AggregateRecord,
                             AggregateUpdate, AlertRecord, AlertUpdate, ErrorMessage, Heartbeat, Snapshot, Subscribed,
                             server_message)

__all__ = ["AggregateUpdate", "AlertUpdate", "AuthenticationError", "ClientError", "ConnectionFailed", "Heartbeat",
           "LiveState", "Message", "Snapshot", "Subscription", "SubscriptionRejected", "subscribe"]

log = logging.getLogger("gpucost.client")

#: What iterating a subscription yields (heartbeats only when asked for).
Message = Union[Snapshot, AggregateUpdate, AlertUpdate, Heartbeat]


class ClientError(Exception):
    """Base of the client's errors."""


class AuthenticationError(ClientError):
    """The API refused the key (missing, unknown, revoked, or not allowed). Retrying with the same
    key cannot help, so the client raises this instead of reconnecting."""


class SubscriptionRejected(ClientError):
    """The API refused a subscription (an unknown channel or filter field, a filter on another
    tenant than the key's, too many subscriptions)."""


class ConnectionFailed(ClientError):
    """No connection after `max_attempts` tries in a row (only when a limit was set)."""


class Subscription:
    """One connection to `/ws` holding one subscription per channel, all with the same filter.

    `channel`: "aggregates", "alerts", or both as a sequence. `filter`: any of tenant, service,
    region, gpu_model, model_version. `max_attempts`: failed connection attempts in a row before
    `ConnectionFailed` (None: keep trying, as a live view should). Iterate it once."""

    def __init__(self, url: str, api_key: str, channel: str | Sequence[str] = "aggregates",
                 filter: Mapping[str, str] | None = None, *, heartbeats: bool = False,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 15.0, max_attempts: int | None = None,
                 open_timeout_s: float = 5.0):
        channels = (channel,) if isinstance(channel, str) else tuple(channel)
        unknown = [c for c in channels if c not in CHANNELS]
        if unknown or not channels:
            raise ValueError(f"channel must be one or more of {list(CHANNELS)}, got {channel!r}")
        flt = dict(filter or {})
        bad = sorted(set(flt) - set(FILTER_FIELDS))
        if bad:
            raise ValueError(f"unknown filter fields {bad}; allowed: {list(FILTER_FIELDS)}")
        if not api_key:
            raise AuthenticationError("no API key given: pass the key that `gpucost keys create` printed")
        self.url, self.channels, self.filter = url, channels, flt
        self.heartbeats = heartbeats
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.max_attempts, self.open_timeout_s = max_attempts, open_timeout_s
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._ws: websockets.ClientConnection | None = None
        self._pending: list[str] = []  # subscriptions sent and not yet answered, in order
        self._closed = False
        self.connections = 0  # successful connections so far: connections - 1 reconnects
        self.messages = 0
        self.dropped_at: float | None = None  # time.monotonic() of the last drop

    @property
    def connected(self) -> bool:
        """False from a drop until the next connection is open (then a fresh snapshot follows)."""
        return self._ws is not None

    # -- context manager ------------------------------------------------------------------------------
    async def __aenter__(self) -> Subscription:
        await self._connect()  # a refused key raises here, before the first message
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._messages()

    # -- connection -----------------------------------------------------------------------------------
    async def _connect(self) -> websockets.ClientConnection:
        """Connect and subscribe, retrying with exponential backoff and jitter."""
        attempt = 0
        while True:
            try:
                ws = await websockets.connect(self.url, additional_headers=self._headers,
                                              open_timeout=self.open_timeout_s, max_size=None)
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in (401, 403):
                    raise AuthenticationError(
                        f"{self.url} refused the API key (HTTP {status}): it is missing, unknown or revoked"
                        f"{_body(exc)}") from None
                if 400 <= status < 500 and status not in (408, 429):
                    raise ClientError(f"{self.url} answered the WebSocket handshake with HTTP {status}{_body(exc)}"
                                      " (is this the /ws address of a gpucost API?)") from None
                reason = f"HTTP {status}"
            except InvalidURI as exc:
                raise ClientError(f"not a WebSocket URL: {self.url!r} ({exc})") from None
            except (OSError, asyncio.TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                self._ws = ws
                self.connections += 1
                self._pending = []
                try:
                    for channel in self.channels:
                        await ws.send(_subscribe_text(channel, self.filter))
                        self._pending.append(channel)
                except ConnectionClosed:
                    pass  # closed right after the handshake: _messages reads why (a refused key, or retry)
                return ws
            attempt += 1
            if self.max_attempts is not None and attempt >= self.max_attempts:
                raise ConnectionFailed(f"could not connect to {self.url} after {attempt} attempts (last: {reason})")
            delay_s = self._backoff_s(attempt)
            log.info("connecting to %s failed (%s); retrying in %.1f s", self.url, reason, delay_s)
            await asyncio.sleep(delay_s)

    def _backoff_s(self, attempt: int) -> float:
        """Exponential, capped, with jitter: clients dropped together by an API restart do not
        all come back in the same instant."""
        return min(self.backoff_max_s, self.backoff_initial_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)

    async def _messages(self) -> AsyncIterator[Message]:
        flaps = 0  # connections in a row that closed before their snapshot
        while not self._closed:
            ws = self._ws if self._ws is not None else await self._connect()
            served = False
            try:
                async for raw in ws:
                    msg = self._read(raw)
                    if msg is not None:
                        served = served or isinstance(msg, Snapshot)
                        self.messages += 1
                        yield msg
            except ConnectionClosed:
                pass  # why it closed is read below, the same for a clean and an abrupt close
            except ClientError:
                await self.close()
                raise
            if self._closed:
                return
            if ws.close_code in (CLOSE_UNAUTHORIZED, CLOSE_FORBIDDEN):
                await self.close()
                raise AuthenticationError(f"{self.url} closed the connection: the API key was refused "
                                          f"(close code {ws.close_code}: {ws.close_reason or 'no reason given'})")
            self._ws = None
            self.dropped_at = time.monotonic()
            # A server that accepts and then drops at once must not be hammered: back off as for a
            # failed connect; after a connection that served, come back soon (with jitter).
            flaps = 0 if served else flaps + 1
            delay_s = self._backoff_s(flaps + 1)
            log.info("connection to %s lost (close code %s); reconnecting in %.1f s", self.url, ws.close_code, delay_s)
            await asyncio.sleep(delay_s)

    def _read(self, raw: str | bytes) -> Message | None:
        try:
            msg = server_message.validate_json(raw)
        except ValidationError as exc:
            # A message this client does not know (a newer server): skip it rather than stop.
            log.warning("skipping a message this client cannot read: %s", exc.errors()[:1])
            return None
        if isinstance(msg, Subscribed):
            if msg.channel in self._pending:
                self._pending.remove(msg.channel)
            return None
        if isinstance(msg, ErrorMessage):
            if self._pending:  # the server answers in order: this error is about our oldest request
                channel = self._pending.pop(0)
                raise SubscriptionRejected(f"subscription to {channel!r} with filter {self.filter} refused: {msg.error}")
            log.warning("the API reported an error: %s", msg.error)
            return None
        if isinstance(msg, Heartbeat) and not self.heartbeats:
            return None
        if isinstance(msg, (Snapshot, AggregateUpdate, AlertUpdate, Heartbeat)):
            return msg
        return None


def subscribe(url: str, api_key: str, filter: Mapping[str, str] | None = None,
              channel: str | Sequence[str] = "aggregates", **options) -> Subscription:
    """`async for msg in subscribe(url, key, {"tenant": "acme"})`: the same as `Subscription`."""
    return Subscription(url, api_key, channel=channel, filter=filter, **options)


class LiveState:
    """What a subscriber knows now: the recent windows of each key and window size, and the latest
    transition per alert. A snapshot replaces everything of its channel (after a reconnect it is
    the whole truth); an update replaces the same window of its key (a newer value of it).

    The newest window of a live key is still filling (it started less than a window ago), so its
    spend understates the rate; `windows(complete_before=now)` picks each key's newest window that
    has ended instead, which is why a few recent windows per key are kept."""

    KEEP = 8  # windows per key: with 60 s windows stepping 10 s, the newest complete one is 6 back

    def __init__(self) -> None:
        # (tenant, service, region, gpu_model, model_version, window_s) -> {window_start: record}
        self.recent: dict[tuple[str, str, str, str, str, int], dict[int, AggregateRecord]] = {}
        self.alerts: dict[str, AlertRecord] = {}
        self.snapshots = 0

    def apply(self, msg: Message) -> None:
        if isinstance(msg, Snapshot):
            self.snapshots += 1
            if msg.channel == "aggregates":
                self.recent = {}
                for rec in msg.data:
                    if isinstance(rec, AggregateRecord):
                        self._put(rec)
            else:
                self.alerts = {a.fingerprint: a for a in msg.data if isinstance(a, AlertRecord)}
        elif isinstance(msg, AggregateUpdate):
            self._put(msg.data)
        elif isinstance(msg, AlertUpdate):
            self.alerts[msg.data.fingerprint] = msg.data

    def _put(self, rec: AggregateRecord) -> None:
        k = (rec.tenant, rec.service, rec.region, rec.gpu_model, rec.model_version, rec.window_s)
        windows = self.recent.setdefault(k, {})
        if len(windows) >= self.KEEP and rec.window_start not in windows:
            oldest = min(windows)
            if rec.window_start < oldest:
                return  # a revision of a window older than all kept: not the newest of anything
            del windows[oldest]
        windows[rec.window_start] = rec

    def window_sizes(self) -> list[int]:
        return sorted({k[-1] for k in self.recent})

    def windows(self, window_s: int | None = None, complete_before: float | None = None) -> list[AggregateRecord]:
        """One window per key, of one window size (default: the shortest present): the newest, or
        with `complete_before` (epoch s) the newest that ended by then (the newest one where
        none has, so a key is never left out; check its `window_end`)."""
        if window_s is None:
            window_s = min(self.window_sizes(), default=None)
        out = []
        for k, windows in self.recent.items():
            if k[-1] != window_s or not windows:
                continue
            starts = sorted(windows, reverse=True)
            pick = starts[0]
            if complete_before is not None:
                pick = next((ws for ws in starts if windows[ws].window_end <= complete_before), pick)
            out.append(windows[pick])
        return out

    def firing(self) -> list[AlertRecord]:
        return sorted((a for a in self.alerts.values() if a.state == "firing"), key=lambda a: a.emitted_at)


def _subscribe_text(channel: str, flt: Mapping[str, str]) -> str:
    return json.dumps({"op": "subscribe", "channel": channel, "filter": dict(flt), "id": channel})


def _body(exc: InvalidStatus) -> str:
    body = (exc.response.body or b"").decode(errors="replace").strip()
    return f": {body[:200]}" if body else ""
