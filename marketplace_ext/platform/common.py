"""Constants and helpers shared by the data platform's modules: names, Spark errors, redaction."""

from __future__ import annotations

import logging
import os
import re
import socket
from typing import Any
from urllib.parse import urlsplit

# UpstreamUnavailable is not used here: server.py takes it (and CONNECT_SERVER_CLASS) from
# ``from .common import *``.
from ..errors import InvalidField, UpstreamUnavailable  # noqa: F401

#: a unit's slug, as used in ``unit_<slug>`` database names and hub group names
UNIT_SLUG_RE = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
#: table and view names we create; ``__`` is reserved for the loader's staging tables
OBJECT_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_CONNECT_URL_RE = re.compile(r"^sc://[^/:;\s]+(:\d{1,5})?/?(;[^\s]*)?$")

CONNECT_SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"


def _pyspark_home() -> str:
    import pyspark

    return os.path.dirname(os.path.abspath(pyspark.__file__))


def _redact(text: str) -> str:
    """Remove key material from a message before it reaches a log or a client.

    View definitions carry per-unit keys as long hex strings, and Spark quotes view text in
    some error messages; no legitimate message needs a 64+ character hex run.
    """
    return re.sub(r"[0-9a-fA-F]{64,}", "<redacted>", text)


def _first_line(text: str, limit: int = 500) -> str:
    """The first line of a Spark error, redacted and capped.

    Spark follows it with the analyzed plan (which shows a view's *source* table, its
    columns and the view's key literals) and the JVM stack trace: none of that is for a
    subscriber, and the first line says what went wrong.
    """
    lines = [ln for ln in _redact(str(text)).strip().splitlines() if ln.strip()]
    text = lines[0].strip() if lines else "unknown error"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _RedactSparkErrorLog(logging.Filter):
    """pyspark logs every server error with its full plan (and view key literals) at ERROR.

    Keep the record, minus key material and the traceback that repeats the plan.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _first_line(record.getMessage(), 2000)
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        return True


_LOG_FILTER_INSTALLED = False


def _install_spark_log_redaction() -> None:
    global _LOG_FILTER_INSTALLED
    if _LOG_FILTER_INSTALLED:
        return
    from pyspark.logger import PySparkLogger

    # Created through PySparkLogger: pyspark calls these with keyword arguments a plain
    # logging.Logger rejects, so we must not create them first ourselves.
    for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
        PySparkLogger.getLogger(name).addFilter(_RedactSparkErrorLog())
    _LOG_FILTER_INSTALLED = True


def check_unit(unit: str) -> str:
    """Return *unit* if it is a valid unit slug, else raise InvalidField(field="unit")."""
    if not isinstance(unit, str) or not UNIT_SLUG_RE.match(unit):
        raise InvalidField(
            f"invalid unit slug {unit!r}: expected a lowercase letter followed by up to 30 "
            "lowercase letters, digits or underscores",
            field="unit",
        )
    return unit


def _check_object_name(name: Any, field: str, what: str) -> str:
    if not isinstance(name, str) or not OBJECT_NAME_RE.match(name) or "__" in name:
        raise InvalidField(
            f"invalid {what} name {name!r}: expected a lowercase letter followed by up to 63 "
            "lowercase letters, digits or single underscores ('__' is reserved)",
            field=field,
        )
    return name


def _free_port(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the server does: connections of a previous server lingering in TIME_WAIT on
        # this port must not count as "in use", only a listener.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _tcp_reachable(host: str, port: int, timeout: float) -> str | None:
    """None if a TCP connection to host:port succeeds, else the reason it failed."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return e.strerror or str(e) or type(e).__name__


def _endpoint_host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url.split(";", 1)[0])
    return parts.hostname or "localhost", parts.port or 15002


def _new_connect_session(url: str, retries: int):
    """A new Spark Connect client session for *url*, with a bounded retry policy.

    We call the Connect ``SparkSession`` constructor instead of ``builder.remote(url)
    .getOrCreate()``: ``getOrCreate`` hands back the process-wide default session whatever
    URL is asked for, and ``builder.create()`` makes the first session that default. Either
    would let two endpoints share one session (and one server). The constructor does neither.

    The default retry policy keeps retrying an unreachable server for about ten minutes; we
    want a clear ``UpstreamUnavailable`` in seconds, so the policy is capped at *retries*
    attempts with a short backoff (0.2 s, 0.4 s, 0.8 s, ...).
    """
    from pyspark.sql.connect.client.retries import DefaultPolicy
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    _install_spark_log_redaction()
    session = ConnectSession(connection=url)
    session.client.set_retry_policies(
        [
            DefaultPolicy(
                max_retries=retries,
                initial_backoff=200,
                backoff_multiplier=2.0,
                max_backoff=2000,
                jitter=0,
            )
        ]
    )
    return session


def _is_connection_error(e: BaseException) -> bool:
    import grpc

    if isinstance(e, grpc.RpcError):
        return e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    code = getattr(e, "getGrpcStatusCode", None)
    if code is not None:
        try:
            return code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        except Exception:
            return False
    return False


def _is_stale_session(e: BaseException) -> bool:
    # The server restarted (or expired our session): the client must start a new session.
    # After a restart the client sees SESSION_CHANGED once, marks itself closed, and every
    # later call fails with NO_ACTIVE_SESSION.
    name = _spark_error_condition(e)
    text = str(e)
    return any(
        marker in name or marker in text
        for marker in (
            "SESSION_CHANGED",
            "SESSION_CLOSED",
            "SESSION_NOT_FOUND",
            "NO_ACTIVE_SESSION",
        )
    )


def _spark_error_condition(e: BaseException) -> str:
    cond = getattr(e, "getCondition", None)
    try:
        return (cond() if cond else None) or ""
    except Exception:
        return ""


