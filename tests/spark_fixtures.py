"""Fixtures for tests that need the data middle platform: ONE real Spark Connect server per
test session (it takes 10-25 s to start and its first query is slow), and a `DataPlatform`
configured against it.

``tests/conftest.py`` imports these with ``from spark_fixtures import *``. A test module may
import them itself as well: the server lives in this module, so both routes share one server.

Set ``MARKET_TEST_SPARK_REMOTE=sc://127.0.0.1:15002`` to run against a server you started
yourself (faster while iterating); the fixtures then neither start nor stop anything.
"""

from __future__ import annotations

import os
import socket

import pytest

from marketplace_ext.platform import DataPlatform, SparkConnectServer

__all__ = ["spark_server", "platform"]

_server: SparkConnectServer | None = None


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
