"""Alembic environment: runs on the connection `core.db.init_db` hands over (it holds the
migration lock on it), or on the configured URL when run by the `alembic` command."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from core.tables import Base  # importing the package declares every table on Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters by copying the table
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()
