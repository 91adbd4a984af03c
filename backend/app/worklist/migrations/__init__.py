"""Alembic's migrations of the worklist (``env.py``, ``versions/``); run by ``store.migrate``."""
