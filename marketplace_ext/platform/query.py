"""Running a checked SELECT: a row limit, a server-side timeout, JSON-ready rows."""

from __future__ import annotations

import contextlib
import threading
import uuid
from typing import Any

from ..errors import InvalidField
from .values import json_value


class QueryTimedOut(Exception):
    """The query ran past its timeout and was interrupted on the server."""


def run_query(session: Any, statement: str, limit: int, timeout: float) -> dict[str, Any]:
    """Run *statement* (already checked by :func:`~.guard.check_sql`) on *session*.

    Fetches at most ``limit + 1`` rows to tell whether the result was cut. After *timeout*
    seconds the query is interrupted on the server through a per-call tag and
    :class:`QueryTimedOut` is raised in place of Spark's error. Returns
    ``{"columns": [{"name", "type"}], "rows": [[...]], "truncated"}``.
    """
    tag = f"market-query-{uuid.uuid4().hex}"
    timed_out = threading.Event()

    def cancel() -> None:
        timed_out.set()
        with contextlib.suppress(Exception):
            session.interruptTag(tag)

    # Tags are thread-local in the Connect client: only this thread's calls carry it.
    session.addTag(tag)
    timer = threading.Timer(timeout, cancel)
    timer.start()
    try:
        df = session.sql(statement).limit(limit + 1)
        rows = df.collect()
        schema = df.schema
    except Exception:
        if timed_out.is_set():
            raise QueryTimedOut() from None
        raise
    finally:
        timer.cancel()
        session.removeTag(tag)
    return {
        "columns": [{"name": f.name, "type": f.dataType.simpleString()} for f in schema.fields],
        "rows": [[json_value(v) for v in row] for row in rows[:limit]],
        "truncated": len(rows) > limit,
    }


def check_limit(limit: Any, max_rows: int) -> int:
    """*limit* if it is an integer in 1..max_rows, else InvalidField(field="limit")."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= max_rows:
        raise InvalidField(
            f"limit must be an integer between 1 and {max_rows}, not {limit!r}", field="limit"
        )
    return limit
