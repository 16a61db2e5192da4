"""The one place that opens the database: SQLAlchemy 2.0 engine and sessions for SQLite (default,
a file under the data dir) or PostgreSQL (by URL). Every table is declared on `Base` in
`core/tables/`, one module per concept, so one metadata holds the whole schema; `init_db` migrates
it with Alembic (core/migrations/), never with `create_all`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from core.settings import Settings, get_settings

@lru_cache(maxsize=8)
def _engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # WAL: readers never block the writer
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def get_engine(settings: Settings | None = None) -> Engine:
    settings = settings or get_settings()
    if settings.database.startswith("sqlite:///"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return _engine_for(settings.database)


@lru_cache(maxsize=8)
def _sessionmaker_for(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=_engine_for(url), expire_on_commit=False)


#: Any constant: the key of the PostgreSQL advisory lock every migrating process takes.
_MIGRATION_LOCK_KEY = 0x67707563  # "gpuc"
#: The tables of revision 0001 (the schema `create_all` made before migrations).
BASELINE_TABLES = frozenset({
    "aggregates", "alert_rules", "api_keys", "benchmark_runs", "billed_line_items", "pricing_overrides",
    "recommendations", "webhooks", "webhook_deliveries", "webhook_delivery_attempts"})
#: Databases this process has brought to the head revision (init_db is called per command).
_migrated: set[str] = set()


def _alembic_config(connection=None):
    from alembic.config import Config

    import core.migrations

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(core.migrations.__file__).parent))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _upgrade(connection) -> None:
    """Under the lock: stamp a database made by the old `create_all` (tables, no alembic_version)
    at the baseline, then upgrade to head. Re-checked here: another process may have just done it."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import inspect

    cfg = _alembic_config(connection)
    if MigrationContext.configure(connection).get_current_revision() is None:
        existing = set(inspect(connection).get_table_names())
        if BASELINE_TABLES <= existing:
            command.stamp(cfg, "0001")
        elif existing & BASELINE_TABLES:
            raise RuntimeError(f"database has some of gpucost's tables ({sorted(existing & BASELINE_TABLES)}) but not "
                               f"all, and no Alembic revision: not a schema init_db can upgrade")
    command.upgrade(cfg, "head")


@contextmanager
def _sqlite_file_lock(url: str) -> Iterator[None]:
    """An exclusive lock on a file next to the database: one migrating process at a time."""
    import fcntl

    from sqlalchemy.engine import make_url

    db = make_url(url).database
    if not db or db == ":memory:":
        yield
        return
    with open(f"{db}.migrate.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def init_db(settings: Settings | None = None) -> Engine:
    """Bring the schema to the newest Alembic revision (idempotent, safe when several processes
    start at once: a PostgreSQL advisory lock, or on SQLite a file lock, serialises them)."""
    settings = settings or get_settings()
    engine = get_engine(settings)
    url = settings.database
    if url in _migrated:
        return engine
    if current_revision(engine) != head_revision():
        if engine.dialect.name == "postgresql":
            from sqlalchemy import text

            with engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
                conn.commit()  # the lock is the session's, not the transaction's
                try:
                    _upgrade(conn)
                    conn.commit()
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK_KEY})
                    conn.commit()
        else:
            with _sqlite_file_lock(url), engine.connect() as conn:
                _upgrade(conn)
                conn.commit()
    _migrated.add(url)
    return engine


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[Session]:
    """One session per unit of work: commit on success, roll back on error."""
    settings = settings or get_settings()
    get_engine(settings)
    session = _sessionmaker_for(settings.database)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
