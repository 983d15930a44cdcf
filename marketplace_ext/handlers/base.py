"""Base handlers: hub OAuth, the caller, JSON bodies, errors as ``{error, message, field}``."""

from __future__ import annotations

import json
import logging
import re
from urllib.parse import quote

from jupyterhub.services.auth import HubOAuthenticated
from sqlalchemy.orm import Session
from tornado import web

from ..auth import Caller, caller_from_model
from ..errors import InvalidField, MarketError, Unauthenticated
from ..orm import write_transaction
from ..units import unit_of

log = logging.getLogger("marketplace")

MAX_JSON_BODY = 1024 * 1024


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback name and the exact name as RFC 5987 UTF-8
    (RFC 6266): a header is Latin-1 on the wire, so a name such as '报告.csv' cannot go in
    ``filename=`` as it is."""
    name = filename.rsplit("/", 1)[-1] or "download"
    fallback = re.sub(r'[^A-Za-z0-9._-]', "_", name.encode("ascii", "replace").decode())
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


class BaseHandler(HubOAuthenticated, web.RequestHandler):
    """Common ground of API and page handlers."""

    @property
    def market(self):
        """The running :class:`marketplace_ext.app.MarketplaceApp`."""
        return self.settings["market"]

    @property
    def db(self) -> Session:
        if not hasattr(self, "_db"):
            self._db = self.market.session_factory()
            if self.request.method not in ("GET", "HEAD", "OPTIONS"):
                # writes read first (state checks); hold the write lock from the start
                write_transaction(self._db)
        return self._db

    def on_finish(self) -> None:
        if hasattr(self, "_db"):
            self._db.close()

    @property
    def caller(self) -> Caller:
        if not hasattr(self, "_caller"):
            model = self.current_user
            if not model:
                raise Unauthenticated("log in through the hub or send 'Authorization: token ...'")
            self._caller = caller_from_model(self.hub_auth, model, self._unit_of(model["name"]))
        return self._caller

    def _unit_of(self, name: str) -> str | None:
        # a short session of its own: self.db may become a write transaction, and async
        # handlers must not hold one across an await
        with self.market.session_factory() as session:
            unit = unit_of(session, name)
            return unit.slug if unit else None

    def send_error(self, status_code: int = 500, **kwargs) -> None:
        exc_info = kwargs.get("exc_info")
        if exc_info and isinstance(exc_info[1], MarketError):
            status_code = exc_info[1].status
        super().send_error(status_code, **kwargs)

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, MarketError):
            log.info("%s %s -> %s %s", self.request.method, self.request.path, value.status,
                     value.message)
            return
        super().log_exception(typ, value, tb)


class APIHandler(BaseHandler):
    """JSON in, JSON out; never redirects to a login page."""

    def get_login_url(self):
        raise Unauthenticated("log in through the hub or send 'Authorization: token ...'")

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        # files served here are product code's output: never let a browser guess a type
        self.set_header("X-Content-Type-Options", "nosniff")

    def set_attachment(self, filename: str, content_type: str = "application/octet-stream") -> None:
        """Serve the response as a download named ``filename`` (RFC 6266 ``filename*``)."""
        self.set_header("Content-Type", content_type)
        self.set_header("Content-Disposition", content_disposition(filename))

    def write_json(self, data: object, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data, default=str))

    def json_body(self) -> dict:
        """The request body as a JSON object, or a 400 naming ``body``."""
        body = self.request.body
        if len(body) > MAX_JSON_BODY:
            raise InvalidField(f"body is larger than {MAX_JSON_BODY} bytes", "body")
        if not body:
            raise InvalidField("body is empty; expected a JSON object", "body")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidField(f"body is not valid JSON: {e}", "body") from e
        if not isinstance(data, dict):
            raise InvalidField("body must be a JSON object", "body")
        return data

    def int_argument(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise InvalidField(f"{name} must be an integer", name) from None
        if not low <= value <= high:
            raise InvalidField(f"{name} must be between {low} and {high}", name)
        return value

    def required_int(self, name: str) -> int:
        if self.get_query_argument(name, None) is None:
            raise InvalidField(f"{name} is required", name)
        return self.int_argument(name, 0, 0, 2**62)

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, MarketError):
            payload = exc.to_dict()
        elif isinstance(exc, web.HTTPError):
            payload = {
                "error": "http_error",
                "message": exc.log_message or self._reason,
                "field": None,
            }
        else:
            payload = {"error": "internal", "message": "internal error", "field": None}
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(payload))
