"""Where each unit's data platform is, and the Spark Connect sessions we hold on it.

:class:`PlatformEndpoints` maps a unit to its Spark Connect endpoint and Hive database, keeps
one client session per endpoint, retries once on a server that forgot our session, and turns
connection trouble into :class:`~marketplace_ext.errors.UpstreamUnavailable`.
:class:`~marketplace_ext.platform.DataPlatform` extends it, so its traits are configured as
``c.DataPlatform.endpoints`` and so on.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from pyspark.errors import PySparkException
from traitlets import Any as AnyTrait
from traitlets import Dict, Float, Integer, Unicode, validate
from traitlets.config import LoggingConfigurable

from ..errors import InvalidField, MarketError, PlatformUnavailable, UpstreamUnavailable
from .common import (
    _CONNECT_URL_RE,
    OBJECT_NAME_RE,
    UNIT_SLUG_RE,
    _endpoint_host_port,
    _first_line,
    _is_connection_error,
    _is_stale_session,
    _new_connect_session,
    _tcp_reachable,
    check_unit,
)
from .tls import EndpointTLS, redact_url

T = TypeVar("T")

# Connect sessions left for the garbage collector close their gRPC channel in __del__ during
# interpreter shutdown, and that close blocks forever (the channel's threads are gone): the
# process hangs on exit. Closing them from atexit, while the runtime is intact, avoids it.
_OPEN_PLATFORMS: weakref.WeakSet[PlatformEndpoints] = weakref.WeakSet()


@atexit.register
def _close_open_platforms() -> None:
    # Registered at import, so it runs after the atexit stop of a server started later: do
    # not try to release sessions on a server that is already gone.
    for platform in list(_OPEN_PLATFORMS):
        platform.close(release=False)


class PlatformEndpoints(LoggingConfigurable):
    """Unit -> Spark Connect endpoint and Hive database, and the sessions on those endpoints.

    All methods block on the network; call them from an executor, not the IO loop. They are
    safe to call from several executor threads at once.
    """

    endpoints = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        help="""Per-unit remote Spark Connect endpoints with their tokens:
        {unit_slug: "sc://spark-b.example:15002/;token=SECRET"} ($MARKET_SPARK_ENDPOINTS).
        Off localhost the token is only ever sent over TLS, verified with EndpointTLS.ca_file.
        Units not listed use their embedded server (servers), else default_endpoint.""",
    ).tag(config=True)

    servers = AnyTrait(
        None,
        allow_none=True,
        help="""The embedded per-unit servers: a supervisor.UnitServers (in the service) or a
        supervisor.EndpointsFile (elsewhere), answering remote_for(unit) and unit_down(unit).
        None: units not in endpoints share default_endpoint.""",
    )

    default_endpoint = Unicode(
        "sc://127.0.0.1:15002",
        help="Spark Connect endpoint (SPARK_REMOTE) for units without an entry in endpoints.",
    ).tag(config=True)

    database_template = Unicode(
        "unit_{unit}",
        help="""Name of a unit's Hive database; {unit} is replaced by the unit slug. The
        result must be a valid lowercase identifier.""",
    ).tag(config=True)

    connect_timeout = Float(
        5.0,
        help="""Seconds to wait for a TCP connection to an endpoint before reporting it
        unavailable (checked before a session is first used).""",
    ).tag(config=True)

    connect_retries = Integer(
        3,
        help="""How often the Spark Connect client retries an unavailable endpoint (backoff
        0.2 s doubling, at most 2 s) before the call fails with UpstreamUnavailable.""",
    ).tag(config=True)

    @validate("database_template")
    def _validate_database_template(self, proposal: Any) -> str:
        value = proposal["value"]
        if "{unit}" not in value:
            raise ValueError("DataPlatform.database_template must contain {unit}")
        if not OBJECT_NAME_RE.match(value.replace("{unit}", "x")):
            raise ValueError(
                f"DataPlatform.database_template {value!r} does not give a valid identifier"
            )
        return value

    @validate("endpoints")
    def _validate_endpoints(self, proposal: Any) -> dict[str, str]:
        for unit, url in proposal["value"].items():
            if not UNIT_SLUG_RE.match(unit):
                raise ValueError(f"DataPlatform.endpoints: invalid unit slug {unit!r}")
            if not _CONNECT_URL_RE.match(url):
                raise ValueError(f"DataPlatform.endpoints[{unit!r}]: {url!r} is not sc://host:port")
        return proposal["value"]

    @validate("default_endpoint")
    def _validate_default_endpoint(self, proposal: Any) -> str:
        if not _CONNECT_URL_RE.match(proposal["value"]):
            raise ValueError(
                f"DataPlatform.default_endpoint {proposal['value']!r} is not sc://host:port"
            )
        return proposal["value"]

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._sessions: dict[str, Any] = {}
        self._sessions_lock = threading.Lock()
        self._unit_locks: dict[str, threading.Lock] = {}
        self._tls = EndpointTLS(parent=self)
        _OPEN_PLATFORMS.add(self)

    # -- unit -> endpoint, database -------------------------------------------------------------

    def spark_remote_for(self, unit: str) -> str:
        """The ``sc://`` endpoint of *unit*'s data platform with its token (what its notebooks
        get as ``SPARK_REMOTE``): the unit's remote endpoint, else its embedded server, else
        the shared default. A secret: never log it (:func:`.tls.redact_url`)."""
        check_unit(unit)
        if unit in self.endpoints:
            return self.endpoints[unit]
        if self.servers is not None:
            url = self.servers.remote_for(unit)
            if url is None:
                raise PlatformUnavailable(f"unit {unit} has no data platform server", "unit")
            return url
        return self.default_endpoint

    def unit_down(self, unit: str) -> str | None:
        """None if *unit*'s data platform is up, else why not, naming the unit.

        Fast (no Spark round trip): the supervisor's state for an embedded server, else a
        TCP connect to the endpoint (at most 2 s).
        """
        check_unit(unit)
        if unit not in self.endpoints and self.servers is not None:
            return self.servers.unit_down(unit)
        url = self.spark_remote_for(unit)
        host, port = _endpoint_host_port(url)
        reason = _tcp_reachable(host, port, min(self.connect_timeout, 2.0))
        if reason is not None:
            return f"the data platform of unit {unit} ({redact_url(url)}) is unreachable: {reason}"
        return None

    def database_for(self, unit: str) -> str:
        """The Hive database holding *unit*'s tables and views."""
        check_unit(unit)
        name = self.database_template.format(unit=unit)
        if not OBJECT_NAME_RE.match(name):
            raise InvalidField(
                f"unit {unit!r} gives an invalid database name {name!r}", field="unit"
            )
        return name

    # -- sessions -------------------------------------------------------------------------------

    def session_for(self, unit: str) -> Any:
        """A Spark Connect client session on *unit*'s endpoint.

        Sessions are cached per endpoint URL (units sharing a server share a session, and
        never rely on its current database: every name we send is qualified), and distinct
        endpoints always get distinct sessions. Raises UpstreamUnavailable if the endpoint
        does not accept connections.
        """
        return self._session(self.spark_remote_for(unit), unit)

    def _session(self, url: str, unit: str | None = None) -> Any:
        with self._sessions_lock:
            session = self._sessions.get(url)
            if session is not None and not session.is_stopped:
                return session
        # Fail fast (seconds, not the client's retry schedule) when nothing listens.
        host, port = _endpoint_host_port(url)
        reason = _tcp_reachable(host, port, self.connect_timeout)
        if reason is not None:
            down = self.servers.unit_down(unit) if unit and self.servers is not None else None
            raise PlatformUnavailable(
                down or f"the data platform of {_which(unit, url)} is unreachable: {reason}",
                field=None,
            )
        with self._sessions_lock:
            session = self._sessions.get(url)
            if session is None or session.is_stopped:
                session = _new_connect_session(self._tls.connection(url), self.connect_retries)
                self._sessions[url] = session
            return session

    def _evict(self, url: str, session: Any) -> None:
        with self._sessions_lock:
            if self._sessions.get(url) is session:
                del self._sessions[url]
        # The session is already unusable; releasing it on the server may fail too.
        with contextlib.suppress(Exception):
            session.client.close()

    def _run(
        self, unit: str | None, fn: Callable[[Any], T], *, field: str | None = None
    ) -> T:
        """Call ``fn(session)`` on *unit*'s endpoint (the default endpoint for None), mapping
        connection trouble to UpstreamUnavailable.

        If the server forgot our session (it restarted), retry once with a new session.
        Other Spark errors propagate for the caller to map.
        """
        url = self.spark_remote_for(unit) if unit is not None else self.default_endpoint
        for attempt in (1, 2):
            session = self._session(url, unit)
            try:
                return fn(session)
            except MarketError:
                raise
            except Exception as e:
                if _is_stale_session(e) and attempt == 1:
                    self.log.info(
                        "Spark Connect session on %s is stale; reconnecting", redact_url(url)
                    )
                    self._evict(url, session)
                    continue
                if _is_connection_error(e):
                    self._evict(url, session)
                    host, port = _endpoint_host_port(url)
                    reason = _tcp_reachable(host, port, self.connect_timeout)
                    raise PlatformUnavailable(
                        f"the data platform of {_which(unit, url)} is unavailable: "
                        f"{reason or 'the connection broke during the call'}",
                        field=field,
                    ) from None
                raise
        raise AssertionError("unreachable")

    def _unit_lock(self, unit: str) -> threading.Lock:
        """One lock per unit: loads into the same database must not interleave."""
        with self._sessions_lock:
            return self._unit_locks.setdefault(unit, threading.Lock())

    def health(self, unit: str | None = None) -> dict[str, Any]:
        """Run ``SELECT 1`` on *unit*'s endpoint (default endpoint if None).

        Returns ``{"endpoint", "ok": True, "latency_ms"}``; raises UpstreamUnavailable.
        """
        url = self.spark_remote_for(unit) if unit is not None else self.default_endpoint
        t0 = time.monotonic()
        try:
            self._run(unit, lambda session: session.sql("SELECT 1").collect())
        except PySparkException as e:
            raise UpstreamUnavailable(
                f"the data platform of {_which(unit, url)} did not answer: "
                f"{_first_line(str(e), 200)}"
            ) from None
        latency = round((time.monotonic() - t0) * 1000, 1)
        return {"endpoint": redact_url(url), "ok": True, "latency_ms": latency}

    def close(self, release: bool = True) -> None:
        """Close every cached session; with *release*, also drop its state on the server
        (otherwise the server expires it after its idle timeout)."""
        with self._sessions_lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            with contextlib.suppress(Exception):
                if release:
                    session.stop()
                else:
                    session.client.close()


def _which(unit: str | None, url: str) -> str:
    """How an error names a platform: the unit, and the endpoint without its token."""
    return f"unit {unit} ({redact_url(url)})" if unit else redact_url(url)
