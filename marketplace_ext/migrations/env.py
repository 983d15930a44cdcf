"""Alembic environment: runs migrations on the URL set by ``dbutil.alembic_config``."""

from alembic import context

import marketplace_ext.exchange  # noqa: F401  (its tables belong to the metadata)
import marketplace_ext.federated.orm  # noqa: F401  (its tables belong to the metadata)
import marketplace_ext.retrain_orm  # noqa: F401  (its tables belong to the metadata)
from marketplace_ext.orm import Base, make_engine

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    try:
        with engine.connect() as connection:
            # batch mode lets ALTER TABLE work on SQLite
            context.configure(connection=connection, target_metadata=target_metadata,
                              render_as_batch=True)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
