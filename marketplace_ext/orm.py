"""SQLAlchemy 2 models and engine set-up for the marketplace service.

Each concern owns its tables; this module only declares them. Schema changes go through
Alembic (``marketplace_ext/migrations``), never ``create_all`` outside tests of the models.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Unit(Base):
    """An organisation (provincial company, institute, headquarters); mirrored as hub group
    ``unit-<slug>``."""

    __tablename__ = "units"
    __table_args__ = (UniqueConstraint("slug", name="uq_units_slug"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(32), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    created_by: Mapped[str] = mapped_column(String(255), nullable=False)

    members: Mapped[list[Member]] = relationship(
        back_populates="unit", order_by="Member.user_name", passive_deletes=True
    )

    @property
    def hub_group(self) -> str:
        return f"unit-{self.slug}"


class Member(Base):
    """A hub user's membership; the primary key on the user name is what keeps a user in
    exactly one unit, even under concurrent requests."""

    __tablename__ = "members"

    user_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    unit_id: Mapped[int] = mapped_column(
        ForeignKey("units.id", ondelete="CASCADE", name="fk_members_unit_id"),
        nullable=False,
        index=True,
    )
    added_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    added_by: Mapped[str] = mapped_column(String(255), nullable=False)

    unit: Mapped[Unit] = relationship(back_populates="members")


def _sqlite_pragmas(dbapi_connection, connection_record) -> None:
    # WAL lets readers proceed during a write; the busy timeout turns a concurrent write into a
    # short wait instead of "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def make_engine(db_url: str, **kwargs) -> Engine:
    """An engine for ``db_url``; SQLite files get WAL, foreign keys and a busy timeout."""
    engine = create_engine(db_url, future=True, pool_pre_ping=True, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def make_session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(bind=engine, expire_on_commit=False, future=True)
