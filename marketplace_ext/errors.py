"""Exceptions every concern raises; handlers turn them into ``{"error", "message", "field"}``.

Domain modules raise these (never ``tornado.web.HTTPError``) so that the same rule - a clear
message naming the field - holds for the HTTP API, the CLI and the Python client alike.
"""

from __future__ import annotations


class MarketError(Exception):
    """Base class: an expected failure with an HTTP status, a short code and the field at fault."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict:
        return {"error": self.code, "message": self.message, "field": self.field}


class InvalidField(MarketError):
    """A request field is missing, malformed or out of range."""

    status = 400
    code = "invalid"


class Unauthenticated(MarketError):
    status = 401
    code = "unauthenticated"


class Forbidden(MarketError):
    """The caller is known but lacks the scope or unit for this action."""

    status = 403
    code = "forbidden"


class NotFound(MarketError):
    status = 404
    code = "not_found"


class MethodNotAllowed(MarketError):
    status = 405
    code = "method_not_allowed"


class Conflict(MarketError):
    """The request contradicts existing state (duplicate slug, user already in another unit)."""

    status = 409
    code = "conflict"


class PayloadTooLarge(MarketError):
    status = 413
    code = "too_large"


class QuotaExceeded(MarketError):
    """A per-unit quota (runs queued or running, warm predict workers) is full; nothing was
    charged or stored. ``retry_after`` (seconds) goes out as the ``Retry-After`` header."""

    status = 429
    code = "quota_exceeded"

    def __init__(self, message: str, field: str | None = None, retry_after: int = 30):
        super().__init__(message, field)
        self.retry_after = retry_after


class UpstreamUnavailable(MarketError):
    """A part we depend on (the hub API, the data platform) did not answer; nothing was changed."""

    status = 502
    code = "upstream_unavailable"


class PlatformUnavailable(UpstreamUnavailable):
    """A unit's data platform is down, restarting or unreachable; nothing was changed or
    charged. The message names the unit (never the endpoint's token)."""

    status = 503
    code = "platform_unavailable"
