"""History benchmark: 30 days of history for 1,000 keys, queried over 30 days through the real
GET /api/history route (SQL, response model and JSON), on PostgreSQL or SQLite.

The store holds what retention leaves after 30 days of running: hourly and daily rollups for the
whole range, and the 1-minute windows of the most recent hours (--minute-hours; 7 days is the
default retention, fewer here to keep the load short on a small machine). The hourly rollups of
those recent hours are computed from their 1-minute windows by core/rollups.py, which is timed
too. Queries, each the median of --repeat runs:

  one key, 30 days, hourly       720 rows    (a service's cost chart over a month)
  one tenant (all its keys), 30 days, daily   keys x 30 rows  (the tenant's month, per service)
  one key, last day, 1-minute    1,440 rows  (for comparison)

Side by side, the same tenant-day computed on the fly from the 1-minute windows (what a query
would cost without rollups), as a ratio.

    python -m bench.history --database-url postgresql+psycopg://postgres@127.0.0.1:PORT/postgres
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DAY_S, HOUR_S, MINUTE_S = 86400, 3600, 60


def fresh_database(url: str, tmp: Path) -> tuple[str, callable]:
    """A new, empty database for the run, and how to drop it."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    if url.startswith("sqlite"):
        path = tmp / f"history-bench-{uuid.uuid4().hex[:8]}.db"
        return f"sqlite:///{path}", lambda: [p.unlink(missing_ok=True) for p in tmp.glob(path.name + "*")]
    name = f"gpucost_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop():
        from core.db import _engine_for

        _engine_for(fresh).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()

    fresh = make_url(url).set(database=name).render_as_string(hide_password=False)
    return fresh, drop


