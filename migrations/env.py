"""Alembic environment: the URL comes from the caller's config or from gradlab's settings."""

from __future__ import annotations

from alembic import context

from core.db.engine import make_engine
from core.db.tables import Base
from core.settings import get_settings

config = context.config
url = config.get_main_option("sqlalchemy.url") or get_settings().resolved_database_url


def run_migrations_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        if url.startswith("sqlite"):
            # SQLite alters a table by copying it into a new one and dropping the old: with foreign keys enforced,
            # dropping `jobs` would cascade to its metrics and artifacts. The pragma only takes effect outside a
            # transaction, so it goes to the driver's connection before SQLAlchemy begins one.
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=url.startswith("sqlite"),
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
