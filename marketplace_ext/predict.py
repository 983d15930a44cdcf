"""The remote-call sharing mode's engine: warm Jupyter kernels that answer ``predict`` calls.

``POST api/products/{p}/predict {"rows": [...]}`` runs a tool product's prediction notebook on
the posted rows and answers with its ``outputs/predictions.json``. Starting a kernel and
importing pandas costs seconds; the cells themselves usually take milliseconds. So
:class:`PredictPool` keeps one *worker* per tool version: the version's bundle unpacked into a
run directory of its own (:class:`~.sandbox.workspace.Workspace`) and a kernel started in the
sandbox there, as the calling unit's sandbox account (the kernelspec's provisioner,
:mod:`marketplace_ext.provisioner`, does that; a kernelspec without it is refused), with cwd
``work/`` (the bundle read-only in it), an environment stripped of the service's secrets like a
run's, no network but the relay to the unit's data platform, and the pool's ``limits``. It runs
nothing until the first call. Each call:

1. in the kernel (the service writes nothing into the sandbox's directory): back to ``work/``,
   an empty ``outputs/`` (a stale answer can never be returned), the rows as a string;
2. executes the notebook's code cells one by one in the warm kernel, the ``parameters`` cell
   followed by an injected cell that sets ``rows`` (and ``output_dir = "outputs"`` when the
   notebook declares it, as a run would), like papermill's injected parameters. The other
   parameters keep their defaults: the parameters cell itself runs again on every call;
3. reads ``outputs/predictions.json`` (no link followed), which must hold a JSON array.

Imports stay cached in the kernel, so a repeated call costs only the cells. Calls to one worker
are serialized. A cell that raises is a :class:`PredictError` with the exception's name and
message and the worker keeps serving; a call that outlives ``call_timeout`` kills the kernel and
everything it started (:class:`PredictTimeout`); a dead kernel is replaced on the next call.
Both start the version afresh from its bundle.

Instead of the notebook, a tool may name a Python function in its manifest,
``predict: "module:function"`` (a module of the bundle): the worker imports it once and calls
``function(rows)``, which returns a JSON-serializable list (numpy values are converted with
``tolist()``).

Workers are keyed by version *and* kernel environment: the environment is fixed when a kernel
starts, so callers whose environment differs (another unit's ``SPARK_REMOTE``) get workers of
their own and never share a kernel's memory. At most ``max_workers`` workers exist; the least
recently used idle one is stopped to make room (a caller waits when all of them are busy), and
workers idle for ``idle_timeout`` seconds are stopped. A unit holds at most
``max_workers_per_unit`` (0: no limit): one more stops that unit's least recently used idle
worker (never another unit's); with all of them busy the call is refused (429
``quota_exceeded``, field ``unit``, ``Retry-After``) before anything is charged. Every process
of a worker carries the runner's marker (``GRID_MARKET_RUN=<worker directory>``) and is killed with
:func:`marketplace_ext.sandbox.procs.kill_run_processes`. One pool per ``work_root``: on first
use the pool kills and removes whatever a previous service left there.

Nothing here blocks the event loop: the kernel is driven with jupyter_client's asyncio client,
and file work, bundle loading and process sweeps run in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import os
import shutil
import subprocess
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty

from .errors import MarketError, QuotaExceeded
from .predict_program import (
    InvalidRows,
    PredictError,
    PredictTimeout,
    PredictUnavailable,
    Program,
    check_rows,
    encode_rows,
    entry_point_cell,
    prelude,
    read_predictions,
    read_program,
    rows_cell,
)
from .provisioner import SPEC_ENV
from .sandbox import usage
from .sandbox.limits import Limits
from .sandbox.procs import kill_run_processes, processes_of, start_time
from .sandbox.workspace import (
    Workspace,
    identity,
    kernel_paths,
    prepare_root,
    sandbox_env,
)

log = logging.getLogger(__name__)

PROVISIONER = "grid-sandbox-provisioner"
_MAX_MESSAGE = 2000
_POLL = 0.5  # seconds between liveness checks while a cell runs


# --- files --------------------------------------------------------------------------------------


def _tail(path: Path, lines: int = 5, limit: int = 2000) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""
    return " | ".join(text.splitlines()[-lines:])[-limit:]


def _sweep(directory: Path, known: dict[int, int | None]) -> None:
    """Kill every process of the worker in ``directory`` and remove the directory."""
    kill_run_processes(None, directory, known)
    shutil.rmtree(directory, ignore_errors=True)


def _recover(work_root: Path) -> str | None:
    """Kill and remove the workers a previous service left under ``work_root``; what keeps
    the sandbox accounts from reaching it, if anything."""
    problem = prepare_root(work_root)
    for directory in work_root.glob("w-*"):
        if processes_of(directory):
            log.warning("killing predict worker processes left in %s", directory)
        _sweep(directory, {})
    return problem


# --- the pool -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerInfo:
    """A worker as :meth:`PredictPool.workers` reports it."""

    version_key: str
    pid: int | None  # the kernel's; None while the worker has no running kernel
    directory: Path | None
    calls: int
    idle_seconds: float
    busy: bool


@dataclass(eq=False)
class _Worker:
    version_key: str
    env: dict[str, str]
    unit: str | None = None  # whose sandbox account the kernel runs as
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # calls holding or waiting for the worker: never evicted while > 0
    last_used: float = field(default_factory=time.monotonic)
    calls: int = 0
    closed: bool = False
    directory: Path | None = None
    program: Program | None = None
    km: object | None = None  # jupyter_client AsyncKernelManager
    kc: object | None = None  # its AsyncKernelClient
    pid: int | None = None
    known: dict[int, int | None] = field(default_factory=dict)


def _fingerprint(env: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(env.items())).encode()).hexdigest()[:16]


class PredictPool:
    """Warm kernels answering remote calls of tool versions; see the module docstring.

    ``work_root`` holds one directory per worker; ``kernel_name`` is the default kernelspec
    (:meth:`predict` may name a version's own); ``call_timeout`` bounds one call's execution,
    ``start_timeout`` a kernel's start; ``max_output_bytes`` the predictions file.
    """

    def __init__(self, work_root: Path, *, kernel_name: str = "grid-python", max_workers: int = 4,
                 idle_timeout: float = 600, call_timeout: float = 60, max_rows: int = 10_000,
                 start_timeout: float = 60, max_output_bytes: int = 16 * 2**20,
                 limits: Limits | None = None, max_workers_per_unit: int = 0):
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        if max_workers_per_unit < 0:
            raise ValueError("max_workers_per_unit must be 0 (no limit) or more")
        if min(idle_timeout, call_timeout, start_timeout) <= 0 or max_rows < 1:
            raise ValueError("timeouts and max_rows must be positive")
        self.work_root = Path(work_root).resolve()
        self.kernel_name = kernel_name
        self.max_workers = max_workers
        self.max_workers_per_unit = max_workers_per_unit
        self.idle_timeout = idle_timeout
        self.call_timeout = call_timeout
        self.max_rows = max_rows
        self.start_timeout = start_timeout
        self.max_output_bytes = max_output_bytes
        self.limits = limits or Limits()
        self._workers: OrderedDict[tuple[str, str], _Worker] = OrderedDict()  # LRU first
        self._changed = asyncio.Condition()
        self._started: asyncio.Task | None = None
        self._reaper: asyncio.Task | None = None
        self._closed = False
        self._stopping: set[asyncio.Future] = set()
        self._calls: set[asyncio.Future] = set()
        self._serial = itertools.count(1)

    # --- public API

    async def predict(self, version_key: str, bundle_bytes_loader: Callable[[], bytes],
                      rows: list[dict], env: dict[str, str], *,
                      kernel_name: str | None = None, unit: str | None = None) -> list:
        """Run the version's prediction on ``rows`` in its warm worker and return the parsed
        ``outputs/predictions.json``.

        ``version_key`` identifies the version (its bundle digest); ``bundle_bytes_loader``
        returns its canonical bundle and is called, in a thread, only when a worker starts;
        ``env`` is merged over the service's environment stripped of its secrets, as for a run;
        ``kernel_name`` overrides the pool's kernelspec (a product's own environment);
        ``unit``: the kernel runs in that unit's sandbox (account ``gds-run-<unit>``).

        Raises :class:`InvalidRows` (bad rows; no kernel is touched), :class:`PredictError`
        (the notebook raised or wrote no valid predictions), :class:`PredictTimeout` and
        :class:`PredictUnavailable`.
        """
        if self._closed:
            raise PredictUnavailable("the prediction pool is shut down")
        if not isinstance(version_key, str) or not version_key:
            raise ValueError("version_key must be a non-empty string")
        check_rows(rows, self.max_rows)
        rows_json = await asyncio.to_thread(encode_rows, rows)
        env = {str(k): str(v) for k, v in (env or {}).items()}
        await self._start()
        worker = await self._acquire((version_key, _fingerprint({**env, "": unit or ""})),
                                     version_key, env, unit)
        # shielded: a caller that goes away must not leave the kernel half way through the
        # notebook; the call finishes (within call_timeout) and its answer is dropped
        task = asyncio.ensure_future(self._serve(worker, bundle_bytes_loader,
                                                 kernel_name or self.kernel_name, rows_json))
        task.add_done_callback(_retrieve)
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)
        return await asyncio.shield(task)

    async def _serve(self, worker: _Worker, loader: Callable[[], bytes], kernel_name: str,
                     rows_json: str) -> list:
        try:
            async with worker.lock:
                if worker.closed or self._closed:
                    raise PredictUnavailable("the prediction pool is shut down")
                if worker.km is None or not await worker.km.is_alive():
                    if worker.km is not None:
                        log.warning("predict worker of %s: kernel %s died; restarting",
                                    worker.version_key, worker.pid)
                    await self._start_worker(worker, loader, kernel_name)
                worker.calls += 1
                return await self._call(worker, rows_json)
        finally:
            worker.users -= 1
            worker.last_used = time.monotonic()
            async with self._changed:
                self._changed.notify_all()

    def workers(self) -> list[WorkerInfo]:
        """The current workers, least recently used first."""
        now = time.monotonic()
        return [WorkerInfo(w.version_key, w.pid if w.km is not None else None, w.directory,
                           w.calls, now - w.last_used, w.users > 0)
                for w in self._workers.values()]

    async def shutdown(self) -> None:
        """Stop every worker and its processes; later calls raise :class:`PredictUnavailable`."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        if self._started is not None:
            with contextlib.suppress(Exception):
                await self._started
        async with self._changed:
            workers = list(self._workers.values())
            self._workers.clear()
            self._changed.notify_all()
        await asyncio.gather(*(self._stop_worker(w, final=True) for w in workers),
                             return_exceptions=True)
        # calls end promptly once their kernel is gone; one starting a kernel stops it itself
        await asyncio.gather(*list(self._calls), return_exceptions=True)
        # stops begun by the reaper, an eviction, a timeout or such a call
        await asyncio.gather(*list(self._stopping), return_exceptions=True)

    # --- workers

    async def _start(self) -> None:
        if self._started is None:
            # one pool per work root: what is left there belongs to a previous service
            self._started = asyncio.ensure_future(asyncio.to_thread(_recover, self.work_root))
            self._reaper = asyncio.create_task(self._reap(), name="predict-reaper")
        problem = await asyncio.shield(self._started)
        if problem:
            raise PredictUnavailable(problem)

    async def _acquire(self, key: tuple[str, str], version_key: str,
                       env: dict[str, str], unit: str | None = None) -> _Worker:
        """The worker for ``key``, counted as used; makes room by stopping the least recently
        used idle worker, and waits while every worker is busy."""
        async with self._changed:
            while True:
                if self._closed:
                    raise PredictUnavailable("the prediction pool is shut down")
                worker = self._workers.get(key)
                if worker is not None:
                    self._workers.move_to_end(key)
                    worker.users += 1
                    return worker
                victim = self._unit_victim(unit)  # raises when all the unit's are busy
                if victim is None and len(self._workers) >= self.max_workers:
                    victim_key = next((k for k, w in self._workers.items() if w.users == 0), None)
                    if victim_key is None:
                        await self._changed.wait()
                        continue
                    victim = self._workers.pop(victim_key)
                worker = _Worker(version_key, env, unit, users=1)
                self._workers[key] = worker
                break
        if victim is not None:
            log.info("predict worker of %s evicted (least recently used)", victim.version_key)
            # stopped before the new kernel starts: max_workers bounds the kernels alive
            try:
                await self._stop_worker(victim, final=True)
            except asyncio.CancelledError:
                worker.users -= 1
                raise
            except Exception:
                log.exception("stopping the evicted predict worker of %s", victim.version_key)
        return worker

    def _unit_victim(self, unit: str | None) -> _Worker | None:
        """With the unit at its quota, its least recently used idle worker, taken out of the
        pool (the caller stops it); None below the quota. Call with ``_changed`` held."""
        if not self.max_workers_per_unit:
            return None
        mine = [(k, w) for k, w in self._workers.items() if w.unit == unit]
        if len(mine) < self.max_workers_per_unit:
            return None
        victim_key = next((k for k, w in mine if w.users == 0), None)
        if victim_key is None:
            raise QuotaExceeded(
                f"unit {unit!r} has {len(mine)} warm predict workers, all busy; the limit is "
                f"{self.max_workers_per_unit} per unit: retry shortly", "unit",
                retry_after=max(1, int(self.call_timeout)))
        return self._workers.pop(victim_key)

    async def _reap(self) -> None:
        interval = max(0.2, min(self.idle_timeout / 2, 30.0))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            async with self._changed:
                idle = [k for k, w in self._workers.items()
                        if w.users == 0 and now - w.last_used >= self.idle_timeout]
                victims = [self._workers.pop(k) for k in idle]
                if victims:
                    self._changed.notify_all()
            for worker in victims:
                log.info("predict worker of %s stopped after %.0f s idle", worker.version_key,
                         now - worker.last_used)
                try:
                    await self._stop_worker(worker, final=True)
                except Exception:
                    log.exception("stopping the idle predict worker of %s", worker.version_key)

    async def _start_worker(self, worker: _Worker, loader: Callable[[], bytes],
                            kernel_name: str) -> None:
        """(Re)start ``worker`` in a fresh directory from the version's bundle."""
        from jupyter_client import AsyncKernelManager

        await self._stop_worker(worker)
        tag = hashlib.sha256(worker.version_key.encode()).hexdigest()[:12]
        directory = self.work_root / f"w-{tag}-{next(self._serial)}"
        worker.directory = directory

        def prepare() -> tuple[Program, Workspace, dict[str, str]]:
            data = loader()
            space = Workspace(directory, *identity(worker.unit))
            space.create(data)
            program = read_program(space.bundle)
            space.seal()
            env = sandbox_env(worker.env, directory, space.control / "runtime")
            # the provisioner (selected by the kernelspec) reads the sandbox from this template
            template = space.spec([], env, self.limits, kernel_paths(kernel_name, env))
            template.write(directory / "sandbox.json")
            env[SPEC_ENV] = str(directory / "sandbox.json")
            return program, space, env

        try:
            worker.program, space, env = await asyncio.to_thread(prepare)
        except Exception as e:
            if worker.closed:  # shut down while unpacking: the directory was removed under it
                raise PredictUnavailable("the prediction pool is shut down") from None
            if isinstance(e, MarketError):
                raise
            log.exception("predict worker of %s: the bundle could not be prepared",
                          worker.version_key)
            raise PredictUnavailable(f"the version's bundle could not be prepared: "
                                     f"{type(e).__name__}: {e}") from e
        km = AsyncKernelManager(kernel_name=kernel_name,
                                connection_file=str(space.control / "kernel.json"),
                                kernel_spec_manager=_spec_manager(env))
        worker.km = km
        # in the run directory (root's), not work/: the sandboxed kernel could swap a file there
        kernel_log = directory / "kernel.log"
        t0 = time.monotonic()
        try:
            provisioner = (km.kernel_spec.metadata or {}).get("kernel_provisioner", {})
            if provisioner.get("provisioner_name") != PROVISIONER:
                raise PredictUnavailable(f"the kernelspec {kernel_name!r} does not start its "
                                         f"kernels in the sandbox ({PROVISIONER})")
            # the kernel's own output (and its children's) goes to the worker's log, not the
            # service's
            with open(kernel_log, "ab") as out:
                await asyncio.wait_for(km.start_kernel(cwd=str(space.work), env=env, stdout=out,
                                                       stderr=subprocess.STDOUT),
                                       self.start_timeout)
            worker.pid = km.provisioner.pid
            worker.known = {worker.pid: start_time(worker.pid)}
            if worker.closed:  # shut down while the kernel started: its sweep may have missed it
                raise PredictUnavailable("the prediction pool is shut down")
            kc = km.client()
            worker.kc = kc
            # liveness is the process's (no heartbeat thread); no stdin: calls are unattended
            kc.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)
            await kc.wait_for_ready(timeout=self.start_timeout)
        except BaseException as e:
            worker.km = km  # a concurrent shutdown may have taken it before the kernel existed
            cancelled = asyncio.current_task().cancelling() > 0
            failed = isinstance(e, Exception) and not isinstance(e, MarketError)
            tail = await asyncio.to_thread(_tail, kernel_log) if failed else ""
            await self._stop_worker(worker)
            if worker.closed and not cancelled:  # the shutdown closed the channels under it
                raise PredictUnavailable("the prediction pool is shut down") from None
            if not failed:
                raise
            raise PredictUnavailable(f"the kernel {kernel_name!r} did not start: "
                                     f"{_first_line(e)}" + (f" ({tail})" if tail else "")) from e
        log.info("predict worker of %s: kernel %s ready in %.2f s", worker.version_key,
                 worker.pid, time.monotonic() - t0)

    async def _stop_worker(self, worker: _Worker, *, final: bool = False) -> None:
        """Kill the worker's kernel and every process it started, remove its directory.
        ``final``: the worker is leaving the pool (a waiting call then reports the shutdown).
        The stop itself is not cancellable: a cancelled caller (the reaper at shutdown) would
        leave a kernel behind; :meth:`shutdown` waits for every stop in progress."""
        if final:
            worker.closed = True
        km, kc, directory, known = worker.km, worker.kc, worker.directory, dict(worker.known)
        worker.km = worker.kc = worker.pid = None
        worker.known = {}
        if km is None and kc is None and directory is None:
            return
        task = asyncio.ensure_future(self._kill(km, kc, directory, known))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
        await asyncio.shield(task)

    async def _kill(self, km, kc, directory: Path | None, known: dict[int, int | None]) -> None:
        if kc is not None:
            with contextlib.suppress(Exception):
                kc.stop_channels()
        if directory is not None:
            # first, so nothing the kernel started can fork past the kill
            await asyncio.to_thread(_sweep, directory, known)
        if km is not None:
            try:
                # reaps the process, closes the manager's sockets and files; bounded because
                # jupyter_client waits for a start that never finished without a timeout
                await asyncio.wait_for(km.shutdown_kernel(now=True), 10)
            except Exception as e:  # the processes are gone already; this is housekeeping
                log.debug("shutting down a predict kernel manager: %r", e)
                process = getattr(km.provisioner, "process", None)
                if process is not None:
                    process.poll()  # reap it (the sweep killed it)

    # --- one call

    async def _call(self, worker: _Worker, rows_json: str) -> list:
        directory, program = worker.directory, worker.program
        assert directory is not None and program is not None
        work = directory / "work"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.call_timeout
        await self._execute(worker, 0, prelude(work, rows_json), deadline)
        if program.entry_point is not None:
            await self._execute(worker, 0, entry_point_cell(work, program.entry_point),
                                deadline)
        else:
            for number, source in program.cells:
                await self._execute(worker, number, source, deadline)
                if number == program.inject_after:
                    await self._execute(worker, 0, rows_cell(program), deadline)
        if self.limits.disk_bytes:  # what the kernel keeps in work/ and /tmp between calls
            stored = await asyncio.to_thread(usage.disk_usage, (work, directory / "tmp"),
                                             self.limits.disk_bytes)
            over = usage.exceeded(usage.Usage(disk_bytes=stored), self.limits, "call")
            if over:
                await self._stop_worker(worker)
                raise PredictError(f"{over}; its kernel was stopped")
        return await asyncio.to_thread(read_predictions, work, self.max_output_bytes)

    async def _execute(self, worker: _Worker, number: int, code: str, deadline: float) -> None:
        """Execute ``code`` in the worker's kernel; raise on an error, a timeout, a death."""
        kc, km = worker.kc, worker.km
        if kc is None or km is None:
            raise PredictUnavailable("the worker was stopped during the call")
        loop = asyncio.get_running_loop()
        try:
            # silent: no execute_result, so a cell ending in a DataFrame is not rendered
            msg_id = kc.execute(code, silent=True, store_history=False, allow_stdin=False)
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    await self._stop_worker(worker)
                    raise PredictTimeout(f"the prediction took longer than {self.call_timeout:g} "
                                         "s; its kernel was stopped")
                try:
                    reply = await kc.get_shell_msg(timeout=min(left, _POLL))
                except Empty:
                    if not await km.is_alive():
                        raise _KernelDied from None
                    continue
                if reply.get("parent_header", {}).get("msg_id") == msg_id:
                    break
            await _drain_iopub(kc)
        except PredictTimeout:
            raise
        except asyncio.CancelledError:
            # stopping the channels cancels the pending read; only a cancel of this task itself
            # (the service's loop going down) is a real one
            if worker.kc is kc or asyncio.current_task().cancelling():
                raise
            raise PredictUnavailable("the worker was stopped during the call") from None
        except Exception as e:
            if worker.closed:
                raise PredictUnavailable("the prediction pool was shut down during the call") \
                    from None
            if not isinstance(e, _KernelDied):
                log.exception("predict worker of %s: talking to the kernel failed",
                              worker.version_key)
            where = f" in code cell {number}" if number else ""
            await self._stop_worker(worker)
            raise PredictError(f"the kernel died{where}; it is restarted on the next call") \
                from None
        content = reply.get("content", {})
        status = content.get("status")
        if status == "ok":
            return
        ename = str(content.get("ename") or "Error")
        evalue = _scrub(str(content.get("evalue") or ""),
                        directory=worker.directory / "work" if worker.directory else None)
        where = f" (code cell {number})" if number else ""
        if status == "error":
            text = f"{ename}: {evalue}" if evalue else ename
            # MemoryError, EAGAIN from fork, "File too large": the sandbox's rlimits
            text = usage.explain(text, None, self.limits, "call") or text
            raise PredictError(f"{text}{where}"[:_MAX_MESSAGE], ename=ename, evalue=evalue,
                               cell=number or None)
        raise PredictError(f"the kernel answered {status!r}{where}", cell=number or None)


