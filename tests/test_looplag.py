"""The loop-lag monitor notices a blocked event loop (the measurement behind ``GET
api/loop-lag`` and ``benchmarks/purchases.py``'s lag figures)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from sqlalchemy import select

from marketplace_ext import dbutil, units
from marketplace_ext.errors import Conflict
from marketplace_ext.executors import NAMES, NamedExecutors
from marketplace_ext.looplag import LoopLagMonitor, percentile
from marketplace_ext.orm import Unit, make_engine, make_session_factory


def test_percentile_is_nearest_rank():
    values = sorted(float(v) for v in range(101))
    assert percentile(values, 0.5) == 50.0 and percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0 and percentile([], 0.99) == 0.0


def test_a_blocking_call_shows_as_lag():
    async def scenario() -> dict:
        monitor = LoopLagMonitor(interval=0.01)
        task = asyncio.create_task(monitor.run())
        while len(monitor.samples) < 3:  # the monitor is running (bounded: it ticks at 10 ms)
            await asyncio.sleep(0.01)
        time.sleep(0.3)  # what the monitor is there to catch: a call that blocks the loop
        count = len(monitor.samples)
        while len(monitor.samples) == count:
            await asyncio.sleep(0.01)
        task.cancel()
        return monitor.stats(60)

    stats = asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    # the blocked wake-up came at least the blocked time late (a sleep is never shorter)
    assert stats["max_ms"] >= 290, stats
    assert stats["samples"] >= 4 and stats["p50_ms"] <= stats["p99_ms"] <= stats["max_ms"]


def _blocking_report_builder() -> None:
    time.sleep(0.3)  # a synchronous call on the loop, as a handler might make by mistake


def test_a_stall_is_recorded_with_the_stack_that_blocked_the_loop():
    """The watchdog samples the loop thread while a callback waits: the stall it records names
    the blocking function, so an operator sees which code to move off the loop."""
    async def scenario() -> dict:
        monitor = LoopLagMonitor(interval=0.01, stall_after=0.05, probe_interval=0.01)
        task = asyncio.create_task(monitor.run())
        while len(monitor.samples) < 3:  # the monitor is running (bounded: it ticks at 10 ms)
            await asyncio.sleep(0.01)
        _blocking_report_builder()
        deadline = time.monotonic() + 20
        while not monitor.stalls and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        task.cancel()
        return monitor.stats(60)

    stats = asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    assert stats["stalls"], stats
    longest = stats["stalls"][0]
    assert longest["ms"] >= 50 and longest["samples"] >= 1, longest
    assert any("_blocking_report_builder" in frame for frame in longest["stack"]), longest
    assert any("test_looplag.py:" in frame for frame in longest["stack"]), longest
    assert "monotonic" not in longest  # an internal clock, not part of the answer


def test_named_executors_commit_a_write_whole_or_not_at_all(tmp_path):
    """``in_write`` (what handlers call for a transaction off the loop) commits what its work
    wrote when it returns and nothing when it raises; each kind of work has its own pool."""
    url = f"sqlite:///{tmp_path / 'market.sqlite'}"
    dbutil.upgrade(url)
    engine = make_engine(url)
    pools = NamedExecutors({"db": 2, "io": 1, "spark": 1, "log": 1}, make_session_factory(engine))

    def add(session, slug: str, fail: bool) -> str:
        units.create_unit(session, slug, f"Unit {slug}", "operator")
        session.flush()
        if fail:
            raise Conflict("refused after the write", "slug")
        return slug

    def slugs(session) -> list[str]:
        return sorted(session.scalars(select(Unit.slug)))

    async def scenario() -> tuple[str, list[str], set[str]]:
        kept = await pools.in_write(add, "kept", False)
        with pytest.raises(Conflict):
            await pools.in_write(add, "lost", True)
        names = {await pools.run(n, lambda: threading.current_thread().name.split("_")[0])
                 for n in NAMES}
        return kept, await pools.in_db(slugs), names

    try:
        kept, found, names = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    finally:
        pools.shutdown()
        engine.dispose()
    assert kept == "kept" and found == ["kept"]
    assert names == set(NAMES)
    with pytest.raises(ValueError, match="io_threads"):
        NamedExecutors({"db": 1, "io": 0, "spark": 1, "log": 1}, None)