def row(k: int, tenants: int, start: int, size: int) -> dict:
    """A deterministic window of key k: an H100 at 6.88 USD/h, busy by a pattern of key and time."""
    busy = 0.3 + ((k * 7 + start // size) % 10) / 15.0
    gpu_s = size * (1 + k % 4)
    spend = 6.88 * gpu_s / 3600
    return {"tenant": f"tenant-{k % tenants}", "service": f"svc-{k}", "region": "us-east-1", "gpu_model": "H100",
            "model_version": "", "window_start": start, "window_end": start + size, "window_s": size, "spend_usd": spend,
            "spend_rate_usd_h": spend * 3600 / size, "gpu_seconds": float(gpu_s), "util_avg": min(busy, 1.0),
            "idle_usd": spend * max(0.0, 1 - busy), "events": gpu_s // 10, "tokens": 0, "requests": 0,
            "fallback_priced_events": 0}


def load(engine, keys: int, tenants: int, now: int, days: int, minute_hours: int, progress) -> dict:
    from core.rollups import AGGREGATE_CONFLICT, upsert
    from core.tables.history import AggregateRow

    first_day = now - now % DAY_S - (days - 1) * DAY_S
    last_hour = now - now % HOUR_S
    minute_from = last_hour - minute_hours * HOUR_S
    plan = [("daily rollups", DAY_S, first_day, now), ("hourly rollups", HOUR_S, first_day, minute_from),
            ("1-minute windows", MINUTE_S, minute_from, last_hour)]
    counts = {}
    for label, size, lo, hi in plan:
        starts = list(range(lo, hi, size))
        task = progress.add_task(f"writing {label}", total=len(starts) * keys)
        batch: list[dict] = []
        for start in starts:
            batch += [row(k, tenants, start, size) for k in range(keys)]
            if len(batch) >= 20_000:
                upsert(engine, AggregateRow, batch, AGGREGATE_CONFLICT)
                progress.advance(task, len(batch))
                batch = []
        upsert(engine, AggregateRow, batch, AGGREGATE_CONFLICT)
        progress.advance(task, len(batch))
        counts[label] = len(starts) * keys
    return {"counts": counts, "minute_from": minute_from, "last_hour": last_hour, "first_day": first_day}


def timed(fn, repeat: int) -> tuple[float, float, object]:
    runs, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), max(runs), out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True, help="PostgreSQL admin URL (a fresh database is made "
                        "and dropped) or sqlite:///anything (a temp file)")
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--tenants", type=int, default=1, help="keys are spread over this many tenants")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--minute-hours", type=int, default=24, help="hours of 1-minute windows kept at the end")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    args = parser.parse_args(argv)

    import tempfile

    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from rich.console import Console
    from rich.progress import Progress
    from sqlalchemy import func, select, text

    from api.routes import history
    from core.db import init_db
    from core.rollups import hour_buckets, rollup
    from core.settings import Settings
    from core.tables.history import AggregateRow

    console = Console(width=160)
    tmp = Path(tempfile.mkdtemp(prefix="gpucost-history-"))
    url, drop = fresh_database(args.database_url, tmp)
    try:
        settings = Settings(database_url=url, data_dir=tmp, auth_disabled=True,
                            history_retention_s=max(7 * DAY_S, (args.minute_hours + 2) * HOUR_S),
                            history_hourly_retention_s=max(90 * DAY_S, (args.days + 2) * DAY_S))
        engine = init_db(settings)
        now = int(time.time())
        with Progress(console=console, transient=True) as progress:
            t0 = time.perf_counter()
            info = load(engine, args.keys, args.tenants, now, args.days, args.minute_hours, progress)
            load_s = time.perf_counter() - t0
        if engine.dialect.name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE aggregates"))
            with engine.connect() as conn:
                size = conn.execute(text("SELECT pg_total_relation_size('aggregates')")).scalar()
        else:
            size = Path(url.removeprefix("sqlite:///")).stat().st_size

        # The hourly rollups of the recent hours, from their 1-minute windows (what the API does).
        minute_rows = [{"tenant": f"tenant-{k % args.tenants}", "service": f"svc-{k}", "region": "us-east-1",
                        "gpu_model": "H100", "window_s": MINUTE_S, "window_start": h}
                       for k in range(args.keys) for h in range(info["minute_from"], info["last_hour"], HOUR_S)]
        t0 = time.perf_counter()
        written = rollup(engine, settings, hour_buckets(minute_rows, MINUTE_S))
        rollup_s = time.perf_counter() - t0

        app = FastAPI()
        app.state.settings = settings
        app.include_router(history.router)
        client = TestClient(app)
        since = info["first_day"]

        def get(**params):
            r = client.get("/api/history", params={"limit": 50000, **params})
            r.raise_for_status()
            return r.json()

        tenant = "tenant-0"
        queries = [
            (f"one key, {args.days} days hourly", dict(tenant=tenant, service="svc-0", window_s=HOUR_S, since=since)),
            (f"{tenant} ({args.keys // args.tenants} keys), {args.days} days daily", dict(tenant=tenant, window_s=DAY_S, since=since)),
            ("one key, last day 1-minute", dict(tenant=tenant, service="svc-0", since=info["last_hour"] - DAY_S)),
        ]
        results = []
        get(**queries[0][1])  # warm-up: the first request starts the test client's event loop thread
        for label, params in queries:
            med, worst, rows = timed(lambda: get(**params), args.repeat)
            results.append((label, len(rows), med, worst))

        # Without rollups: the tenant's last full minute-covered hours summed from 1-minute windows.
        A = AggregateRow

        def on_the_fly():
            q = (select(A.service, func.sum(A.spend_usd), func.sum(A.events))
                 .where(A.tenant == tenant, A.window_s == MINUTE_S, A.window_start >= info["minute_from"],
                        A.window_start % MINUTE_S == 0).group_by(A.service))
            with engine.connect() as conn:
                return conn.execute(q).all()

        def from_rollups():
            q = (select(A.service, func.sum(A.spend_usd), func.sum(A.events))
                 .where(A.tenant == tenant, A.window_s == HOUR_S, A.window_start >= info["minute_from"])
                 .group_by(A.service))
            with engine.connect() as conn:
                return conn.execute(q).all()

        fly_s, _, fly = timed(on_the_fly, args.repeat)
        roll_s, _, rolled = timed(from_rollups, args.repeat)
        assert sorted((s, round(v, 6), e) for s, v, e in fly) == sorted((s, round(v, 6), e) for s, v, e in rolled), \
            "rollups differ from the 1-minute windows they sum"

        console.print(f"[bold]history benchmark[/] on {engine.dialect.name}: {args.keys} keys in {args.tenants} "
                      f"tenant(s), {args.days} days")
        console.print(f"  stored: {info['counts']} ({size / 1e6:.0f} MB incl. indexes), loaded in {load_s:.0f} s")
        console.print(f"  rollup of {args.minute_hours} h x {args.keys} keys from 1-minute windows: {rollup_s:.2f} s "
                      f"({written} rollup rows, {rollup_s / max(args.minute_hours, 1) * 1000:.0f} ms per hour of data)")
        for label, n, med, worst in results:
            ok = "under 1 s" if worst < 1.0 else "OVER 1 s"
            console.print(f"  GET /api/history {label:40} {n:6} rows  median {med * 1000:7.1f} ms  "
                          f"max {worst * 1000:7.1f} ms  ({ok})")
        console.print(f"  {args.minute_hours} h of {tenant} per service: from 1-minute windows {fly_s * 1000:.1f} ms, "
                      f"from hourly rollups {roll_s * 1000:.1f} ms (x{fly_s / max(roll_s, 1e-9):.0f})")
        return 0 if all(worst < 1.0 for *_, worst in results) else 1
    finally:
        if not args.keep:
            drop()


if __name__ == "__main__":
    sys.exit(main())
