"""History that lasts: hourly and daily rollups of the stream's window records, and retention.

The stream emits hopping windows (size `window_size_s`, default 60 s, step 10 s); the API stores
the latest value of each. The windows whose start is a multiple of their size tile time, so each
event is in exactly one of them: an hourly rollup (window_s = 3600) is the sum of the aligned
base windows of its hour, and a daily rollup (window_s = 86400) the sum of its 24 hourly rollups,
with the same fields as a window record (`util_avg` weighted by GPU-seconds, `spend_rate_usd_h`
over the rollup's length). Rollups are recomputed from the stored windows, never incremented, so
recomputing one is harmless and a revised window (a late event) simply changes the sum.

Retention deletes base windows older than `history_retention_s`, hourly rollups older than
`history_hourly_retention_s` and daily ones older than `history_daily_retention_s` (0: keep)."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable

from sqlalchemy import Engine, delete, func, literal_column, select, tuple_

from core.settings import Settings
from core.tables.history import AggregateRow

log = logging.getLogger("gpucost.rollups")

HOUR_S = 3600
DAY_S = 86400
ROLLUP_SIZES_S = (HOUR_S, DAY_S)
KEY_FIELDS = ("tenant", "service", "region", "gpu_model", "model_version")
AGGREGATE_CONFLICT = [*KEY_FIELDS, "window_s", "window_start"]
_KEYS_PER_QUERY = 400  # bound the IN list of one statement (SQLite allows 32766 parameters)

Key = tuple[str, str, str, str, str]  # KEY_FIELDS
Bucket = tuple[Key, int]  # (aggregate key, rollup window start)


def upsert(engine: Engine, model, values: list[dict], conflict: list[str]) -> None:
    """Insert or update by the unique columns: storing the same record twice is harmless."""
    if not values:
        return
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(model)
    fields = model.FIELDS + getattr(model, "EXTRA_FIELDS", ())
    stmt = stmt.on_conflict_do_update(index_elements=conflict,
                                      set_={f: stmt.excluded[f] for f in fields if f not in conflict})
    with engine.begin() as conn:
        for i in range(0, len(values), 500):
            conn.execute(stmt, values[i:i + 500])


def hour_buckets(rows: Iterable[dict], base_s: int) -> set[Bucket]:
    """The hourly rollups that stored base windows change: aligned base windows only."""
    out = set()
    for r in rows:
        ws = int(r["window_start"])
        if r.get("window_s") == base_s and ws % base_s == 0:
            out.add(((r["tenant"], r["service"], r["region"], r["gpu_model"], r.get("model_version") or ""),
                     ws - ws % HOUR_S))
    return out


def _sum_into(engine: Engine, buckets: set[Bucket], source_s: int, size_s: int) -> list[dict]:
    """Rollup rows of window size size_s for these buckets, summed from the stored windows of size
    source_s that start on a multiple of source_s."""
    by_start: dict[int, set[Key]] = defaultdict(set)
    for key, start in buckets:
        by_start[start].add(key)
    A = AggregateRow
    # A literal, not a bound parameter: PostgreSQL must see the same expression in GROUP BY.
    bucket = (A.window_start - A.window_start % literal_column(str(int(size_s)))).label("bucket")
    out = []
    with engine.connect() as conn:
        for start, keys in sorted(by_start.items()):
            keys_l = sorted(keys)
            for i in range(0, len(keys_l), _KEYS_PER_QUERY):
                q = (select(A.tenant, A.service, A.region, A.gpu_model, A.model_version, bucket,
                            func.sum(A.spend_usd), func.sum(A.gpu_seconds), func.sum(A.util_avg * A.gpu_seconds),
                            func.sum(A.idle_usd), func.sum(A.events), func.sum(A.tokens), func.sum(A.requests),
                            func.sum(A.fallback_priced_events))
                     .where(A.window_s == source_s, A.window_start >= start, A.window_start < start + size_s,
                            A.window_start % source_s == 0,
                            tuple_(A.tenant, A.service, A.region, A.gpu_model, A.model_version)
                            .in_(keys_l[i:i + _KEYS_PER_QUERY]))
                     .group_by(A.tenant, A.service, A.region, A.gpu_model, A.model_version, bucket))
                for (tenant, service, region, gpu_model, model_version, b, spend, gpu_s, util_s, idle, events, tokens,
                     requests, fallback) in conn.execute(q):
                    spend, gpu_s = float(spend or 0.0), float(gpu_s or 0.0)
                    out.append({
                        "tenant": tenant, "service": service, "region": region, "gpu_model": gpu_model,
                        "model_version": model_version, "window_start": int(b), "window_end": int(b) + size_s, "window_s": size_s,
                        "spend_usd": spend, "spend_rate_usd_h": spend * 3600.0 / size_s, "gpu_seconds": gpu_s,
                        "util_avg": float(util_s or 0.0) / gpu_s if gpu_s else 0.0, "idle_usd": float(idle or 0.0),
                        "events": int(events or 0), "tokens": int(tokens or 0), "requests": int(requests or 0),
                        "fallback_priced_events": int(fallback or 0)})
    return out


def rollup(engine: Engine, settings: Settings, hours: set[Bucket], now: float | None = None) -> int:
    """Recompute the hourly rollups of these (key, hour) buckets from the base windows, then the
    daily rollups of their days from the hourly ones; returns how many rollup rows were written.
    An hour whose base windows retention may already have deleted is left as it is (a partial
    sum would be wrong), and so is a day whose hourly rollups retention may have deleted."""
    if not hours:
        return 0
    base_s = settings.window_size_s
    now = time.time() if now is None else now
    oldest_hour = now - settings.history_retention_s + HOUR_S
    kept = {b for b in hours if b[1] >= oldest_hour}
    if len(kept) < len(hours):
        log.warning("not rolling up %d hour(s) older than the 1-minute retention", len(hours) - len(kept))
    hourly = _sum_into(engine, kept, base_s, HOUR_S)
    upsert(engine, AggregateRow, hourly, AGGREGATE_CONFLICT)
    oldest_day = now - settings.history_hourly_retention_s + DAY_S
    days = {(key, start - start % DAY_S) for key, start in kept if start - start % DAY_S >= oldest_day}
    daily = _sum_into(engine, days, HOUR_S, DAY_S)
    upsert(engine, AggregateRow, daily, AGGREGATE_CONFLICT)
    return len(hourly) + len(daily)


def pending_hours(engine: Engine, settings: Settings) -> set[Bucket]:
    """Hours whose rollup may be missing: every hour with aligned base windows at or after the
    newest hourly rollup (all of them in a database that has none yet, e.g. one upgraded from
    before rollups existed). Run once at start-up."""
    A = AggregateRow
    base_s = settings.window_size_s
    with engine.connect() as conn:
        newest = conn.execute(select(func.max(A.window_start)).where(A.window_s == HOUR_S)).scalar()
        q = (select(A.tenant, A.service, A.region, A.gpu_model, A.model_version,
                    A.window_start - A.window_start % literal_column(str(HOUR_S)))
             .where(A.window_s == base_s, A.window_start % base_s == 0).distinct())
        if newest is not None:
            q = q.where(A.window_start >= newest)
        return {((t, s, r, g, v), int(b)) for t, s, r, g, v, b in conn.execute(q)}


def apply_retention(engine: Engine, settings: Settings, now: float | None = None) -> dict[int, int]:
    """Delete history past its retention; returns rows deleted by window size class (the base
    size for every non-rollup window size)."""
    now = time.time() if now is None else now
    A = AggregateRow
    deleted = {}
    with engine.begin() as conn:
        deleted[settings.window_size_s] = conn.execute(delete(A).where(
            A.window_s.not_in(ROLLUP_SIZES_S), A.window_start < now - settings.history_retention_s)).rowcount
        deleted[HOUR_S] = conn.execute(delete(A).where(
            A.window_s == HOUR_S, A.window_start < now - settings.history_hourly_retention_s)).rowcount
        if settings.history_daily_retention_s > 0:
            deleted[DAY_S] = conn.execute(delete(A).where(
                A.window_s == DAY_S, A.window_start < now - settings.history_daily_retention_s)).rowcount
    return deleted
