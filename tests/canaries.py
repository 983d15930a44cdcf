"""Search any output for the canary customers planted by :mod:`marketplace_ext.griddata`.

A leak test dumps whatever leaves a unit (an exported CSV, an HTTP response body, a rendered
notebook) and asserts ``find_canaries(dump, canary_values(tables)) == []``. Markers are plain
ASCII, so they survive CSV quoting, JSON, HTML and URL encoding; compressed or UTF-16 output must
be decoded first.
"""

from __future__ import annotations

import re

from marketplace_ext.griddata import CANARY_PATTERN


def find_canaries(
    data: bytes | bytearray | memoryview | str, canaries: set[str] | None = None
) -> list[str]:
    """The canary markers found in ``data``, sorted; ``[]`` means no leak.

    With ``canaries=None`` any string shaped like a marker counts (``CANARY-<unit>-<field>-<n>``),
    which also catches canaries of units the caller did not think of.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        # latin-1 maps every byte to one character, so ASCII markers match whatever the encoding
        text = bytes(data).decode("latin-1")
    elif isinstance(data, str):
        text = data
    else:
        raise TypeError(f"data must be bytes or str, not {type(data).__name__}")
    if canaries is None:
        return sorted(set(CANARY_PATTERN.findall(text)))
    # "-1" must not match inside "-12"
    return sorted(c for c in canaries if re.search(re.escape(c) + r"(?![0-9])", text))
