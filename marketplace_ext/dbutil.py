"""Database migrations: Alembic driven from code, so that the service, the CLI and the tests
upgrade the same way (the approach of jupyterhub's own ``dbutil.py``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from .orm import make_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class DatabaseSchemaMismatch(RuntimeError):
    """The database is at a revision this code does not know or has not been upgraded yet."""


def alembic_config(db_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # configparser interpolation would mangle a '%' in a password
    config.set_main_option("sqlalchemy.url", db_url.replace("%", "%%"))
    return config


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(db_url: str) -> str | None:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def upgrade(db_url: str, revision: str = "head") -> None:
    """Bring the database at ``db_url`` to ``revision`` (creating it if empty)."""
    if db_url.startswith("sqlite:///"):
        Path(db_url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(db_url), revision)


def check(db_url: str) -> None:
    """Raise :class:`DatabaseSchemaMismatch` unless the database is at the head revision."""
    current, head = current_revision(db_url), head_revision()
    if current != head:
        raise DatabaseSchemaMismatch(
            f"database {redact_url(db_url)} is at revision {current!r}, code expects {head!r}; "
            "run `market db upgrade`"
        )


def redact_url(db_url: str) -> str:
    """The URL with its password hidden, for logs and messages."""
    from sqlalchemy.engine import make_url

    return make_url(db_url).render_as_string(hide_password=True)
