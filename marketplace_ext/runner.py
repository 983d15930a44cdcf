"""The compute layer: a run queue persisted in the ``runs`` table and a bounded pool of papermill
executions that never blocks the service's event loop.

A run goes ``queued`` → ``running`` → ``succeeded`` | ``failed`` | ``cancelled``. The HTTP layer
validates parameters (:func:`validate_parameters`), queues a run in its own transaction
(:func:`queue_run`), commits and calls :meth:`Runner.kick`; the :class:`Runner` claims queued
runs oldest first, at most ``max_workers`` at once, and executes each one:

1. a fresh working directory ``<work_root>/run-<id>/`` holding the unpacked bundle, an empty
   ``outputs/``, for an uploaded file ``inputs/<data_name>``, and ``.market-run/`` (the runner's
   own files: job description, executed notebook, HTML, log, the kernel's connection file);
2. ``python -P -m marketplace_ext.run_notebook`` in a session of its own, cwd = the working
   directory, which runs papermill with the version's kernel and renders the HTML;
3. while it runs: progress (code cells done / code cells in all) read from the executed notebook
   papermill saves after every cell, the run's timeout, and cancellation;
4. at the end: the executed notebook (kept for failures too: papermill's error cell is in it)
   and its HTML go to the blob store, on success the declared outputs become artifacts, and the
   final status is recorded together with ``on_finished`` (refunds, certification) in one write
   transaction. Then every process of the run is killed and the working directory removed.

Parameter conventions (what a notebook may declare in its ``parameters`` cell):

- the user's parameters: validated against papermill's inspection of the notebook, names and
  inferred types, before the run is queued; missing ones keep the notebook's defaults;
- context parameters, injected only when the notebook declares them, and reserved (a user can
  not set them): ``run_id`` (int), ``unit`` (the caller's unit slug, "" without one),
  ``output_dir`` (``"outputs"``, relative to the working directory: declared outputs are
  written there), ``input_path`` (for an uploaded file: the absolute path of
  ``inputs/<data_name>``; ``""`` for a run on the platform). A notebook that does not declare
  ``input_path`` still finds an upload under ``inputs/``;
- the data side travels in the kernel's environment: ``env_for`` (e.g. ``SPARK_REMOTE`` of the
  caller's unit) is merged over the service's environment, from which the service's own secrets
  (``JUPYTERHUB_*``, ``MARKET_*``, ``CONFIGPROXY_*`` and names containing TOKEN, SECRET or
  PASSWORD) are removed first: a product notebook is another unit's code.

Killing: every process of a run carries ``GRID_MARKET_RUN=<working directory>`` in its
environment. The kernel runs in a session of its own (jupyter_client starts it so), so neither a
process-group kill nor the tree under the runner process is enough once the runner process has
died; :func:`kill_run_processes` stops (SIGSTOP) the tree under the runner process, everything
carrying the marker and the pids seen earlier, until no new one appears, then SIGKILLs them all
and waits until they are gone. The same sweep runs after every run, whatever its end, and at
start-up for runs a crashed service left ``running`` (those are failed with "service
restarted"). Recovery assumes one runner per database and work root (the embedded default);
several hosts would need a lease per run.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from sqlalchemy import select
from sqlalchemy.orm import Session

from .blobs import SHA256_RE, BlobStore
from .envs import without_secrets
from .errors import Conflict, InvalidField, MarketError, NotFound
from .launcher import descendants, pid_alive
from .orm import Run, Unit, utcnow, write_transaction

log = logging.getLogger(__name__)

STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
DATA_KINDS: tuple[str, ...] = ("platform", "upload")
# set by the marketplace when the notebook declares them; never by the user
CONTEXT_PARAMETERS: tuple[str, ...] = ("run_id", "unit", "output_dir", "input_path")
OUTPUT_DIR = "outputs"
INPUT_DIR = "inputs"
CONTROL_DIR = ".market-run"
MARKER_ENV = "GRID_MARKET_RUN"
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600
RENDER_TIMEOUT = 120.0

BundleFor = Callable[[Session, Run], tuple[bytes, str, list[str]]]
EnvFor = Callable[[Session, Run], dict[str, str]]
OnFinished = Callable[[Session, Run], None]


# --- parameters --------------------------------------------------------------------------------

_BASE_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "list": (list,),
    "dict": (dict,),
}
_TYPING_ALIASES = {"List": "list", "Dict": "dict", "Str": "str"}


def _split_top(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def _describe_value(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _type_problem(declared: str, value: object) -> str | None:
    """Why ``value`` (from JSON) does not fit papermill's ``inferred_type_name``, or None.
    Unknown type names accept anything: the bundle's validation refused them at publication."""
    declared = declared.strip()
    if declared in ("", "None", "Any", "typing.Any", "object"):
        return None  # no annotation: papermill could not infer a type
    union = _split_top(declared, "|")
    if len(union) == 1 and declared.startswith("Optional[") and declared.endswith("]"):
        union = [declared[len("Optional["):-1], "None"]
    if len(union) > 1:
        if any((value is None) if part == "None" else _type_problem(part, value) is None
               for part in union):
            return None
        return f"is {_describe_value(value)}, not {declared}"
    base, _, args = declared.partition("[")
    base = _TYPING_ALIASES.get(base.strip(), base.strip())
    expected = _BASE_TYPES.get(base)
    if expected is None:
        return None
    if not isinstance(value, expected) or (isinstance(value, bool) and base != "bool"):
        return f"is {_describe_value(value)}, not {declared}"
    if args.endswith("]"):
        inner = _split_top(args[:-1], ",")
        if base == "list" and len(inner) == 1:
            for i, item in enumerate(value):  # type: ignore[arg-type]
                why = _type_problem(inner[0], item)
                if why:
                    return f"item {i} {why}"
        if base == "dict" and len(inner) == 2:
            for key, item in value.items():  # type: ignore[union-attr]
                why = _type_problem(inner[1], item)
                if why:
                    return f"value of {key!r} {why}"
    return None


