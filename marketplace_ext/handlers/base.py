"""Base handlers: hub OAuth, the caller, request bodies read only after the caller is known,
JSON bodies, errors as ``{error, message, field}``.

Every handler streams its request body (``@web.stream_request_body``): Tornado then calls
:meth:`BaseHandler.prepare` as soon as the headers are in, before any byte of the body is read.
``prepare`` refuses a ``Content-Length`` above the route's :attr:`BaseHandler.body_limit` (413),
authenticates the caller (401) and runs the route's cheap checks (:meth:`check_before_body`,
e.g. the publish scope: 403) - all before the body is read. A body refused there and larger
than ``DISCARD_LIMIT`` is answered at once with ``Connection: close`` (the proxy must not reuse
the connection); what the client still sends is dropped unread by Tornado for at most
``LINGER_SECONDS`` before the close (a lingering close: closing on unread data would reset the
connection and a client still sending would lose the answer). A small refused body is read
and dropped, then answered, and the connection stays usable. Accepted bodies are gathered in
``data_received``: in memory up to ``MAX_JSON_BODY``, beyond that spooled to a temporary file
under the service's ``tmp`` dir.
When the body is complete (just before the handler's method runs) it becomes
``self.request.body`` and is parsed as Tornado would (``request.files``, body arguments), so
handlers read it as usual.

Cookie-authenticated writes must send the xsrf token in the ``X-XSRFToken`` header or the
query (``_xsrf``): the check runs before the body, so an ``_xsrf`` form field is not seen.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import quote

from jupyterhub.services.auth import HubOAuthenticated, UserNotAllowed
from sqlalchemy.orm import Session
from tornado import httputil, web
from tornado.http1connection import HTTP1Connection
from tornado.iostream import StreamClosedError

from ..auth import Caller, caller_from_model
from ..errors import InvalidField, MarketError, PayloadTooLarge, QuotaExceeded, Unauthenticated
from ..units import unit_of

log = logging.getLogger("marketplace")

MAX_JSON_BODY = 1024 * 1024
#: the size of the pieces a download is read and sent in (BaseHandler.stream_blob)
STREAM_CHUNK = 256 * 1024
#: a multipart upload's envelope (boundaries, headers, a small JSON field) beyond its file
MULTIPART_ENVELOPE = 1024 * 1024
_METHODS = ("get", "head", "post", "delete", "patch", "put", "options")


T = TypeVar("T")


def _unread_count(session: Session, name: str) -> int:
    from ..exchange.inbox import unread_count

    return unread_count(session, name)


def _unit_slug(session: Session, name: str) -> str | None:
    unit = unit_of(session, name)
    return unit.slug if unit else None


#: how long a connection refused before its body was read keeps reading (and dropping) it
LINGER_SECONDS = 5.0


def _after_body(method):
    """Wrap an HTTP method so that the streamed body is complete (and parsed) before it runs,
    and a refusal decided before the body was read is raised first."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if getattr(self, "_body", None) is None:  # a subclass with a prepare() of its own
            return method(self, *args, **kwargs)
        if self._spool is not None:
            async def spooled():
                await self.in_io(self._load_spool)
                result = method(self, *args, **kwargs)
                return await result if asyncio.iscoroutine(result) else result
            return spooled()
        self._complete_body(bytes(self._body))
        return method(self, *args, **kwargs)

    wrapper._after_body = True
    return wrapper


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback name and the exact name as RFC 5987 UTF-8
    (RFC 6266): a header is Latin-1 on the wire, so a name such as '报告.csv' cannot go in
    ``filename=`` as it is."""
    name = filename.rsplit("/", 1)[-1] or "download"
    fallback = re.sub(r'[^A-Za-z0-9._-]', "_", name.encode("ascii", "replace").decode())
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


@web.stream_request_body
class BaseHandler(HubOAuthenticated, web.RequestHandler):
    """Common ground of API and page handlers (see the module docstring for bodies)."""

    #: the largest request body this route reads (a class attribute; :meth:`max_body_bytes`
    #: may compute it from the configuration)
    body_limit: int = MAX_JSON_BODY
    #: a refused body up to this size is read and dropped (the connection stays usable); a
    #: larger one is never read and the connection is closed
    DISCARD_LIMIT = 64 * 1024
    # class defaults: Tornado may answer an error (405, a bad path) before prepare() runs
    _body = None
    _spool = None
    _close_connection = False
    _linger_after = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # the methods the class defines itself (inherited ones are wrapped where defined; a
        # mixin's stay as they are, and the class's __dict__ keeps saying what it implements)
        for name in _METHODS:
            method = cls.__dict__.get(name)
            if callable(method) and not getattr(method, "_after_body", False):
                setattr(cls, name, _after_body(method))

    def max_body_bytes(self) -> int:
        """This route's body limit; the default is :attr:`body_limit`."""
        return self.body_limit

    def check_before_body(self) -> None:
        """Checks of the route cheap enough to run before the body is read (a scope); raise a
        :class:`MarketError` to refuse. The caller is already authenticated."""

    async def authenticate(self) -> None:
        """Ask the hub who the caller is without blocking the loop. ``current_user`` is
        Tornado's synchronous property: on a cache miss it would wait for the hub's answer with
        the whole service stopped; awaited here first, it finds the answer already cached
        (HubAuth keeps it on the handler and its token cache)."""
        if not hasattr(self, "_cached_hub_user") \
                and type(self).get_current_user is HubOAuthenticated.get_current_user:
            # (a route that answers everyone, like the health check, overrides it: no hub call)
            model = await self.hub_auth.get_user(self, sync=False)
            self._hub_auth_user_cache = self._checked_hub_user(model)
            if model and model.get("name"):
                # the caller's unit too, in the database executor (``caller`` needs it)
                self._caller_unit = await self.in_db(_unit_slug, model["name"])

    def _checked_hub_user(self, model: dict | None) -> dict | None:
        """What ``HubAuthenticated.get_current_user`` makes of the hub's answer ``model``,
        decided here once: that method would ask for the answer again through HubAuth's
        synchronous wrapper, a round trip through HubAuth's own thread with the loop waiting
        (about half a millisecond a request under load), although the answer is cached."""
        if not model:
            return None
        try:
            checked = self.check_hub_user(model)
        except UserNotAllowed:
            # as HubAuthenticated does: Tornado's @web.authenticated would redirect to the
            # login page; a 403 instead
            def raise_on_redirect(*args, **kwargs):
                raise web.HTTPError(403, "{kind} {name} is not allowed.".format(**model))

            self.redirect = raise_on_redirect
            return None
        self.hub_auth._persist_url_token_if_set(self)
        return checked

    async def in_db(self, work: Callable[..., T], *args) -> T:
        """Run ``work(session, *args)`` in the service's database executor with a session of
        its own, closed afterwards (``work`` commits what it writes; a write should start with
        ``write_transaction(session)``). The event loop serves other requests meanwhile."""
        return await self.market.executors.in_db(work, *args)

    async def in_write(self, work: Callable[..., T], *args) -> T:
        """Run ``work(session, *args)`` as one write transaction in the database executor,
        committed when it returns, rolled back (nothing written) when it raises."""
        return await self.market.executors.in_write(work, *args)

    async def in_io(self, work: Callable[..., T], *args) -> T:
        """Run ``work(*args)`` (file or blob I/O) in the service's io executor."""
        return await self.market.executors.run("io", work, *args)

    async def in_spark(self, work: Callable[..., T], *args) -> T:
        """Run ``work(*args)`` (a call to a unit's data platform) in the spark executor."""
        return await self.market.executors.run("spark", work, *args)

    def bundle_upload(self) -> tuple[bytes, bool]:
        """A product bundle upload's (zip bytes, accept_terms): multipart field ``bundle``
        (400 naming it when absent, 413 above the service's bundle limit) and the form field
        ``accept_terms`` ("true", "yes" or "1")."""
        files = self.request.files.get("bundle")
        if not files:
            raise InvalidField("upload the bundle zip as multipart field 'bundle'", "bundle")
        data = files[0]["body"]
        limit = self.market.bundle_limits.max_total_bytes
        if len(data) > limit:
            raise PayloadTooLarge(f"bundle is {len(data)} bytes; the limit is {limit}", "bundle")
        return data, self.get_body_argument("accept_terms", "") in ("true", "yes", "1")

    async def stream_blob(self, sha256: str) -> None:
        """Send a stored blob as the response body in :data:`STREAM_CHUNK` chunks, each read on
        the io executor and flushed before the next (a bundle is never held whole in memory,
        and a slow client holds back only its own response). Sets ``Content-Length``; a blob
        missing from the store is a 404 before any byte is sent."""
        f = await self.in_io(self.market.blobs.open, sha256)
        try:
            size = await self.in_io(lambda: os.fstat(f.fileno()).st_size)
            self.set_header("Content-Length", str(size))
            sent = 0
            while sent < size:
                chunk = await self.in_io(f.read, min(STREAM_CHUNK, size - sent))
                if not chunk:  # the file shrank under us: cannot happen to a stored blob
                    raise OSError(f"blob {sha256} ended after {sent} of {size} bytes")
                sent += len(chunk)
                self.write(chunk)
                await self.flush()
        except StreamClosedError:
            return  # the client went away: nothing left to answer
        finally:
            await self.in_io(f.close)
        self.finish()

    async def prepare(self) -> None:
        await self.authenticate()
        self._body = bytearray()
        self._spool = None
        self._received = 0
        self._refusal: MarketError | None = None
        headers = self.request.headers
        raw = headers.get("Content-Length", "")
        announced = int(raw) if raw.isascii() and raw.isdigit() else None
        chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        limit = self._limit = self.max_body_bytes()
        # whatever is answered, Tornado must not refuse the body itself (a bare 400 without
        # our JSON): the limit is enforced here and, for a chunked body, in data_received
        self.request.connection.set_max_body_size(2**62 if chunked else max(limit, announced or 0))
        if not chunked and not announced:
            return  # no body: the method's own @web.authenticated decides, as usual
        try:
            if not self.current_user:
                raise Unauthenticated("log in through the hub or send 'Authorization: token "
                                      "...' (checked before the body is read)")
            if announced is not None and announced > limit:
                raise PayloadTooLarge(f"the body is {announced} bytes; this route takes at most "
                                      f"{limit}", "body")
            self.check_before_body()
        except MarketError as e:
            if announced is None or announced > self.DISCARD_LIMIT:
                raise  # refused unread: see send_error
            self._refusal = e  # answered once the small body is in and dropped

    async def data_received(self, chunk: bytes) -> None:
        if self._body is None or self._finished:
            return
        self._received += len(chunk)
        if self._refusal is not None:
            return  # dropped
        if self._received > self._limit:  # a chunked body that outgrew the route's limit
            self._drop_spool()
            self._close_connection = True
            self.send_error(413, exc_info=(PayloadTooLarge, PayloadTooLarge(
                f"the body is larger than this route's limit of {self._limit} bytes", "body"),
                None))
            return
        if self._spool is None and len(self._body) + len(chunk) <= MAX_JSON_BODY:
            self._body += chunk
            return
        if self._spool is None:  # (file writes on the io executor, in arrival order)
            self._spool = await self.in_io(self._open_spool)
            pending, self._body = bytes(self._body), bytearray()
            await self.in_io(self._spool.write, pending)
        await self.in_io(self._spool.write, chunk)

    def finish(self, chunk=None):
        connection = self.request.connection
        if (self._linger_after and not self._finished
                and isinstance(connection, HTTP1Connection) and not connection._read_finished):
            # Answered before the body was read. Tornado would close the connection at once,
            # and a close with unread data resets it: a client (or the proxy) still sending
            # loses the answer. So the body is read and dropped (never handed to us) for at
            # most LINGER_SECONDS, a lingering close as nginx does; the answer said
            # "Connection: close". (_read_finished is Tornado's own flag, read in
            # HTTP1Connection.finish to decide that close.)
            connection.set_body_timeout(LINGER_SECONDS)
            connection._read_finished = True
            try:
                return super().finish(chunk)
            finally:
                connection._read_finished = False
        headers = self.request.headers
        if (not self._finished and isinstance(connection, HTTP1Connection)
                and not connection._read_finished and headers.get("Content-Length", "0") == "0"
                and "Transfer-Encoding" not in headers):
            # answered before Tornado read an empty body (an unsupported method's 405 comes
            # before prepare): nothing is left to read, so the connection stays usable rather
            # than being closed without a "Connection: close" (the proxy would reuse it: 503)
            connection._read_finished = True
            try:
                return super().finish(chunk)
            finally:
                connection._read_finished = False
        return super().finish(chunk)

    def _open_spool(self):
        directory = getattr(self.market, "tmp_dir", None)
        return tempfile.TemporaryFile(prefix="body-", dir=directory)

    def _load_spool(self) -> None:
        """Blocking (run in an executor): the spooled body read back and parsed."""
        spool, self._spool = self._spool, None
        try:
            spool.seek(0)
            data = spool.read()
        finally:
            spool.close()
        self._complete_body(data)

    def _drop_spool(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def _complete_body(self, data: bytes) -> None:
        if self._refusal is not None:
            raise self._refusal
        self._body = bytearray()  # the body lives on as request.body only
        self.request.body = data
        if data:
            try:
                httputil.parse_body_arguments(self.request.headers.get("Content-Type", ""),
                                              data, self.request.body_arguments,
                                              self.request.files, self.request.headers)
            except httputil.HTTPInputError as e:
                raise InvalidField(f"the body is malformed: {e}", "body") from e
            for k, v in self.request.body_arguments.items():
                self.request.arguments.setdefault(k, []).extend(v)

    def on_connection_close(self) -> None:
        self._drop_spool()
        super().on_connection_close()

    @property
    def market(self):
        """The running :class:`marketplace_ext.app.MarketplaceApp`."""
        return self.settings["market"]

    def on_finish(self) -> None:
        self._drop_spool()

    @property
    def caller(self) -> Caller:
        if not hasattr(self, "_caller"):
            model = self.current_user
            if not model:
                raise Unauthenticated("log in through the hub or send 'Authorization: token ...'")
            unit = self._caller_unit if hasattr(self, "_caller_unit") \
                else self._unit_of(model["name"])
            self._caller = caller_from_model(self.hub_auth, model, unit)
        return self._caller

    def _unit_of(self, name: str) -> str | None:  # (a handler whose prepare did not ask)
        # a short session of its own, on the loop: only for a handler whose prepare did not
        # ask in the db executor
        with self.market.session_factory() as session:
            unit = unit_of(session, name)
            return unit.slug if unit else None

    def send_error(self, status_code: int = 500, **kwargs) -> None:
        exc_info = kwargs.get("exc_info")
        if exc_info and isinstance(exc_info[1], MarketError):
            status_code = exc_info[1].status
        raw = self.request.headers.get("Content-Length", "")
        has_body = (raw.isascii() and raw.isdigit() and int(raw) > 0) or (
            "chunked" in self.request.headers.get("Transfer-Encoding", "").lower())
        prepared = self._prepared_future
        if has_body and prepared is not None and not prepared.done():
            # answered in prepare() (also a subclass's own), before any byte of the body was
            # read: the connection is not reused (Connection: close) and closes lingering
            self._close_connection = self._linger_after = True
            if raw.isascii() and raw.isdigit():
                # and Tornado must not refuse that body itself with a bare 400 after our answer
                self.request.connection.set_max_body_size(max(int(raw), MAX_JSON_BODY))
        super().send_error(status_code, **kwargs)

    def clear(self) -> None:
        super().clear()
        if self._close_connection:  # also on the error answer, which clears the headers
            self.set_header("Connection", "close")

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

    async def prepare(self) -> None:
        await super().prepare()
        # Tornado's @web.authenticated answers an anonymous write 403; the API says 401 for
        # every request without a login, whatever its method (a body is refused earlier)
        method = self.request.method.lower()
        # (a method the route does not have stays Tornado's 405, with or without a login)
        # (a small body from an anonymous caller is already refused: read, dropped, answered)
        if (self.request.method not in ("GET", "HEAD", "OPTIONS") and not self._finished
                and self._refusal is None
                and getattr(type(self), method, None) is not getattr(web.RequestHandler, method,
                                                                     None)
                and not self.current_user):
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
        if isinstance(exc, QuotaExceeded):
            self.set_header("Retry-After", str(exc.retry_after))
        if status_code == 405:  # RFC 9110: a 405 lists the methods the resource supports
            refused = getattr(self, "refused_methods", ())
            self.set_header("Allow", ", ".join(
                m for m in ("GET", "POST", "PUT", "DELETE") if m not in refused
                and getattr(type(self), m.lower()) is not getattr(web.RequestHandler, m.lower())))
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


#: no inline script or style anywhere: a product card's README is publisher HTML (sanitized by
#: nh3), and the policy is the second line of defence if the sanitizer misses something.
#: ``frame-src 'self'``: a run's output is shown in a sandboxed iframe of our own origin
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'self'; "
            "frame-src 'self'")


