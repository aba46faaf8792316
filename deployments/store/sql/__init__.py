"""The job store on SQLAlchemy Core: one schema (``tables.py``) and one store (``store.py``) for
SQLite and PostgreSQL, with Alembic migrations (``migrations/``, ``schema.py``)."""
