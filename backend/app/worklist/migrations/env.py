"""Alembic's environment: upgrades on the connection ``store.migrate`` hands over (the
start-up), else on the URL of the Alembic config (``python -m backend.app.worklist``)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from backend.app.worklist.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # ALTER TABLE on SQLite
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    given = config.attributes.get("connection")
    if given is not None:
        _run(given)
    else:
        engine = create_engine(str(config.get_main_option("sqlalchemy.url")))
        with engine.connect() as connection:
            _run(connection)
        engine.dispose()
