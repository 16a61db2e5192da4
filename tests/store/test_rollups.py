"""Hourly and daily rollups are the exact sums of the aligned 1-minute windows (latest value of
each), retention deletes each resolution after its own setting, and GET /api/history serves each
resolution. Against SQLite and PostgreSQL, through the hub's own persistence path."""

from __future__ import annotations

import random
import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.hub import Hub
from core.db import init_db, session_scope
from core.rollups import DAY_S, HOUR_S, apply_retention
from core.settings import Settings
from core.tables.history import AggregateRow

# (tenant, service, region, gpu_model, model_version): one service in two versions, canary and stable
KEYS = [("acme", "chat", "us-east-1", "H100", "v1"), ("acme", "chat", "us-east-1", "H100", "v2-canary"),
        ("acme", "train", "us-east-1", "H100", ""), ("globex", "chat", "eu-west-1", "L4", "")]
SUMMED = ("spend_usd", "gpu_seconds", "idle_usd", "events", "tokens", "requests", "fallback_priced_events")


def window(key, ws: int, rng: random.Random, size: int = 60) -> dict:
    gpu_s = rng.choice([10.0, 60.0, 240.0])
    spend = round(rng.uniform(0.001, 3.0), 6)
    return {"tenant": key[0], "service": key[1], "region": key[2], "gpu_model": key[3], "model_version": key[4],
            "window_start": ws,
            "window_end": ws + size, "window_s": size, "spend_usd": spend, "spend_rate_usd_h": spend * 3600 / size,
            "gpu_seconds": gpu_s, "util_avg": rng.random(), "idle_usd": spend * rng.random(),
            "events": rng.randrange(1, 50), "tokens": rng.randrange(0, 9000), "requests": rng.randrange(0, 20),
            "fallback_priced_events": rng.randrange(0, 2), "kind": "usage"}


@pytest.fixture
def settings(database_url, tmp_path):
    s = Settings(database_url=database_url, data_dir=tmp_path / "data")
    init_db(s)
    return s


def reference(latest: dict[tuple, dict], size: int) -> dict[tuple, dict]:
    """Brute force: sum the latest value of every aligned 60 s window into its hour or day."""
    out: dict[tuple, dict] = {}
    for (key, ws), w in latest.items():
        if ws % 60:
            continue
        r = out.setdefault((key, ws - ws % size), {f: 0 for f in SUMMED} | {"util_s": 0.0})
        for f in SUMMED:
            r[f] += w[f]
        r["util_s"] += w["util_avg"] * w["gpu_seconds"]
    return out


def stored(settings: Settings, size: int) -> dict[tuple, AggregateRow]:
    with session_scope(settings) as s:
        return {((r.tenant, r.service, r.region, r.gpu_model, r.model_version), r.window_start): r
                for r in s.scalars(select(AggregateRow).where(AggregateRow.window_s == size))}


def test_rollups_are_exact_sums_of_the_latest_aligned_windows(settings):
    """Hopping windows (step 10 s) of two days in random batches, many revised later (a late
    event re-emits a window): every hourly and daily row equals the brute-force sum of the newest
    value of each aligned window, and the non-aligned windows count in none."""
    rng = random.Random(7)
    now = int(time.time())
    first = now - now % DAY_S - DAY_S  # yesterday 00:00: two (partial) days, about 40 hours
    hub = Hub(settings)
    latest: dict[tuple, dict] = {}
    records = [window(k, ws, rng) for k in KEYS for ws in range(first, now - 60, 10) if rng.random() < 0.5]
    records += [window(k, ws, rng) for k in KEYS for ws in rng.sample(range(first, now - 60, 60), 200)]  # revisions
    for i in range(0, len(records), 997):  # several batches, as the consumer stores them
        batch = records[i:i + 997]
        for r in batch:
            latest[((r["tenant"], r["service"], r["region"], r["gpu_model"], r["model_version"]), r["window_start"])] = r
        hub._persist(batch)

    for size in (HOUR_S, DAY_S):
        expected, got = reference(latest, size), stored(settings, size)
        assert set(got) == set(expected) and len(got) >= (2 if size == DAY_S else 30) * len(KEYS) // 3
        for k, exp in expected.items():
            row = got[k]
            assert row.window_end == row.window_start + size
            assert (row.events, row.tokens, row.requests, row.fallback_priced_events) == (
                exp["events"], exp["tokens"], exp["requests"], exp["fallback_priced_events"])
            for f in ("spend_usd", "gpu_seconds", "idle_usd"):
                assert getattr(row, f) == pytest.approx(exp[f], rel=1e-12), (k, f)
            assert row.util_avg == pytest.approx(exp["util_s"] / exp["gpu_seconds"], rel=1e-12)
            assert row.spend_rate_usd_h == pytest.approx(exp["spend_usd"] * 3600 / size, rel=1e-12)


