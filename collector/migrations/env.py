"""Alembic environment: migrates the connection the collector hands over, or a URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from collector.schema import metadata

config = context.config


def run() -> None:
    """Run migrations on `config.attributes["connection"]`, or on `sqlalchemy.url`."""
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite://")
    try:
        with engine.connect() as conn:
            context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


run()
