"""Finding and killing every process of a run (or of a warm predict worker).

Every sandboxed process carries ``GRID_MARKET_RUN=<the run's directory>`` in its environment
(:data:`MARKER_ENV`), and every process of a sandbox descends from its launcher. Killing the
launcher ends the sandbox (bwrap's ``--die-with-parent`` and its PID namespace take every
process in it along); :func:`kill_run_processes` does not rely on that alone: it stops
(SIGSTOP) the tree under the launcher, everything carrying the marker and the pids seen
earlier, until no new one appears, then SIGKILLs them all and waits until they are gone. That
also finds what a crashed service left behind (the launcher then has no parent to die with).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

from ..launcher import descendants, pid_alive
from .spec import MARKER_ENV

log = logging.getLogger(__name__)

__all__ = ["MARKER_ENV", "descendants", "kill_run_processes", "pid_alive", "processes_of",
           "start_time"]


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (with the pid, its identity)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def processes_of(workdir: Path) -> set[int]:
    """Live processes whose environment carries the marker of the run in ``workdir``."""
    entry = f"{MARKER_ENV}={Path(workdir)}".encode()
    found: set[int] = set()
    me = os.getpid()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            data = environ.read_bytes()
        except OSError:
            continue
        if entry in data.split(b"\0"):
            pid = int(environ.parent.name)
            if pid != me and pid_alive(pid):
                found.add(pid)
    return found


def kill_run_processes(root: int | None, workdir: Path, known: dict[int, int | None] | None = None,
                       wait: float = 10.0) -> set[int]:
    """Kill every process of the run in ``workdir``: the tree under ``root`` (the launcher),
    anything carrying the run's marker, and the ``known`` pids (pid → start time seen
    earlier, so a reused pid is left alone). Everything is stopped first, until no new process
    appears, so nothing can fork past the kill. Returns the pids killed."""
    stopped: set[int] = set()
    for _ in range(50):
        found = processes_of(workdir)
        if root is not None:
            if pid_alive(root):
                found.add(root)
            found |= descendants(root)
        for pid, started in (known or {}).items():
            if pid_alive(pid) and start_time(pid) == started:
                found.add(pid)
        for pid in list(found):
            found |= descendants(pid)
        new = {pid for pid in found - stopped if pid != os.getpid()}
        if not new:
            break
        for pid in new:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGSTOP)
        stopped |= new
    for pid in stopped:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(pid_alive(pid) for pid in stopped):
        time.sleep(0.02)
    left = {pid for pid in stopped if pid_alive(pid)}
    if left:
        log.error("processes %s of %s survived SIGKILL", sorted(left), workdir)
    return stopped