class PageHandler(BaseHandler):
    """An HTML page and, where it has one, its form (POSTed back to the same URL).

    Conventions every page follows:

    - the template gets ``prefix``, ``hub_prefix``, ``caller`` (or None), ``xsrf`` (the token a
      form sends in its action's query: the check runs before the body is read), ``errors``
      (field name -> message; ``"_form"`` for one not tied to a field) and ``form`` (the values
      posted, to fill the form again);
    - a POST that succeeds redirects (303) to the page showing the result, so a reload never
      repeats it; one that fails renders the same page with the API's field errors next to the
      fields and nothing written (:meth:`render_form_error`);
    - an expired login sends the browser to the hub's login and back to the page it was on
      (the form's page: a form posts to its own page's URL, whose GET shows the form).
    """

    #: the nav entry this page belongs to (``shelf``, ``runs``, ``publish``, ``review``,
    #: ``m2d``, ``fl``, ``account``, ``log``)
    nav = ""

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", PAGE_CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")

    def template_namespace(self) -> dict:
        caller = None
        if self.current_user:
            try:
                caller = self.caller
            except MarketError:
                caller = None
        return {
            "prefix": self.market.service_prefix,
            "hub_prefix": self.market.hub_prefix,
            "caller": caller,
            "xsrf": self.xsrf_token.decode() if caller else "",
            "nav": self.nav,
            "errors": {},
            "form": {},
            "unread": self._unread(caller),
        }

    async def prepare(self) -> None:
        await super().prepare()
        model = self.current_user
        if model and model.get("name") and not self._finished:
            # the nav's inbox count, read now in the db executor (rendering is synchronous)
            try:
                self._unread_count = await self.in_db(_unread_count, model["name"])
            except Exception:  # a page must render even when the database does not answer
                log.exception("reading the unread count failed")
                self._unread_count = 0

    def _unread(self, caller: Caller | None) -> int:
        """The nav's inbox count: read in :meth:`prepare`, else (an error page before it ran)
        in a short session of its own (never the handler's transaction, which may be rolled
        back or failed when an error page renders)."""
        if caller is None:
            return 0
        if hasattr(self, "_unread_count"):
            return self._unread_count
        try:
            with self.market.session_factory() as session:
                return _unread_count(session, caller.name)
        except Exception:  # an error page must render even when the database does not answer
            log.exception("reading the unread count failed")
            return 0

    def render_template(self, name: str, status: int = 200, **ns) -> None:
        template = self.settings["jinja_env"].get_template(name)
        namespace = self.template_namespace()
        namespace.update(ns)
        self.set_status(status)
        self.finish(template.render(**namespace))

    async def render_from_db(self, name: str, build: Callable[..., dict], *args,
                             status: int = 200, **ns) -> None:
        """Render page ``name`` with the namespace ``build(session, *args)`` returns (and
        ``ns``), built and rendered in the database executor while its session is open: a
        template may follow the ORM objects it is given (``v.product.unit.slug``), and neither
        the queries nor those lazy loads run on the event loop. A namespace holding
        ``http_status`` answers with that status instead of ``status``."""
        env = self.settings["jinja_env"]
        namespace = self.template_namespace()

        def page(session) -> tuple[str, int]:
            template = env.get_template(name)  # (compiled here, off the loop, if not yet)
            namespace.update(build(session, *args))
            namespace.update(ns)
            code = namespace.pop("http_status", status)
            return template.render(**namespace), code

        html, code = await self.in_db(page)
        self.set_status(code)
        self.finish(html)

    def render_form_error(self, name: str, error: MarketError, **ns) -> None:
        """Render page ``name`` again with ``error`` next to its field, at the error's status;
        the caller's values come back in ``form`` so nothing typed is lost."""
        form = {k: self.get_body_argument(k, "") for k in self.request.body_arguments}
        ns.setdefault("form", form)
        ns["errors"] = {error.field or "_form": error.message}
        self.render_template(name, status=error.status, **ns)

    def redirect_after_post(self, path: str) -> None:
        """303 See Other to ``path`` under the service (Post/Redirect/Get)."""
        self.redirect(self.market.service_prefix + path.lstrip("/"), status=303)

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, Unauthenticated) and not self._finished:
            # an expired login on a form: log in again, then back to this page
            self.clear()
            self.redirect(self.get_login_url(), status=303)
            return
        message = getattr(exc, "message", None) or self._reason
        template = self.settings["jinja_env"].get_template("error.html")
        namespace = self.template_namespace()
        namespace.update(status_code=status_code, message=message)
        self.finish(template.render(**namespace))
