"""Fixtures for tests that need the data middle platform.

- ``spark_server``/``platform``: ONE real Spark Connect server per test session (it takes
  10-25 s to start and its first query is slow) and a `DataPlatform` whose units all live on
  it: what the DataPlatform unit tests (loader, views, guard) need.
- ``unit_servers``/``unit_platform``: the embedded default, one server per unit, each as its
  own account with its own token, supervised (``platform.supervisor.UnitServers``), for the
  isolation and restart tests. Started once per session, in parallel, with 512m each.

``tests/conftest.py`` imports these with ``from spark_fixtures import *``. A test module may
import them itself as well: the servers live in this module, so both routes share them.

Set ``MARKET_TEST_SPARK_REMOTE=sc://127.0.0.1:15002`` to run against a server you started
yourself (faster while iterating); ``spark_server`` then neither starts nor stops anything.

Per-unit servers for the whole-platform fixture (``platform_proc`` in conftest): run
`market run` WITHOUT ``MARKET_SPARK_REMOTE``; its service then starts the five demo units'
servers itself (in parallel, in the background, while the hub starts and the demo is seeded)
and :func:`unit_remote` reads a unit's URL and token from the platform's var dir, as the hub
does at spawn time.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from marketplace_ext.platform import DataPlatform, SparkConnectServer
from marketplace_ext.platform.supervisor import EndpointsFile, UnitServers

__all__ = ["spark_server", "platform", "unit_servers", "unit_platform", "UNIT_SERVER_UNITS",
           "unit_remote", "passable_tmpdir"]

_server: SparkConnectServer | None = None
_unit_servers: UnitServers | None = None

#: the units of the session's per-unit servers: b holds data, c is the neighbour that must
#: not read it
UNIT_SERVER_UNITS = ("b", "c")


class _ExternalServer:
    """Stands in for SparkConnectServer when MARKET_TEST_SPARK_REMOTE names a running one."""

    def __init__(self, remote: str):
        self.remote = remote
        self.pid = None
        self.log_file = None

    def stop(self) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def passable_tmpdir(prefix: str) -> Path:
    """A new directory under /tmp that other accounts may pass through (0711).

    Not pytest's tmp_path: its root /tmp/pytest-of-<user> is 0700, and every pytest session
    on the machine resets it to 0700, so a server account could never reach a directory there.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    return path


def unit_remote(var_dir: str | os.PathLike, unit: str) -> str | None:
    """The URL and token of *unit*'s server of a running `market run` (per-unit mode)."""
    return EndpointsFile(Path(var_dir) / "platform").remote_for(unit)


@pytest.fixture(scope="session")
def spark_server(tmp_path_factory):
    """A Spark Connect server (local[2], Hive on Derby) in a temporary var dir, on a free port."""
    global _server
    remote = os.environ.get("MARKET_TEST_SPARK_REMOTE")
    if remote:
        yield _ExternalServer(remote)
        return
    if _server is None:
        var_dir = tmp_path_factory.mktemp("spark") / "var"
        server = SparkConnectServer(
            var_dir=str(var_dir),
            port=_free_port(),
            master="local[2]",
            driver_memory="1g",
        )
        server.start()
        _server = server
    yield _server
    # Stopping is idempotent: if two fixture definitions share the server, the first teardown
    # (at the end of the session either way) stops it.
    pgid = _server.pid
    _server.stop()
    if pgid is not None:
        # The server ran in its own process group; nothing of it may outlive stop().
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)


@pytest.fixture(scope="session")
def platform(spark_server, tmp_path_factory) -> DataPlatform:
    """A DataPlatform whose units all live on ``spark_server``."""
    var_dir = tmp_path_factory.mktemp("platform-var")
    dp = DataPlatform(default_endpoint=spark_server.remote, var_dir=str(var_dir), max_rows=100)
    yield dp
    dp.close()


@pytest.fixture(scope="session")
def unit_servers() -> UnitServers:
    """Units b and c, each on its own supervised server (as gds-spark-<unit> when root)."""
    global _unit_servers
    base = None
    if _unit_servers is None:
        base = passable_tmpdir("market-unit-servers-")
        servers = UnitServers(var_dir=str(base / "platform"), health_interval=0.5)
        servers.start(UNIT_SERVER_UNITS)
        down = servers.wait_up(timeout=300)
        if down:
            servers.stop()
            raise RuntimeError(f"unit servers did not come up: {down}")
        _unit_servers = servers
    yield _unit_servers
    pids = [s["pid"] for s in _unit_servers.status().values() if s["pid"]]
    _unit_servers.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    if base is not None:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def unit_platform(unit_servers, tmp_path_factory) -> DataPlatform:
    """The service's view of ``unit_servers``: a DataPlatform that finds each unit's server."""
    dp = DataPlatform(servers=unit_servers, var_dir=str(tmp_path_factory.mktemp("unit-dp")),
                      max_rows=100)
    yield dp
    dp.close()
