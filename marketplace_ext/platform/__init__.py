"""The data middle platform: Spark Connect sessions per unit, unit tables, desensitized views.

Two parts live here:

- :class:`SparkConnectServer` starts and stops the embedded platform: ONE Spark Connect server
  (pyspark's own jars, ``local[*]``, Hive metastore on embedded Derby, warehouse under ``var/``).
  ``market run`` and the test fixtures use it; a deployment with a real cluster does not.
- :class:`DataPlatform` is what the service talks to. It maps a unit to its Spark Connect
  endpoint and Hive database, loads a unit's tables, turns a data product's desensitization
  policy into a Hive view and runs guarded SQL on granted views.

Every Spark call made here is **blocking** (gRPC round trips, sometimes seconds or minutes).
All public methods are plain synchronous functions; the Tornado service must call them in an
executor (``await loop.run_in_executor(None, platform.query, ...)``), never on the IO loop.
Methods are safe to call from several executor threads at once.

Expected failures raise the exceptions of :mod:`marketplace_ext.errors`: bad input
:class:`~marketplace_ext.errors.InvalidField` (with the field at fault), a refused table
:class:`~marketplace_ext.errors.Forbidden`, an unreachable platform
:class:`~marketplace_ext.errors.UpstreamUnavailable` (naming the endpoint, no stack trace).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import decimal
import hashlib
import hmac
import io
import logging
import math
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any
from urllib.parse import urlsplit

import sqlglot
from pyspark.errors import PySparkException
from sqlglot import exp
from traitlets import Bool, Bytes, Dict, Float, Integer, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from .common import *  # noqa: F403
from .common import _check_object_name, _endpoint_host_port, _first_line, _free_port, _is_connection_error, _is_stale_session, _new_connect_session, _redact, _spark_error_condition, _tcp_reachable, _install_spark_log_redaction  # noqa: F401
from .server import PlatformStartError, SparkConnectServer  # noqa: F401

# ----------------------------------------------------------------------------------------------
# Policies
# ----------------------------------------------------------------------------------------------


def _columns_map(source_columns: Mapping[str, str] | Iterable[str]) -> dict[str, str | None]:
    if isinstance(source_columns, Mapping):
        return {
            str(k): (str(v).lower() if v is not None else None) for k, v in source_columns.items()
        }
    return {str(c): None for c in source_columns}


def validate_policy(
    policy: Mapping[str, Any], source_columns: Mapping[str, str] | Iterable[str]
) -> dict[str, Any]:
    """Check a desensitization policy against the source table's columns.

    *source_columns* is either ``{name: spark_type}`` (``df.schema`` simple strings such as
    ``"bigint"``, ``"date"``) or just the names; with types, rules are also checked against
    the column type (``round``/``noise`` need numbers, ``generalize to month`` a date).

    Returns a normalized copy of the policy. Raises :class:`InvalidField` whose ``field`` is
    the path of the first problem: ``view``, ``source``, ``columns``, ``columns.<col>``,
    ``columns.<col>.rule``, ``columns.<col>.<param>`` or ``row_filter``.

    Rules (columns not listed are **dropped**: a column added to the table later never
    appears in a published view by accident):

    - ``keep``: exposed as is.
    - ``drop``: not exposed (same as not listing it).
    - ``hash``: HMAC-SHA256 (hex) of the value's string form under a per-unit key: the same
      value gives the same pseudonym within a unit (joins still work), different units give
      different pseudonyms, NULL stays NULL.
    - ``generalize`` with ``to: month|year``: a date/timestamp truncated to the first day of
      its month/year (a DATE). With ``to: <column>``: the value of another column that the
      policy keeps (e.g. address -> district). ``month``/``year`` win over a column of that
      name.
    - ``round`` with ``digits`` (int, -9..9): ``round(col, digits)``.
    - ``noise`` with ``scale`` (> 0): adds Laplace(0, scale) noise, deterministic per row (see
      :meth:`DataPlatform.create_view`).

    ``row_filter`` (optional): one predicate over source columns (comparisons, AND/OR/NOT,
    IN lists, BETWEEN, LIKE, IS NULL, scalar functions); no subqueries, aggregates, window
    functions or functions from :data:`DENIED_FUNCTIONS`.
    """
    if not isinstance(policy, Mapping):
        raise InvalidField("a desensitization policy must be a mapping", field="policy")
    cols = _columns_map(source_columns)
    known = {"view", "source", "columns", "row_filter"}
    for key in policy:
        if key not in known:
            raise InvalidField(
                f"unknown policy key {key!r}; expected {sorted(known)}", field=str(key)
            )
    view = _check_object_name(policy.get("view"), "view", "view")
    source = _check_object_name(policy.get("source"), "source", "source table")
    if view == source:
        raise InvalidField(
            f"the view may not have the name of its source table {source!r}", field="view"
        )

    columns = policy.get("columns")
    if not isinstance(columns, Mapping) or not columns:
        raise InvalidField(
            "columns must be a mapping of column name to {rule: ...}", field="columns"
        )
    normalized: dict[str, dict[str, Any]] = {}
    for name, spec in columns.items():
        path = f"columns.{name}"
        if name not in cols:
            raise InvalidField(
                f"{source} has no column {name!r} (columns: {', '.join(sorted(cols))})",
                field=path,
            )
        if isinstance(spec, str):  # shorthand: `name: drop`
            spec = {"rule": spec}
        if not isinstance(spec, Mapping):
            raise InvalidField(f"{path} must be a mapping such as {{rule: keep}}", field=path)
        rule = spec.get("rule")
        if rule not in _RULE_PARAMS:
            raise InvalidField(
                f"unknown rule {rule!r} for column {name!r}; expected one of "
                f"{', '.join(POLICY_RULES)}",
                field=f"{path}.rule",
            )
        for key in spec:
            if key != "rule" and key not in _RULE_PARAMS[rule]:
                allowed = ", ".join(sorted(_RULE_PARAMS[rule])) or "no parameters"
                raise InvalidField(
                    f"rule {rule!r} takes {allowed}, not {key!r}", field=f"{path}.{key}"
                )
        ctype = cols[name]
        out: dict[str, Any] = {"rule": rule}
        if rule == "round":
            digits = spec.get("digits", 0)
            if isinstance(digits, bool) or not isinstance(digits, int) or not -9 <= digits <= 9:
                raise InvalidField(
                    f"digits must be an integer between -9 and 9, not {digits!r}",
                    field=f"{path}.digits",
                )
            out["digits"] = digits
        if rule == "noise":
            scale = spec.get("scale")
            if (
                isinstance(scale, bool)
                or not isinstance(scale, int | float)
                or not math.isfinite(scale)
                or scale <= 0
            ):
                raise InvalidField(
                    f"scale must be a positive number, not {scale!r}", field=f"{path}.scale"
                )
            out["scale"] = float(scale)
        if rule in ("round", "noise") and ctype is not None and not _NUMERIC_TYPES.match(ctype):
            raise InvalidField(
                f"rule {rule!r} needs a numeric column; {name!r} is {ctype}", field=f"{path}.rule"
            )
        if rule == "generalize":
            to = spec.get("to")
            if not isinstance(to, str) or not to:
                raise InvalidField(
                    "generalize needs `to`: month, year or the name of a kept column",
                    field=f"{path}.to",
                )
            if to in _TEMPORAL_LEVELS:
                if ctype is not None and not _TEMPORAL_TYPES.match(ctype):
                    raise InvalidField(
                        f"generalizing to {to} needs a date or timestamp column; {name!r} is "
                        f"{ctype}",
                        field=f"{path}.to",
                    )
            elif to not in cols:
                raise InvalidField(
                    f"generalize target {to!r} is neither month, year nor a column of {source}",
                    field=f"{path}.to",
                )
            out["to"] = to
        normalized[name] = out

    # A column may only stand in for another if the policy exposes it verbatim anyway;
    # otherwise `address: {generalize, to: name}` would publish a dropped column.
    for name, spec in normalized.items():
        to = spec.get("to")
        if spec["rule"] == "generalize" and to not in _TEMPORAL_LEVELS:
            if to == name or normalized.get(to, {}).get("rule") != "keep":
                raise InvalidField(
                    f"generalize target {to!r} must be another column the policy keeps "
                    f"({to}: {{rule: keep}})",
                    field=f"columns.{name}.to",
                )
    if not any(spec["rule"] != "drop" for spec in normalized.values()):
        raise InvalidField("the policy exposes no column", field="columns")

    result: dict[str, Any] = {"view": view, "source": source, "columns": normalized}
    row_filter = policy.get("row_filter")
    if row_filter is not None and row_filter != "":
        result["row_filter"] = _parse_row_filter(row_filter, source, cols)
    return result


def _function_name(node: exp.Expression) -> str | None:
    if isinstance(node, exp.Anonymous):
        return str(node.this).lower()
    if isinstance(node, exp.Func):
        return node.sql_name().lower()
    return None


def _check_functions(tree: exp.Expression, field: str) -> None:
    for node in tree.walk():
        if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Func):
            raise Forbidden(
                f"calling the qualified function {node.sql(dialect='spark')!r} is not allowed "
                "(functions stored in a database are not part of any grant)",
                field=field,
            )
        name = _function_name(node)
        if name in DENIED_FUNCTIONS:
            raise Forbidden(f"the function {name}() is not allowed", field=field)


def _parse_row_filter(text: Any, source: str, cols: Mapping[str, Any]) -> exp.Expression:
    if not isinstance(text, str):
        raise InvalidField("row_filter must be a SQL predicate string", field="row_filter")
    try:
        parsed = [p for p in sqlglot.parse(text, read="spark") if p is not None]
    except sqlglot.errors.ParseError as e:
        raise InvalidField(
            f"row_filter is not valid SQL: {_first_line(str(e))}", field="row_filter"
        ) from None
    if len(parsed) != 1:
        raise InvalidField("row_filter must be a single predicate", field="row_filter")
    tree = parsed[0]
    root = tree.unnest() if isinstance(tree, exp.Paren) else tree
    if not isinstance(root, exp.Predicate | exp.Connector | exp.Not | exp.Boolean):
        raise InvalidField(
            "row_filter must be a predicate (a comparison, IN, BETWEEN, LIKE, IS NULL, or "
            "such terms joined by AND/OR/NOT)",
            field="row_filter",
        )
    for node in tree.walk():
        if isinstance(node, (exp.Query, exp.Subquery, exp.Exists, exp.Table, *_WRITE_NODES)):
            raise InvalidField("row_filter may not contain subqueries", field="row_filter")
        if isinstance(node, exp.AggFunc | exp.Window):
            raise InvalidField(
                "row_filter may not use aggregate or window functions", field="row_filter"
            )
        if isinstance(node, exp.Star | exp.Placeholder | exp.Parameter):
            raise InvalidField(f"row_filter may not contain {node.sql()!r}", field="row_filter")
    try:
        _check_functions(tree, "row_filter")
    except Forbidden as e:
        raise InvalidField(e.message, field="row_filter") from None
    for column in tree.find_all(exp.Column):
        if column.table and column.table != source:
            raise InvalidField(
                f"row_filter may only refer to columns of {source}, not {column.sql()!r}",
                field="row_filter",
            )
        if column.name not in cols:
            raise InvalidField(
                f"row_filter refers to unknown column {column.name!r}", field="row_filter"
            )
        # Re-qualify against the view's source alias.
        column.set("table", exp.to_identifier("src", quoted=True))
        column.set("db", None)
        column.set("catalog", None)
    return tree


# ----------------------------------------------------------------------------------------------
# The platform
# ----------------------------------------------------------------------------------------------

# Connect sessions left for the garbage collector close their gRPC channel in __del__ during
# interpreter shutdown, and that close blocks forever (the channel's threads are gone): the
# process hangs on exit. Closing them from atexit, while the runtime is intact, avoids it.
_OPEN_PLATFORMS: weakref.WeakSet[DataPlatform] = weakref.WeakSet()


@atexit.register
def _close_open_platforms() -> None:
    # Registered at import, so it runs after the atexit stop of a server started later: do
    # not try to release sessions on a server that is already gone.
    for platform in list(_OPEN_PLATFORMS):
        platform.close(release=False)


def _json_value(value: Any) -> Any:
    """A fetched Spark value as something json.dumps accepts."""
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
        import base64

        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if hasattr(value, "asDict"):  # pyspark Row (struct)
        return {k: _json_value(v) for k, v in value.asDict().items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return str(value)


class DataPlatform(LoggingConfigurable):
    """Where each unit's data lives, and the operations the marketplace runs on it.

    A unit's data platform is a Spark Connect endpoint (:attr:`endpoints`, else
    :attr:`default_endpoint`) and a Hive database on it (:attr:`database_template`). In the
    embedded default every unit shares one server and isolation is by database name only;
    giving a unit its own endpoint is a configuration change.

    All methods block on the network; call them from an executor, not the IO loop.
    """

    var_dir = Unicode(
        "var",
        help="Directory for the platform's local state (the hash secret file by default).",
    ).tag(config=True)

    endpoints = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        help="""Per-unit Spark Connect endpoints: {unit_slug: "sc://host:port"}. Units not
        listed use default_endpoint. A unit with its own platform is isolated by the network,
        not just by database name.""",
    ).tag(config=True)

    default_endpoint = Unicode(
        "sc://127.0.0.1:15002",
        help="Spark Connect endpoint (SPARK_REMOTE) for units without an entry in endpoints.",
    ).tag(config=True)

    database_template = Unicode(
        "unit_{unit}",
        help="""Name of a unit's Hive database; {unit} is replaced by the unit slug. The
        result must be a valid lowercase identifier.""",
    ).tag(config=True)

    hash_secret_file = Unicode(
        help="""File holding the secret that per-unit hashing keys are derived from (hex).
        Created with mode 0600 on first use; refused if group or others can read it.
        Defaults to <var_dir>/platform_hash_secret.""",
    ).tag(config=True)

    @default("hash_secret_file")
    def _default_hash_secret_file(self) -> str:
        return os.path.join(self.var_dir, "platform_hash_secret")

    hash_secret = Bytes(
        help="""The secret behind the keyed hashes of desensitized views (at least 32 bytes).
        Set it through the environment or leave it empty to use hash_secret_file. Changing
        it changes every pseudonym. Never logged.""",
    ).tag(config=True)

    @default("hash_secret")
    def _default_hash_secret(self) -> bytes:
        env = os.environ.get("MARKET_PLATFORM_HASH_SECRET")
        if env:
            return bytes.fromhex(env)
        return self._load_or_create_secret(self.hash_secret_file)

    @validate("hash_secret")
    def _validate_hash_secret(self, proposal: Any) -> bytes:
        value = proposal["value"]
        if len(value) < 32:
            raise ValueError("DataPlatform.hash_secret must be at least 32 bytes")
        return value

    max_rows = Integer(
        1000,
        help="""Default and upper bound of the row limit of query(): a subscriber's query
        returns at most this many rows (and says whether more existed).""",
    ).tag(config=True)

    query_timeout = Float(
        120.0,
        help="Seconds a subscriber's query may run before it is cancelled on the server.",
    ).tag(config=True)

    export_max_rows = Integer(
        200_000,
        help="""Rows an export of a data product's view (download mode) may hold; a larger view
        is cut at this many rows and the response says so (X-Truncated).""",
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

    load_chunk_bytes = Integer(
        32 * 1024 * 1024,
        help="""Arrow bytes per batch sent to the server when loading a table (~1M rows of a
        four-column table). The server holds a batch as rows in its heap while writing it:
        3.5M rows in one batch exhausted a 1g server; bigger batches only save a little
        per-batch overhead.""",
    ).tag(config=True)

    load_parallelism = Integer(
        2,
        help="""Tables of one load written at the same time. The server converts each batch on
        a single thread, so on a multi-core server a few parallel writes load faster.""",
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
        _OPEN_PLATFORMS.add(self)

    # -- secrets --------------------------------------------------------------------------------

    def _load_or_create_secret(self, path: str) -> bytes:
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
            self.log.info("Generated a new platform hash secret in %s", path)
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

    def _unit_key(self, unit: str, purpose: str) -> bytes:
        # Per-unit, per-purpose keys: a key read out of one unit's view definition says
        # nothing about another unit's pseudonyms or about the master secret.
        return hmac.new(self.hash_secret, f"{purpose}\0{unit}".encode(), hashlib.sha256).digest()

    def hash_value(self, unit: str, value: Any) -> str | None:
        """The pseudonym the ``hash`` rule gives *value* in *unit*'s views.

        Lets a data owner find a customer's pseudonym without querying. *value* is compared
        by its Spark string form (``str()`` matches for ints and strings).
        """
        check_unit(unit)
        if value is None:
            return None
        key = self._unit_key(unit, "hash")
        return hmac.new(key, str(value).encode("utf-8"), hashlib.sha256).hexdigest()

    # -- endpoints and sessions -----------------------------------------------------------------

    def spark_remote_for(self, unit: str) -> str:
        """The ``sc://`` endpoint of *unit*'s data platform (what its notebooks get as
        ``SPARK_REMOTE``)."""
        check_unit(unit)
        return self.endpoints.get(unit, self.default_endpoint)

    def database_for(self, unit: str) -> str:
        """The Hive database holding *unit*'s tables and views."""
        check_unit(unit)
        name = self.database_template.format(unit=unit)
        if not OBJECT_NAME_RE.match(name):
            raise InvalidField(
                f"unit {unit!r} gives an invalid database name {name!r}", field="unit"
            )
        return name

    def session_for(self, unit: str) -> Any:
        """A Spark Connect client session on *unit*'s endpoint.

        Sessions are cached per endpoint URL (units sharing a server share a session, and
        never rely on its current database: every name we send is qualified), and distinct
        endpoints always get distinct sessions. Raises UpstreamUnavailable if the endpoint
        does not accept connections.
        """
        return self._session(self.spark_remote_for(unit))

    def _session(self, url: str) -> Any:
        with self._sessions_lock:
            session = self._sessions.get(url)
            if session is not None and not session.is_stopped:
                return session
        # Fail fast (seconds, not the client's retry schedule) when nothing listens.
        host, port = _endpoint_host_port(url)
        reason = _tcp_reachable(host, port, self.connect_timeout)
        if reason is not None:
            raise UpstreamUnavailable(
                f"the data platform at {url} is unreachable: {reason}", field=None
            )
        with self._sessions_lock:
            session = self._sessions.get(url)
            if session is None or session.is_stopped:
                session = _new_connect_session(url, self.connect_retries)
                self._sessions[url] = session
            return session

    def _evict(self, url: str, session: Any) -> None:
        with self._sessions_lock:
            if self._sessions.get(url) is session:
                del self._sessions[url]
        # The session is already unusable; releasing it on the server may fail too.
        with contextlib.suppress(Exception):
            session.client.close()

    def _run(self, unit: str | None, fn: Any, *, field: str | None = None) -> Any:
        """Call ``fn(session)`` on *unit*'s endpoint (the default endpoint for None), mapping
        connection trouble to UpstreamUnavailable.

        If the server forgot our session (it restarted), retry once with a new session.
        Other Spark errors propagate for the caller to map.
        """
        url = self.spark_remote_for(unit) if unit is not None else self.default_endpoint
        for attempt in (1, 2):
            session = self._session(url)
            try:
                return fn(session)
            except MarketError:
                raise
            except Exception as e:
                if _is_stale_session(e) and attempt == 1:
                    self.log.info("Spark Connect session on %s is stale; reconnecting", url)
                    self._evict(url, session)
                    continue
                if _is_connection_error(e):
                    self._evict(url, session)
                    host, port = _endpoint_host_port(url)
                    reason = _tcp_reachable(host, port, self.connect_timeout)
                    raise UpstreamUnavailable(
                        f"the data platform at {url} is unavailable: "
                        f"{reason or 'the connection broke during the call'}",
                        field=field,
                    ) from None
                raise
        raise AssertionError("unreachable")

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
                f"the data platform at {url} did not answer: {_first_line(str(e), 200)}"
            ) from None
        return {"endpoint": url, "ok": True, "latency_ms": round((time.monotonic() - t0) * 1000, 1)}

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

    # -- loading --------------------------------------------------------------------------------

    def _unit_lock(self, unit: str) -> threading.Lock:
        with self._sessions_lock:
            return self._unit_locks.setdefault(unit, threading.Lock())

    @staticmethod
    def _table_names(session: Any, database: str) -> set[str]:
        rows = session.sql(f"SHOW TABLES IN `{database}`").collect()
        return {r.tableName for r in rows if not r.isTemporary}

    @staticmethod
    def _database_exists(session: Any, database: str) -> bool:
        rows = session.sql("SHOW DATABASES").collect()
        return database in {r[0] for r in rows}

    def _recover(self, session: Any, database: str) -> None:
        """Undo what a crashed load left: restore orphaned backups, drop staging tables."""
        names = self._table_names(session, database)
        for name in sorted(names):
            m = _RESERVED_RE.match(name)
            if not m:
                continue
            table = m["table"]
            if m["kind"] == _PREVIOUS and table not in names:
                self.log.warning("Restoring %s.%s from an interrupted load", database, table)
                session.sql(f"ALTER TABLE `{database}`.`{name}` RENAME TO `{database}`.`{table}`")
                names.add(table)
            else:
                session.sql(f"DROP TABLE IF EXISTS `{database}`.`{name}`")

    def load_unit_tables(self, unit: str, tables: Mapping[str, Any]) -> dict[str, int]:
        """Write pandas DataFrames as managed tables ``<unit db>.<name>``; all or nothing.

        Returns ``{table: rows}``. Tables not named in *tables* are left alone, and views
        over the replaced tables keep working (they refer to tables by name).

        How the swap works: Spark refuses ``ALTER TABLE a.t RENAME TO b.t`` across databases
        (``RENAME_TABLE_SOURCE_DESTINATION_DATABASE_MISMATCH``) and Hive has no database
        rename, so a separate staging database cannot be swapped in. Instead each frame is
        written (Arrow batches of :attr:`load_chunk_bytes`, ``saveAsTable`` as parquet)
        into a staging table ``<t>__staging_<token>`` of the unit's database; that is the slow
        part where conversion errors, full disks or a dying server happen, and a failure
        there drops the staging tables (and the database itself if this load created it).
        Once every table is written, each ``t`` is renamed to ``t__previous_<token>`` and
        ``t__staging_<token>`` to ``t`` (metastore renames, the managed directory moves with
        them); if a rename fails, the renames done so far are undone in reverse. The old
        tables are dropped last. Queries during the swap may briefly miss a table; a crash
        during it is repaired by the next load (orphaned ``__previous_`` tables are renamed
        back). ``__`` in names is reserved for this.
        """
        import pandas as pd

        check_unit(unit)
        if not isinstance(tables, Mapping) or not tables:
            raise InvalidField(
                "tables must be a non-empty mapping of name to DataFrame", field="tables"
            )
        for name, frame in tables.items():
            _check_object_name(name, f"tables.{name}", "table")
            if not isinstance(frame, pd.DataFrame):
                raise InvalidField(
                    f"table {name!r} must be a pandas DataFrame, not {type(frame).__name__}",
                    field=f"tables.{name}",
                )
            if len(frame.columns) == 0:
                raise InvalidField(f"table {name!r} has no columns", field=f"tables.{name}")
        database = self.database_for(unit)
        token = uuid.uuid4().hex[:8]

        def load(session: Any) -> dict[str, int]:
            created_db = not self._database_exists(session, database)
            session.sql(f"CREATE DATABASE IF NOT EXISTS `{database}`")
            if not created_db:
                self._recover(session, database)
            staged = [f"{name}__{_STAGING}_{token}" for name in tables]
            try:
                counts = self._write_frames(session, database, tables, staged)
                self._swap(session, database, list(tables), token)
            except BaseException:
                self._discard(session, database, staged, drop_database=created_db)
                raise
            return counts

        with self._unit_lock(unit):
            t0 = time.monotonic()
            try:
                counts = self._run(unit, load, field="tables")
            except MarketError:
                raise
            except PySparkException as e:
                raise InvalidField(
                    f"loading tables into {database} failed: {_first_line(str(e))}",
                    field="tables",
                ) from None
        self.log.info(
            "Loaded %s into %s in %.1f s",
            ", ".join(f"{t} ({n} rows)" for t, n in counts.items()),
            database,
            time.monotonic() - t0,
        )
        return counts

    def _write_frames(
        self, session: Any, database: str, tables: Mapping[str, Any], staged: list[str]
    ) -> dict[str, int]:
        """Write every frame to its staging table, :attr:`load_parallelism` at a time.

        The server turns each Arrow batch into rows on one thread, so writing two tables at
        once keeps two cores busy. On the first failure, writes not yet started are cancelled
        and running ones finish (the pool waits) before the caller drops the staging tables.
        """
        names = list(tables)
        if self.load_parallelism <= 1 or len(names) == 1:
            return {
                name: self._write_frame(session, database, stg, name, tables[name])
                for name, stg in zip(names, staged, strict=True)
            }
        counts: dict[str, int] = {}
        with ThreadPoolExecutor(self.load_parallelism, thread_name_prefix="platform-load") as pool:
            futures = {
                pool.submit(self._write_frame, session, database, stg, name, tables[name]): name
                for name, stg in zip(names, staged, strict=True)
            }
            try:
                for future in as_completed(futures):
                    counts[futures[future]] = future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        return {name: counts[name] for name in names}

    def _write_frame(self, session: Any, database: str, staging: str, name: str, frame: Any) -> int:
        import pyarrow as pa

        try:
            # Convert on the client, once: a column Arrow cannot type fails here, clearly.
            table = pa.Table.from_pandas(frame, preserve_index=False)
        except Exception as e:
            raise InvalidField(
                f"table {name!r} cannot be converted for Spark: {_first_line(str(e), 300)}",
                field=f"tables.{name}",
            ) from None
        row_bytes = max(1, table.nbytes // max(1, table.num_rows))
        step = max(1000, self.load_chunk_bytes // row_bytes)
        target = f"`{database}`.`{staging}`"
        # Write the first batch even if the frame is empty so the table gets its schema.
        for start in range(0, max(table.num_rows, 1), step):
            try:
                sdf = session.createDataFrame(table.slice(start, step))
            except (PySparkException, pa.ArrowException) as e:
                if _is_connection_error(e) or _is_stale_session(e):
                    raise
                raise InvalidField(
                    f"table {name!r} cannot be loaded: {_first_line(str(e), 300)}",
                    field=f"tables.{name}",
                ) from None
            sdf.write.format("parquet").mode("error" if start == 0 else "append").saveAsTable(
                target
            )
        return table.num_rows

    def _swap(self, session: Any, database: str, names: list[str], token: str) -> None:
        existing = self._table_names(session, database)
        done: list[tuple[str, str]] = []

        def rename(old: str, new: str) -> None:
            session.sql(f"ALTER TABLE `{database}`.`{old}` RENAME TO `{database}`.`{new}`")
            done.append((old, new))

        try:
            for name in names:
                if name in existing:
                    rename(name, f"{name}__{_PREVIOUS}_{token}")
                rename(f"{name}__{_STAGING}_{token}", name)
        except BaseException:
            for old, new in reversed(done):
                try:
                    session.sql(f"ALTER TABLE `{database}`.`{new}` RENAME TO `{database}`.`{old}`")
                except Exception:
                    self.log.exception("Could not undo rename %s -> %s in %s", old, new, database)
            raise
        for name in names:
            if name in existing:
                session.sql(f"DROP TABLE IF EXISTS `{database}`.`{name}__{_PREVIOUS}_{token}`")

    def _discard(self, session: Any, database: str, staged: list[str], drop_database: bool) -> None:
        try:
            if drop_database:
                session.sql(f"DROP DATABASE IF EXISTS `{database}` CASCADE")
            else:
                for staging in staged:
                    session.sql(f"DROP TABLE IF EXISTS `{database}`.`{staging}`")
        except Exception:
            # The next load's _recover() drops them; the original error matters more.
            self.log.exception("Could not clean up the staging tables of %s", database)

    # -- views ----------------------------------------------------------------------------------

    def _hmac_sql(self, unit: str, value: exp.Expression) -> exp.Expression:
        """HMAC-SHA256(key, utf8(value)) as hex, built from Spark's sha2/concat/unhex.

        HMAC(K, m) = H((K ^ opad) || H((K ^ ipad) || m)) with K padded to the 64-byte block.
        """
        key = self._unit_key(unit, "hash").ljust(64, b"\0")
        ipad = bytes(b ^ 0x36 for b in key).hex()
        opad = bytes(b ^ 0x5C for b in key).hex()

        def fn(name: str, *args: exp.Expression) -> exp.Expression:
            return exp.Anonymous(this=name, expressions=list(args))

        def lit(s: str) -> exp.Expression:
            return exp.Literal.string(s)

        inner = fn(
            "sha2",
            fn("concat", fn("unhex", lit(ipad)), fn("encode", value, lit("UTF-8"))),
            exp.Literal.number(256),
        )
        return fn(
            "sha2",
            fn("concat", fn("unhex", lit(opad)), fn("unhex", inner)),
            exp.Literal.number(256),
        )

    def _noise_sql(
        self, unit: str, column: str, scale: float, row_columns: list[str]
    ) -> exp.Expression:
        """Laplace(0, scale) noise from a keyed hash of (column name, whole source row)."""
        key = self._unit_key(unit, "noise").hex()
        row = exp.Anonymous(
            this="to_json",
            expressions=[
                exp.Anonymous(
                    this="struct",
                    expressions=[exp.column(c, table="src", quoted=True) for c in row_columns],
                )
            ],
        )
        digest = exp.Anonymous(
            this="sha2",
            expressions=[
                exp.Anonymous(
                    this="concat",
                    expressions=[exp.Literal.string(f"{key}:{column}:"), row],
                ),
                exp.Literal.number(256),
            ],
        )
        # 52 bits of the digest -> u uniform in (0, 1); inverse CDF of Laplace(0, scale).
        bits = sqlglot.parse_one(
            "CAST(conv(substr(d, 1, 13), 16, 10) AS DOUBLE)", read="spark"
        ).transform(lambda n: digest.copy() if isinstance(n, exp.Column) and n.name == "d" else n)
        u_minus_half = sqlglot.parse_one(
            f"(b + 0.5) / {float(2**52)!r} - 0.5", read="spark"
        ).transform(lambda n: bits.copy() if isinstance(n, exp.Column) and n.name == "b" else n)
        noise = sqlglot.parse_one(
            f"-{scale!r} * signum(x) * ln(1 - 2 * abs(x))", read="spark"
        ).transform(
            lambda n: u_minus_half.copy() if isinstance(n, exp.Column) and n.name == "x" else n
        )
        return noise

    def view_sql(
        self, unit: str, policy: Mapping[str, Any], source_columns: Mapping[str, str]
    ) -> str:
        """The ``CREATE OR REPLACE VIEW`` statement for a validated policy (contains keys)."""
        database = self.database_for(unit)
        checked = validate_policy(policy, source_columns)
        row_columns = list(source_columns)
        projections: list[exp.Expression] = []
        for name, spec in checked["columns"].items():
            rule = spec["rule"]
            col = exp.column(name, table="src", quoted=True)
            if rule == "drop":
                continue
            if rule == "keep":
                value: exp.Expression = col
            elif rule == "hash":
                value = self._hmac_sql(unit, exp.cast(col, "string"))
            elif rule == "round":
                value = exp.Anonymous(
                    this="round", expressions=[col, exp.Literal.number(spec["digits"])]
                )
            elif rule == "noise":
                value = exp.Add(
                    this=exp.cast(col, "double"),
                    expression=exp.paren(self._noise_sql(unit, name, spec["scale"], row_columns)),
                )
            elif spec["to"] in _TEMPORAL_LEVELS:
                value = exp.Anonymous(
                    this="trunc",
                    expressions=[col, exp.Literal.string(_TEMPORAL_LEVELS[spec["to"]])],
                )
            else:
                value = exp.column(spec["to"], table="src", quoted=True)
            projections.append(exp.alias_(value, exp.to_identifier(name, quoted=True)))
        source = exp.Table(
            this=exp.to_identifier(checked["source"], quoted=True),
            db=exp.to_identifier(database, quoted=True),
            alias=exp.TableAlias(this=exp.to_identifier("src", quoted=True)),
        )
        select = exp.select(*projections).from_(source)
        if "row_filter" in checked:
            select = select.where(checked["row_filter"])
        body = select.sql(dialect="spark", identify=True, comments=False)
        return f"CREATE OR REPLACE VIEW `{database}`.`{checked['view']}` AS {body}"

    def create_view(self, unit: str, policy: Mapping[str, Any]) -> str:
        """Create (or replace) the desensitized view a data product publishes.

        *policy* is the ``view``/``source``/``columns``/``row_filter`` mapping from the
        product manifest; see :func:`validate_policy` for the rules. Columns the policy does
        not list are dropped. Returns the qualified view name ``unit_<slug>.<view>``.

        Noise is deterministic per row: a keyed hash of the column name and the whole source
        row (as JSON) picks the Laplace sample, so repeating a query cannot average the noise
        away, identical rows get identical noise and changing any field of a row re-draws it.

        Limitation: Spark has no keyed hash and no secret store a view can read, so the
        per-unit keys (derived from :attr:`hash_secret` by HMAC; never the secret itself)
        are literals in the view text in the metastore. Anyone who can read the view's
        definition (``SHOW CREATE TABLE`` on the unit's platform) can recompute pseudonyms
        from candidate values; subscribers cannot, since :meth:`query` only runs SELECTs.
        On the shared embedded server that is every notebook with direct Spark access; with
        per-unit endpoints it is only the unit itself, which holds the raw data anyway.
        Error messages are scrubbed of key material.
        """
        database = self.database_for(unit)
        if not isinstance(policy, Mapping):
            raise InvalidField("a desensitization policy must be a mapping", field="policy")
        source = _check_object_name(policy.get("source"), "source", "source table")
        view = _check_object_name(policy.get("view"), "view", "view")

        def create(session: Any) -> str:
            try:
                schema = session.table(f"`{database}`.`{source}`").schema
            except PySparkException as e:
                if _is_connection_error(e) or _is_stale_session(e):
                    raise
                raise InvalidField(
                    f"source table {database}.{source} does not exist", field="source"
                ) from None
            columns = {f.name: f.dataType.simpleString() for f in schema.fields}
            statement = self.view_sql(unit, policy, columns)
            if view in self._table_names(session, database):
                if session.catalog.getTable(f"{database}.{view}").tableType != "VIEW":
                    raise InvalidField(
                        f"{database}.{view} is a table, not a view; choose another view name",
                        field="view",
                    )
            try:
                session.sql(statement)
            except PySparkException as e:
                if _is_connection_error(e) or _is_stale_session(e):
                    raise
                raise InvalidField(
                    f"creating view {database}.{view} failed: {_first_line(str(e))}",
                    field="columns",
                ) from None
            return f"{database}.{view}"

        return self._run(unit, create, field="policy")

    # -- guarded SQL ----------------------------------------------------------------------------

    def export_view(self, unit: str, view: str, fmt: str) -> tuple[bytes, int, bool]:
        """A published view of *unit* as CSV or Parquet bytes (blocking: run in an executor).

        *view* is a qualified view name the caller was granted. Returns (bytes, rows, truncated)
        with at most :attr:`export_max_rows` rows, in the view's column order.
        """
        if fmt not in ("csv", "parquet"):
            raise InvalidField("format must be 'csv' or 'parquet'", field="format")
        limit = self.export_max_rows

        def run(session: Any) -> tuple[bytes, int, bool]:
            frame = session.table(view).limit(limit + 1).toPandas()
            truncated = len(frame) > limit
            frame = frame.iloc[:limit]
            frame.attrs = {}  # Spark Connect's query metrics: not data, and not JSON
            buffer = io.BytesIO()
            if fmt == "csv":
                buffer.write(frame.to_csv(index=False).encode())
            else:
                frame.to_parquet(buffer, index=False)
            return buffer.getvalue(), len(frame), truncated

        try:
            return self._run(unit, run, field="view")
        except PySparkException as e:
            raise InvalidField(f"the export failed: {_first_line(str(e))}", field="view") from None

    def check_query(self, unit: str, sql: str, grants: Iterable[str]) -> tuple[str, list[str]]:
        """Parse and authorize a subscriber's SQL; return (SQL to run, tables it reads).

        Accepts exactly one SELECT (set operations of SELECTs included). Every table
        reference, in joins, subqueries and CTE bodies alike, must be a qualified name in
        *grants* once unqualified names are resolved against the unit's database; CTE names
        are not tables (within their scope, as Spark resolves them). Table functions,
        path-based tables (``parquet.`/x```), other catalogs, qualified function calls and
        :data:`DENIED_FUNCTIONS` are refused. The returned SQL has every table qualified, so
        what was checked is what runs, whatever the session's current database.
        """
        database = self.database_for(unit)
        allowed = {g.lower() for g in grants}
        if not isinstance(sql, str) or not sql.strip():
            raise InvalidField("sql is empty", field="sql")
        try:
            statements = [s for s in sqlglot.parse(sql, read="spark") if s is not None]
        except sqlglot.errors.SqlglotError as e:
            raise InvalidField(
                f"could not parse the SQL: {_first_line(str(e), 300)}", field="sql"
            ) from None
        if len(statements) != 1:
            raise InvalidField(
                f"exactly one SELECT statement is allowed, got {len(statements)} statements",
                field="sql",
            )
        tree = statements[0]
        if not isinstance(tree, exp.Select | exp.SetOperation):
            what = str(tree.this).split()[0] if isinstance(tree, exp.Command) else tree.key
            raise InvalidField(f"only SELECT queries are allowed, not {what.upper()}", field="sql")
        for node in tree.walk():
            if isinstance(node, _WRITE_NODES):
                raise InvalidField(
                    f"only SELECT queries are allowed; found {node.key.upper()}", field="sql"
                )
            if isinstance(node, exp.With) and node.args.get("recursive"):
                raise InvalidField("recursive CTEs are not allowed", field="sql")
        tables: list[str] = []
        self._resolve_tables(tree, frozenset(), database, allowed, tables)
        _check_functions(tree, "sql")
        # Regenerated rather than passed through, so the qualified names are what runs;
        # comments are dropped so no comment trickery can change what Spark parses.
        return tree.sql(dialect="spark", identify=True, comments=False), tables

    def _resolve_tables(
        self,
        node: exp.Expression,
        ctes: frozenset[str],
        database: str,
        allowed: set[str],
        seen: list[str],
    ) -> None:
        """Walk *node*, checking every table reference with the CTE names in scope."""
        with_ = node.args.get("with_") or node.args.get("with")
        if isinstance(with_, exp.With):
            visible = set(ctes)
            for cte in with_.expressions:
                # A CTE's body sees the CTEs before it, not itself (no RECURSIVE).
                self._resolve_tables(cte.this, frozenset(visible), database, allowed, seen)
                visible.add(cte.alias_or_name.lower())
            ctes = frozenset(visible)
        if isinstance(node, exp.Table):
            self._check_table(node, ctes, database, allowed, seen)
        for key, value in node.args.items():
            if key in ("with_", "with") and isinstance(value, exp.With):
                continue
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, exp.Expression):
                    self._resolve_tables(child, ctes, database, allowed, seen)

    @staticmethod
    def _check_table(
        table: exp.Table,
        ctes: frozenset[str],
        database: str,
        allowed: set[str],
        seen: list[str],
    ) -> None:
        if not isinstance(table.this, exp.Identifier):
            what = _function_name(table.this) or table.this.sql(dialect="spark")
            raise Forbidden(
                f"table functions such as {what}(...) are not allowed; query a granted view",
                field="sql",
            )
        name = table.name.lower()
        db = (table.text("db") or "").lower()
        catalog = (table.text("catalog") or "").lower()
        if any(ch in name for ch in "/:\\") or db in _PATH_SOURCES:
            raise Forbidden(
                f"path-based tables such as {table.sql(dialect='spark')} are not allowed",
                field="sql",
            )
        if "." in name:
            raise Forbidden(
                f"the quoted name {table.sql(dialect='spark')} contains a dot; write the "
                "database and the view as two names (db.view)",
                field="sql",
            )
        if catalog and catalog != "spark_catalog":
            raise Forbidden(f"catalog {catalog!r} is not allowed", field="sql")
        if not db and name in ctes:
            return  # a CTE in scope, not a table
        qualified = f"{db or database}.{name}"
        if qualified not in allowed:
            raise Forbidden(
                f"table {qualified} is not granted to this query (granted: "
                f"{', '.join(sorted(allowed)) or 'nothing'})",
                field="sql",
            )
        # Pin the reference to what was checked.
        table.set("catalog", None)
        table.set("db", exp.to_identifier(db or database, quoted=True))
        seen.append(qualified)

    def query(
        self, unit: str, sql: str, grants: Iterable[str], limit: int | None = None
    ) -> dict[str, Any]:
        """Run a subscriber's SELECT on *unit*'s platform, reading only *grants*.

        *grants* are qualified view names (``unit_x.customers_public``); unqualified names in
        *sql* resolve against the unit's database. *limit* defaults to :attr:`max_rows` and
        may not exceed it; at most ``limit + 1`` rows are fetched to tell whether the result
        was cut. Returns ``{"columns": [{"name", "type"}], "rows": [[...]], "truncated"}``
        with JSON-ready values (dates as ISO strings, decimals as floats, binary as base64).

        Raises InvalidField(field="sql"/"limit") for bad SQL, Forbidden(field="sql") for a
        table or function outside the grant, UpstreamUnavailable if the platform is down.
        """
        if limit is None:
            limit = self.max_rows
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= self.max_rows:
            raise InvalidField(
                f"limit must be an integer between 1 and {self.max_rows}, not {limit!r}",
                field="limit",
            )
        statement, tables = self.check_query(unit, sql, grants)
        tag = f"market-query-{uuid.uuid4().hex}"
        timed_out = threading.Event()

        def cancel(session: Any) -> None:
            timed_out.set()
            with contextlib.suppress(Exception):
                session.interruptTag(tag)

        def run(session: Any) -> dict[str, Any]:
            # Tags are thread-local in the Connect client: only this thread's calls carry it.
            session.addTag(tag)
            timer = threading.Timer(self.query_timeout, cancel, (session,))
            timer.start()
            try:
                df = session.sql(statement).limit(limit + 1)
                rows = df.collect()
                schema = df.schema
            finally:
                timer.cancel()
                session.removeTag(tag)
            return {
                "columns": [
                    {"name": f.name, "type": f.dataType.simpleString()} for f in schema.fields
                ],
                "rows": [[_json_value(v) for v in row] for row in rows[:limit]],
                "truncated": len(rows) > limit,
            }

        t0 = time.monotonic()
        try:
            result = self._run(unit, run, field="sql")
        except MarketError:
            raise
        except PySparkException as e:
            if timed_out.is_set():
                raise InvalidField(
                    f"the query ran longer than {self.query_timeout:.0f} s and was cancelled",
                    field="sql",
                ) from None
            raise InvalidField(f"the query failed: {_first_line(str(e))}", field="sql") from None
        self.log.info(
            "Query on %s read %s: %d rows in %.2f s",
            unit,
            ", ".join(sorted(set(tables))) or "no table",
            len(result["rows"]),
            time.monotonic() - t0,
        )
        return result
