"""The remote-call sharing mode's engine: warm Jupyter kernels that answer ``predict`` calls.

``POST api/products/{p}/predict {"rows": [...]}`` runs a tool product's prediction notebook on
the posted rows and answers with its ``outputs/predictions.json``. Starting a kernel and
importing pandas costs seconds; the cells themselves usually take milliseconds. So
:class:`PredictPool` keeps one *worker* per tool version: the version's bundle unpacked into a
directory of its own and a kernel started there (cwd = the bundle, environment stripped of the
service's secrets like a run's), running nothing until the first call. Each call:

1. empties ``outputs/`` (a stale answer can never be returned) and writes the rows to
   ``.market-run/rows.json``;
2. executes the notebook's code cells one by one in the warm kernel, the ``parameters`` cell
   followed by an injected cell that sets ``rows`` (and ``output_dir = "outputs"`` when the
   notebook declares it, as a run would), like papermill's injected parameters. The other
   parameters keep their defaults: the parameters cell itself runs again on every call;
3. reads ``outputs/predictions.json``, which must hold a JSON array.

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
workers idle for ``idle_timeout`` seconds are stopped. Every process of a worker carries the
runner's marker (``GRID_MARKET_RUN=<worker directory>``) and is killed with
:func:`marketplace_ext.runner.kill_run_processes`. One pool per ``work_root``: on first use the
pool kills and removes whatever a previous service left there.

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
import re
import shutil
import stat
import subprocess
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty

import nbformat
import yaml

from .errors import InvalidField, MarketError
from .runner import (
    CONTROL_DIR,
    OUTPUT_DIR,
    _inside,
    _kernel_env,
    _start_time,
    _tail,
    _unpack_bundle,
    kill_run_processes,
    processes_of,
)

log = logging.getLogger(__name__)

PREDICTIONS = f"{OUTPUT_DIR}/predictions.json"
ROWS_FILE = f"{CONTROL_DIR}/rows.json"
ENTRY_POINT_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
# a line of the parameters cell that binds a name: ``name = ...`` or ``name: type = ...``
_PARAMETER_LINE = re.compile(r"^([A-Za-z_]\w*)\s*(?::[^=]*)?=(?!=)")
_MAX_MESSAGE = 2000
_POLL = 0.5  # seconds between liveness checks while a cell runs


# --- errors -------------------------------------------------------------------------------------


class InvalidRows(InvalidField, ValueError):
    """The posted rows are not a non-empty list of at most ``max_rows`` JSON objects."""

    def __init__(self, message: str):
        super().__init__(message, "rows")


class PredictError(MarketError):
    """The prediction failed: a cell raised (``ename``/``evalue`` hold the notebook's
    exception), the kernel died, or the notebook wrote no valid ``outputs/predictions.json``."""

    status = 422
    code = "predict_failed"
    blames_rows = True  # the rows are what the notebook failed on, so ``field`` is "rows"

    def __init__(self, message: str, *, ename: str | None = None, evalue: str | None = None,
                 cell: int | None = None):
        super().__init__(message, "rows" if self.blames_rows else None)
        self.ename, self.evalue, self.cell = ename, evalue, cell


class PredictTimeout(PredictError):
    """A call ran longer than ``call_timeout``; its kernel was killed."""

    status = 504
    code = "predict_timeout"
    blames_rows = False


class PredictUnavailable(PredictError):
    """No worker can serve the version: its kernel or bundle did not start, or the pool is shut
    down."""

    status = 503
    code = "predict_unavailable"
    blames_rows = False


# --- rows ---------------------------------------------------------------------------------------


def _kind(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "an object", type(None): "null"}.get(type(value),
                                                                       type(value).__name__)


def check_rows(rows: object, max_rows: int) -> None:
    """Raise :class:`InvalidRows` unless ``rows`` is a list of 1 to ``max_rows`` dicts with
    string keys (JSON-serializability is checked when the rows are encoded)."""
    if not isinstance(rows, list):
        raise InvalidRows(f"rows must be a list of JSON objects, not {_kind(rows)}")
    if not rows:
        raise InvalidRows("rows must hold at least one row")
    if len(rows) > max_rows:
        raise InvalidRows(f"at most {max_rows} rows per call; got {len(rows)}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InvalidRows(f"rows[{i}] must be a JSON object, not {_kind(row)}")
        if not all(isinstance(k, str) for k in row):
            raise InvalidRows(f"rows[{i}] has a key that is not a string")


def _encode_rows(rows: list[dict]) -> str:
    try:
        return json.dumps(rows, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:  # NaN, datetime, set... from a Python caller
        raise InvalidRows(f"rows must hold only JSON values: {e}") from e


# --- the worker's program -----------------------------------------------------------------------


def _declared(source: str) -> set[str]:
    """Names bound at the top level of a parameters cell (papermill's convention: one
    assignment per line)."""
    return {m.group(1) for line in source.splitlines() if (m := _PARAMETER_LINE.match(line))}


@dataclass(frozen=True)
class _Program:
    """What a call executes: ``cells`` as (code cell number, source); the injected cell follows
    the cell numbered ``inject_after``. ``entry_point`` replaces the notebook when set."""

    cells: tuple[tuple[int, str], ...] = ()
    inject_after: int = 0
    set_output_dir: bool = False
    entry_point: str | None = None


def _read_program(root: Path) -> _Program:
    """The call program of the bundle unpacked at ``root`` (blocking: run in a thread)."""
    try:
        manifest = yaml.safe_load((root / "product.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise PredictUnavailable(f"the bundle's product.yaml is unreadable: {e}") from e
    if not isinstance(manifest, dict):
        raise PredictUnavailable("the bundle's product.yaml is not a mapping")
    entry_point = manifest.get("predict")
    if entry_point is not None:
        if not isinstance(entry_point, str) or not ENTRY_POINT_RE.match(entry_point):
            raise PredictUnavailable(f"the manifest's predict entry point {entry_point!r} is not "
                                     "'module:function'")
        return _Program(entry_point=entry_point)
    name = manifest.get("notebook") or "main.ipynb"
    path = _inside(name, root) if isinstance(name, str) else None
    if path is None or not path.is_file():
        raise PredictUnavailable(f"the bundle has no notebook {name!r}")
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:  # nbformat raises several unrelated types for a broken file
        raise PredictUnavailable(f"the notebook {name!r} is unreadable: {e}") from e
    cells, inject_after, declared = [], 0, set()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cells.append((len(cells) + 1, cell.source))
        if not inject_after and "parameters" in cell.get("metadata", {}).get("tags", []):
            inject_after, declared = len(cells), _declared(cell.source)
    if not inject_after:
        raise PredictError(f"the notebook {name!r} has no code cell tagged 'parameters'")
    if "rows" not in declared:
        raise PredictError(f"the notebook {name!r} does not declare 'rows' in its parameters "
                           "cell; a remote call sets it to the posted rows")
    return _Program(tuple(cells), inject_after, "output_dir" in declared)


def _prelude(directory: Path) -> str:
    # a cell may have changed directory in an earlier call; relative paths mean the bundle
    return f"__import__('os').chdir({str(directory)!r})"


def _rows_cell(directory: Path, program: _Program) -> str:
    rows_path = str(directory / ROWS_FILE)
    code = (f"rows = __import__('json').loads(__import__('pathlib').Path({rows_path!r})"
            ".read_text(encoding='utf-8'))")
    if program.set_output_dir:
        code += f"\noutput_dir = {OUTPUT_DIR!r}"
    return code


def _entry_point_cell(directory: Path, entry_point: str) -> str:
    module, function = entry_point.split(":")
    return f"""\
