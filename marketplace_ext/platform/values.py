"""Spark values as JSON: what a query's rows become before they reach a subscriber."""

from __future__ import annotations

import base64
import datetime
import decimal
import math
from collections.abc import Mapping
from typing import Any


def json_value(value: Any) -> Any:
    """A fetched Spark value as something json.dumps accepts.

    Dates and times become ISO strings, decimals floats, intervals seconds, binary base64,
    non-finite floats None; structs (Rows) and maps become objects, arrays lists.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if hasattr(value, "asDict"):  # pyspark Row (struct)
        return {k: json_value(v) for k, v in value.asDict().items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return str(value)