class _KernelDied(Exception):
    pass


def _retrieve(task: asyncio.Future) -> None:
    # the caller of a shielded call may be gone; its exception is expected, not "unretrieved"
    if not task.cancelled():
        task.exception()


async def _drain_iopub(kc, limit: int = 10_000) -> None:
    # outputs are not returned; read them so they do not pile up in the socket
    for _ in range(limit):
        try:
            await kc.get_iopub_msg(timeout=0)
        except Empty:
            return


def _scrub(text: str, directory: Path | None) -> str:
    """The notebook's message without the worker's host path (the bundle is ``.``)."""
    if directory is not None:
        text = text.replace(str(directory) + os.sep, "").replace(str(directory), ".")
    return text


def _spec_manager(env: dict[str, str]):
    """Kernelspecs as the kernel's environment finds them (its JUPYTER_PATH names product
    environments' kernels), not the service's."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_core.paths import jupyter_path

    extra = [os.path.join(p, "kernels") for p in env.get("JUPYTER_PATH", "").split(os.pathsep)
             if p]
    return KernelSpecManager(kernel_dirs=[*extra, *jupyter_path("kernels")])


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


__all__ = [
    "InvalidRows", "PredictError", "PredictPool", "PredictTimeout", "PredictUnavailable",
    "WorkerInfo", "check_rows",
]
