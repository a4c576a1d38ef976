"""Initial schema: predictions, dead letters, training runs, models.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit key.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)


def _source_columns(topic_nullable: bool) -> list[sa.Column]:
    return [
        sa.Column("source_topic", sa.String(255), nullable=topic_nullable),
        sa.Column("source_partition", sa.Integer(), nullable=topic_nullable),
        sa.Column("source_offset", sa.BigInteger(), nullable=topic_nullable),
    ]


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("task", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(255), nullable=False),
        sa.Column("model_revision", sa.String(64), nullable=False),
        sa.Column("backend", sa.String(32), nullable=False),
        *_source_columns(topic_nullable=True),
        sa.Column("source_key", sa.Text(), nullable=True),
        sa.Column("record_id", sa.String(255), nullable=True),
        sa.Column("input_text", sa.Text(), nullable=False),
        sa.Column("input_extra", sa.JSON(), nullable=True),
        sa.Column("label", sa.String(255), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("output", sa.JSON(), nullable=False),
        sa.Column("message_timestamp", Timestamp, nullable=True),
        sa.Column("stored_at", Timestamp, nullable=False),
        sa.UniqueConstraint("source_topic", "source_partition", "source_offset", "task", name="uq_predictions_source"),
    )
    op.create_index("ix_predictions_task_label", "predictions", ["task", "label"])
    op.create_index("ix_predictions_model_name", "predictions", ["model_name"])
    op.create_index("ix_predictions_record_id", "predictions", ["record_id"])
    op.create_index("ix_predictions_stored_at", "predictions", ["stored_at"])

    op.create_table(
        "dead_letters",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("task", sa.String(64), nullable=False),
        *_source_columns(topic_nullable=False),
        sa.Column("source_key", sa.LargeBinary(), nullable=True),
        sa.Column("raw_value", sa.LargeBinary(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("message_timestamp", Timestamp, nullable=True),
        sa.Column("stored_at", Timestamp, nullable=False),
        sa.Column("replayed_at", Timestamp, nullable=True),
        sa.UniqueConstraint("source_topic", "source_partition", "source_offset", "task", name="uq_dead_letters_source"),
    )
    op.create_index("ix_dead_letters_task", "dead_letters", ["task"])
    op.create_index("ix_dead_letters_stored_at", "dead_letters", ["stored_at"])

    op.create_table(
        "training_runs",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("task", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(255), nullable=True),
        sa.Column("base_model", sa.Text(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", Timestamp, nullable=False),
        sa.Column("finished_at", Timestamp, nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
    )
    op.create_index("ix_training_runs_task", "training_runs", ["task"])

    op.create_table(
        "models",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(255), nullable=False, unique=True),
        sa.Column("task", sa.String(64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("revision", sa.String(64), nullable=False),
        sa.Column("base_model", sa.Text(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("training_run_id", Id, sa.ForeignKey("training_runs.id", ondelete="SET NULL"), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
    )
    op.create_index("ix_models_task", "models", ["task"])


def downgrade() -> None:
    for table in ("models", "training_runs", "dead_letters", "predictions"):
        op.drop_table(table)