def __market_predict():
    import importlib, json, pathlib, sys
    here = {str(directory)!r}
    if here not in sys.path:
        sys.path.insert(0, here)
    rows = json.loads(pathlib.Path({str(directory / ROWS_FILE)!r}).read_text(encoding="utf-8"))
    result = getattr(importlib.import_module({module!r}), {function!r})(rows)

    def plain(value):
        if hasattr(value, "tolist"):
            return value.tolist()
        raise TypeError(f"{{type(value).__name__}} is not JSON serializable")

    pathlib.Path({PREDICTIONS!r}).write_text(json.dumps(result, default=plain))
__market_predict()"""


# --- files --------------------------------------------------------------------------------------


def _prepare_call(directory: Path, rows_json: str) -> None:
    out = directory / OUTPUT_DIR
    if out.is_symlink() or out.is_file():
        out.unlink()
    else:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    (directory / ROWS_FILE).write_text(rows_json, encoding="utf-8")


def _read_predictions(directory: Path, max_bytes: int) -> list:
    path = _inside(PREDICTIONS, directory)  # refuses outputs/ linked out of the directory
    if path is None:
        raise PredictError(f"{OUTPUT_DIR}/ is not a directory of the bundle")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise PredictError(f"the notebook wrote no {PREDICTIONS}") from None
    except OSError as e:
        raise PredictError(f"{PREDICTIONS} is not a readable file ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise PredictError(f"{PREDICTIONS} is not a regular file")
        if st.st_size > max_bytes:
            raise PredictError(f"{PREDICTIONS} is {st.st_size} bytes; at most {max_bytes} are "
                               "returned")
        data = f.read(max_bytes + 1)
    try:
        value = json.loads(data)
    except ValueError as e:
        raise PredictError(f"{PREDICTIONS} is not valid JSON: {e}") from None
    if not isinstance(value, list):
        raise PredictError(f"{PREDICTIONS} must hold a JSON array, not {_kind(value)}")
    return value


def _sweep(directory: Path, known: dict[int, int | None]) -> None:
    """Kill every process of the worker in ``directory`` and remove the directory."""
    kill_run_processes(None, directory, known)
    shutil.rmtree(directory, ignore_errors=True)


def _recover(work_root: Path) -> None:
    """Kill and remove the workers a previous service left under ``work_root``."""
    work_root.mkdir(parents=True, exist_ok=True)
    for directory in work_root.glob("w-*"):
        if processes_of(directory):
            log.warning("killing predict worker processes left in %s", directory)
        _sweep(directory, {})


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
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # calls holding or waiting for the worker: never evicted while > 0
    last_used: float = field(default_factory=time.monotonic)
    calls: int = 0
    closed: bool = False
    directory: Path | None = None
    program: _Program | None = None
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
                 start_timeout: float = 60, max_output_bytes: int = 16 * 2**20):
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        if min(idle_timeout, call_timeout, start_timeout) <= 0 or max_rows < 1:
            raise ValueError("timeouts and max_rows must be positive")
        self.work_root = Path(work_root).resolve()
        self.kernel_name = kernel_name
        self.max_workers = max_workers
        self.idle_timeout = idle_timeout
        self.call_timeout = call_timeout
        self.max_rows = max_rows
        self.start_timeout = start_timeout
        self.max_output_bytes = max_output_bytes
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
                      kernel_name: str | None = None) -> list:
        """Run the version's prediction on ``rows`` in its warm worker and return the parsed
        ``outputs/predictions.json``.

        ``version_key`` identifies the version (its bundle digest); ``bundle_bytes_loader``
        returns its canonical bundle and is called, in a thread, only when a worker starts;
        ``env`` is merged over the service's environment stripped of its secrets, as for a run;
        ``kernel_name`` overrides the pool's kernelspec (a product's own environment).

        Raises :class:`InvalidRows` (bad rows; no kernel is touched), :class:`PredictError`
        (the notebook raised or wrote no valid predictions), :class:`PredictTimeout` and
        :class:`PredictUnavailable`.
        """
        if self._closed:
            raise PredictUnavailable("the prediction pool is shut down")
        if not isinstance(version_key, str) or not version_key:
            raise ValueError("version_key must be a non-empty string")
        check_rows(rows, self.max_rows)
        rows_json = await asyncio.to_thread(_encode_rows, rows)
        env = {str(k): str(v) for k, v in (env or {}).items()}
        await self._start()
        worker = await self._acquire((version_key, _fingerprint(env)), version_key, env)
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
        await asyncio.shield(self._started)

    async def _acquire(self, key: tuple[str, str], version_key: str,
                       env: dict[str, str]) -> _Worker:
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
                victim = None
                if len(self._workers) >= self.max_workers:
                    victim_key = next((k for k, w in self._workers.items() if w.users == 0), None)
                    if victim_key is None:
                        await self._changed.wait()
                        continue
                    victim = self._workers.pop(victim_key)
                worker = _Worker(version_key, env, users=1)
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

        def prepare() -> _Program:
            data = loader()
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            _unpack_bundle(data, directory)
            (directory / CONTROL_DIR / "runtime").mkdir(parents=True, exist_ok=True)
            return _read_program(directory)

        try:
            worker.program = await asyncio.to_thread(prepare)
        except Exception as e:
            if worker.closed:  # shut down while unpacking: the directory was removed under it
                raise PredictUnavailable("the prediction pool is shut down") from None
            if isinstance(e, MarketError):
                raise
            log.exception("predict worker of %s: the bundle could not be prepared",
                          worker.version_key)
            raise PredictUnavailable(f"the version's bundle could not be prepared: "
                                     f"{type(e).__name__}: {e}") from e
        env = _kernel_env(worker.env, directory)
        km = AsyncKernelManager(kernel_name=kernel_name,
                                connection_file=str(directory / CONTROL_DIR / "kernel.json"))
        worker.km = km
        kernel_log = directory / CONTROL_DIR / "kernel.log"
        t0 = time.monotonic()
        try:
            # the kernel's own output (and its children's) goes to the worker's log, not the
            # service's
            with open(kernel_log, "ab") as out:
                await asyncio.wait_for(km.start_kernel(cwd=str(directory), env=env, stdout=out,
                                                       stderr=subprocess.STDOUT),
                                       self.start_timeout)
            worker.pid = km.provisioner.pid
            worker.known = {worker.pid: _start_time(worker.pid)}
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
        await asyncio.to_thread(_prepare_call, directory, rows_json)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.call_timeout
        await self._execute(worker, 0, _prelude(directory), deadline)
        if program.entry_point is not None:
            await self._execute(worker, 0, _entry_point_cell(directory, program.entry_point),
                                deadline)
        else:
            for number, source in program.cells:
                await self._execute(worker, number, source, deadline)
                if number == program.inject_after:
                    await self._execute(worker, 0, _rows_cell(directory, program), deadline)
        return await asyncio.to_thread(_read_predictions, directory, self.max_output_bytes)

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
        evalue = _scrub(str(content.get("evalue") or ""), directory=worker.directory)
        where = f" (code cell {number})" if number else ""
        if status == "error":
            text = f"{ename}: {evalue}" if evalue else ename
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


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


__all__ = [
    "InvalidRows", "PredictError", "PredictPool", "PredictTimeout", "PredictUnavailable",
    "WorkerInfo", "check_rows",
]
