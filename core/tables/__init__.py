"""Every table gpucost persists, one module per concept, all on `Base`: aggregate history
and billed line items, alert rules / webhooks / deliveries, API keys, price overrides, optimizer
benchmark runs and recommendations. The boxes read and write them; only the API serves them."""

from core.tables import alerts, benchmarks, history, keys, pricing, recommendations  # noqa: F401
from core.tables.base import Base

__all__ = ["Base"]
