"""nlpkit's Alembic environment and migration scripts (applied with ``nlpkit db upgrade``)."""
