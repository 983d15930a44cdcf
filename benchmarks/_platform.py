"""A throw-away platform for benchmarks: `market run`'s Platform on free ports in a temp dir,
the demo seeded, and clients logged in as demo users."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from marketplace_ext import demo  # noqa: E402
from marketplace_ext.client import Market  # noqa: E402
from marketplace_ext.launcher import Platform  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def market_for(url: str, user: str, password: str) -> Market:
    return Market.login(url, user, password, note="bench")


@contextlib.contextmanager
def throwaway_platform(**env_extra: str) -> Iterator[tuple[Platform, dict[str, str]]]:
    """Start a platform, seed the demo; yields (platform, {user: password}). Unless
    ``MARKET_SPARK_REMOTE`` is passed, no Spark server is started (an unused endpoint)."""
    var = Path(tempfile.mkdtemp(prefix="bench-")) / "var"
    env_extra.setdefault("MARKET_SPARK_REMOTE", f"sc://127.0.0.1:{free_port()}")
    env = dict(os.environ, MARKET_HUB_API_PORT=str(free_port()),
               MARKET_PROXY_API_PORT=str(free_port()), MARKET_SERVICE_PORT=str(free_port()),
               MARKET_LOG_LEVEL="WARN", **env_extra)
    platform = Platform(var, port=free_port(), env=env, log=lambda *a: None)
    platform.start()
    try:
        accounts = {a["user"]: a["password"]
                    for a in demo.seed(platform.url, var, log=lambda *a: None)}
        yield platform, accounts
    finally:
        platform.stop()
