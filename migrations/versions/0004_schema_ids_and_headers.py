"""Predictions record the Schema Registry id their message was decoded with, and the source
headers passed through (``--pass-headers``: by default the W3C trace context), so a trace
started at the producer can be followed to the stored row.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as table:
        table.add_column(sa.Column("schema_id", sa.Integer(), nullable=True))
        table.add_column(sa.Column("headers", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as table:
        table.drop_column("headers")
        table.drop_column("schema_id")
