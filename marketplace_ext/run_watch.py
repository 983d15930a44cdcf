"""Watching a run while it executes: its process tree, resource use, progress and cancels.

:func:`poll_run` is called every ``poll_interval`` by the runner, in a worker thread: it records
the processes of the run (so none outlives it), samples their usage against the sandbox's
limits, asks whether the run's data platform is still up, stores the notebook's progress and
reads a cancel that may come from another service process (through the database).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from .orm import Run, write_transaction
from .run_prepare import Prepared
from .run_results import read_progress
from .sandbox import usage
from .sandbox.limits import Limits
from .sandbox.procs import descendants, start_time


@dataclass
class Job:
    """A run this process executes: its processes, usage, progress and why to stop it."""

    run_id: int
    workdir: Path  # the run directory (the marker); the sandbox's cwd is workdir/work
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    abort: str | None = None  # "cancelled" | "service stopped" | a limit's message
    pid: int | None = None  # the sandbox's launcher
    known: dict[int, int | None] = field(default_factory=dict)  # pid -> start time
    progress: tuple[int, int] | None = None
    nb_signature: tuple[int, int] | None = None
    task: asyncio.Task | None = None
    peak: usage.Usage = field(default_factory=usage.Usage)
    platform_checked: float = 0.0


def poll_run(job: Job, prep: Prepared, session_factory, limits: Limits,
             platform_down: Callable[[str], str | None] | None,
             check_interval: float) -> str | None:
    """Record the process tree, its usage and progress; the reason to kill the run (a
    cancel, perhaps requested by another service process; a limit; its platform down),
    or None."""
    if job.pid is not None:
        tree = descendants(job.pid)
        new = {pid: start_time(pid) for pid in tree if pid not in job.known}
        if new:  # replaced, not updated: process_ids() reads it from the loop's thread
            job.known = {**job.known, **new}
        used = usage.sample(tree, (prep.space.work, prep.space.tmp), limits)
        job.peak = job.peak.peak(used)
        over = usage.exceeded(used, limits)
        if over:
            return over
    now = time.monotonic()
    if (prep.platform_unit and platform_down is not None
            and now - job.platform_checked >= check_interval):
        job.platform_checked = now
        down = platform_down(prep.platform_unit)
        if down:  # the reason names the unit
            return f"the run's data platform is down: {down}"
    progress, job.nb_signature = read_progress(prep.space.work, job.nb_signature)
    with session_factory() as s:
        if progress is not None and progress != job.progress:
            write_transaction(s)
            run = s.get(Run, job.run_id)
            run.cells_done, run.cells_total = progress
            cancel = run.cancel_requested
            s.commit()
            job.progress = progress
            return "cancelled" if cancel else None
        cancel = s.scalar(select(Run.cancel_requested).where(Run.id == job.run_id))
        return "cancelled" if cancel else None

