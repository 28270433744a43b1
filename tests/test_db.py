"""The schema: Alembic migrations and the models agree, on SQLite and PostgreSQL."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from waflow.db import Base, get_engine


def test_the_migrations_build_exactly_the_models_schema(db_url):
    with get_engine(db_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
