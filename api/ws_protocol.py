"""The `/ws` protocol as typed messages: what a client sends (subscribe, unsubscribe, ping) and
what the server sends back (subscribed, snapshot, aggregate, alert, heartbeat, error, ...).

One definition serves three readers: the AsyncAPI document (`api/asyncapi.py`) is generated from
these models, the Python client (`gpucost/client.py`) parses the wire with them, and the tests
check that what the real server sends validates against the document. Only pydantic and the
record contracts (contracts/aggregates.py) are imported here, so a client does not pull in the
server."""

from __future__ import annotations

from typing import Annotated, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from contracts.aggregates import AlertEvent, WindowAggregate

# -- record schemas ---------------------------------------------------------------------------------
# The records are the stream's contract, defined once in contracts/aggregates.py (the worker
# builds them, the API validates what it reads against them). The protocol uses them as they are,
# except for `extra`: the server is strict, but a client built today must keep working when a
# newer server adds a field (as `revision` was added).


class AggregateRecord(WindowAggregate):
    """One hopping window of one key (tenant, service, region, gpu_model, model_version), as on
    cost.aggregates."""

    model_config = ConfigDict(extra="allow")


class AlertRecord(AlertEvent):
    """An alert transition: one record when a fingerprint (rule + group + level) starts firing
    and one when it resolves, as on cost.alerts."""

    model_config = ConfigDict(extra="allow")


# -- subscriptions ------------------------------------------------------------------------------------
Channel = Literal["aggregates", "alerts"]
CHANNELS: tuple[str, ...] = get_args(Channel)


class SubscriptionFilter(BaseModel):
    """Every field optional; a record matches when it equals each field given. A tenant-bound
    key's subscriptions are limited to its tenant whatever the filter says."""

    model_config = ConfigDict(extra="forbid")

    tenant: str | None = None
    service: str | None = None
    region: str | None = None
    gpu_model: str | None = None
    model_version: str | None = Field(None, description='a model version ("": records without one); alerts carry '
                                      "one when their rule filters or groups by it")

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


FILTER_FIELDS: tuple[str, ...] = tuple(SubscriptionFilter.model_fields)


class _Message(BaseModel):
    # A client ignores what it does not know: the server may add fields to any message.
    model_config = ConfigDict(extra="allow")


# -- client to server ---------------------------------------------------------------------------------
class SubscribeRequest(_Message):
    """Start a subscription. The server answers `subscribed`, then `snapshot` (the current records
    that match), then a live `aggregate` or `alert` for every change; nothing falls between the
    snapshot and the first live update. Subscribing again with the same id replaces the filter."""

    op: Literal["subscribe"]
    channel: Channel
    filter: SubscriptionFilter = Field(default_factory=SubscriptionFilter)
    id: str | None = Field(None, description="the subscription's id; default: channel and filter")


class UnsubscribeRequest(_Message):
    """End a subscription, named by its id (or by the same channel and filter it was made with)."""

    op: Literal["unsubscribe"]
    id: str | None = None
    channel: Channel | None = None
    filter: SubscriptionFilter | None = None


class PingRequest(_Message):
    """Ask for a `pong` (an application-level liveness check; WebSocket pings also work)."""

    op: Literal["ping"]


# -- server to client ---------------------------------------------------------------------------------
class Subscribed(_Message):
    """A subscription was accepted (the filter as applied: a tenant key's tenant is added)."""

    type: Literal["subscribed"]
    id: str
    channel: Channel
    filter: dict[str, str]


class Snapshot(_Message):
    """The current records of a subscription: the newest window per key (aggregates) or the
    recent alert transitions (alerts). A client replaces what it holds for this subscription.

    The snapshot holds windows of the API's default size (GPUCOST_WINDOW_SIZE_S); live updates
    carry every window size the worker emits (see `window_s`). The newest window of a live key
    is still filling: its spend covers the window so far."""

    type: Literal["snapshot"]
    id: str
    channel: Channel
    data: list[AggregateRecord] | list[AlertRecord] = Field(
        description="aggregate records on the aggregates channel, alert records on the alerts channel")


class AggregateUpdate(_Message):
    """A window of a subscribed key changed (newest value; a slow client may skip intermediate
    values of the same window, counted in the heartbeat's `dropped`)."""

    type: Literal["aggregate"]
    data: AggregateRecord


class AlertUpdate(_Message):
    """An alert started firing or resolved."""

    type: Literal["alert"]
    data: AlertRecord


class Heartbeat(_Message):
    """Sent when nothing else was sent for the server's heartbeat interval (default 10 s)."""

    type: Literal["heartbeat"]
    ts: float = Field(description="the server's monotonic clock, seconds")
    dropped: int = Field(description="updates this connection skipped because newer ones replaced them, so far")


class Unsubscribed(_Message):
    type: Literal["unsubscribed"]
    id: str


class Pong(_Message):
    type: Literal["pong"]


class ErrorMessage(_Message):
    """A client message was refused (bad JSON, unknown op, channel or filter field, a filter on
    another tenant than the key's, too many subscriptions). The connection stays open."""

    type: Literal["error"]
    error: str = Field(description="what was wrong, for a person")


ClientMessage = Annotated[Union[SubscribeRequest, UnsubscribeRequest, PingRequest], Field(discriminator="op")]
ServerMessage = Annotated[Union[Subscribed, Snapshot, AggregateUpdate, AlertUpdate, Heartbeat, Unsubscribed, Pong,
                                ErrorMessage], Field(discriminator="type")]
CLIENT_MESSAGES: tuple[type[_Message], ...] = get_args(get_args(ClientMessage)[0])
SERVER_MESSAGES: tuple[type[_Message], ...] = get_args(get_args(ServerMessage)[0])
server_message = TypeAdapter(ServerMessage)

#: Close codes the server uses after the handshake (beyond RFC 6455's): the key is missing,
#: unknown or revoked (4401), or not allowed what it asked (4403). A client must not retry them.
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
