"""One Spark Connect server per unit: started in parallel, health-checked, restarted when it dies.

The marketplace service owns a :class:`UnitServers` (it knows every unit, including the ones
created later through ``POST api/units``). Each unit's server

- runs as the unit's system account ``gds-spark-<unit>`` (:func:`..accounts.spark_account`),
  with its own Derby metastore and warehouse in ``<var>/units/<unit>/`` (the account's, 0700;
  ``<var>`` and ``<var>/units`` are root's, 0711);
- listens on 127.0.0.1 and requires the unit's token, generated once and kept with the unit's
  port in ``<var>/unit_servers.json`` (0600, root). The hub reads that file when it spawns a
  notebook (:func:`read_unit_endpoints`), so a user gets their own unit's URL and token only;
- is restarted on the same port with the same token when it exits (SIGKILL, out of memory),
  with a backoff if it keeps failing. Its live state is in ``<var>/unit_status.json``.

Nothing here blocks an event loop except for a file write: :meth:`UnitServers.ensure` only
queues, the supervisor thread spawns, and readiness is awaited in a small thread pool.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from traitlets import Bool, Dict, Float, Integer, Unicode
from traitlets.config import LoggingConfigurable

from .. import accounts
from .common import _free_port, _tcp_reachable, check_unit
from .server import SparkConnectServer, connect_url, process_alive

SERVERS_FILE = "unit_servers.json"
STATUS_FILE = "unit_status.json"


def _write_private_json(path: Path, data: Any) -> None:
    """Atomically replace *path* by JSON *data*, mode 0600 (readers never see half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def read_unit_endpoints(var_dir: str | os.PathLike) -> dict[str, str]:
    """{unit: ``sc://localhost:PORT/;token=T``} of the embedded unit servers (root only: the
    file is 0600). The hub calls this at spawn time."""
    servers = _read_json(Path(var_dir) / SERVERS_FILE)
    return {unit: connect_url(s["port"], s["token"]) for unit, s in servers.items()}


def read_unit_status(var_dir: str | os.PathLike) -> dict[str, dict]:
    """{unit: {"state", "port", "pid", "error", "restarts"}} as the supervisor last wrote it."""
    return _read_json(Path(var_dir) / STATUS_FILE)


class EndpointsFile:
    """The embedded servers' endpoints as another process sees them (the hub, the launcher):
    read from the supervisor's files on every call. Same interface as :class:`UnitServers`
    for :class:`~marketplace_ext.platform.DataPlatform` (``servers=``)."""

    def __init__(self, var_dir: str | os.PathLike):
        self.var_dir = Path(var_dir)

    def remote_for(self, unit: str) -> str | None:
        return read_unit_endpoints(self.var_dir).get(unit)

    def unit_down(self, unit: str) -> str | None:
        status = read_unit_status(self.var_dir).get(unit)
        if status is None:
            return f"unit {unit} has no data platform server"
        if status.get("state") != "up":
            return f"the data platform of unit {unit} is {status.get('state')}"
        if status.get("pid") and not process_alive(int(status["pid"])):
            return f"the data platform of unit {unit} is down and restarting"
        reason = _tcp_reachable("127.0.0.1", int(status["port"]), 1.0)
        return f"the data platform of unit {unit} is unreachable: {reason}" if reason else None


class _Unit:
    def __init__(self, slug: str, server: SparkConnectServer):
        self.slug = slug
        self.server = server
        self.state = "new"  # new -> starting -> up -> down -> starting ... ; stopped
        self.error = ""
        self.restarts = 0
        self.failures = 0  # consecutive failed starts: the backoff grows with them
        self.next_start = 0.0
        self.up_since = 0.0


class UnitServers(LoggingConfigurable):
    """Every unit's embedded Spark Connect server, kept running.

    ``ensure(unit)`` adds a unit (its server starts in the background), ``wait_up`` blocks
    until units answer, ``remote_for``/``unit_down`` serve :class:`DataPlatform`, ``stop``
    stops them all in parallel. Thread-safe.
    """

    var_dir = Unicode(
        "var/platform",
        help="""The unit servers' root: units/<unit>/ (each server's state, owned by its
        account), logs/, run/, unit_servers.json (ports and tokens, 0600) and
        unit_status.json.""",
    ).tag(config=True)

    driver_memory = Unicode(
        "512m",
        help="""JVM heap of each unit's server. With 512m a server is ~470-540 MB resident
        after start and ~650-730 MB with the demo tables loaded, so five fit beside the hub
        on a 24 GB machine; raise it for units with large tables.""",
    ).tag(config=True)

    master = Unicode(
        "local[2]",
        help="""Spark master of every unit's server unless masters says otherwise; local[N]
        runs its executors as threads in the server.""",
    ).tag(config=True)

    masters = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        help="""Per-unit Spark master: {"b": "spark://10.0.0.5:7077"} (standalone), "yarn"
        (with HADOOP_CONF_DIR) or "k8s://https://api:6443" (with the spark.kubernetes.* conf
        in unit_spark_conf). The unit's Connect server is then the cluster's driver.""",
    ).tag(config=True)

    spark_conf = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        help="""Extra --conf settings of every unit's server (no secrets: they are on its
        command line).""",
    ).tag(config=True)

    unit_spark_conf = Dict(
        key_trait=Unicode(),
        value_trait=Dict(),
        help="""Per-unit extra --conf settings, applied over spark_conf:
        {"b": {"spark.executor.memory": "2g"}}.""",
    ).tag(config=True)

    run_as_accounts = Bool(
        True,
        help="""Run each unit's server as its own system account gds-spark-<unit> (created if
        missing; needs root). Without root the servers run as ourselves, which isolates units
        by token only.""",
    ).tag(config=True)

    health_interval = Float(
        1.0,
        help="""Seconds between liveness checks (has the process exited?). A dead server is
        restarted at the next check.""",
    ).tag(config=True)

    startup_timeout = Float(
        300.0,
        help="""Seconds a server may take to answer SELECT 1. Five JVMs starting at once on two
        cores take a minute or more each.""",
    ).tag(config=True)

    max_backoff = Float(
        60.0,
        help="""Longest wait before restarting a server whose previous starts failed (the wait
        doubles from 1 s).""",
    ).tag(config=True)

    start_parallelism = Integer(
        5,
        help="Servers brought up at once (each wait holds a thread, not a core).",
    ).tag(config=True)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.var_path = Path(self.var_dir).resolve()
        self._units: dict[str, _Unit] = {}
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(
            max(1, self.start_parallelism), thread_name_prefix="unit-server-ready"
        )
        self._as_accounts = self.run_as_accounts and os.geteuid() == 0
        if self.run_as_accounts and not self._as_accounts:
            self.log.warning(
                "Not root: every unit's Spark server runs as this account; units are "
                "isolated by their tokens only"
            )

    # -- files ----------------------------------------------------------------------------------

    def _prepare_root(self) -> None:
        # Others may traverse (a server's account reaches its own directory), never list.
        accounts.private_dir(self.var_path, mode=0o711)
        accounts.private_dir(self.var_path / "units", mode=0o711)
        accounts.private_dir(self.var_path / "logs")
        accounts.private_dir(self.var_path / "run")

    def _assignment(self, unit: str) -> dict[str, Any]:
        """The unit's port and token, created once and kept (root-only file)."""
        path = self.var_path / SERVERS_FILE
        servers = _read_json(path)
        entry = servers.get(unit)
        if entry is None:
            taken = {s["port"] for s in servers.values()}
            entry = {"port": self._pick_port(taken), "token": secrets.token_urlsafe(32)}
            servers[unit] = entry
            _write_private_json(path, servers)
        return entry

    @staticmethod
    def _pick_port(taken: set[int]) -> int:
        import socket

        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in taken:
                return port

    def _move_port(self, unit: _Unit) -> None:
        """The unit's port was taken by someone else while its server was down: pick another
        (clients get the new URL from the service or, at their next spawn, the hub)."""
        path = self.var_path / SERVERS_FILE
        with self._lock:  # ensure() writes the same file
            servers = _read_json(path)
            port = self._pick_port({s["port"] for s in servers.values()})
            self.log.warning("Port %s of unit %s's server is taken; moving it to %s",
                             unit.server.port, unit.slug, port)
            servers[unit.slug]["port"] = port
            _write_private_json(path, servers)
            unit.server.port = port

    def _write_status(self) -> None:
        with self._lock:
            status = {
                u.slug: {
                    "state": u.state,
                    "port": u.server.port,
                    "pid": u.server.pid,
                    "error": u.error,
                    "restarts": u.restarts,
                }
                for u in self._units.values()
            }
            _write_private_json(self.var_path / STATUS_FILE, status)
            self._changed.notify_all()

    # -- the servers ----------------------------------------------------------------------------

    def _new_server(self, unit: str) -> SparkConnectServer:
        assigned = self._assignment(unit)
        # The account itself is created by the supervisor thread (useradd is slow).
        account = accounts.spark_account(unit) if self._as_accounts else ""
        conf = {**self.spark_conf, **self.unit_spark_conf.get(unit, {})}
        return SparkConnectServer(
            parent=self,
            var_dir=str(self.var_path / "units" / unit),
            log_file=str(self.var_path / "logs" / f"{unit}.log"),
            pid_file=str(self.var_path / "run" / f"{unit}.pid"),
            account=account,
            token=assigned["token"],
            port=int(assigned["port"]),
            master=self.masters.get(unit, self.master),
            driver_memory=self.driver_memory,
            spark_conf={k: str(v) for k, v in conf.items()},
            startup_timeout=self.startup_timeout,
        )

    def ensure(self, unit: str) -> None:
        """Make sure *unit* has a server (started in the background); returns at once."""
        check_unit(unit)
        with self._lock:
            if unit in self._units:
                return
            if self._thread is None:
                self._prepare_root()
            self._units[unit] = _Unit(unit, self._new_server(unit))
        self._write_status()
        self._start_thread()
        self._wake.set()

    def start(self, units: list[str] | tuple[str, ...] = ()) -> None:
        """Start the servers of *units* (and the supervisor); returns at once."""
        self._prepare_root()
        for unit in units:
            self.ensure(unit)
        self._start_thread()

    def _start_thread(self) -> None:
        with self._lock:
            if self._thread is None and not self._stopping.is_set():
                # This thread spawns every server and lives until stop(): the servers' parent
                # death signal is tied to it (SparkConnectServer.die_with_parent).
                self._thread = threading.Thread(
                    target=self._supervise, name="unit-servers", daemon=True
                )
                self._thread.start()

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            try:
                self._check_all()
            except Exception:
                self.log.exception("unit server supervision failed; retrying")
            self._wake.wait(self.health_interval)
            self._wake.clear()
        self._stop_all()

    def _check_all(self) -> None:
        now = time.monotonic()
        with self._lock:
            units = list(self._units.values())
        changed = False
        for unit in units:
            if unit.state == "up" and not unit.server.running():
                proc = unit.server._proc
                code = proc.returncode if proc is not None else "?"
                unit.state, unit.error = "down", f"the server exited (status {code})"
                self.log.warning("The data platform of unit %s died (status %s); restarting",
                                 unit.slug, code)
                # Reap what is left of its process group (Python workers) before a restart.
                unit.server.stop()
                unit.restarts += 1
                # A server that dies soon after coming up is not restarted in a tight loop.
                quick = now - unit.up_since < 30
                unit.next_start = now + (self._backoff(unit) if quick else 0)
                changed = True
            if unit.state in ("new", "down") and now >= unit.next_start:
                self._spawn(unit)
                changed = True
        if changed:
            self._write_status()

    def _backoff(self, unit: _Unit) -> float:
        return min(self.max_backoff, 2.0 ** max(0, unit.failures))

    def _spawn(self, unit: _Unit) -> None:
        try:
            if unit.server.account:
                accounts.ensure_account(unit.server.account)
            if not _free_port(unit.server.host, unit.server.port):
                self._move_port(unit)
            unit.server.spawn(long_lived_thread=True)
        except Exception as e:
            unit.failures += 1
            unit.state, unit.error = "down", str(e).splitlines()[0]
            unit.next_start = time.monotonic() + self._backoff(unit)
            self.log.error("Could not start the data platform of unit %s: %s", unit.slug, e)
            return
        unit.state, unit.error = "starting", ""
        self._pool.submit(self._await_ready, unit)

    def _await_ready(self, unit: _Unit) -> None:
        try:
            unit.server.wait_ready()  # stops the server itself on failure
        except Exception as e:
            if self._stopping.is_set():
                return
            unit.failures += 1
            unit.state, unit.error = "down", str(e).splitlines()[0]
            unit.next_start = time.monotonic() + self._backoff(unit)
            self.log.error("The data platform of unit %s did not come up: %s", unit.slug, e)
        else:
            unit.failures = 0
            unit.state, unit.up_since = "up", time.monotonic()
        self._write_status()
        self._wake.set()

    def _stop_all(self) -> None:
        with self._lock:
            units = list(self._units.values())
        with ThreadPoolExecutor(max(1, len(units)), thread_name_prefix="unit-server-stop") as pool:
            for unit in units:
                pool.submit(unit.server.stop)
        for unit in units:
            unit.state = "stopped"
        with contextlib.suppress(OSError):
            self._write_status()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop every server (in parallel) and the supervisor; blocking, idempotent."""
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        else:
            self._stop_all()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- what DataPlatform and the runner ask ---------------------------------------------------

    def units(self) -> list[str]:
        with self._lock:
            return sorted(self._units)

    def server(self, unit: str) -> SparkConnectServer | None:
        with self._lock:
            found = self._units.get(unit)
        return found.server if found else None

    def remote_for(self, unit: str) -> str | None:
        """The unit's ``sc://localhost:PORT/;token=T``, or None if it has no server."""
        server = self.server(unit)
        return server.remote if server is not None else None

    def unit_down(self, unit: str) -> str | None:
        """None if *unit*'s server is up, else why not (naming the unit). Fast: no Spark call."""
        with self._lock:
            found = self._units.get(unit)
        if found is None:
            return f"unit {unit} has no data platform server"
        if found.state == "up" and found.server.running():
            return None
        if found.state == "up" or found.state == "down":
            what = "down and restarting"
        elif found.state == "starting":
            what = "restarting" if found.restarts else "starting"
        else:
            what = found.state
        return f"the data platform of unit {unit} is {what}"

    def status(self) -> dict[str, dict[str, Any]]:
        """{unit: {"state", "port", "pid", "rss_bytes", "restarts", "error"}} (no tokens)."""
        with self._lock:
            units = list(self._units.values())
        return {
            u.slug: {
                "state": u.state,
                "port": u.server.port,
                "pid": u.server.pid,
                "rss_bytes": u.server.resident_bytes(),
                "restarts": u.restarts,
                "error": u.error,
            }
            for u in units
        }

    def wait_up(self, units: list[str] | tuple[str, ...] | None = None,
                timeout: float = 300.0) -> dict[str, str]:
        """Block until every unit in *units* (default: all) is up, or *timeout*; returns
        {unit: reason} for those that are not."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                wanted = list(units) if units is not None else list(self._units)
                down = {u: r for u in wanted if (r := self.unit_down(u)) is not None}
                left = deadline - time.monotonic()
                if not down or left <= 0:
                    return down
                self._changed.wait(min(left, 1.0))
