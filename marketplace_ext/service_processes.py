"""The service as several processes on one host: the first starts the others and stops them.

With ``MarketplaceApp.processes = N`` (PostgreSQL only), process 0 (the one the hub starts)
launches processes 1..N-1 with the same command line plus ``--MarketplaceApp.process_index=i``.
All listen on the service's port with SO_REUSEPORT, so the kernel spreads connections over
them. A worker dies with the first process (``PR_SET_PDEATHSIG``), and the first process stops
them with SIGTERM when it stops; a worker that dies alone is not restarted (its runs and leases
are taken over by the others, see leases.py).
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys

log = logging.getLogger(__name__)

_INDEX_FLAG = "--MarketplaceApp.process_index"
_PR_SET_PDEATHSIG = 1


def worker_argv(index: int, argv: list[str] | None = None) -> list[str]:
    """The command line of worker ``index``: this process's, with its index replaced."""
    args = [a for a in (sys.argv[1:] if argv is None else argv)
            if not a.startswith(_INDEX_FLAG)]
    return [sys.executable, "-m", "marketplace_ext", *args, f"{_INDEX_FLAG}={index}"]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def start_workers(count: int) -> list[subprocess.Popen]:
    """Start workers 1..count-1 (none for count 1)."""
    workers = []
    for index in range(1, count):
        workers.append(subprocess.Popen(worker_argv(index), stdin=subprocess.DEVNULL,
                                        preexec_fn=_die_with_parent))  # noqa: PLW1509
        log.info("service process %d started (pid %d)", index, workers[-1].pid)
    return workers


def stop_workers(workers: list[subprocess.Popen], timeout: float = 60.0) -> None:
    """SIGTERM every worker, then wait for them (SIGKILL after ``timeout``). Blocking."""
    for proc in workers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in workers:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("service process %d did not stop in %.0f s: killed", proc.pid, timeout)
            proc.kill()
            proc.wait()
