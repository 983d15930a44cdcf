"""The embedded data platform's server process: one Spark Connect server we start and stop.

In the embedded default each unit has one (see :mod:`.supervisor`), run as the unit's own
system account (``gds-spark-<unit>``), with its own Derby metastore and warehouse, gRPC bound
to loopback and a token every client must present.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from traitlets import Bool, Dict, Float, Integer, Unicode, default
from traitlets.config import LoggingConfigurable

from ..errors import UpstreamUnavailable
from .common import (
    CONNECT_SERVER_CLASS,
    _first_line,
    _free_port,
    _new_connect_session,
    _pyspark_home,
    _tcp_reachable,
)

#: the server reads its token from here (pyspark's own local server does the same), so the
#: token never appears on a command line (/proc/<pid>/cmdline is world-readable)
TOKEN_ENV = "SPARK_CONNECT_AUTHENTICATE_TOKEN"

# Inherited variables a server may need; everything else (the service's secrets, a client's
# SPARK_REMOTE) stays out of a process that runs other accounts' UDFs.
_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "JAVA_HOME", "HADOOP_CONF_DIR",
             "YARN_CONF_DIR", "KUBECONFIG", "SPARK_LOCAL_IP", "SPARK_CONF_DIR")


class PlatformStartError(UpstreamUnavailable):
    """The embedded Spark Connect server did not come up (the message carries the log tail)."""


def process_alive(pid: int) -> bool:
    """Whether *pid* runs and is not a zombie. A killed JVM stays a zombie (still holding its
    listening socket) while its threads and heap are torn down, before waitpid reports it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def connect_url(port: int, token: str = "", host: str = "127.0.0.1") -> str:
    """The client URL of a local server. With a token the host MUST be written ``localhost``:
    for any other host the pyspark client switches to TLS (see NOTES, Spark)."""
    if token:
        return f"sc://localhost:{port}/;token={token}"
    return f"sc://{host}:{port}"


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

    With :attr:`account` set (and us root), the server runs as that account through
    ``setpriv``; its state directory (:attr:`var_dir`) then belongs to the account, and the
    log and pid files, which root opens, live outside it (:attr:`log_file`, :attr:`pid_file`):
    root must never open a path the account can replace with a symlink.

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
        (warehouse/), Derby log and scratch space (tmp/). Only one server may use a var
        directory at a time (embedded Derby is single-process). With an account it is made
        the account's, mode 0700; its parent must let the account pass (0711).""",
    ).tag(config=True)

    log_file = Unicode(
        help="The server's stdout/stderr log. Defaults to <var_dir>/logs/spark-connect.log.",
    ).tag(config=True)

    @default("log_file")
    def _default_log_file(self) -> str:
        return os.path.join(self.var_path, "logs", "spark-connect.log")

    pid_file = Unicode(
        help="""File holding the server's pid while it runs. Defaults to
        <var_dir>/spark-connect.pid.""",
    ).tag(config=True)

    @default("pid_file")
    def _default_pid_file(self) -> str:
        return os.path.join(self.var_path, "spark-connect.pid")

    account = Unicode(
        "",
        help="""System account to run the server as (e.g. gds-spark-<unit>); empty runs it as
        ourselves. Needs root. The account must be able to reach spark_home, java and the
        Python of PYSPARK_PYTHON (every directory above them other-executable).""",
    ).tag(config=True)

    token = Unicode(
        "",
        help="""Token every client must present (spark.connect.authenticate.token). Passed to
        the server in its environment, never on its command line; never logged. Empty: no
        authentication (only for a server nobody else can reach).""",
    ).tag(config=True)

    master = Unicode(
        "local[*]",
        help="""Spark master URL: local[N] runs executors as threads inside the server's JVM;
        spark://host:7077 (standalone), yarn or k8s://https://host:6443 run them on a
        cluster (the server is then the driver).""",
    ).tag(config=True)

    host = Unicode(
        "127.0.0.1",
        help="""Address the gRPC endpoint (and Spark's internal driver ports) bind to. Keep it
        on loopback; clients off the machine reach it through a TLS relay (see tls.py).""",
    ).tag(config=True)

    port = Integer(15002, help="Port of the Spark Connect gRPC endpoint.").tag(config=True)

    driver_memory = Unicode(
        "2g",
        help="""JVM heap of the server (driver and, in local mode, executors). Loading the
        3.9M-row demo tables in 32 MB batches runs in 1g (one 3.5M-row batch did not); 2g
        leaves room for concurrent queries and loads. A unit's server holds one unit's data
        and runs in 512m (UnitServers.driver_memory).""",
    ).tag(config=True)

    spark_conf = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        help="""Extra Spark configuration (--conf key=value), applied after and overriding the
        settings this class derives from the other options. Never put secrets here: the
        values appear on the command line.""",
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
        help="""Have the kernel send the server SIGTERM when the thread that started it dies,
        even by SIGKILL or an unhandled SIGTERM (which skip atexit). Linux only, through
        util-linux `setpriv --pdeathsig`; applied when the spawning thread is the main thread
        or the caller says it lives as long as the server (spawn(long_lived_thread=True)),
        because the kernel ties the signal to the *thread* that spawned the child.""",
    ).tag(config=True)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._proc: subprocess.Popen | None = None
        self._log_fh = None
        self._lock = threading.Lock()
        self._t0 = 0.0

    # -- paths and names ------------------------------------------------------------------------

    @property
    def var_path(self) -> str:
        return os.path.abspath(self.var_dir)

    @property
    def remote(self) -> str:
        """The URL clients use (``SPARK_REMOTE``), with the token if there is one."""
        return connect_url(self.port, self.token, self.host)

    @property
    def display_remote(self) -> str:
        """:attr:`remote` without the token, for logs and messages."""
        return connect_url(self.port, "<token>" if self.token else "", self.host)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        """True while the server process we started is alive (fast: no round trip)."""
        proc = self._proc
        return proc is not None and proc.poll() is None and process_alive(proc.pid)

    # -- command --------------------------------------------------------------------------------

    def conf(self) -> dict[str, str]:
        """The ``--conf`` settings the server is started with (no secrets: see :meth:`env`)."""
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
            # exiting makes the failure visible (clients get UNAVAILABLE, the supervisor
            # restarts it).
            "-XX:+ExitOnOutOfMemoryError",
        ]

    def _account_ids(self) -> tuple[int, int] | None:
        if not self.account:
            return None
        try:
            entry = pwd.getpwnam(self.account)
        except KeyError:
            raise PlatformStartError(
                f"the account {self.account!r} of the Spark Connect server does not exist"
            ) from None
        if os.geteuid() == 0:
            return entry.pw_uid, entry.pw_gid
        if os.geteuid() == entry.pw_uid:
            return None  # already that account
        raise PlatformStartError(f"running the Spark Connect server as {self.account!r} needs root")

    def command(self, long_lived_thread: bool = False) -> list[str]:
        """The argv that starts the server in the foreground (holds no secret)."""
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
        # The account creates its own scratch directories (root never creates paths inside
        # a directory the account owns); `exec` keeps the pid, down to java.
        cmd = ["/bin/sh", "-c", 'mkdir -p tmp/hive warehouse && exec "$0" "$@"', *cmd]
        prefix: list[str] = []
        ids = self._account_ids()
        if ids is not None:
            uid, gid = ids
            prefix += [f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
        setpriv = shutil.which("setpriv")
        if (
            self.die_with_parent
            and setpriv
            and sys.platform.startswith("linux")
            and (long_lived_thread or threading.current_thread() is threading.main_thread())
        ):
            # PR_SET_PDEATHSIG survives the execs down to java (setpriv sets it after
            # changing the ids, which would otherwise clear it); the pid stays the same.
            prefix += ["--pdeathsig", "TERM"]
        if prefix:
            if setpriv is None:
                raise PlatformStartError("util-linux `setpriv` is needed to run the server")
            cmd = [setpriv, *prefix, "--", *cmd]
        return cmd

    def env(self) -> dict[str, str]:
        """The server's environment: an allow-list, plus the token (readable only by the
        server's account and root through /proc/<pid>/environ)."""
        env = {k: v for k, v in os.environ.items() if k in _ENV_KEEP}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env["SPARK_HOME"] = self.spark_home
        env["HOME"] = self.var_path
        # As start-connect-server.sh does: the server's own session is not a Connect client.
        env["SPARK_CONNECT_MODE"] = "0"
        # Python UDFs sent by notebooks run in workers; use an interpreter that has pyspark.
        env["PYSPARK_PYTHON"] = os.environ.get("PYSPARK_PYTHON") or sys.executable
        if self.token:
            env[TOKEN_ENV] = self.token
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

    def _prepare_dirs(self) -> None:
        for path in (os.path.dirname(self.log_file), os.path.dirname(self.pid_file)):
            os.makedirs(path, mode=0o700, exist_ok=True)
        ids = self._account_ids()
        if ids is None:
            os.makedirs(self.var_path, exist_ok=True)
            return
        from ..accounts import private_dir, traversable_problem

        # The state directory is the account's alone; its parents are root's (0711).
        private_dir(self.var_path, *ids)
        state_parent = os.path.dirname(self.var_path)
        for path in (state_parent, self.spark_home, shutil.which("java") or "/usr/bin/java",
                     sys.executable):
            problem = traversable_problem(path)
            if problem:
                raise PlatformStartError(
                    f"the Spark Connect server account {self.account} cannot reach {path}: "
                    f"{problem}"
                )

    def spawn(self, long_lived_thread: bool = False) -> None:
        """Start the server process and return at once (see :meth:`wait_ready`).

        *long_lived_thread*: the calling thread lives as long as the server should (the
        supervisor's thread), so the server may be tied to it (:attr:`die_with_parent`).
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
            self._prepare_dirs()
            cmd = self.command(long_lived_thread)
            self._log_fh = open(self.log_file, "ab")
            os.chmod(self.log_file, 0o600)
            self._log_fh.write(
                f"\n=== {datetime.datetime.now().isoformat()} starting"
                f"{' as ' + self.account if self.account else ''}: {shlex.join(cmd)}\n".encode()
            )
            self._log_fh.flush()
            self.log.info(
                "Starting Spark Connect server at %s%s (log: %s)",
                self.display_remote,
                f" as {self.account}" if self.account else "",
                self.log_file,
            )
            self._t0 = time.monotonic()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log_fh,
                stderr=subprocess.STDOUT,
                cwd=self.var_path,  # anything Spark drops in its cwd lands in its state dir
                env=self.env(),
                start_new_session=True,
            )
            with open(self.pid_file, "w") as f:
                f.write(f"{self._proc.pid}\n")
            atexit.register(self.stop)

    def start(self) -> None:
        """Start the server and return once a Spark Connect client can run ``SELECT 1``.

        Raises :class:`PlatformStartError` (with the log tail) if the port is taken, the
        process exits, or it does not answer within :attr:`startup_timeout`; the process is
        stopped in that case.
        """
        self.spawn()
        self.wait_ready()

    def wait_ready(self) -> None:
        """Block until the spawned server answers ``SELECT 1``; stop it and raise
        :class:`PlatformStartError` if it exits or does not answer in time."""
        try:
            self._wait_ready(self._t0)
        except BaseException:
            self.stop()
            raise
        self.log.info(
            "Spark Connect server up at %s (pid %s) after %.1f s",
            self.display_remote,
            self.pid,
            time.monotonic() - self._t0,
        )

    def _wait_ready(self, t0: float) -> None:
        deadline = t0 + self.startup_timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = proc.returncode if proc is not None else "stopped"
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
            f"the Spark Connect server at {self.display_remote} did not answer SELECT 1 within "
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
        info: dict[str, Any] = {
            "remote": self.display_remote,
            "pid": self.pid,
            "running": self.running(),
        }
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

    def resident_bytes(self) -> int | None:
        """Resident memory of the server's JVM (VmRSS), or None when it does not run."""
        pid = self.pid
        if pid is None:
            return None
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

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
