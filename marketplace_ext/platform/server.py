"""The embedded data platform's server process: one Spark Connect server we start and stop."""

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
from .common import _pyspark_home, _free_port, _tcp_reachable, _endpoint_host_port, _new_connect_session, _first_line, _redact  # noqa: F401

# ----------------------------------------------------------------------------------------------
# The embedded server
# ----------------------------------------------------------------------------------------------


class PlatformStartError(UpstreamUnavailable):
    """The embedded Spark Connect server did not come up (the message carries the log tail)."""


class SparkConnectServer(LoggingConfigurable):
    """One Spark Connect server, run as a foreground child process that we own.

    We launch ``bin/spark-submit --class org.apache.spark.sql.connect.service.SparkConnectServer``
    directly rather than ``sbin/start-connect-server.sh``: the script daemonizes through
    ``spark-daemon.sh`` (nohup, pid file in ``/tmp``), so the JVM outlives us on Ctrl-C or a
    crash, and stopping it means trusting a pid file. spark-submit ``exec``\\ s through
    ``spark-class`` into ``java``, so the pid we spawn *is* the JVM, and ``start_new_session``
    puts it (and any Python workers it forks) in its own process group: :meth:`stop` signals
    the whole group, SIGTERM first so Spark's shutdown hooks remove their temp dirs and Derby
    closes cleanly, then SIGKILL for whatever is left. An ``atexit`` hook stops a server the
    caller forgot, and :attr:`die_with_parent` covers our process dying by a signal that skips
    atexit. A pid file lets the next start name a server that still escaped.

    ``start()``/``stop()`` are blocking; the server is also a context manager.
    """

    spark_home = Unicode(
        help="""Spark installation to run. Defaults to the pip-installed pyspark package, which
        ships the Spark Connect server, Hive and Derby jars.""",
    ).tag(config=True)

    @default("spark_home")
    def _default_spark_home(self) -> str:
        return _pyspark_home()

    var_dir = Unicode(
        "var",
        help="""Directory for the server's state: Derby metastore (metastore_db/), warehouse
        (warehouse/), Derby log, scratch space (tmp/), the log file and the pid file.
        Only one server may use a var directory at a time (embedded Derby is single-process).""",
    ).tag(config=True)

    master = Unicode(
        "local[*]",
        help="Spark master URL; local[N] runs executors as threads inside the server's JVM.",
    ).tag(config=True)

    host = Unicode(
        "127.0.0.1",
        help="""Address the gRPC endpoint (and Spark's internal driver ports) bind to. The
        embedded server has no authentication: keep it on loopback.""",
    ).tag(config=True)

    port = Integer(15002, help="Port of the Spark Connect gRPC endpoint.").tag(config=True)

    driver_memory = Unicode(
        "2g",
        help="""JVM heap of the server (driver and, in local mode, executors). Loading the
        3.9M-row demo tables in 32 MB batches runs in 1g (one 3.5M-row batch did not); 2g
        leaves room for concurrent queries and loads.""",
    ).tag(config=True)

    spark_conf = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        help="""Extra Spark configuration (--conf key=value), applied after and overriding the
        settings this class derives from the other options.""",
    ).tag(config=True)

    startup_timeout = Float(
        180.0,
        help="Seconds to wait for the server to answer SELECT 1 before giving up and stopping it.",
    ).tag(config=True)

    stop_timeout = Float(
        30.0,
        help="Seconds to wait after SIGTERM for a clean shutdown before SIGKILL.",
    ).tag(config=True)

    warm_metastore = Bool(
        True,
        help="""After SELECT 1 answers, also run SHOW DATABASES so the Hive client and Derby
        metastore initialize during start() (several seconds) rather than in a user's first
        request, and so a broken metastore (e.g. a Derby lock held by another server) fails
        start() instead of that request.""",
    ).tag(config=True)

    die_with_parent = Bool(
        True,
        help="""Have the kernel send the server SIGTERM when the process that started it dies,
        even by SIGKILL or an unhandled SIGTERM (which skip atexit). Linux only, through
        util-linux `setpriv --pdeathsig`; applied only when start() runs on the main thread,
        because the kernel ties the signal to the *thread* that spawned the child.""",
    ).tag(config=True)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._proc: subprocess.Popen | None = None
        self._log_fh = None
        self._lock = threading.Lock()

    # -- paths ----------------------------------------------------------------------------------

    @property
    def var_path(self) -> str:
        return os.path.abspath(self.var_dir)

    @property
    def log_file(self) -> str:
        return os.path.join(self.var_path, "logs", "spark-connect.log")

    @property
    def pid_file(self) -> str:
        return os.path.join(self.var_path, "spark-connect.pid")

    @property
    def remote(self) -> str:
        """The ``sc://host:port`` URL clients use (``SPARK_REMOTE``)."""
        return f"sc://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        """True while the server process we started is alive."""
        return self._proc is not None and self._proc.poll() is None

    # -- command --------------------------------------------------------------------------------

    def conf(self) -> dict[str, str]:
        """The ``--conf`` settings the server is started with."""
        var = self.var_path
        conf = {
            "spark.master": self.master,
            "spark.app.name": "Grid Data Supermarket platform",
            "spark.sql.catalogImplementation": "hive",
            "spark.hadoop.javax.jdo.option.ConnectionURL": (
                f"jdbc:derby:;databaseName={var}/metastore_db;create=true"
            ),
            "spark.sql.warehouse.dir": os.path.join(var, "warehouse"),
            # Hive's HDFS scratch dir defaults to /tmp/hive; keep everything under var/.
            "spark.hadoop.hive.exec.scratchdir": os.path.join(var, "tmp", "hive"),
            "spark.local.dir": os.path.join(var, "tmp"),
            "spark.connect.grpc.binding.address": self.host,
            "spark.connect.grpc.binding.port": str(self.port),
            # The driver's RPC and block manager ports otherwise bind the external interface.
            "spark.driver.bindAddress": self.host,
            "spark.driver.host": self.host,
            "spark.ui.enabled": "false",
            # Small local data: the default 200 shuffle partitions only add task overhead
            # (adaptive execution coalesces them, but planning 200 tasks still costs).
            "spark.sql.shuffle.partitions": "8",
        }
        conf.update(self.spark_conf)
        return conf

    def java_options(self) -> list[str]:
        var = self.var_path
        return [
            # derby.log goes to derby.system.home; java.io.tmpdir catches the rest
            # (Hive session dirs, the Connect ML cache) that would land in /tmp.
            f"-Dderby.system.home={var}",
            f"-Djava.io.tmpdir={os.path.join(var, 'tmp')}",
            # A JVM that ran out of heap limps on with broken threads and hangs every client;
            # exiting makes the failure visible (clients get UNAVAILABLE, the launcher sees it).
            "-XX:+ExitOnOutOfMemoryError",
        ]

    def command(self) -> list[str]:
        """The argv that starts the server in the foreground."""
        cmd = [
            os.path.join(self.spark_home, "bin", "spark-submit"),
            "--class",
            CONNECT_SERVER_CLASS,
            "--name",
            "Spark Connect server",
            "--driver-memory",
            self.driver_memory,
            # spark-submit splits this option like a shell would
            "--driver-java-options",
            " ".join(shlex.quote(o) for o in self.java_options()),
        ]
        for key, value in self.conf().items():
            cmd += ["--conf", f"{key}={value}"]
        setpriv = shutil.which("setpriv")
        if (
            self.die_with_parent
            and setpriv
            and sys.platform.startswith("linux")
            and threading.current_thread() is threading.main_thread()
        ):
            # setpriv sets PR_SET_PDEATHSIG and execs; the setting survives the execs down
            # to java, and the pid stays the same.
            cmd = [setpriv, "--pdeathsig", "TERM", "--", *cmd]
        return cmd

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["SPARK_HOME"] = self.spark_home
        # As start-connect-server.sh does: an inherited Connect-client setting must not turn
        # the server's own session into a Connect client.
        env["SPARK_CONNECT_MODE"] = "0"
        env.pop("SPARK_REMOTE", None)
        env.pop("SPARK_CONNECT_MODE_ENABLED", None)
        # Python UDFs sent by notebooks run in workers; use an interpreter that has pyspark.
        env.setdefault("PYSPARK_PYTHON", sys.executable)
        return env

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server log (for error messages)."""
        try:
            with open(self.log_file, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle ------------------------------------------------------------------------------

    def _check_stale(self) -> None:
        try:
            with open(self.pid_file) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            return
        if CONNECT_SERVER_CLASS in cmdline and self.var_path in cmdline:
            raise PlatformStartError(
                f"a Spark Connect server (pid {pid}) from an earlier run still uses "
                f"{self.var_path}; stop it first (kill -TERM -{pid})"
            )

    def start(self) -> None:
        """Start the server and return once a Spark Connect client can run ``SELECT 1``.

        Raises :class:`PlatformStartError` (with the log tail) if the port is taken, the
        process exits, or it does not answer within :attr:`startup_timeout`; the process is
        stopped in that case.
        """
        with self._lock:
            if self.running():
                return
            if not _free_port(self.host, self.port):
                raise PlatformStartError(
                    f"cannot start the Spark Connect server: {self.host}:{self.port} is already "
                    "in use (another platform server?); set SparkConnectServer.port"
                )
            self._check_stale()
            for sub in ("logs", "tmp", "warehouse"):
                os.makedirs(os.path.join(self.var_path, sub), exist_ok=True)
            self._log_fh = open(self.log_file, "ab")
            cmd = self.command()
            self._log_fh.write(
                f"\n=== {datetime.datetime.now().isoformat()} starting: "
                f"{shlex.join(cmd)}\n".encode()
            )
            self._log_fh.flush()
            self.log.info(
                "Starting Spark Connect server at %s (log: %s)", self.remote, self.log_file
            )
            t0 = time.monotonic()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log_fh,
                stderr=subprocess.STDOUT,
                cwd=self.var_path,  # anything Spark drops in its cwd lands under var/
                env=self.env(),
                start_new_session=True,
            )
            with open(self.pid_file, "w") as f:
                f.write(f"{self._proc.pid}\n")
            atexit.register(self.stop)
        try:
            self._wait_ready(t0)
        except BaseException:
            self.stop()
            raise
        self.log.info(
            "Spark Connect server up at %s (pid %s) after %.1f s",
            self.remote,
            self.pid,
            time.monotonic() - t0,
        )

    def _wait_ready(self, t0: float) -> None:
        deadline = t0 + self.startup_timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = self._proc.returncode if self._proc is not None else "?"
                raise PlatformStartError(
                    f"the Spark Connect server exited with code {code} during start-up; "
                    f"log {self.log_file} ends with:\n{self.log_tail()}"
                )
            reason = _tcp_reachable(self.host, self.port, timeout=1.0)
            if reason is None:
                try:
                    self._probe()
                    return
                except Exception as e:  # not ready yet (or really broken: we report at the end)
                    last_error = _first_line(str(e))
            time.sleep(0.5)
        raise PlatformStartError(
            f"the Spark Connect server at {self.remote} did not answer SELECT 1 within "
            f"{self.startup_timeout:.0f} s (last error: {last_error}); log {self.log_file} "
            f"ends with:\n{self.log_tail()}"
        )

    def _probe(self) -> None:
        session = _new_connect_session(self.remote, retries=2)
        try:
            session.sql("SELECT 1").collect()
            if self.warm_metastore:
                session.sql("SHOW DATABASES").collect()
        finally:
            with contextlib.suppress(Exception):
                session.stop()

    def health(self) -> dict[str, Any]:
        """Whether the process runs and answers ``SELECT 1``; never raises."""
        info: dict[str, Any] = {"remote": self.remote, "pid": self.pid, "running": self.running()}
        if not info["running"]:
            info["ok"] = False
            return info
        t0 = time.monotonic()
        session = None
        try:
            session = _new_connect_session(self.remote, retries=1)
            session.sql("SELECT 1").collect()
            info.update(ok=True, latency_ms=round((time.monotonic() - t0) * 1000, 1))
        except Exception as e:
            info.update(ok=False, error=_first_line(str(e)))
        finally:
            if session is not None:
                with contextlib.suppress(Exception):
                    session.stop()
        return info

    def stop(self) -> None:
        """Stop the server and every process in its group; idempotent, blocking."""
        with self._lock:
            proc, self._proc = self._proc, None
            atexit.unregister(self.stop)
            if proc is not None:
                self._terminate_group(proc)
                with contextlib.suppress(OSError):
                    os.unlink(self.pid_file)
            if self._log_fh is not None:
                self._log_fh.close()
                self._log_fh = None

    def _terminate_group(self, proc: subprocess.Popen) -> None:
        pgid = proc.pid  # start_new_session made the child its own group leader
        self.log.info("Stopping Spark Connect server (pid %s)", pgid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.log.warning(
                "Spark Connect server ignored SIGTERM for %.0f s; killing", self.stop_timeout
            )
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            proc.wait()
        # The JVM is gone; Python workers it forked share its group and may still be exiting.
        deadline = time.monotonic() + 5
        while True:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                return
            time.sleep(0.1)

    def __enter__(self) -> SparkConnectServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


