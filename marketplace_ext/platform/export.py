"""A published view as a file: the download sharing mode's CSV or Parquet export."""

from __future__ import annotations

import io
from typing import Any

from ..errors import InvalidField

FORMATS = ("csv", "parquet")


def check_format(fmt: Any) -> str:
    if fmt not in FORMATS:
        raise InvalidField("format must be 'csv' or 'parquet'", field="format")
    return fmt


def export_view(session: Any, view: str, fmt: str, limit: int) -> tuple[bytes, int, bool]:
    """*view* (a qualified name the caller was granted) as CSV or Parquet bytes.

    Returns (bytes, rows, truncated) with at most *limit* rows, in the view's column order.
    """
    frame = session.table(view).limit(limit + 1).toPandas()
    truncated = len(frame) > limit
    frame = frame.iloc[:limit]
    frame.attrs = {}  # Spark Connect's query metrics: not data, and not JSON
    buffer = io.BytesIO()
    if fmt == "csv":
        buffer.write(frame.to_csv(index=False).encode())
    else:
        frame.to_parquet(buffer, index=False)
    return buffer.getvalue(), len(frame), truncated
