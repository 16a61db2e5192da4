"""Billing line items: a plain Faust agent (they are few: one per instance and hour, or a bill's
import), so Faust's per-message cost does not matter here.

In: `gpu.billing` (one event or a batch per message): GPU usage lines, and the credit, tax and
adjustment lines beside them (`charge_category`). Out: each valid line item on the compacted
`cost.billed`, keyed by line identity (a re-sent or replayed item overwrites itself downstream);
the rest on `gpu.deadletter` with the reason."""

from __future__ import annotations

import faust

from contracts.events import BillingEvent, decode_billing
from core.settings import Settings
from streaming.deadletter import DeadLetters


def line_item_key(item: BillingEvent) -> bytes:
    return f"{item.cloud}/{item.instance_id}/{item.period_start:.0f}/{item.source}".encode()


def add_billing_agent(app: faust.App, settings: Settings, billing_topic, billed_topic, dead_letters: DeadLetters):
    @app.agent(billing_topic, name="check-billing")
    async def check_billing(stream):
        async for events in stream.take_events(1000, within=settings.flush_interval_s):
            pending = []
            for event in events:
                message = event.message
                good, bad = decode_billing(message.value if message.value is not None else b"")
                for reject in bad:
                    pending.append(await dead_letters.send(reject.reason, reject.raw, message))
                for item in good:
                    pending.append(await billed_topic.send(key=line_item_key(item),
                                                           value=item.model_dump_json().encode()))
            for fut in pending:  # durable before Faust acknowledges the batch
                await fut

    return check_billing