def validate_parameters(spec: dict, given: object) -> dict:
    """Check ``given`` (a run request's parameters, decoded JSON) against ``spec``, a version's
    papermill inspection ``{name: {"name", "inferred_type_name", "default", "help"}}``.

    Returns the given parameters (a new dict; parameters not given keep the notebook's
    defaults and are not included). Raises :class:`InvalidField` with ``field =
    "parameters.<name>"`` for an unknown name, a reserved context name or a value of the wrong
    type (``int`` takes integers but not booleans, ``float`` integers or numbers, ``list[str]``
    checks its items), and ``field = "parameters"`` when ``given`` is not an object.
    """
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise InvalidField(f"parameters must be a JSON object of name: value, not "
                           f"{_describe_value(given)}", "parameters")
    out: dict = {}
    for name, value in given.items():
        fld = f"parameters.{name}"
        if not isinstance(name, str):
            raise InvalidField("parameter names must be strings", "parameters")
        if name not in spec:
            known = ", ".join(sorted(spec)) or "none"
            raise InvalidField(f"unknown parameter {name!r}; this version takes: {known}", fld)
        if name in CONTEXT_PARAMETERS:
            raise InvalidField(f"parameter {name!r} is set by the marketplace, not by the caller",
                               fld)
        declared = str(spec[name].get("inferred_type_name") or "None")
        if value is None and str(spec[name].get("default", "")).strip() == "None":
            out[name] = None
            continue
        why = _type_problem(declared, value)
        if why:
            raise InvalidField(f"parameter {name!r} must be {declared}: it {why}", fld)
        out[name] = value
    return out


# --- queueing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRequest:
    """What a caller asks to run. ``parameters`` should come from :func:`validate_parameters`;
    an uploaded file is a blob (``data_sha256``) with the name it gets under ``inputs/``."""

    product_id: int
    version_id: int
    unit_id: int | None
    user: str
    mode: str
    parameters: dict
    timeout_seconds: int
    entitlement_id: int | None = None
    data_kind: str = "platform"
    data_sha256: str | None = None
    data_name: str | None = None


