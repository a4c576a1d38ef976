"""Training runs record the host and process that run them, so that a run whose process died
without a word (SIGKILL, the OOM killer) can be told from one still going.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batch mode: SQLite cannot drop columns in place, and downgrade must work on it too.
    with op.batch_alter_table("training_runs") as table:
        table.add_column(sa.Column("host", sa.String(255), nullable=True))
        table.add_column(sa.Column("pid", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_runs") as table:
        table.drop_column("pid")
        table.drop_column("host")
