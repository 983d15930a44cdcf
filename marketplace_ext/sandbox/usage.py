"""What a sandbox uses, sampled from /proc and its directories, against its limits.

The rlimits (:mod:`.spec`) bound each process; the runner's poll loop bounds the sandbox as a
whole with :func:`sample` and :func:`exceeded`, and :func:`explain` turns what an rlimit does
to a process (MemoryError, EAGAIN from fork, "File too large", a kernel killed by SIGXCPU)
into a message naming the limit.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .limits import Limits, limit_message

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Usage:
    cpu_seconds: float = 0.0  # user + system, live processes and the children they reaped
    memory: int = 0  # resident bytes, summed
    processes: int = 0  # tasks: processes and their threads (what RLIMIT_NPROC counts)
    disk_bytes: int = 0

    def peak(self, other: Usage) -> Usage:
        return Usage(max(self.cpu_seconds, other.cpu_seconds), max(self.memory, other.memory),
                     max(self.processes, other.processes),
                     max(self.disk_bytes, other.disk_bytes))


def process_usage(pids: Iterable[int]) -> Usage:
    usage = Usage()
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields[0] is field 3 (state): utime 14, stime 15, cutime 16, cstime 17, threads 20,
        # rss 24
        usage.cpu_seconds += sum(int(x) for x in fields[11:15]) / _TICK
        usage.processes += int(fields[17])
        usage.memory += int(fields[21]) * _PAGE
    return usage


def disk_usage(dirs: Iterable[Path], stop_at: int = 0) -> int:
    """Bytes allocated under ``dirs`` (links not followed, hard links once); stops counting
    early once past ``stop_at`` (when non-zero)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    todo = [str(d) for d in dirs]
    while todo:
        try:
            entries = os.scandir(todo.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    todo.append(entry.path)
        if stop_at and total > stop_at:
            break
    return total


def sample(pids: Iterable[int], dirs: Iterable[Path], limits: Limits) -> Usage:
    usage = process_usage(pids)
    usage.disk_bytes = disk_usage(dirs, limits.disk_bytes)
    return usage


def exceeded(usage: Usage, limits: Limits, who: str = "run") -> str | None:
    """The message naming the first limit ``usage`` reached, or None."""
    if limits.memory and usage.memory >= limits.memory:
        return limit_message("memory", limits, f"{usage.memory // 2**20} MiB resident",
                             who)
    if limits.cpu_seconds and usage.cpu_seconds >= limits.cpu_seconds:
        return limit_message("cpu_seconds", limits, f"{usage.cpu_seconds:.0f} s of CPU time",
                             who)
    if limits.processes and usage.processes >= limits.processes:
        return limit_message("processes", limits,
                             f"{usage.processes} processes and threads", who)
    if limits.disk_bytes and usage.disk_bytes >= limits.disk_bytes:
        return limit_message("disk_bytes", limits, f"{usage.disk_bytes // 2**20} MiB stored",
                             who)
    return None


_PATTERNS: tuple[tuple[str, re.Pattern], ...] = (
    ("memory", re.compile(r"MemoryError|Cannot allocate memory|bad_alloc|out of memory", re.I)),
    ("processes", re.compile(r"Resource temporarily unavailable|can't start new thread|"
                             r"BlockingIOError|fork: retry")),
    ("file_size", re.compile(r"File too large|Errno 27\]")),
    ("disk_bytes", re.compile(r"No space left on device|Errno 28\]")),
)


def explain(error: str | None, usage: Usage | None, limits: Limits,
            who: str = "run") -> str | None:
    """A run's error (papermill's, or the runner's), rewritten to name the limit that caused
    it; None when no limit is to blame."""
    if not error:
        return None
    for kind, pattern in _PATTERNS:
        if getattr(limits, kind) and pattern.search(error):
            return limit_message(kind, limits, error, who)
    # an rlimit that kills (SIGXCPU, SIGKILL at the hard CPU limit, an allocation failing in C
    # code) leaves only "the kernel died": the last sample tells which limit was near
    if usage is not None and re.search(r"DeadKernel|[Kk]ernel died|exited with status", error):
        for kind, used in (("cpu_seconds", usage.cpu_seconds), ("memory", usage.memory),
                           ("processes", usage.processes)):
            limit = getattr(limits, kind)
            if limit and used >= 0.8 * limit:
                return limit_message(kind, limits, error, who)
    return None