def _file_name_problem(name: object) -> str | None:
    if not isinstance(name, str) or not name:
        return "must be a non-empty file name"
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        return "must be a plain file name (no directories, not starting with '.')"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "must not contain control characters"
    if len(name.encode()) > 255:
        return "is longer than 255 bytes"
    return None


def queue_run(session: Session, request: RunRequest) -> Run:
    """Insert ``request`` as a ``queued`` run in the caller's transaction (nothing is
    committed); the caller commits and then calls :meth:`Runner.kick`."""
    if request.data_kind not in DATA_KINDS:
        raise InvalidField(f"data must be one of {', '.join(DATA_KINDS)}", "data")
    if request.data_kind == "upload":
        if not isinstance(request.data_sha256, str) or not SHA256_RE.match(request.data_sha256):
            raise InvalidField("an uploaded file needs its sha256", "data.sha256")
        why = _file_name_problem(request.data_name)
        if why:
            raise InvalidField(f"the uploaded file's name {why}", "data.name")
    elif request.data_sha256 is not None or request.data_name is not None:
        raise InvalidField("only an upload carries a file", "data")
    if (not isinstance(request.timeout_seconds, int) or isinstance(request.timeout_seconds, bool)
            or not 1 <= request.timeout_seconds <= MAX_TIMEOUT_SECONDS):
        raise InvalidField(f"timeout_seconds must be an integer from 1 to {MAX_TIMEOUT_SECONDS}",
                           "timeout_seconds")
    if not isinstance(request.parameters, dict):
        raise InvalidField("parameters must be a JSON object", "parameters")
    try:
        parameters = json.dumps(request.parameters, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidField(f"parameters must be JSON values: {e}", "parameters") from e
    run = Run(
        product_id=request.product_id, version_id=request.version_id, unit_id=request.unit_id,
        user=request.user, mode=request.mode, entitlement_id=request.entitlement_id,
        status="queued", parameters=parameters, data_kind=request.data_kind,
        data_sha256=request.data_sha256, data_name=request.data_name,
        timeout_seconds=request.timeout_seconds, cancel_requested=False, cells_done=0,
        cells_total=0, artifacts="{}",
    )
    session.add(run)
    session.flush()
    return run


# --- processes ---------------------------------------------------------------------------------


def _start_time(pid: int) -> int | None:
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
    """Kill every process of the run in ``workdir``: the tree under ``root`` (the runner
    process), anything carrying the run's marker, and the ``known`` pids (pid → start time seen
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
            if pid_alive(pid) and _start_time(pid) == started:
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


def _kernel_env(extra: dict[str, str], workdir: Path) -> dict[str, str]:
    # the service's secrets stay out of a product kernel's environment (env_for may add back
    # what a product really needs)
    env = without_secrets(dict(os.environ))
    env.update({str(k): str(v) for k, v in extra.items()})
    env[MARKER_ENV] = str(workdir)
    # the kernel's connection file lives and dies with the run
    env["JUPYTER_RUNTIME_DIR"] = str(workdir / CONTROL_DIR / "runtime")
    return env


# --- files -------------------------------------------------------------------------------------


def _unpack_bundle(data: bytes, dest: Path) -> None:
    """Unpack a canonical bundle archive into ``dest``: trusted (it passed validation at
    publication) but still refused if a member would land outside ``dest`` or is a link."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            name = info.filename
            parts = PurePosixPath(name).parts
            if (not parts or name.startswith("/") or "\\" in name or ".." in parts
                    or re.match(r"^[A-Za-z]:", name) or "\x00" in name):
                raise ValueError(f"bundle member {name!r} would leave the working directory")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ValueError(f"bundle member {name!r} is a symbolic link")
            target = dest.joinpath(*parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as out, zf.open(info) as src:
                shutil.copyfileobj(src, out, 2**16)


def _inside(path: str, root: Path) -> Path | None:
    """``root/path`` if ``path`` is relative and stays inside ``root`` (links resolved)."""
    p = PurePosixPath(path)
    if not path or p.is_absolute() or ".." in p.parts or "\\" in path:
        return None
    full = root.joinpath(*p.parts)
    try:
        full.resolve().relative_to(root.resolve())
    except ValueError:
        return None
    return full


def notebook_progress(path: Path) -> tuple[int, int] | None:
    """(code cells executed, code cells in all) of papermill's output notebook, or None while
    it is absent or half written."""
    try:
        nb = json.loads(path.read_bytes())
        cells = [c for c in nb["cells"] if c.get("cell_type") == "code"]
        done = sum(1 for c in cells
                   if c.get("metadata", {}).get("papermill", {}).get("status")
                   in ("completed", "failed"))
        return done, len(cells)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


# --- the runner --------------------------------------------------------------------------------


@dataclass
class _Job:
    run_id: int
    workdir: Path
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    abort: str | None = None  # "cancelled" | "service stopped"
    pid: int | None = None
    known: dict[int, int | None] = field(default_factory=dict)  # pid -> start time
    progress: tuple[int, int] | None = None
    nb_signature: tuple[int, int] | None = None
    task: asyncio.Task | None = None


@dataclass
class _Prepared:
    outputs: list[str]
    env: dict[str, str]
    timeout: int


class Runner:
    """Executes queued runs, at most ``max_workers`` at once, each papermill in a subprocess.

    ``bundle_for(session, run)`` returns (the version's canonical bundle zip, the notebook's
    path inside it, the declared output paths); ``env_for(session, run)`` the extra kernel
    environment (``SPARK_REMOTE``...); ``on_finished(session, run)`` is called exactly once per
    run that reaches succeeded, failed or cancelled, inside the write transaction that records
    it (it must not commit). ``kernel_for(session, run)``, optional, names the kernelspec of a
    run (a product's own environment) instead of ``kernel_name`` when it returns one. All are
    called in a worker thread, never on the event loop.
    """

    def __init__(self, session_factory, blobs: BlobStore, work_root: Path, *,
                 max_workers: int = 2, bundle_for: BundleFor, env_for: EnvFor,
                 on_finished: OnFinished | None = None, kernel_name: str = "grid-python",
                 poll_interval: float = 0.5, max_artifact_bytes: int = 50 * 2**20,
                 kernel_for: Callable[[Session, Run], str | None] | None = None):
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
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
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._main: asyncio.Task | None = None
        self._jobs: dict[int, _Job] = {}
        self._done: dict[int, asyncio.Event] = {}
        self._stopping = False
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
        self.work_root.mkdir(parents=True, exist_ok=True)
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
        while not self._stopping:
            self._wake.clear()
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
            run = s.scalars(select(Run).where(Run.status == "queued").order_by(Run.id)
                            .limit(1).with_for_update(skip_locked=True)).first()
            if run is None:
                s.rollback()
                return None
            run.status, run.started_at = "running", utcnow()
            run.cells_done = run.cells_total = 0
            s.commit()
            return run.id

    def _recover(self) -> None:
        with self.session_factory() as s:
            stale = s.scalars(select(Run.id).where(Run.status == "running")).all()
        for run_id in stale:
            workdir = self._workdir(run_id)
            kill_run_processes(None, workdir)
            if self._record(run_id, "failed", "service restarted", {}):
                log.warning("run %s was left running by a previous service: failed", run_id)
            shutil.rmtree(workdir, ignore_errors=True)

    # --- one run

    async def _execute(self, job: _Job) -> None:
        proc: asyncio.subprocess.Process | None = None
        ctl = job.workdir / CONTROL_DIR
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
            log_file = open(ctl / "runner.log", "wb")  # noqa: SIM115 - the child keeps its copy
            try:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-P", "-m", "marketplace_ext.run_notebook",
                    str(ctl / "job.json"), cwd=job.workdir, env=prep.env,
                    stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                    start_new_session=True)
            finally:
                log_file.close()
            job.pid = proc.pid
            job.known[proc.pid] = _start_time(proc.pid)
            reason = await self._watch(job, proc, start + prep.timeout, prep.timeout)
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

    async def _watch(self, job: _Job, proc, deadline: float, timeout: int) -> str | None:
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
                if await self._call(self._poll, job):
                    return "cancelled"
        finally:
            if not exited.done():
                exited.cancel()

    def _poll(self, job: _Job) -> bool:
        """Record the process tree and progress; True if a cancel was requested (perhaps by
        another service process)."""
        if job.pid is not None:
            new = {pid: _start_time(pid) for pid in descendants(job.pid) if pid not in job.known}
            if new:  # replaced, not updated: process_ids() reads it from the loop's thread
                job.known = {**job.known, **new}
        nb = job.workdir / CONTROL_DIR / "output.ipynb"
        progress = None
        try:
            st = nb.stat()
            signature = (st.st_mtime_ns, st.st_size)
            if signature != job.nb_signature:
                progress = notebook_progress(nb)
                if progress is not None:
                    job.nb_signature = signature
        except OSError:
            pass
        with self.session_factory() as s:
            if progress is not None and progress != job.progress:
                write_transaction(s)
                run = s.get(Run, job.run_id)
                run.cells_done, run.cells_total = progress
                cancel = run.cancel_requested
                s.commit()
                job.progress = progress
                return cancel
            return bool(s.scalar(select(Run.cancel_requested).where(Run.id == job.run_id)))

    def _prepare(self, job: _Job) -> _Prepared:
        with self.session_factory() as s:
            run = s.get(Run, job.run_id)
            bundle, notebook, outputs = self.bundle_for(s, run)
            extra_env = dict(self.env_for(s, run) or {})
            kernel = (self.kernel_for(s, run) if self.kernel_for else None) or self.kernel_name
            unit = s.get(Unit, run.unit_id) if run.unit_id is not None else None
            parameters = json.loads(run.parameters or "{}")
            data = (run.data_sha256, run.data_name) if run.data_kind == "upload" else None
            timeout = run.timeout_seconds
        workdir = job.workdir
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        _unpack_bundle(bundle, workdir)
        if _inside(notebook, workdir) is None or not (workdir / notebook).is_file():
            raise ValueError(f"the bundle has no notebook {notebook!r}")
        (workdir / OUTPUT_DIR).mkdir(exist_ok=True)
        ctl = workdir / CONTROL_DIR
        (ctl / "runtime").mkdir(parents=True)
        context = {"run_id": job.run_id, "unit": unit.slug if unit else "",
                   "output_dir": OUTPUT_DIR, "input_path": ""}
        if data is not None:
            sha, name = data
            source = self.blobs.path(sha)
            if not source.is_file():
                raise NotFound(f"the uploaded file {name!r} is missing from the store", "data")
            target = workdir / INPUT_DIR / Path(name).name
            target.parent.mkdir(exist_ok=True)
            shutil.copyfile(source, target)
            context["input_path"] = str(target)
        (ctl / "job.json").write_text(json.dumps({
            "notebook": notebook, "output": f"{CONTROL_DIR}/output.ipynb",
            "html": f"{CONTROL_DIR}/output.html", "result": f"{CONTROL_DIR}/result.json",
            "kernel": kernel, "parameters": parameters, "context": context,
        }))
        return _Prepared(list(outputs), _kernel_env(extra_env, workdir), timeout)

    async def _render(self, job: _Job, env: dict[str, str]) -> None:
        """HTML of a killed run's partial notebook, in a subprocess (nbconvert is slow)."""
        ctl = job.workdir / CONTROL_DIR
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-P", "-m", "marketplace_ext.run_notebook", "--render",
            str(ctl / "output.ipynb"), str(ctl / "output.html"), cwd=ctl, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        try:
            await asyncio.wait_for(proc.wait(), RENDER_TIMEOUT)
        except TimeoutError:
            await self._call(kill_run_processes, proc.pid, job.workdir, {})
            await proc.wait()

    async def _conclude(self, job: _Job, prep: _Prepared, returncode: int | None,
                        reason: str | None) -> None:
        ctl = job.workdir / CONTROL_DIR
        # nothing of the run may outlive it, even a background process the notebook started
        if job.pid is not None:
            await self._call(kill_run_processes, job.pid, job.workdir, dict(job.known))
        if reason is None:
            result = await self._call(_read_json, ctl / "result.json")
            if result and result.get("ok"):
                status, error = "succeeded", None
            elif result and result.get("error"):
                status, error = "failed", result["error"]
            else:
                tail = await self._call(_tail, ctl / "runner.log")
                status = "failed"
                error = f"the notebook runner exited with status {returncode}" + (
                    f": {tail}" if tail else "")
        elif reason == "cancelled":
            status, error = "cancelled", "cancelled"
        else:
            status, error = "failed", reason
        if (not self._stopping and (ctl / "output.ipynb").exists()
                and not (ctl / "output.html").exists()):
            with contextlib.suppress(Exception):
                await self._render(job, prep.env)
        outputs = prep.outputs if status == "succeeded" else []
        await self._call(self._store, job, status, error, outputs)

    def _store(self, job: _Job, status: str, error: str | None, outputs: list[str]) -> None:
        ctl = job.workdir / CONTROL_DIR
        extra: dict = {}
        nb_path = ctl / "output.ipynb"
        progress = notebook_progress(nb_path)
        if progress is not None:  # a whole notebook (a killed run may leave half of one)
            extra["output_sha256"] = self.blobs.put(nb_path.read_bytes())
            done, total = progress
            extra["cells_done"], extra["cells_total"] = (total if status == "succeeded"
                                                         else done), total
            html = ctl / "output.html"
            if html.is_file():
                extra["html_sha256"] = self.blobs.put(html.read_bytes())
        artifacts: dict[str, str] = {}
        problems: list[str] = []
        for rel in outputs:
            full = _inside(rel, job.workdir)
            if full is None:
                problems.append(f"declared output {rel!r} is outside the working directory")
            elif not full.exists():
                problems.append(f"declared output {rel!r} was not produced")
            elif not full.is_file():
                problems.append(f"declared output {rel!r} is not a file")
            elif full.stat().st_size > self.max_artifact_bytes:
                problems.append(f"declared output {rel!r} is {full.stat().st_size} bytes; at "
                                f"most {self.max_artifact_bytes} are returned")
            else:
                artifacts[rel] = self.blobs.put(full.read_bytes())
        if problems:
            status, error, artifacts = "failed", "; ".join(problems), {}
        extra["artifacts"] = json.dumps(artifacts, sort_keys=True)
        self._record(job.run_id, status, error, extra)

    def _record(self, run_id: int, status: str, error: str | None, extra: dict) -> bool:
        """The final status, its details and ``on_finished``, in one write transaction. Retried
        a few times; if it still fails the run stays ``running`` and the next start fails it
        (with ``on_finished``), so a refund is never lost."""
        for attempt in range(3):
            try:
                with self.session_factory() as s:
                    write_transaction(s)
                    run = s.get(Run, run_id)
                    if run is None or run.status != "running":
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
            run = s.get(Run, run_id)
            if run is not None and run.status == "running":
                run.status, run.started_at = "queued", None
            s.commit()

    def _cleanup(self, job: _Job) -> None:
        kill_run_processes(job.pid, job.workdir, dict(job.known))
        shutil.rmtree(job.workdir, ignore_errors=True)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _tail(path: Path, lines: int = 5, limit: int = 2000) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""
    return " | ".join(text.splitlines()[-lines:])[-limit:]
