"""Standard Webhooks 1.0 signatures through the `standardwebhooks` library: `webhook-id` (the
delivery's idempotency key, the same on every attempt), `webhook-timestamp` (this attempt) and
`webhook-signature` (one `v1,` signature per valid secret, so a receiver keeps verifying during a
secret rotation)."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime, timezone

from standardwebhooks import Webhook


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def signed_headers(secrets_: list[str], msg_id: str, body: str, now: float) -> dict[str, str]:
    ts = datetime.fromtimestamp(int(now), tz=timezone.utc)
    signatures = " ".join(Webhook(s).sign(msg_id=msg_id, timestamp=ts, data=body) for s in secrets_)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now)),
        "webhook-signature": signatures,
        "content-type": "application/json",
        "user-agent": "gpucost-webhooks/1",
    }
