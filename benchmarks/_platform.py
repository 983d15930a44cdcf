"""A throw-away platform for benchmarks: `market run`'s Platform on free ports in a temp dir,
the demo seeded, and clients logged in as demo users."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from marketplace_ext.client import Market  # noqa: E402
from marketplace_ext.launcher import free_port, throwaway_platform  # noqa: E402, F401


def market_for(url: str, user: str, password: str) -> Market:
    return Market.login(url, user, password, note="bench")
