"""The secret behind desensitized views: loading it, and the per-unit keys derived from it."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from typing import Any

from .common import check_unit


def load_or_create_secret(path: str, log: logging.Logger | logging.LoggerAdapter) -> bytes:
    """The hex secret in *path*, created (32 random bytes, mode 0600) if the file is missing.

    Refused if group or others may read the file, or if it holds fewer than 32 bytes.
    """
    path = os.path.abspath(path)
    try:
        # O_EXCL: two processes starting at once must not both write a different secret.
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        log.info("Generated a new platform hash secret in %s", path)
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(
            f"refusing to use the platform hash secret {path}: its permissions "
            f"{stat.filemode(mode)} let others read it; chmod 600 it"
        )
    with open(path) as f:
        text = f.read().strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"the platform hash secret {path} is not hex") from None
    if len(secret) < 32:
        raise ValueError(f"the platform hash secret {path} is shorter than 32 bytes")
    return secret


def unit_key(secret: bytes, unit: str, purpose: str) -> bytes:
    """The key *unit*'s views use for *purpose* (``hash`` or ``noise``).

    Per-unit, per-purpose keys: a key read out of one unit's view definition says nothing
    about another unit's pseudonyms or about the master secret.
    """
    return hmac.new(secret, f"{purpose}\0{unit}".encode(), hashlib.sha256).digest()


def pseudonym(secret: bytes, unit: str, value: Any) -> str | None:
    """The pseudonym the ``hash`` rule gives *value* in *unit*'s views (None for NULL).

    *value* is compared by its Spark string form (``str()`` matches for ints and strings).
    """
    check_unit(unit)
    if value is None:
        return None
    key = unit_key(secret, unit, "hash")
    return hmac.new(key, str(value).encode("utf-8"), hashlib.sha256).hexdigest()
