"""Numeric ids in URL paths.

A path id is plain ASCII decimal within 64 bits, or the thing does not exist (404). Python's
``str.isdigit`` accepts '²' and other Unicode digits, and ``int()`` accepts '١٢' and '+1'; an id
past 2**63 - 1 overflows SQLite's integers. Both gave 500s.
"""

from __future__ import annotations

import re

from .errors import NotFound

#: the largest id a 64-bit signed database integer holds
MAX_ID = 2**63 - 1

_ID_RE = re.compile(r"[0-9]{1,19}", re.ASCII)


def parse_id(text: object, what: str, field: str) -> int:
    """``text`` as an id, else :class:`NotFound` naming ``field`` ("no <what> '<text>'")."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    elif isinstance(text, str) and _ID_RE.fullmatch(text):
        value = int(text)
    else:
        value = -1
    if not 0 <= value <= MAX_ID:
        raise NotFound(f"no {what} {str(text)[:40]!r}", field)
    return value


def json_int(value: object) -> object:
    """``value`` with a JSON number that is a whole number (``3.0``, which JSON Schema calls an
    integer) as an ``int``; anything else unchanged, for the caller's own check."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value
