"""How late the service's event loop runs a timer: the time a blocking call (a synchronous
query, a file read, a hub round trip) stole from every other request. Tornado's rule is never
to block the IOLoop; this measures how well the service keeps it.

:class:`LoopLagMonitor` sleeps ``interval`` seconds again and again and records by how much
each wake-up came late. ``GET api/loop-lag`` shows the percentiles over a recent window to
operators; ``benchmarks/purchases.py`` reads it while its buyers run.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, nearest rank; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    rank = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[rank]


class LoopLagMonitor:
    """Samples the running loop's lag every ``interval`` seconds, keeping ``keep`` samples."""

    def __init__(self, interval: float = 0.05, keep: int = 20_000):
        self.interval = interval
        self.samples: deque[tuple[float, float]] = deque(maxlen=keep)  # (monotonic, lag s)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval)
            self.samples.append((time.monotonic(), max(0.0, loop.time() - start - self.interval)))

    def stats(self, seconds: float) -> dict:
        """Percentiles (milliseconds) of the samples of the last ``seconds`` seconds."""
        since = time.monotonic() - seconds
        lags = sorted(lag for at, lag in list(self.samples) if at >= since)
        return {"window_seconds": seconds, "samples": len(lags),
                "interval_ms": self.interval * 1e3,
                "p50_ms": round(percentile(lags, 0.5) * 1e3, 3),
                "p99_ms": round(percentile(lags, 0.99) * 1e3, 3),
                "max_ms": round((lags[-1] if lags else 0.0) * 1e3, 3)}
