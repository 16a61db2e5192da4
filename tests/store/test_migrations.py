"""Alembic migrations replace `create_all`: a fresh database, a database made by the old
`create_all` with data in it, and several processes starting at once all end at the head revision
with the same schema the models declare, and no row lost."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, select, text

from core.settings import Settings
from tests.support import ROOT


def settings_for(url: str, tmp_path) -> Settings:
    return Settings(database_url=url, data_dir=tmp_path / "data")


def aggregates_before_0004(with_0002_index: bool = True):
    """The aggregates table as revisions 0001 and 0002 made it: keyed by four names, no model_version."""
    from sqlalchemy import Column, Float, Index, Integer, MetaData, String, Table, UniqueConstraint

    names = ("tenant", "service", "region", "gpu_model")
    t = Table("aggregates", MetaData(), Column("id", Integer, primary_key=True, autoincrement=True),
              *(Column(n, String(200), nullable=False) for n in names),
              *(Column(n, Integer, nullable=False) for n in ("window_start", "window_end", "window_s")),
              *(Column(n, Float, nullable=False) for n in ("spend_usd", "spend_rate_usd_h", "gpu_seconds", "util_avg",
                                                           "idle_usd")),
              *(Column(n, Integer, nullable=False) for n in ("events", "tokens", "requests", "fallback_priced_events")),
              UniqueConstraint(*names, "window_s", "window_start", name="uq_aggregate_window"),
              Index("ix_aggregates_tenant_time", "tenant", "window_start"), Index("ix_aggregates_time", "window_start"))
    if with_0002_index:
        Index("ix_aggregates_tenant_size_time", t.c.tenant, t.c.window_s, t.c.window_start)
    return t


def schema_diff(url: str) -> list:
    import core.tables  # noqa: F401
    from core.tables import Base

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()


def test_fresh_database_migrates_to_head_and_matches_the_models(database_url, tmp_path):
    from core.db import current_revision, head_revision, init_db

    engine = init_db(settings_for(database_url, tmp_path))
    assert current_revision(engine) == head_revision() == "0004"
    assert schema_diff(database_url) == []  # a model changed without a migration fails here


def test_upgrade_from_the_create_all_schema_keeps_its_data(database_url, tmp_path):
    """Before migrations, init_db ran `create_all`: such a database has every table and no
    alembic_version. It is stamped at the baseline and upgraded, rows intact."""
    from core import db
    from core.tables import Base
    from core.tables.history import AggregateRow

    old = create_engine(database_url)
    Base.metadata.create_all(old)
    with old.begin() as conn:  # the schema as it was at a15a5c5: without revision 0002's index, nor 0003's billed detail, nor 0004's model_version
        conn.execute(text("DROP TABLE aggregates"))
        before = aggregates_before_0004(with_0002_index=False)
        before.create(conn)
        for column in BILLED_DETAIL:
            conn.execute(text(f"ALTER TABLE billed_line_items DROP COLUMN {column}"))
        for i in range(50):
            conn.execute(before.insert().values(
                tenant="acme", service=f"svc-{i % 5}", region="us-east-1", gpu_model="H100", window_start=60 * i,
                window_end=60 * i + 60, window_s=60, spend_usd=0.25 * i, spend_rate_usd_h=15.0 * i, gpu_seconds=60.0,
                util_avg=0.5, idle_usd=0.125 * i, events=6, tokens=i, requests=0, fallback_priced_events=0))
        conn.execute(text("INSERT INTO webhooks (id, tenant, name, url, format, enabled, secret, created_at) "
                          "VALUES ('w1', 'acme', 'ops', 'https://example.com/h', 'gpucost', true, 's', 1.0)"))
    assert "alembic_version" not in inspect(old).get_table_names()
    old.dispose()

    engine = db.init_db(settings_for(database_url, tmp_path))
    assert db.current_revision(engine) == db.head_revision()
    assert "ix_aggregates_tenant_size_time" in {i["name"] for i in inspect(engine).get_indexes("aggregates")}
    with engine.connect() as conn:
        rows = conn.execute(select(AggregateRow.spend_usd).order_by(AggregateRow.window_start)).scalars().all()
        assert rows == [0.25 * i for i in range(50)]
        assert set(conn.execute(select(AggregateRow.model_version)).scalars()) == {""}
        assert conn.execute(text("SELECT name FROM webhooks")).scalars().all() == ["ops"]
    assert schema_diff(database_url) == []


BILLED_DETAIL = ("charge_category", "list_cost_usd", "effective_cost_usd", "billed_cost_usd", "line_id", "account")


def test_upgrade_to_0003_keeps_billed_line_items_and_reads_them_as_usage_without_detail(database_url, tmp_path):
    """Line items stored before the reconciliation's breakdown keep their cost; the new columns are
    NULL (not said), and the charge category is "usage", which is all the API stored then."""
    from alembic import command

    from core import db
    from core.tables.history import BilledLineItem

    engine = create_engine(database_url)
    with engine.begin() as conn:
        command.upgrade(db._alembic_config(conn), "0002")
    with engine.begin() as conn:
        for i in range(3):
            conn.execute(text(
                "INSERT INTO billed_line_items (tenant, service, cloud, region, instance_type, instance_id, gpu_model, "
                "gpu_count, period_start, period_end, cost_usd, pricing, source) VALUES ('acme', 'chat', 'aws', "
                f"'us-east-1', 'p5.48xlarge', 'i-{i}', 'H100-80GB', 8, {3600 * i}, {3600 * i + 3600}, {55.04 + i}, "
                "'on_demand', 'aws-cur')"))
    engine.dispose()

    engine = db.init_db(settings_for(database_url, tmp_path))
    assert db.current_revision(engine) == "0004"
    with engine.connect() as conn:
        rows = conn.execute(select(BilledLineItem.instance_id, BilledLineItem.cost_usd, BilledLineItem.charge_category,
                                   BilledLineItem.list_cost_usd, BilledLineItem.line_id)
                            .order_by(BilledLineItem.instance_id)).all()
    assert [tuple(r) for r in rows] == [(f"i-{i}", 55.04 + i, "usage", None, None) for i in range(3)]
    assert schema_diff(database_url) == []
    # And back: the downgrade drops exactly the new columns, the rows stay.
    from alembic import command as cmd
    with engine.begin() as conn:
        cmd.downgrade(db._alembic_config(conn), "0002")
    columns = {c["name"] for c in inspect(engine).get_columns("billed_line_items")}
    assert not columns & set(BILLED_DETAIL) and "cost_usd" in columns
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM billed_line_items")).scalar() == 3


def test_partial_old_schema_is_refused_with_a_clear_error(database_url, tmp_path):
    import pytest

    from core import db

    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE aggregates (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    with pytest.raises(RuntimeError, match="not a schema init_db can upgrade"):
        db.init_db(settings_for(database_url, tmp_path))


CONCURRENT = 6


def test_several_processes_starting_at_once_migrate_once(database_url, tmp_path):
    """Each process waits for the same instant, then calls init_db: the lock makes one migrate and
    the others find the head revision (without it they race on CREATE TABLE and fail)."""
    start_at = time.time() + 3.0
    script = ("import sys, time\n"
              "from core.settings import Settings\n"
              "from core.db import init_db, current_revision\n"
              f"time.sleep(max(0.0, {start_at} - time.time()))\n"
              "e = init_db(Settings(database_url=sys.argv[1], data_dir=sys.argv[2]))\n"
              "print(current_revision(e))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", script, database_url, str(tmp_path / f"d{i}")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(CONCURRENT)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * CONCURRENT, [err[-2000:] for _, err in results]
    assert [out.strip() for out, _ in results] == ["0004"] * CONCURRENT
    engine = create_engine(database_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == ["0004"]
    engine.dispose()
    assert schema_diff(database_url) == []


def _migrate(url: str, revision: str, down: bool = False) -> None:
    from alembic import command

    from core.db import _alembic_config

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            (command.downgrade if down else command.upgrade)(_alembic_config(conn), revision)
    finally:
        engine.dispose()


def _window(ws: int, spend: float, service: str = "chat", **extra) -> dict:
    return {"tenant": "acme", "service": service, "region": "us-east-1", "gpu_model": "H100", "window_start": ws,
            "window_end": ws + 60, "window_s": 60, "spend_usd": spend, "spend_rate_usd_h": spend * 60,
            "gpu_seconds": 60.0, "util_avg": 0.5, "idle_usd": spend / 2, "events": 6, "tokens": 100, "requests": 1,
            "fallback_priced_events": 0, **extra}


def test_0004_keeps_the_stored_history_as_unversioned_and_keys_new_windows_by_model_version(database_url, tmp_path):
    """History stored before revision 0004 (four-part keys, with rollups) upgrades with every row kept
    under model_version "" and its rollups intact; after it, two versions of one window are two rows
    whose hourly rollups are each their own exact sum, and the old rows still answer the history."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from api.hub import Hub
    from api.routes.history import router
    from core import db
    from core.tables.history import AggregateRow

    _migrate(database_url, "0002")
    hour = int(time.time()) // 3600 * 3600 - 3600  # within the 1-minute retention: rolled up
    old = create_engine(database_url)
    with old.begin() as conn:
        before = aggregates_before_0004()
        conn.execute(before.insert(), [_window(hour + 60 * i, 0.5 + i) for i in range(3)])
        conn.execute(before.insert(), [{**_window(hour, 4.5), "window_s": 3600, "window_end": hour + 3600}])
        try:  # at 0002 a second row of the same window and names is refused: the key has no version
            with conn.begin_nested():
                conn.execute(before.insert(), [_window(hour, 9.0)])
            raise AssertionError("0002 accepted a duplicate window")
        except Exception as exc:  # noqa: BLE001 - the driver's IntegrityError
            assert "unique" in str(exc).lower() or "duplicate" in str(exc).lower(), exc
    old.dispose()

    settings = settings_for(database_url, tmp_path)
    engine = db.init_db(settings)
    assert db.current_revision(engine) == "0004"
    assert schema_diff(database_url) == []
    with engine.connect() as conn:
        rows = conn.execute(select(AggregateRow.window_s, AggregateRow.window_start, AggregateRow.model_version,
                                   AggregateRow.spend_usd).order_by(AggregateRow.window_s, AggregateRow.window_start)).all()
    assert rows == [(60, hour, "", 0.5), (60, hour + 60, "", 1.5), (60, hour + 120, "", 2.5), (3600, hour, "", 4.5)]

    # Canary and stable of the same window, through the hub's persistence (windows and rollups).
    hub = Hub(settings)
    hub._rollup_pending()  # what the API does at start: the hours since the newest hourly rollup
    hub._persist([_window(hour + 180, 1.25, model_version="v1"), _window(hour + 180, 0.75, model_version="v2-canary"),
                  _window(hour + 240, 2.0, model_version="v1")])
    app = FastAPI()
    app.state.settings, app.state.hub = settings, hub
    app.include_router(router)
    from api.auth import Principal, principal

    app.dependency_overrides[principal] = lambda: Principal(tenant=None, key_id="admin")
    client = TestClient(app)

    def hist(**params):
        r = client.get("/api/history", params=params)
        assert r.status_code == 200, r.text
        return [(w["window_start"] - hour, w["model_version"], w["spend_usd"]) for w in r.json()]

    assert hist(window_s=60, model_version="v2-canary") == [(180, "v2-canary", 0.75)]
    assert hist(window_s=60, since=hour + 180) == [(180, "v1", 1.25), (180, "v2-canary", 0.75), (240, "v1", 2.0)]
    assert hist(window_s=60, model_version="") == [(0, "", 0.5), (60, "", 1.5), (120, "", 2.5)]
    hourly = {v: s for _, v, s in hist(window_s=3600)}
    # The unversioned hour is recomputed from its three stored windows (0.5 + 1.5 + 2.5): exact.
    assert hourly == {"": 4.5, "v1": 3.25, "v2-canary": 0.75}
    assert {v: s for _, v, s in hist(window_s=86400)} == hourly
    r = client.get("/api/history", params={"model_version": "v" * 201})
    assert r.status_code == 422 and "model_version" in r.text


def test_0004_downgrade_sums_the_versions_of_a_window_back_into_one_row(database_url, tmp_path):
    from core import db
    from core.rollups import AGGREGATE_CONFLICT, upsert
    from core.tables.history import AggregateRow

    engine = db.init_db(settings_for(database_url, tmp_path))
    upsert(engine, AggregateRow, [_window(0, 1.0, model_version="v1"), _window(0, 3.0, model_version="v2-canary"),
                                  _window(60, 2.0, model_version="")], AGGREGATE_CONFLICT)
    engine.dispose()
    _migrate(database_url, "0003", down=True)
    old = create_engine(database_url)
    with old.connect() as conn:
        assert "model_version" not in {c["name"] for c in inspect(old).get_columns("aggregates")}
        rows = conn.execute(text("SELECT window_start, spend_usd, events, idle_usd FROM aggregates ORDER BY window_start")).all()
    old.dispose()
    assert [tuple(r) for r in rows] == [(0, 4.0, 12, 2.0), (60, 2.0, 6, 1.0)]
