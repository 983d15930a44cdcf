"""The two parts of a log entry, shared by the service and by verifiers (no database here).

An entry's *public part* is its type, its time and a salted commitment to its details::

    commitment = SHA-256("gds-marketplace/log-details/v1\\n" || salt || canonical(details))
    public     = canonical({"commitment": hex, "time": ..., "type": ...})
    leaf       = SHA-256(0x00 || public)                       (RFC 9162, merkle.leaf_hash)

``salt`` is 32 random bytes, so nobody can confirm a guess of the details (a product, a price)
from the commitment; the prefix keeps the commitment apart from every other SHA-256 in the
system. The *details* (subject, actor, unit and the entry's references) and the salt are the
private part: whoever holds them recomputes the commitment and the leaf.

Entries written before private entries existed (*legacy*) hash the whole statement instead.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Mapping

COMMITMENT_PREFIX = b"gds-marketplace/log-details/v1\n"
SALT_BYTES = 32
PUBLIC_KEYS = frozenset({"commitment", "time", "type"})


class EntryMismatch(ValueError):
    """Details, salt and public part do not belong together."""


def canonical(statement: Mapping) -> bytes:
    """The one byte encoding of a statement: sorted keys, no spaces, UTF-8."""
    return json.dumps(statement, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def new_salt() -> bytes:
    return secrets.token_bytes(SALT_BYTES)


def commitment(details: bytes, salt: bytes) -> bytes:
    """The salted, domain-separated commitment to the canonical ``details``."""
    if len(salt) != SALT_BYTES:
        raise EntryMismatch(f"the salt must be {SALT_BYTES} bytes, not {len(salt)}")
    return hashlib.sha256(COMMITMENT_PREFIX + salt + details).digest()


def public_part(entry_type: str, time: str, commitment_: bytes) -> bytes:
    """The bytes the Merkle leaf hashes."""
    if _PLAIN.match(entry_type) and _PLAIN.match(time):
        # the canonical encoding written out (no character of these needs escaping): every
        # certified statement passes here, and json.dumps is a third of an append's time
        return (f'{{"commitment":"{commitment_.hex()}","time":"{time}",'
                f'"type":"{entry_type}"}}').encode()
    return canonical({"commitment": commitment_.hex(), "time": time, "type": entry_type})


_PLAIN = re.compile(r"[\w:.+-]*\Z", re.ASCII)


def parse_public(data: str | bytes) -> dict | None:
    """The public part as a dict, or None when ``data`` is a legacy (whole) statement."""
    parsed = json.loads(data)
    if not isinstance(parsed, dict):
        raise EntryMismatch("a log entry is a JSON object")
    return parsed if set(parsed) == PUBLIC_KEYS else None


def open_statement(data: str | bytes, details: str | bytes | None = None,
                   salt_hex: str | None = None) -> tuple[dict, bool]:
    """The statement an entry certifies, checked against its public part ``data``.

    Returns ``(statement, complete)``: for a legacy entry, the whole statement; for a private
    entry with its details and salt, ``{"type", "time", **details}`` after checking the
    commitment (raises :class:`EntryMismatch` when they do not match); without them, the public
    part alone (``complete`` is False).
    """
    public = parse_public(data)
    if public is None:
        return json.loads(data), True
    if details is None or salt_hex is None:
        return dict(public), False
    raw = details.encode() if isinstance(details, str) else details
    try:
        salt = bytes.fromhex(salt_hex)
    except ValueError:
        raise EntryMismatch("the salt is not hex") from None
    if commitment(raw, salt).hex() != public["commitment"]:
        raise EntryMismatch("the details do not match the entry's commitment")
    opened = json.loads(raw)
    if not isinstance(opened, dict) or PUBLIC_KEYS & set(opened):
        raise EntryMismatch("details must be an object without type, time or commitment")
    return {"type": public["type"], "time": public["time"], **opened}, True
