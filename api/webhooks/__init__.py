"""Webhook delivery of alerts, never losing one.

In: alert transitions from `cost.alerts` (a consumer group that commits only after the outbox rows
are written: `outbox.py`). Out: signed HTTP POSTs (Standard Webhooks 1.0, `signing.py`) in the
webhook's format (`formats.py`: gpucost JSON, Alertmanager v4, Slack blocks), retried with
exponential backoff and jitter until a 2xx or expiry (`dispatcher.py`). `service.py` starts both."""
