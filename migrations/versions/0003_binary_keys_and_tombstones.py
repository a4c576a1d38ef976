"""Kafka keys are bytes: predictions keep the raw key (binary) beside a text rendering, and
tombstones (null values) get a table of their own.

Until now a prediction's key was text: a binary key (a UUID's 16 bytes, a Schema Registry
frame starting with a zero byte) was kept with escapes or a NUL, and PostgreSQL refused
the NUL, turning good messages into dead letters. ``source_key`` now holds the bytes;
``source_key_text`` the text where the key is valid UTF-8 without NUL.

Existing rows carry over: their text key becomes ``source_key_text`` and its UTF-8 bytes
``source_key``. Downgrading keeps the text rendering, and renders keys that have none
(binary keys) as ``hex:`` followed by their bytes in lower-case hexadecimal.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)


def _dialect() -> str:
    return op.get_bind().dialect.name


def upgrade() -> None:
    # Batch mode: SQLite cannot rename or drop columns in place on every version it ships as.
    # Two steps: one batch that renames a column and adds another of the old name cannot be ordered.
    with op.batch_alter_table("predictions") as table:
        table.alter_column("source_key", new_column_name="source_key_text", existing_type=sa.Text())
    with op.batch_alter_table("predictions") as table:
        table.add_column(sa.Column("source_key", sa.LargeBinary(), nullable=True))
    as_bytes = "convert_to(source_key_text, 'UTF8')" if _dialect() == "postgresql" else "CAST(source_key_text AS BLOB)"
    op.execute(f"UPDATE predictions SET source_key = {as_bytes} WHERE source_key_text IS NOT NULL")
    # A text key with a NUL (possible on SQLite only) is not text by the new rule: bytes only.
    if _dialect() == "sqlite":
        op.execute("UPDATE predictions SET source_key_text = NULL WHERE instr(source_key, x'00') > 0")

    op.create_table(
        "tombstones",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("source_topic", sa.String(255), nullable=False),
        sa.Column("source_partition", sa.Integer(), nullable=False),
        sa.Column("source_offset", sa.BigInteger(), nullable=False),
        sa.Column("source_key", sa.LargeBinary(), nullable=True),
        sa.Column("message_timestamp", Timestamp, nullable=True),
        sa.Column("stored_at", Timestamp, nullable=False),
        sa.UniqueConstraint("source_topic", "source_partition", "source_offset", name="uq_tombstones_source"),
    )
    op.create_index("ix_tombstones_stored_at", "tombstones", ["stored_at"])


def downgrade() -> None:
    op.drop_index("ix_tombstones_stored_at", table_name="tombstones")
    op.drop_table("tombstones")
    as_hex = "encode(source_key, 'hex')" if _dialect() == "postgresql" else "lower(hex(source_key))"
    op.execute(
        f"UPDATE predictions SET source_key_text = 'hex:' || {as_hex} "
        "WHERE source_key_text IS NULL AND source_key IS NOT NULL"
    )
    with op.batch_alter_table("predictions") as table:
        table.drop_column("source_key")
    with op.batch_alter_table("predictions") as table:
        table.alter_column("source_key_text", new_column_name="source_key", existing_type=sa.Text())
