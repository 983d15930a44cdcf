"""The loop-lag monitor notices a blocked event loop (the measurement behind ``GET
api/loop-lag`` and ``benchmarks/purchases.py``'s lag figures)."""

from __future__ import annotations

import asyncio
import time

from marketplace_ext.looplag import LoopLagMonitor, percentile


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
