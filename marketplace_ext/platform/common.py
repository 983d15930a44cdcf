"""Constants and helpers shared by the data platform's modules: names, Spark errors, redaction."""

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

from ..errors import Forbidden, InvalidField, MarketError, UpstreamUnavailable

#: a unit's slug, as used in ``unit_<slug>`` database names and hub group names
UNIT_SLUG_RE = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
#: table and view names we create; ``__`` is reserved for the loader's staging tables
OBJECT_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_CONNECT_URL_RE = re.compile(r"^sc://[^/:;\s]+(:\d{1,5})?/?(;[^\s]*)?$")

CONNECT_SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"

# The loader's reserved name parts: ``<table>__staging_<token>``, ``<table>__previous_<token>``.
_STAGING = "staging"
_PREVIOUS = "previous"
_RESERVED_RE = re.compile(r"^(?P<table>[a-z][a-z0-9_]*?)__(?P<kind>staging|previous)_[0-9a-f]{8}$")

# Functions a subscriber's SQL (or a policy's row filter) may not call: they reach outside the
# rows (JVM reflection, files on the server, schema registries) or describe the server itself
# (its OS account, the paths of a table's files).
DENIED_FUNCTIONS = frozenset(
    {
        "reflect",
        "java_method",
        "try_reflect",
        "identifier",
        "input_file_name",
        "input_file_block_start",
        "input_file_block_length",
        "from_protobuf",
        "to_protobuf",
        "from_avro",
        "to_avro",
        "read_files",
        "session_user",
        "current_user",
        "user",
    }
)

# Data source names Spark accepts as "database" of a path-based table: parquet.`/some/path`.
_PATH_SOURCES = frozenset(
    {"parquet", "orc", "json", "csv", "text", "avro", "binaryfile", "delta", "xml", "jdbc", "hive"}
)

# Statement types that change state; rejected wherever they appear in a parsed query.
_WRITE_NODES: tuple[type[exp.Expression], ...] = tuple(
    getattr(exp, name)
    for name in (
        "Insert",
        "Delete",
        "Update",
        "Merge",
        "Create",
        "Drop",
        "Alter",
        "Command",
        "Cache",
        "Uncache",
        "Set",
        "Use",
        "Describe",
        "LoadData",
        "Refresh",
        "Pragma",
        "Transaction",
        "Commit",
        "Rollback",
        "Copy",
    )
    if hasattr(exp, name)
)

#: the rules a policy column may use
POLICY_RULES = ("keep", "drop", "hash", "generalize", "round", "noise")
_RULE_PARAMS: dict[str, set[str]] = {
    "keep": set(),
    "drop": set(),
    "hash": set(),
    "generalize": {"to"},
    "round": {"digits"},
    "noise": {"scale"},
}
_TEMPORAL_LEVELS = {"month": "MM", "year": "YEAR"}
_NUMERIC_TYPES = re.compile(
    r"^(tinyint|smallint|int|integer|bigint|long|float|real|double|decimal.*|byte|short)$"
)
_TEMPORAL_TYPES = re.compile(r"^(date|timestamp.*)$")


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


