"""History by resolution: an index on (tenant, window_s, window_start), so a tenant's hourly or daily
rollups over a long range are read without scanning its 1-minute windows.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_aggregates_tenant_size_time", "aggregates", ["tenant", "window_s", "window_start"])


def downgrade() -> None:
    op.drop_index("ix_aggregates_tenant_size_time", table_name="aggregates")
