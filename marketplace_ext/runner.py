"""The compute layer: a run queue persisted in the ``runs`` table and a bounded pool of
sandboxed papermill executions that never blocks the service's event loop.

A run goes ``queued`` → ``running`` → ``succeeded`` | ``failed`` | ``cancelled``. The HTTP layer
validates parameters (:mod:`.parameters`), queues a run (:mod:`.run_queue`), commits and calls
:meth:`Runner.kick`; the :class:`Runner` claims queued runs oldest first, at most
``max_workers`` at once, and executes each one:

1. a fresh run directory ``<work_root>/run-<id>/`` (:class:`~.sandbox.workspace.Workspace`):
   the bundle and an uploaded file (``inputs/<data_name>``) read-only, the working directory
   ``work/`` owned by the unit's sandbox account (``gds-run-<unit>``) with ``outputs/`` and
   ``.market-run/`` (job, executed notebook, HTML, result, the kernel's sockets);
2. ``python -P -m marketplace_ext.run_notebook`` in the sandbox (:mod:`.sandbox`: the unit's
   account, own namespaces, only the run's files visible, no network but the relay to the
   unit's data platform, rlimits), cwd ``work/``: papermill, the kernel and the HTML rendering
   all run in there;
3. while it runs: progress (code cells done / in all, from the notebook papermill saves after
   every cell), the timeout, cancellation, the sandbox's usage against its ``limits`` (a run
   over one is killed and fails naming it) and, for a run on its unit's platform,
   ``platform_down(unit)``: a run whose platform is down fails, naming it;
4. at the end: the executed notebook (kept for failures too) and its HTML go to the blob store,
   on success the declared outputs become artifacts (:mod:`.run_results`: nothing in ``work/``
   is read through a link), and the final status is recorded with ``on_finished`` (refunds,
   certification) in one write transaction. Then every process of the run is killed and the
   run directory removed.

Parameter conventions (a notebook's ``parameters`` cell): the user's parameters, validated
before the run is queued (missing ones keep the notebook's defaults); context parameters,
injected only when declared and never set by a user: ``run_id``, ``unit`` (the caller's unit
slug or ""), ``output_dir`` (``"outputs"``), ``input_path`` (the absolute path of an uploaded
file, else ""). The data side travels in the kernel's environment: ``env_for`` (e.g.
``SPARK_REMOTE`` of the caller's unit) over the service's environment without its secrets.

Killing: the sandbox's PID namespace ends every process in it when its launcher dies;
:func:`~.sandbox.procs.kill_run_processes` also sweeps everything carrying the run's marker
(``GRID_MARKET_RUN=<run directory>``), after every run and at start-up for runs a crashed
service left ``running`` (failed with "service restarted"). Recovery assumes one runner per
database and work root (the embedded default, ``exclusive``). Several service processes, on
one host or several, share the queue through run leases (:mod:`.run_leases`): each claims runs
with ``FOR UPDATE SKIP LOCKED``, renews its leases while they execute, and takes over (queues
again, or fails) the runs of a process whose leases expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import run_leases
from .blobs import BlobStore
from .errors import Conflict, MarketError, NotFound
from .leases import process_id
from .orm import Run, utcnow, write_transaction
from .parameters import CONTEXT_PARAMETERS, validate_parameters
from .run_prepare import Prepared as _Prepared
from .run_prepare import build_workspace, load_inputs
from .run_queue import DATA_KINDS, MAX_TIMEOUT_SECONDS, RunRequest, queue_run
from .run_results import (
    exists_inside,
    json_object,
    notebook_progress,
    store_results,
    tail,
)
from .run_watch import Job as _Job
from .run_watch import poll_run
from .sandbox import files, usage
from .sandbox.limits import Limits
from .sandbox.procs import MARKER_ENV, kill_run_processes, processes_of, start_time
from .sandbox.spec import launcher_argv
from .sandbox.workspace import (
    CONTROL_DIR,
    INPUT_DIR,
    OUTPUT_DIR,
    prepare_root,
)

log = logging.getLogger(__name__)

# the names other modules import from here
__all__ = ["CONTEXT_PARAMETERS", "CONTROL_DIR", "DATA_KINDS", "INPUT_DIR", "MARKER_ENV",
           "MAX_TIMEOUT_SECONDS", "OUTPUT_DIR", "RunRequest", "Runner", "kill_run_processes",
           "notebook_progress", "processes_of", "queue_run", "validate_parameters"]

STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
RENDER_TIMEOUT = 120.0

BundleFor = Callable[[Session, Run], tuple[bytes, str, list[str]]]
EnvFor = Callable[[Session, Run], dict[str, str]]
OnFinished = Callable[[Session, Run], None]
PlatformDown = Callable[[str], "str | None"]


# --- the runner --------------------------------------------------------------------------------

_runner_numbers = itertools.count(1)



class Runner:
    """Executes queued runs, at most ``max_workers`` at once, each papermill in a subprocess.

    ``bundle_for(session, run)`` returns (the version's canonical bundle zip, the notebook's
    path inside it, the declared output paths); ``env_for(session, run)`` the extra kernel
    environment (``SPARK_REMOTE``...); ``on_finished(session, run)`` is called exactly once per
    run that reaches succeeded, failed or cancelled, inside the write transaction that records
    it (it must not commit). ``kernel_for(session, run)``, optional, names the kernelspec of a
    run (a product's own environment) instead of ``kernel_name`` when it returns one. All are
    called in a worker thread, never on the event loop.

    ``limits`` bound each run's sandbox (default :class:`~.sandbox.limits.Limits`);
    ``platform_down(unit)`` (fast: no Spark round trip) returns why the unit's data platform is
    down, or None; it is asked every ``platform_check_interval`` seconds while a run on that
    platform executes.

    ``exclusive``: this runner is the only one on its database, so at start every run left
    running is its previous incarnation's. Otherwise runs are taken over only when their
    ``lease_seconds`` lease has expired (or their holder on this host is gone), checked every
    third of it; ``max_attempts`` executions of a run at most (a taken-over run is queued
    again while it has attempts left, else failed).
    """

    def __init__(self, session_factory, blobs: BlobStore, work_root: Path, *,
                 max_workers: int = 2, bundle_for: BundleFor, env_for: EnvFor,
                 on_finished: OnFinished | None = None, kernel_name: str = "grid-python",
                 poll_interval: float = 0.5, max_artifact_bytes: int = 50 * 2**20,
                 kernel_for: Callable[[Session, Run], str | None] | None = None,
                 limits: Limits | None = None, platform_down: PlatformDown | None = None,
                 platform_check_interval: float = 5.0, exclusive: bool = True,
                 lease_seconds: float = 30.0, max_attempts: int = 1):
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        if lease_seconds <= 0 or max_attempts < 1:
            raise ValueError("lease_seconds must be positive and max_attempts at least 1")
        self.exclusive = exclusive
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        # one holder identity per runner, so two runners of one process (tests) are distinct
        self.owner = f"{process_id()}/{next(_runner_numbers)}"
        self.session_factory = session_factory
        self.blobs = blobs
        self.work_root = Path(work_root).resolve()
        self.max_workers = max_workers
        self.bundle_for = bundle_for
        self.env_for = env_for
        self.on_finished = on_finished
        self.kernel_name = kernel_name
        self.kernel_for = kernel_for
        self.poll_interval = poll_interval
        self.max_artifact_bytes = max_artifact_bytes
        self.limits = limits or Limits()
        self.platform_down = platform_down
        self.platform_check_interval = platform_check_interval
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._main: asyncio.Task | None = None
        self._jobs: dict[int, _Job] = {}
        self._done: dict[int, asyncio.Event] = {}
        self._stopping = False
        self._unreachable: str | None = None
        self.peak_running = 0  # the most runs this runner executed at once (for tests, stats)

    # --- helpers

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.max_workers + 2,
                                                thread_name_prefix="runner")
        return self._executor

    async def _call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool(), fn, *args)

    def _in_loop(self, fn, *args) -> None:
        """Call ``fn`` on the runner's loop, from any thread; a no-op when not started."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn, *args)

    def _notify(self, run_id: int) -> None:
        event = self._done.get(run_id)
        if event is not None:
            event.set()

    def _workdir(self, run_id: int) -> Path:
        return self.work_root / f"run-{run_id}"

    def process_ids(self, run_id: int) -> set[int]:
        """The pids seen so far for a run this runner is executing (runner process, kernel...)."""
        job = self._jobs.get(run_id)
        return set(job.known) if job else set()

    # --- public API

    async def start(self) -> None:
        """Fail the runs a previous service left ``running`` ("service restarted", with
        ``on_finished``), then start taking queued runs."""
        if self._main is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stopping = False
        self._unreachable = await self._call(prepare_root, self.work_root)
        if self._unreachable:
            log.error("%s: every run will fail", self._unreachable)
        await self._call(self._recover)
        self._main = asyncio.create_task(self._dispatch(), name="runner-dispatch")

    async def stop(self) -> None:
        """Stop taking runs; kill the running ones and record them failed ("service stopped",
        with ``on_finished``). Queued runs stay queued for the next start."""
        if self._main is None:
            return
        self._stopping = True
        self._wake.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._main
        jobs = list(self._jobs.values())
        for job in jobs:
            job.abort = job.abort or "service stopped"
            job.wake.set()
        await asyncio.gather(*(j.task for j in jobs if j.task), return_exceptions=True)
        self._main = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._loop = None

    def kick(self) -> None:
        """Wake the dispatcher now (a run was queued and committed); safe from any thread."""
        if self._wake is not None:
            self._in_loop(self._wake.set)

    def cancel(self, session: Session, run_id: int) -> Run:
        """Cancel a run, in a write transaction of ``session`` that this call commits (pass a
        session with no transaction open). A queued run becomes ``cancelled`` at once (with
        ``on_finished``); a running one gets ``cancel_requested`` and its runner kills it
        promptly and records it ``cancelled``. A finished run is a :class:`Conflict`."""
        own = not session.in_transaction()
        if own:
            write_transaction(session)
        try:
            run = session.scalars(select(Run).where(Run.id == run_id).with_for_update()
                                  .execution_options(populate_existing=True)).first()
            if run is None:
                raise NotFound(f"run {run_id} does not exist", "run")
            if run.status == "queued":
                run.status, run.error, run.finished_at = "cancelled", "cancelled", utcnow()
                run.cancel_requested = True
                if self.on_finished is not None:
                    self.on_finished(session, run)
                session.commit()
                self._in_loop(self._notify, run_id)
                return run
            if run.status == "running":
                run.cancel_requested = True
                session.commit()
                self._in_loop(self._abort, run_id, "cancelled")
                return run
            raise Conflict(f"run {run_id} has already {run.status}; only a queued or running "
                           "run can be cancelled", "run")
        except BaseException:
            if own:
                session.rollback()
            raise

    async def wait(self, run_id: int, timeout: float) -> Run:
        """The run once it is succeeded, failed or cancelled; TimeoutError after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        event = self._done.setdefault(run_id, asyncio.Event())
        try:
            while True:
                run = await self._call(self._load, run_id)
                if run.status in TERMINAL:
                    return run
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(f"run {run_id} is still {run.status} after {timeout} s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(remaining, 0.25))
        finally:
            self._done.pop(run_id, None)

    # --- dispatch

    def _abort(self, run_id: int, reason: str) -> None:
        job = self._jobs.get(run_id)
        if job is not None and job.abort is None:
            job.abort = reason
            job.wake.set()

    async def _dispatch(self) -> None:
        next_lease_pass = 0.0
        loop = asyncio.get_running_loop()
        while not self._stopping:
            self._wake.clear()
            if loop.time() >= next_lease_pass:
                next_lease_pass = loop.time() + self.lease_seconds / 3
                try:
                    await self._call(self._lease_pass, list(self._jobs))
                except Exception:
                    log.exception("renewing run leases failed; retrying")
            while len(self._jobs) < self.max_workers and not self._stopping:
                try:
                    run_id = await self._call(self._claim)
                except Exception:
                    log.exception("could not claim a queued run")
                    break
                if run_id is None:
                    break
                job = _Job(run_id, self._workdir(run_id))
                self._jobs[run_id] = job
                self.peak_running = max(self.peak_running, len(self._jobs))
                job.task = asyncio.create_task(self._execute(job), name=f"run-{run_id}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    def _load(self, run_id: int) -> Run:
        with self.session_factory() as s:
            run = s.get(Run, run_id)
            if run is None:
                raise NotFound(f"run {run_id} does not exist", "run")
            return run

    def _claim(self) -> int | None:
        with self.session_factory() as s:
            # look before taking the write lock: an idle queue costs a read per poll
            if s.scalar(select(Run.id).where(Run.status == "queued").limit(1)) is None:
                return None
            s.rollback()
            write_transaction(s)
            run = run_leases.claim_next(s, self.owner, self.lease_seconds)
            if run is None:
                s.rollback()
                return None
            s.commit()
            return run.id

    def _lease_pass(self, mine: list[int]) -> None:
        """Renew the leases of the runs this runner executes (``mine``; aborting any another
        process took over) and, shared with other processes, take over the runs of dead ones."""
        if mine and not self.exclusive:  # alone on its database, nobody takes runs over
            with self.session_factory() as s:
                write_transaction(s)
                held = run_leases.renew(s, self.owner, mine, self.lease_seconds)
                s.commit()
            for run_id in set(mine) - held:
                job = self._jobs.get(run_id)
                if job is not None and job.pid is not None:  # started, and no longer ours
                    self._in_loop(self._abort, run_id, "lease lost")
        if not self.exclusive:
            self._recover(reason="the service process running it stopped")

    def _recover(self, reason: str = "service restarted") -> None:
        """Take over the runs whose holder is gone: queue them again while they have attempts
        left, else kill what is left of them here and record them failed with ``reason``."""
        with self.session_factory() as s:
            stale = run_leases.stale_runs(s, self.owner, self.exclusive)
        for run_id in stale:
            if run_id in self._jobs:
                continue
            with self.session_factory() as s:
                write_transaction(s)
                outcome = run_leases.take_over(s, run_id, self.owner, self.lease_seconds,
                                               self.max_attempts, self.exclusive)
                s.commit()
            if outcome is None:
                continue
            workdir = self._workdir(run_id)
            kill_run_processes(None, workdir)
            shutil.rmtree(workdir, ignore_errors=True)
            if outcome == "requeued":
                log.warning("run %s lost its service process: queued again", run_id)
                self.kick()
            elif self._record(run_id, "failed", reason, {}):
                log.warning("run %s lost its service process: failed", run_id)
            else:
                with self.session_factory() as s:
                    write_transaction(s)
                    run_leases.give_up(s, run_id, self.owner)
                    s.commit()

    # --- one run

    async def _execute(self, job: _Job) -> None:
        proc: asyncio.subprocess.Process | None = None
        try:
            start = time.monotonic()
            try:
                prep = await self._call(self._prepare, job)
            except Exception as e:
                message = e.message if isinstance(e, MarketError) else f"{type(e).__name__}: {e}"
                if not isinstance(e, MarketError):
                    log.exception("run %s could not be prepared", job.run_id)
                await self._call(self._record, job.run_id, "failed",
                                 f"could not start the run: {message}", {})
                return
            if job.abort == "service stopped":  # claimed as the service stopped: not started
                await self._call(self._requeue, job.run_id)
                return
            if job.abort:
                await self._conclude(job, prep, None, job.abort)
                return
            space = prep.space
            command = [sys.executable, "-P", "-m", "marketplace_ext.run_notebook",
                       str(space.control / "job.json")]
            spec = space.spec(command, prep.env, self.limits, prep.read_only)
            await self._call(spec.write, space.spec_file)
            log_file = open(space.log_file, "wb")  # noqa: SIM115 - the child keeps its copy
            try:
                proc = await asyncio.create_subprocess_exec(
                    *launcher_argv(space.spec_file), cwd=space.root, env=prep.env,
                    stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                    start_new_session=True)
            finally:
                log_file.close()
            job.pid = proc.pid
            job.known[proc.pid] = start_time(proc.pid)
            reason = await self._watch(job, proc, prep, start + prep.timeout, prep.timeout)
            if reason is not None:
                await self._call(kill_run_processes, proc.pid, job.workdir, dict(job.known))
            await proc.wait()
            await self._conclude(job, prep, proc.returncode, reason)
        except Exception:
            log.exception("run %s: internal error", job.run_id)
            with contextlib.suppress(Exception):
                await self._call(self._record, job.run_id, "failed",
                                 "internal error of the runner (see the service log)", {})
        finally:
            with contextlib.suppress(Exception):
                await self._call(self._cleanup, job)
            self._jobs.pop(job.run_id, None)
            self._notify(job.run_id)
            if self._wake is not None:
                self._wake.set()

    async def _watch(self, job: _Job, proc, prep: _Prepared, deadline: float,
                     timeout: int) -> str | None:
        """Follow the run until its process exits (None) or it must be killed (the reason)."""
        exited = asyncio.ensure_future(proc.wait())
        try:
            while True:
                woken = asyncio.ensure_future(job.wake.wait())
                left = deadline - time.monotonic()
                await asyncio.wait({exited, woken}, timeout=max(0.0, min(self.poll_interval, left)),
                                   return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                if exited.done():
                    return None
                if job.abort:
                    return job.abort
                if time.monotonic() >= deadline:
                    return f"timed out after {timeout} s"
                reason = await self._call(self._poll, job, prep)
                if reason is not None:
                    return reason
        finally:
            if not exited.done():
                exited.cancel()

    def _poll(self, job: _Job, prep: _Prepared) -> str | None:
        return poll_run(job, prep, self.session_factory, self.limits, self.platform_down,
                        self.platform_check_interval)

    def _prepare(self, job: _Job) -> _Prepared:
        with self.session_factory() as s:
            inputs = load_inputs(s, s.get(Run, job.run_id), self.bundle_for, self.env_for,
                                 self.kernel_for, self.kernel_name)
        # asked again for every run: an operator may have fixed the modes meanwhile
        self._unreachable = prepare_root(self.work_root)
        if self._unreachable:
            raise MarketError(self._unreachable)
        return build_workspace(job.run_id, job.workdir, inputs, self.blobs)

    async def _render(self, job: _Job, prep: _Prepared) -> None:
        """HTML of a killed run's partial notebook, in the sandbox too (nbconvert parses the
        untrusted notebook, and is slow)."""
        space = prep.space
        command = [sys.executable, "-P", "-m", "marketplace_ext.run_notebook", "--render",
                   str(space.control / "output.ipynb"), str(space.control / "output.html")]
        spec = space.spec(command, {}, self.limits, [])
        spec_file = space.root / "render.json"
        await self._call(spec.write, spec_file)
        proc = await asyncio.create_subprocess_exec(
            *launcher_argv(spec_file), cwd=space.root, env=prep.env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        try:
            await asyncio.wait_for(proc.wait(), RENDER_TIMEOUT)
        except TimeoutError:
            await self._call(kill_run_processes, proc.pid, job.workdir, {})
            await proc.wait()

    async def _conclude(self, job: _Job, prep: _Prepared, returncode: int | None,
                        reason: str | None) -> None:
        work = prep.space.work
        # nothing of the run may outlive it, even a background process the notebook started
        if job.pid is not None:
            await self._call(kill_run_processes, job.pid, job.workdir, dict(job.known))
        if reason is None:
            raw = await self._call(files.try_read_inside, work, f"{CONTROL_DIR}/result.json",
                                   2**20)
            result = json_object(raw)
            if result and result.get("ok"):
                status, error = "succeeded", None
            elif result and result.get("error"):
                status, error = "failed", str(result["error"])
            else:
                end = await self._call(tail, prep.space.log_file)
                status = "failed"
                error = f"the notebook runner exited with status {returncode}" + (
                    f": {end}" if end else "")
            if status == "failed":  # an rlimit's doing is said so
                error = usage.explain(error, job.peak, self.limits) or error
            if self.limits.disk_bytes:  # filled between two samples
                stored = await self._call(usage.disk_usage, (work, prep.space.tmp),
                                          self.limits.disk_bytes)
                over = usage.exceeded(usage.Usage(disk_bytes=stored), self.limits)
                if over:
                    status, error = "failed", over
        elif reason == "cancelled":
            status, error = "cancelled", "cancelled"
        else:
            status, error = "failed", reason
        has_nb = await self._call(exists_inside, work, f"{CONTROL_DIR}/output.ipynb")
        has_html = await self._call(exists_inside, work, f"{CONTROL_DIR}/output.html")
        if not self._stopping and has_nb and not has_html:
            with contextlib.suppress(Exception):
                await self._render(job, prep)
        outputs = prep.outputs if status == "succeeded" else []
        await self._call(self._store, job, prep, status, error, outputs)

    def _store(self, job: _Job, prep: _Prepared, status: str, error: str | None,
               outputs: list[str]) -> None:
        status, error, extra = store_results(self.blobs, prep.space.work, status, error, outputs,
                                             self.max_artifact_bytes)
        self._record(job.run_id, status, error, extra)

    def _record(self, run_id: int, status: str, error: str | None, extra: dict) -> bool:
        """The final status, its details and ``on_finished``, in one write transaction. Retried
        a few times; if it still fails the run stays ``running`` and the next start fails it
        (with ``on_finished``), so a refund is never lost."""
        for attempt in range(3):
            try:
                with self.session_factory() as s:
                    write_transaction(s)
                    run = s.get(Run, run_id, with_for_update=True)
                    if run is None or run.status != "running" or run.lease_owner not in (
                            None, self.owner):  # another process took it over
                        s.rollback()
                        return False
                    run.status, run.error, run.finished_at = status, error, utcnow()
                    for key, value in extra.items():
                        setattr(run, key, value)
                    if self.on_finished is not None:
                        self.on_finished(s, run)
                    s.commit()
                    return True
            except Exception:
                log.exception("run %s: recording %s failed (attempt %d)", run_id, status,
                              attempt + 1)
                time.sleep(0.2 * (attempt + 1))
        return False

    def _requeue(self, run_id: int) -> None:
        with self.session_factory() as s:
            write_transaction(s)
            run = s.get(Run, run_id, with_for_update=True)
            if run is not None and run.status == "running" and run.lease_owner in (None,
                                                                                 self.owner):
                run.status, run.started_at = "queued", None
                run.lease_owner = run.lease_expires_at = None
                run.attempts = max((run.attempts or 1) - 1, 0)  # it never started
            s.commit()

    def _cleanup(self, job: _Job) -> None:
        kill_run_processes(job.pid, job.workdir, dict(job.known))
        shutil.rmtree(job.workdir, ignore_errors=True)


