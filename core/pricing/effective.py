"""The catalog a long-running process should price with: the shipped catalog plus the stored
overrides, rebuilt at most every `ttl_s` seconds so a price change through the API reaches the
stream worker without a restart, while the per-event lookup stays a dict hit."""

from __future__ import annotations

import threading
import time

from core.pricing.catalog import PriceCatalog, default_catalog

_lock = threading.Lock()
_cache: dict[str, tuple[float, PriceCatalog]] = {}


def effective_catalog(settings=None, ttl_s: float = 30.0) -> PriceCatalog:
    """Shipped catalog with overrides from the database; the shipped one if the database has no
    overrides table yet or cannot be reached (metering must not stop for a pricing change)."""
    from core.db import session_scope
    from core.settings import get_settings

    settings = settings or get_settings()
    now = time.monotonic()
    with _lock:
        hit = _cache.get(settings.database)
        if hit and now - hit[0] < ttl_s:
            return hit[1]
    try:
        from core.pricing.overrides import catalog_with_overrides

        with session_scope(settings) as session:
            catalog = catalog_with_overrides(session)
    except Exception:  # noqa: BLE001 - no table yet, database down: keep metering at list prices
        catalog = hit[1] if hit else default_catalog()
    with _lock:
        _cache[settings.database] = (now, catalog)
    return catalog


def invalidate() -> None:
    """Forget cached catalogs (called after an override changes in this process)."""
    with _lock:
        _cache.clear()
