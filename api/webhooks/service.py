"""Starts the alert outbox consumer and the webhook dispatcher with the API (api/app.py starts it)."""

from __future__ import annotations

import asyncio

from api.webhooks.dispatcher import Dispatcher
from api.webhooks.outbox import AlertOutbox


async def start(app) -> None:
    settings = app.state.settings
    dispatcher = Dispatcher(settings)
    outbox = AlertOutbox(settings, on_stored=dispatcher.poke)
    app.state.webhook_dispatcher = dispatcher
    app.state.alert_outbox = outbox
    app.state.webhook_tasks = [asyncio.create_task(outbox.run(), name="alert-outbox"),
                               asyncio.create_task(dispatcher.run(), name="webhook-dispatcher")]


async def stop(app) -> None:
    for t in app.state.webhook_tasks:
        t.cancel()
    for t in app.state.webhook_tasks:
        try:
            await t
        except (asyncio.CancelledError, Exception):
            pass