def test_windows_stored_before_rollups_existed_are_rolled_up_at_start(settings):
    """An upgraded database has 1-minute windows and no rollups: the hub computes them once."""
    rng = random.Random(3)
    now = int(time.time())
    start = now - now % HOUR_S - 3 * HOUR_S
    rows = [window(KEYS[0], ws, rng) for ws in range(start, start + 3 * HOUR_S, 60)]
    with session_scope(settings) as s:
        s.add_all(AggregateRow(**{f: r[f] for f in AggregateRow.FIELDS}) for r in rows)
    assert stored(settings, HOUR_S) == {}
    Hub(settings)._rollup_pending()
    hours = stored(settings, HOUR_S)
    assert sorted(ws for _, ws in hours) == [start, start + HOUR_S, start + 2 * HOUR_S]
    assert sum(h.events for h in hours.values()) == sum(r["events"] for r in rows)


def test_retention_deletes_each_resolution_after_its_own_setting(database_url, tmp_path):
    s = Settings(database_url=database_url, data_dir=tmp_path / "data", history_retention_s=2 * DAY_S,
                 history_hourly_retention_s=10 * DAY_S, history_daily_retention_s=40 * DAY_S)
    engine = init_db(s)
    rng = random.Random(1)
    now = 1_800_000_000 - 1_800_000_000 % DAY_S
    rows = [window(KEYS[0], now - age, rng, size) for size in (60, HOUR_S, DAY_S)
            for age in (DAY_S, 3 * DAY_S, 20 * DAY_S, 50 * DAY_S)]
    with session_scope(s) as sess:
        sess.add_all(AggregateRow(**{f: r[f] for f in AggregateRow.FIELDS}) for r in rows)
    deleted = apply_retention(engine, s, now=now)
    assert deleted == {60: 3, HOUR_S: 2, DAY_S: 1}
    with session_scope(s) as sess:
        left = sorted((r.window_s, now - r.window_start) for r in sess.scalars(select(AggregateRow)))
    assert left == [(60, DAY_S), (HOUR_S, DAY_S), (HOUR_S, 3 * DAY_S), (DAY_S, DAY_S), (DAY_S, 3 * DAY_S),
                    (DAY_S, 20 * DAY_S)]
    keep = Settings(database_url=database_url, data_dir=tmp_path / "data", history_daily_retention_s=0)
    apply_retention(engine, keep, now=now + 1000 * DAY_S)
    with session_scope(s) as sess:
        assert sess.scalar(select(func.count()).select_from(AggregateRow).where(AggregateRow.window_s == DAY_S)) == 3


def test_history_serves_each_resolution_and_refuses_others(settings):
    from api.routes import history

    rng = random.Random(5)
    now = int(time.time())
    hour = now - now % HOUR_S - HOUR_S
    rows = [window(k, ws, rng) for k in KEYS for ws in range(hour, hour + HOUR_S, 10)]
    Hub(settings)._persist(rows)
    app = FastAPI()
    app.state.settings = settings.model_copy(update={"auth_disabled": True})
    app.include_router(history.router)
    client = TestClient(app)
    minute = client.get("/api/history", params={"tenant": "acme", "service": "chat", "model_version": "v1",
                                                "since": hour}).json()
    assert len(minute) == HOUR_S // 10 and {r["window_s"] for r in minute} == {60}
    assert {r["model_version"] for r in minute} == {"v1"}
    hourly = client.get("/api/history", params={"tenant": "acme", "window_s": 3600, "since": hour - DAY_S}).json()
    assert [(r["service"], r["model_version"], r["window_start"], r["window_s"]) for r in hourly] == [
        ("chat", "v1", hour, 3600), ("chat", "v2-canary", hour, 3600), ("train", "", hour, 3600)]
    aligned = [r for r in rows if r["tenant"] == "acme" and r["service"] == "chat" and r["model_version"] == "v1"
               and r["window_start"] % 60 == 0]
    assert hourly[0]["spend_usd"] == pytest.approx(sum(r["spend_usd"] for r in aligned), rel=1e-12)
    assert hourly[0]["events"] == sum(r["events"] for r in aligned)
    daily = client.get("/api/history", params={"window_s": 86400}).json()
    assert {(r["tenant"], r["service"]) for r in daily} == {k[:2] for k in KEYS}
    assert sum(r["events"] for r in daily) == sum(r["events"] for r in rows if r["window_start"] % 60 == 0)
    bad = client.get("/api/history", params={"window_s": 120})
    assert bad.status_code == 422 and "3600" in bad.json()["detail"]
