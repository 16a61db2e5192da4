"""Alembic migrations of gpucost's schema (core/tables/), run by `core.db.init_db` under a lock."""
