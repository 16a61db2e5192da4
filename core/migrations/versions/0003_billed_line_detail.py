"""What a billing line says beside its cost, for the reconciliation's breakdown: charge category,
list, effective and billed cost, the importer's stable line id and the account. Rows stored before
keep NULL there (and charge category "usage", all the API stored then).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = ("charge_category", "list_cost_usd", "effective_cost_usd", "billed_cost_usd", "line_id", "account")


def upgrade() -> None:
    with op.batch_alter_table("billed_line_items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("charge_category", sa.String(length=20), server_default="usage", nullable=False))
        batch_op.add_column(sa.Column("list_cost_usd", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("effective_cost_usd", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("billed_cost_usd", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("line_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("account", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("billed_line_items", schema=None) as batch_op:
        for name in reversed(COLUMNS):
            batch_op.drop_column(name)
