"""Statements straight to the database driver, inside a session's transaction.

A purchase is about fifteen small statements. Through the ORM (objects, unit-of-work
flushes, relationship loading) they cost about 5 ms of CPU; as SQLAlchemy Core, about 3 ms;
handed to the driver's cursor, 0.15 ms on SQLite (measured on the same machine, one batch of
sixteen purchases each way). The service's purchases are the hot write path and run on the
interpreter lock that its event loop needs, so they go to the driver (:mod:`purchase`).

:class:`DriverSql` runs ``?``-style SQL on the cursor of the session's own connection, so the
statements are part of the session's transaction (and of a batch's savepoint). It spells
parameters for the driver (``?`` for sqlite3, ``%s`` for psycopg) and timestamps the way the
ORM stores them, so rows written either way read the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session


class DriverSql:
    """The driver cursor of ``session``'s connection (see the module docstring).

    The session's pending ORM changes are flushed first: these statements read around its
    unit of work, never through it. Write the SQL with ``?`` placeholders and no ``%``.
    """

    _spelled: dict[str, str] = {}  # ``?`` SQL -> ``%s`` SQL, for drivers in the format style

    def __init__(self, session: Session):
        session.flush()
        connection = session.connection()
        self.dialect = connection.dialect.name
        self._qmark = connection.dialect.dbapi.paramstyle == "qmark"
        self._cursor = connection.connection.driver_connection.cursor()

    def _sql(self, sql: str) -> str:
        if self._qmark:
            return sql
        spelled = self._spelled.get(sql)
        if spelled is None:
            spelled = self._spelled[sql] = sql.replace("?", "%s")
        return spelled

    def execute(self, sql: str, *params: Any) -> None:
        self._cursor.execute(self._sql(sql), params)

    def one(self, sql: str, *params: Any) -> Sequence[Any] | None:
        """The first row of the result, or None."""
        self._cursor.execute(self._sql(sql), params)
        return self._cursor.fetchone()

    def all(self, sql: str, *params: Any) -> list[Sequence[Any]]:
        self._cursor.execute(self._sql(sql), params)
        return self._cursor.fetchall()

    def scalar(self, sql: str, *params: Any) -> Any:
        """The first column of the first row, or None."""
        row = self.one(sql, *params)
        return None if row is None else row[0]

    def batch(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[Sequence[Any] | None]:
        """Run ``(sql, params)`` statements in order; each one's first row (None if it has
        none). On PostgreSQL they travel together in one round trip (psycopg's pipeline mode):
        for the statements a transaction runs while it holds its most contended locks, where
        each round trip is a wait for every other writer. An error aborts the rest."""
        if self.dialect != "postgresql":
            return [self.one(sql, *params) for sql, params in statements]
        connection = self._cursor.connection
        with connection.pipeline():
            cursors = [connection.execute(self._sql(sql), params) for sql, params in statements]
        return [cursor.fetchone() if cursor.description else None for cursor in cursors]

    def timestamp(self, value: datetime | None) -> object:
        """A naive UTC timestamp as a parameter: SQLite stores text, as the ORM writes it."""
        if value is None or self.dialect != "sqlite":
            return value
        return value.isoformat(" ", timespec="microseconds")


def read_timestamp(value: datetime | str | None) -> datetime | None:
    """A timestamp column as read by :class:`DriverSql` (SQLite returns the stored text)."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)
