"""``market run``: start the whole platform in the foreground and stop all of it on Ctrl-C.

The hub starts its proxy, the marketplace service and notebook servers; on SIGTERM it stops
them again (``cleanup_servers``, ``cleanup_proxy``). The service starts each unit's own Spark
Connect server (``platform.supervisor``) and stops them when it stops. The launcher only has
to start the hub, wait until it answers, seed the demo once (loading each demo unit's tables
into that unit's server), and make sure nothing it started outlives it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from . import dbutil, demo

ROOT = Path(__file__).resolve().parent.parent


class LaunchError(RuntimeError):
    """A part of the platform did not come up."""


def wait_for_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise LaunchError(f"process exited with status {proc.returncode} before {url} answered")
        try:
            r = requests.get(url, timeout=2)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except requests.RequestException as e:
            last = type(e).__name__
        time.sleep(0.3)
    raise LaunchError(f"{url} did not answer within {timeout:.0f}s (last: {last})")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def descendants(pid: int) -> set[int]:
    """Live descendants of ``pid``, read from /proc (the proxy, the service and notebook servers
    run in sessions of their own, so a process-group kill would miss them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def terminate(pids: set[int], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = {pid for pid in pids if pid_alive(pid)}
        for pid in alive:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while alive and time.monotonic() < deadline:
            alive = {pid for pid in alive if pid_alive(pid)}
            time.sleep(0.1)


def stop_process(proc: subprocess.Popen, timeout: float = 30.0, sig=signal.SIGTERM) -> None:
    """Ask ``proc`` (a session leader) to stop, then kill its whole process group."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def kill_pidfile(path: Path) -> None:
    """Kill a leftover recorded in a pid file (a proxy or service from a crashed hub)."""
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return
    if pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not pid_alive(pid):
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)


class Platform:
    """The processes of one running platform: the hub and what the hub starts (the service,
    which starts the units' Spark servers).

    ``MARKET_SPARK_REMOTE`` instead names one running server that every unit shares, and
    ``MARKET_SPARK_SHARED=1`` has the launcher start such a shared server itself: development
    and tests only, units are then not isolated from each other."""

    def __init__(self, var_dir: Path, port: int = 8000, ip: str = "127.0.0.1",
                 env: dict | None = None, log=print):
        self.var_dir = Path(var_dir).resolve()
        self.port = port
        self.ip = ip
        self.log = log
        self.env = dict(os.environ if env is None else env)
        self.env.update(MARKET_VAR_DIR=str(self.var_dir), MARKET_HUB_PORT=str(port),
                        MARKET_HUB_IP=ip)
        self.hub: subprocess.Popen | None = None
        self.spark = None

    @property
    def spark_remote(self) -> str | None:
        """The shared server's URL, or None when every unit has its own server."""
        return self.env.get("MARKET_SPARK_REMOTE") or None

    @property
    def platform_dir(self) -> Path:
        """Where the service keeps the unit servers' state, ports and tokens."""
        return self.var_dir / "platform"

    def wait_for_unit_platforms(self, units, timeout: float = 600.0) -> dict[str, str]:
        """Block until the service's servers of *units* are up; {unit: reason} for the rest.
        Nothing to wait for with a shared server."""
        if self.spark_remote:
            return {}
        from .platform.supervisor import EndpointsFile

        servers = EndpointsFile(self.platform_dir)
        remote = json.loads(self.env.get("MARKET_SPARK_ENDPOINTS") or "{}")
        units = [u for u in units if u not in remote]  # those have no server of ours
        deadline = time.monotonic() + timeout
        while True:
            down = {u: r for u in units if (r := servers.unit_down(u)) is not None}
            if not down or time.monotonic() > deadline:
                return down
            if self.hub is not None and self.hub.poll() is not None:
                raise LaunchError("JupyterHub exited while the units' data platforms started")
            time.sleep(0.5)

    def start_spark(self) -> None:
        if self.env.get("MARKET_SPARK_REMOTE"):
            self.log(f"Using the shared data platform at {self.env['MARKET_SPARK_REMOTE']}")
            return
        if self.env.get("MARKET_SPARK_SHARED") != "1":
            return  # the service starts one server per unit
        from .platform import SparkConnectServer

        self.spark = SparkConnectServer(
            var_dir=str(self.var_dir / "spark"),
            port=int(self.env.get("MARKET_SPARK_PORT") or 15002),
            driver_memory=self.env.get("MARKET_SPARK_MEMORY") or "2g",
        )
        self.log(f"Starting the data platform (Spark Connect on {self.spark.remote}; "
                 f"log: {self.spark.log_file}) ...")
        try:
            self.spark.start()
        except Exception as e:
            self.spark = None
            raise LaunchError(f"the data platform did not start: {e}") from e
        self.env["MARKET_SPARK_REMOTE"] = self.spark.remote

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def start(self, timeout: float = 120.0) -> None:
        self.var_dir.mkdir(parents=True, exist_ok=True)
        with socket.socket() as probe:
            if probe.connect_ex((self.ip, self.port)) == 0:
                raise LaunchError(f"{self.url} is already in use: is another `make run` "
                                  "running? (choose another port with MARKET_HUB_PORT)")
        for stale in ("jupyterhub-proxy.pid", "marketplace.pid"):
            kill_pidfile(self.var_dir / stale)
        db_url = self.env.get("MARKET_DB_URL") or f"sqlite:///{self.var_dir}/marketplace.sqlite"
        dbutil.upgrade(db_url)
        self.start_spark()
        log_path = self.var_dir / "jupyterhub.log"
        self.log(f"Starting JupyterHub (log: {log_path})")
        self._hub_log = open(log_path, "ab")
        self.hub = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f",
             str(ROOT / "hub_config" / "jupyterhub_config.py")],
            cwd=self.var_dir, env=self.env, stdout=self._hub_log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for_http(f"{self.url}/hub/api", timeout, self.hub)
            wait_for_http(f"{self.url}/services/marketplace/api/health", timeout, self.hub)
        except LaunchError as e:
            self.stop()
            tail = log_path.read_text(errors="replace").splitlines()[-20:]
            raise LaunchError(f"{e}\n--- last lines of {log_path} ---\n" + "\n".join(tail)) from e

    def stop(self) -> None:
        if self.hub is not None:
            self.log("Stopping JupyterHub and everything it started ...")
            started = descendants(self.hub.pid)
            stop_process(self.hub)
            # the hub stops its proxy, service and notebook servers itself; anything it could
            # not (a crash, a hung server) is ended here so nothing outlives `make run`
            terminate(started)
            self.hub = None
            self._hub_log.close()
        for stale in ("jupyterhub-proxy.pid", "marketplace.pid"):
            kill_pidfile(self.var_dir / stale)
        if self.spark is not None:
            self.log("Stopping the data platform ...")
            self.spark.stop()
            self.spark = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def throwaway_platform(**env_extra: str) -> Iterator[tuple[Platform, dict[str, str]]]:
    """A platform on free ports in a temporary directory with the demo seeded, for benchmarks
    and experiments; yields (platform, {user: password}). Unless ``MARKET_SPARK_REMOTE`` is
    passed, no Spark server is started (the endpoint is an unused port)."""
    var = Path(tempfile.mkdtemp(prefix="market-throwaway-")) / "var"
    var.parent.chmod(0o711)  # sandbox and server accounts pass through to their directories
    env_extra.setdefault("MARKET_SPARK_REMOTE", f"sc://127.0.0.1:{free_port()}")
    env = dict(os.environ, MARKET_HUB_API_PORT=str(free_port()),
               MARKET_PROXY_API_PORT=str(free_port()), MARKET_SERVICE_PORT=str(free_port()),
               MARKET_LOG_LEVEL="WARN", **env_extra)
    platform = Platform(var, port=free_port(), env=env, log=lambda *a: None)
    platform.start()
    try:
        accounts = {a["user"]: a["password"]
                    for a in demo.seed(platform.url, var, log=lambda *a: None, publish=False)}
        yield platform, accounts
    finally:
        platform.stop()


def load_demo_data(platform: Platform) -> None:
    """First run only: the units' business tables; a missing data set is a warning, not a
    failure (the marketplace works without it)."""
    from . import griddata

    if platform.env.get("MARKET_DEMO_DATA") == "0":
        return
    data_dir = griddata.default_data_dir()
    if not (data_dir / griddata.READINGS_FILE).exists():
        print(f"warning: no smart-meter data at {data_dir}; the units' tables stay empty "
              "(set MARKET_LCL_DATA, then `market demo data`)", file=sys.stderr)
        return
    scale = float(platform.env.get("MARKET_DEMO_SCALE") or 1.0)
    if not platform.spark_remote:
        print("Waiting for the demo units' data platforms (one Spark server each) ...")
        down = platform.wait_for_unit_platforms(list(demo.DEMO_UNITS))
        if down:
            print("warning: not loading the demo tables; " + "; ".join(down.values()),
                  file=sys.stderr)
            return
    demo.load_demo_data(platform.var_dir, platform.spark_remote, scale=scale,
                        data_dir=data_dir,
                        endpoints=json.loads(platform.env.get("MARKET_SPARK_ENDPOINTS") or "{}"))


DEMO_WITNESS = "demo-witness"


def configure_demo_witness(platform: Platform) -> Path | None:
    """Unless witnesses are configured (``MARKET_LOG_WITNESSES``), give the demo one of its
    own: a key in ``var/witness`` (made once) that the log requires (quorum 1), so its
    checkpoints become final. Returns the witness's state directory, or None."""
    if platform.env.get("MARKET_LOG_WITNESSES"):
        return None
    from .witness import WitnessState

    state = platform.var_dir / "witness"
    vkey = WitnessState(state).init(DEMO_WITNESS)
    platform.env["MARKET_LOG_WITNESSES"] = json.dumps({DEMO_WITNESS: vkey})
    platform.env.setdefault("MARKET_LOG_QUORUM", "1")
    return state


def start_demo_witness(platform: Platform, state: Path, operator: dict) -> subprocess.Popen:
    """The witness as a process of its own (it holds its own key, not the log's), co-signing
    each new checkpoint. Its API token reaches it in its environment, never in its arguments
    (``ps`` shows those to every local user)."""
    from .client import Market

    market = Market.login(platform.url, operator["user"], operator["password"],
                          note="demo witness")
    token = market.http.headers["Authorization"].split()[1]
    log = open(platform.var_dir / "witness.log", "ab")  # noqa: SIM115 (the process keeps it)
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; from marketplace_ext.cli import main; "
         "sys.exit(main())", "witness", "--state", str(state), "--every", "5"],
        env={**platform.env, "MARKETPLACE_URL": market.url, "MARKET_TOKEN": token},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def run(var_dir: Path, port: int = 8000, seed: bool = True) -> int:
    """Start the platform, seed the demo, print the logins, and wait for Ctrl-C."""
    platform = Platform(var_dir, port)
    witness_state = configure_demo_witness(platform)
    witness: subprocess.Popen | None = None

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # a shell may start us with SIGINT ignored (a background job); Ctrl-C must still stop us
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        platform.start()
        if seed:
            first = demo.load_logins(platform.var_dir) is None
            if first:
                print("Seeding the demo units and accounts ...")
            # units and accounts first: the service then starts each unit's data platform,
            # the demo tables go onto them, and only then the catalogue (a data product's
            # tables must exist when it is approved) and its history
            accounts = demo.seed(platform.url, platform.var_dir, publish=False)
            if not demo.data_marker(platform.var_dir).exists():
                load_demo_data(platform)
            elif not platform.spark_remote:
                # a restart: the units' servers come back in the background; be usable first
                down = platform.wait_for_unit_platforms(list(demo.DEMO_UNITS))
                for reason in down.values():
                    print(f"warning: {reason}", file=sys.stderr)
            demo.publish_catalogue(platform.url, accounts)
            if platform.env.get("MARKET_DEMO_HISTORY", "1") != "0":  # orders, ratings: once
                demo.seed_history(platform.env.get("MARKET_DB_URL")
                                  or f"sqlite:///{platform.var_dir}/marketplace.sqlite",
                                  platform.var_dir)
            print(demo.format_logins(accounts))
            if witness_state is not None:
                witness = start_demo_witness(platform, witness_state, accounts[0])
                print(f"A witness co-signs the log's checkpoints (log: "
                      f"{platform.var_dir / 'witness.log'})")
        print(f"\nGrid Data Supermarket is running at {platform.url}  (Ctrl-C stops everything)")
        while platform.hub.poll() is None:
            time.sleep(0.5)
        print(f"JupyterHub exited with status {platform.hub.returncode}; see var/jupyterhub.log")
        return 1
    except KeyboardInterrupt:
        return 0
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if witness is not None:
            stop_process(witness)
        platform.stop()
