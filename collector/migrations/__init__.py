"""Alembic migrations of the collector's database (run by `Store.migrate()`)."""
