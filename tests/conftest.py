"""Session fixtures: one real Kafka broker for the whole run (started here unless .ci/run already
did), and databases: SQLite always, PostgreSQL where GPUCOST_TEST_PG_URL names a server (.ci/run
starts one and makes it mandatory with GPUCOST_TEST_REQUIRE_PG=1)."""

from __future__ import annotations

import os
import uuid

import pytest

from core.settings import Settings

# Every process a test starts (they inherit this environment): a consumer-group member that a test
# SIGKILLs (a worker, an API) hands its partitions over after the broker's minimum session, 6 s,
# instead of the clients' defaults (aiokafka 10 s, Faust 60 s), and a member joining a live group
# waits at most a 1 s heartbeat for the others to rejoin.
os.environ.setdefault("GPUCOST_KAFKA_SESSION_TIMEOUT_S", "6")
os.environ.setdefault("GPUCOST_KAFKA_HEARTBEAT_INTERVAL_S", "1")


@pytest.fixture(scope="session")
def kafka_broker():
    from core import broker

    settings = Settings()
    if broker.answers(settings.kafka_bootstrap):
        yield settings.kafka_bootstrap
        return
    broker.start(settings)
    try:
        yield settings.kafka_bootstrap
    finally:
        broker.stop(settings)


def _pg_admin_url() -> str | None:
    url = os.environ.get("GPUCOST_TEST_PG_URL")
    if not url and os.environ.get("GPUCOST_TEST_REQUIRE_PG") == "1":
        raise RuntimeError("GPUCOST_TEST_REQUIRE_PG=1 but GPUCOST_TEST_PG_URL is not set")
    return url


def _fresh_pg_database(admin_url: str) -> str:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"gpucost_{uuid.uuid4().hex[:12]}"
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def pytest_generate_tests(metafunc):
    if "database_url" in metafunc.fixturenames:
        backends = ["sqlite"]
        # @pytest.mark.one_database: what the test checks does not depend on the backend.
        if _pg_admin_url() and metafunc.definition.get_closest_marker("one_database") is None:
            backends.append("postgresql")
        metafunc.parametrize("database_url", backends, indirect=True)


@pytest.fixture
def database_url(request, tmp_path):
    """A fresh, empty database of each backend: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gpucost-test.db'}"
    return _fresh_pg_database(_pg_admin_url())


@pytest.fixture
def stack(kafka_broker, tmp_path, database_url):
    from tests.support import Stack

    s = Stack(tmp_path, database_url=database_url)
    try:
        yield s
    finally:
        s.stop(graceful=False)  # teardown: nothing is checked about the shutdown
