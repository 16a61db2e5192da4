"""Model version as a fifth key part of aggregate history: a `model_version` column ("" for events
without one, and for every row stored before), and the unique window constraint over it, so a
canary and a stable version of one service keep their own windows and rollups.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

OLD_KEY = ["tenant", "service", "region", "gpu_model", "window_s", "window_start"]
NEW_KEY = ["tenant", "service", "region", "gpu_model", "model_version", "window_s", "window_start"]


def upgrade() -> None:
    # batch: SQLite cannot alter a constraint in place, so the table is copied (rows intact);
    # PostgreSQL alters it directly. Existing rows get "" from the server default.
    with op.batch_alter_table("aggregates") as batch:
        batch.add_column(sa.Column("model_version", sa.String(length=200), nullable=False, server_default=""))
        batch.drop_constraint("uq_aggregate_window", type_="unique")
        batch.create_unique_constraint("uq_aggregate_window", NEW_KEY)


def downgrade() -> None:
    # Versions of one window are summed back into one row first: the old key cannot hold them apart.
    op.execute(
        "UPDATE aggregates SET spend_usd = t.spend_usd, gpu_seconds = t.gpu_seconds, idle_usd = t.idle_usd, "
        "events = t.events, tokens = t.tokens, requests = t.requests, "
        "fallback_priced_events = t.fallback_priced_events, "
        "spend_rate_usd_h = t.spend_usd * 3600.0 / aggregates.window_s, "
        "util_avg = CASE WHEN t.gpu_seconds > 0 THEN t.util_seconds / t.gpu_seconds ELSE 0 END "
        "FROM (SELECT MIN(id) AS id, SUM(spend_usd) AS spend_usd, SUM(gpu_seconds) AS gpu_seconds, "
        "SUM(util_avg * gpu_seconds) AS util_seconds, SUM(idle_usd) AS idle_usd, SUM(events) AS events, "
        "SUM(tokens) AS tokens, SUM(requests) AS requests, SUM(fallback_priced_events) AS fallback_priced_events "
        "FROM aggregates GROUP BY " + ", ".join(OLD_KEY) + " HAVING COUNT(*) > 1) AS t WHERE aggregates.id = t.id")
    op.execute("DELETE FROM aggregates WHERE id NOT IN (SELECT MIN(id) FROM aggregates GROUP BY "
               + ", ".join(OLD_KEY) + ")")
    with op.batch_alter_table("aggregates") as batch:
        batch.drop_constraint("uq_aggregate_window", type_="unique")
        batch.create_unique_constraint("uq_aggregate_window", OLD_KEY)
        batch.drop_column("model_version")
