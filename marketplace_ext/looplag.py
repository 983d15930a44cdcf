"""How late the service's event loop runs a timer: the time a blocking call (a synchronous
query, a file read, a hub round trip) stole from every other request. Tornado's rule is never
to block the IOLoop; this measures how well the service keeps it.

:class:`LoopLagMonitor` sleeps ``interval`` seconds again and again and records by how much
each wake-up came late. ``GET api/loop-lag`` shows the percentiles over a recent window to
operators; ``benchmarks/purchases.py`` reads it while its buyers run.

The lag says how late the loop was, not why. A watchdog thread therefore asks the loop for a
callback every ``probe_interval`` seconds; when one is not run within ``stall_after`` seconds,
it samples the loop thread's stack every few milliseconds until the callback runs, and keeps
the stall with the stack it was seen in most often (``stalls`` in ``GET api/loop-lag``; a stall
of ``log_stall_after`` seconds or more is also logged). The stacks name code, never data.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections import Counter, deque
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

#: frames of a stall's stack that are kept (innermost first)
STACK_DEPTH = 12
_ROOTS = sorted({str(Path(p)) for p in sys.path if p}, key=len, reverse=True)


def _short(filename: str) -> str:
    for root in _ROOTS:  # site-packages/tornado/web.py -> tornado/web.py
        if filename.startswith(root + "/"):
            return filename[len(root) + 1:]
    return filename


def stack_of(frame) -> tuple[str, ...]:
    """``frame`` and its callers as ``module/file.py:line function``, innermost first."""
    where = []
    while frame is not None and len(where) < STACK_DEPTH:
        code = frame.f_code
        where.append(f"{_short(code.co_filename)}:{frame.f_lineno} {code.co_name}")
        frame = frame.f_back
    return tuple(where)


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, nearest rank; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    rank = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[rank]


class LoopLagMonitor:
    """Samples the running loop's lag every ``interval`` seconds, keeping ``keep`` samples, and
    records the stalls of ``stall_after`` seconds or more with the stack they were in."""

    def __init__(self, interval: float = 0.05, keep: int = 20_000, stall_after: float = 0.04,
                 probe_interval: float = 0.05, log_stall_after: float = 0.25,
                 keep_stalls: int = 200):
        self.interval = interval
        self.samples: deque[tuple[float, float]] = deque(maxlen=keep)  # (monotonic, lag s)
        self.stall_after = stall_after
        self.probe_interval = probe_interval
        self.log_stall_after = log_stall_after
        self.stalls: deque[dict] = deque(maxlen=keep_stalls)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        watchdog = threading.Thread(target=self._watch, args=(loop, threading.get_ident(), stop),
                                    name="loop-watchdog", daemon=True)
        watchdog.start()
        try:
            while True:
                start = loop.time()
                await asyncio.sleep(self.interval)
                self.samples.append((time.monotonic(),
                                     max(0.0, loop.time() - start - self.interval)))
        finally:
            stop.set()

    def _watch(self, loop: asyncio.AbstractEventLoop, loop_thread: int,
               stop: threading.Event) -> None:
        while not stop.wait(self.probe_interval):
            answered = threading.Event()
            asked = time.monotonic()
            try:
                loop.call_soon_threadsafe(answered.set)
            except RuntimeError:  # the loop closed
                return
            if answered.wait(self.stall_after):
                continue
            seen: Counter[tuple[str, ...]] = Counter()
            while not answered.wait(0.005) and not stop.is_set():
                frame = sys._current_frames().get(loop_thread)
                if frame is not None:
                    seen[stack_of(frame)] += 1
                del frame  # (a frame kept alive keeps its locals alive)
            self._record(asked, time.monotonic() - asked, seen)

    def _record(self, asked: float, seconds: float, seen: Counter) -> None:
        stack, count = seen.most_common(1)[0] if seen else ((), 0)
        samples = sum(seen.values())
        stall = {"monotonic": asked, "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                 "ms": round(seconds * 1e3, 1), "samples": samples,
                 "stack_share": round(count / max(1, samples), 2),
                 "stack": list(stack)}
        self.stalls.append(stall)
        if seconds >= self.log_stall_after:
            log.warning("event loop stalled %.0f ms, mostly in %s", seconds * 1e3,
                        " < ".join(stack[:4]) or "(no sample)")

    def stats(self, seconds: float) -> dict:
        """Percentiles (milliseconds) of the samples of the last ``seconds`` seconds, and the
        stalls of that window, longest first (at most ten)."""
        since = time.monotonic() - seconds
        lags = sorted(lag for at, lag in list(self.samples) if at >= since)
        stalls = sorted((s for s in list(self.stalls) if s["monotonic"] >= since),
                        key=lambda s: s["ms"], reverse=True)[:10]
        return {"window_seconds": seconds, "samples": len(lags),
                "interval_ms": self.interval * 1e3,
                "p50_ms": round(percentile(lags, 0.5) * 1e3, 3),
                "p99_ms": round(percentile(lags, 0.99) * 1e3, 3),
                "max_ms": round((lags[-1] if lags else 0.0) * 1e3, 3),
                "stall_after_ms": self.stall_after * 1e3,
                "stalls": [{k: v for k, v in s.items() if k != "monotonic"} for s in stalls]}
