"""Short-lived signed download links.

Spending a use takes a POST (a GET must never spend anything: an ``<img>`` in a product card
would spend the viewer's order). The POST authorizes, consumes, certifies and stores the bytes
as a blob, then answers with a link; ``GET api/downloads/<token>`` serves the blob to the same
user until the link expires, as often as needed, without spending again.

A token is ``<payload>.<mac>``: base64url JSON (user, blob sha256, file name, content type,
log index, expiry) and HMAC-SHA256 over it with a key only the service holds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import asdict, dataclass

from .errors import NotFound

#: how long a minted link works
DEFAULT_TTL_SECONDS = 300


@dataclass(frozen=True)
class Link:
    user: str
    sha256: str
    filename: str
    content_type: str
    log_index: int | None
    expires: int  # unix seconds


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class DownloadLinks:
    def __init__(self, key: bytes, ttl_seconds: int = DEFAULT_TTL_SECONDS):
        self._key = key
        self.ttl_seconds = ttl_seconds

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).digest())

    def mint(self, user: str, sha256: str, filename: str,
             content_type: str = "application/octet-stream",
             log_index: int | None = None, now: float | None = None) -> tuple[str, Link]:
        link = Link(user, sha256, filename, content_type, log_index,
                    int(now if now is not None else time.time()) + self.ttl_seconds)
        payload = _b64(json.dumps(asdict(link), sort_keys=True).encode())
        return f"{payload}.{self._mac(payload)}", link

    def open(self, token: str, user: str, now: float | None = None) -> Link:
        """The link behind ``token`` if it is genuine, unexpired and ``user``'s; otherwise a
        404 that does not say which (a link is a capability: no oracle for forging one)."""
        gone = NotFound("this download link is not valid (expired, or minted for another "
                        "user): POST again to get a new one", "token")
        payload, _, mac = token.partition(".")
        if (not payload or not token.isascii()
                or not hmac.compare_digest(mac.encode(), self._mac(payload).encode())):
            raise gone
        try:
            link = Link(**json.loads(_unb64(payload)))
        except (ValueError, TypeError):
            raise gone from None
        if link.user != user or link.expires < (now if now is not None else time.time()):
            raise gone
        return link
