"""Tests of the store: migrations, rollups, retention and history queries (SQLite and PostgreSQL)."""
