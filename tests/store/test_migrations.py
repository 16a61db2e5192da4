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
    assert current_revision(engine) == head_revision() == "0003"
    assert schema_diff(database_url) == []  # a model changed without a migration fails here


def test_upgrade_from_the_create_all_schema_keeps_its_data(database_url, tmp_path):
    """Before migrations, init_db ran `create_all`: such a database has every table and no
    alembic_version. It is stamped at the baseline and upgraded, rows intact."""
    from core import db
    from core.tables import Base
    from core.tables.history import AggregateRow

    old = create_engine(database_url)
    Base.metadata.create_all(old)
    with old.begin() as conn:  # the schema as it was at a15a5c5: without revisions 0002 and 0003
        conn.execute(text("DROP INDEX ix_aggregates_tenant_size_time"))
        for column in BILLED_DETAIL:
            conn.execute(text(f"ALTER TABLE billed_line_items DROP COLUMN {column}"))
        for i in range(50):
            conn.execute(AggregateRow.__table__.insert().values(
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
    assert db.current_revision(engine) == "0003"
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
    assert [out.strip() for out, _ in results] == ["0003"] * CONCURRENT
    engine = create_engine(database_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == ["0003"]
    engine.dispose()
    assert schema_diff(database_url) == []
