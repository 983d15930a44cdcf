"""Grading workshop submissions through papermill in the sandbox.

Every submission is graded in two sandboxed papermill executions (the same sandbox, launcher
and notebook runner as product runs: :mod:`marketplace_ext.sandbox`,
:mod:`marketplace_ext.run_notebook`), never in the service's own process:

1. the trainee's notebook, as the trainee's unit's sandbox account, with the workshop's
   materials beside it and the exercise's parameters injected; it must write the declared
   files under ``outputs/`` (an exercise's answer, a competition's ``predictions.csv``). It
   sees no checker and no labels.
2. the grader, as the host's unit's sandbox account (``gds-run`` for an operator host), with
   what step 1 wrote under ``submission/``:

   - an exercise: the host's checker notebook (``submission_dir`` and the exercise's
     parameters injected) writes ``outputs/grade.json`` ``{"passed": bool, "feedback":
     str}``; a checker that raises fails the submission with its exception as the feedback
     (``assert answer == 42, "the sum is wrong"`` is a checker too);
   - a competition: :data:`SCORING_NOTEBOOK` scores ``submission/predictions.csv`` against the
     host's ``labels.csv`` on both splits and writes ``outputs/score.json``.

What comes back to the trainee is the status, pass/fail, the feedback (bounded) and the scores:
never a file of step 2, so the labels stay on the host's side of the platform.
:class:`Grader` runs these off the event loop, a few at once, and grades again at start-up
whatever a stopped service left ``grading``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from sqlalchemy import select

from ..blobs import BlobStore
from ..orm import Unit, utcnow, write_transaction
from ..sandbox import files
from ..sandbox.limits import Limits
from ..sandbox.procs import kill_run_processes
from ..sandbox.spec import launcher_argv
from ..sandbox.workspace import (
    CONTROL_DIR,
    Workspace,
    identity,
    kernel_paths,
    prepare_root,
    sandbox_env,
)
from .workshops_orm import Competition, Exercise, Submission, Workshop

log = logging.getLogger(__name__)

KERNEL = "grid-python"
MAX_OUTPUT_BYTES = 5 * 2**20
MAX_FEEDBACK = 2000
STEP_TIMEOUT = 300.0


@dataclass
class Executed:
    """What one sandboxed execution left: whether the notebook ran through, its error, and
    the declared output files it wrote (name -> bytes; a missing or unsafe one is absent)."""

    ok: bool
    error: str | None
    outputs: dict[str, bytes] = field(default_factory=dict)


def zip_files(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in sorted(entries.items()):
            zf.writestr(name, data)
    return buf.getvalue()


def unzip_files(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist() if not i.is_dir()}


def execute(root: Path, entries: dict[str, bytes], notebook: str, parameters: dict,
            unit: str | None, limits: Limits, outputs: list[str],
            timeout: float = STEP_TIMEOUT) -> Executed:
    """Run ``notebook`` (one of ``entries``) with papermill in a fresh sandbox at ``root``, as
    ``unit``'s sandbox account, no data platform; blocking (call it from a thread). Every
    process of it is gone and ``root`` removed when this returns."""
    space = Workspace(root, *identity(unit))
    pid = None
    try:
        space.create(zip_files(entries))
        (space.control / "job.json").write_text(json.dumps({
            "notebook": notebook, "output": f"{CONTROL_DIR}/output.ipynb", "html": "",
            "result": f"{CONTROL_DIR}/result.json", "kernel": KERNEL,
            "parameters": parameters, "context": {},
        }))
        space.seal()
        env = sandbox_env({}, root, space.control / "runtime")
        command = [sys.executable, "-P", "-m", "marketplace_ext.run_notebook",
                   str(space.control / "job.json")]
        space.spec(command, env, limits, kernel_paths(KERNEL, env)).write(space.spec_file)
        with open(space.log_file, "wb") as log_file:
            proc = subprocess.Popen(launcher_argv(space.spec_file), cwd=root, env=env,
                                    stdin=subprocess.DEVNULL, stdout=log_file,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        pid = proc.pid
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_run_processes(pid, root)
            proc.wait()
            return Executed(False, f"the notebook did not finish within {timeout:g} s")
        raw = files.try_read_inside(space.work, f"{CONTROL_DIR}/result.json", 2**20)
        try:
            result = json.loads(raw) if raw else {}
        except ValueError:
            result = {}
        if not isinstance(result, dict) or not result:
            return Executed(False, f"the notebook runner exited with status {proc.returncode}")
        found = {}
        for name in outputs:
            data = files.try_read_inside(space.work, f"outputs/{name}", MAX_OUTPUT_BYTES)
            if data is not None:
                found[name] = data
        return Executed(bool(result.get("ok")), result.get("error"), found)
    finally:
        kill_run_processes(pid, root)
        shutil.rmtree(root, ignore_errors=True)


# --- the built-in scoring notebook of competitions --------------------------------------------

SCORING_CODE = '''\
import csv, hashlib, hmac, json, math, os

def read(path, value):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and ("id" not in rows[0] or value not in rows[0]):
        raise ValueError(f"{os.path.basename(path)} needs the columns id and {value}")
    return {str(r["id"]).strip(): str(r[value]).strip() for r in rows}

truth = read("labels.csv", "label")
try:
    predicted = read("submission/predictions.csv", "prediction")
except FileNotFoundError:
    raise ValueError("the notebook wrote no outputs/predictions.csv") from None

def public(row_id):
    digest = hmac.new(split_key.encode(), row_id.encode(), hashlib.sha256).hexdigest()
    return int(digest[:8], 16) % 100 < public_percent

def score(ids):
    if not ids:
        return None
    if metric == "accuracy":
        return sum(predicted.get(i) == truth[i] for i in ids) / len(ids)
    errors = []
    for i in ids:
        try:
            errors.append(abs(float(predicted[i]) - float(truth[i])))
        except (KeyError, ValueError):
            errors.append(math.inf)
    return sum(errors) / len(errors)

ids = sorted(truth)
public_ids = [i for i in ids if public(i)]
private_ids = [i for i in ids if not public(i)]
missing = sum(i not in predicted for i in ids)
unknown = sum(i not in truth for i in predicted)
os.makedirs("outputs", exist_ok=True)
with open("outputs/score.json", "w") as f:
    json.dump({"public": score(public_ids), "private": score(private_ids),
               "predicted": len(predicted) - unknown, "missing": missing,
               "unknown": unknown}, f)
'''


def scoring_notebook() -> bytes:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('metric = "accuracy"\nsplit_key = ""\n'
                                       "public_percent = 50")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# Competition scoring (the platform's)"), params,
                nbformat.v4.new_code_cell(SCORING_CODE)]
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3 (grid)",
                                 "language": "python"}
    return nbformat.writes(nb).encode()


SCORING_NOTEBOOK = scoring_notebook()


def _bounded(text: object) -> str:
    text = str(text or "")
    return text if len(text) <= MAX_FEEDBACK else text[:MAX_FEEDBACK - 1] + "…"


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


@dataclass
class Verdict:
    status: str  # passed | failed | scored
    passed: bool | None
    feedback: str
    public_score: float | None = None
    private_score: float | None = None


# --- the grader --------------------------------------------------------------------------------


class Grader:
    """Grades submissions in ``max_workers`` threads, each grading one submission at a time in
    its own sandbox directories under ``work_root``."""

    def __init__(self, session_factory, blobs: BlobStore, work_root: Path,
                 limits: Limits | None = None, max_workers: int = 2,
                 step_timeout: float = STEP_TIMEOUT):
        self.session_factory = session_factory
        self.blobs = blobs
        self.work_root = Path(work_root).resolve()
        self.limits = limits or Limits()
        self.step_timeout = step_timeout
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="grader")

    def submit(self, submission_id: int) -> None:
        """Grade a committed submission in the background (safe from the event loop)."""
        self._pool.submit(self._safe_grade, submission_id)

    def recover(self) -> int:
        """Grade again what a stopped service left ``grading`` (after killing what its
        sandboxes left behind); returns how many. Call it once, before :meth:`submit`."""
        remove_stale(self.work_root)
        with self.session_factory() as s:
            pending = s.scalars(select(Submission.id).where(Submission.status == "grading")
                                .order_by(Submission.id)).all()
        for submission_id in pending:
            self.submit(submission_id)
        return len(pending)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _safe_grade(self, submission_id: int) -> None:
        try:
            self.grade(submission_id)
        except Exception:
            log.exception("grading submission %s failed", submission_id)
            self._record(submission_id, Verdict("failed", False, "the grader failed; ask the "
                                                "workshop's host"))

    def grade(self, submission_id: int) -> Verdict:
        """Grade one submission now (blocking) and record the verdict."""
        problem = prepare_root(self.work_root)
        if problem:
            raise RuntimeError(problem)
        with self.session_factory() as s:
            sub = s.get(Submission, submission_id)
            workshop = s.get(Workshop, sub.workshop_id)
            trainee_unit = s.get(Unit, sub.unit_id).slug
            host_unit = s.get(Unit, workshop.host_unit_id).slug if workshop.host_unit_id else None
            exercise = s.get(Exercise, sub.exercise_id) if sub.exercise_id else None
            competition = s.get(Competition, sub.competition_id) if sub.competition_id else None
            materials = unzip_files(self.blobs.get(workshop.materials_sha256))
            notebook = self.blobs.get(sub.notebook_sha256)
        entries = {**materials, "submission.ipynb": notebook}
        if exercise is not None:
            parameters = json.loads(exercise.parameters)
            outputs = json.loads(exercise.outputs)
        else:
            parameters, outputs = {}, ["predictions.csv"]
        first = execute(self.work_root / f"sub-{submission_id}-trainee", entries,
                        "submission.ipynb", parameters, trainee_unit, self.limits, outputs,
                        self.step_timeout)
        if not first.ok:
            verdict = Verdict("failed", False, _bounded(f"your notebook stopped: {first.error}"))
        elif exercise is not None:
            verdict = self._check(submission_id, exercise, first, host_unit, parameters)
        else:
            verdict = self._score(submission_id, competition, first, host_unit)
        self._record(submission_id, verdict)
        return verdict

    def _check(self, submission_id: int, exercise: Exercise, first: Executed,
               host_unit: str | None, parameters: dict) -> Verdict:
        entries = {"checker.ipynb": self.blobs.get(exercise.checker_sha256),
                   **{f"submission/{name}": data for name, data in first.outputs.items()}}
        done = execute(self.work_root / f"sub-{submission_id}-checker", entries,
                       "checker.ipynb", {**parameters, "submission_dir": "submission"},
                       host_unit, self.limits, ["grade.json"], self.step_timeout)
        if not done.ok:
            return Verdict("failed", False, _bounded(done.error or "the checker failed"))
        try:
            grade = json.loads(done.outputs["grade.json"])
            passed = grade["passed"]
            if not isinstance(passed, bool):
                raise TypeError("passed must be true or false")
        except (KeyError, ValueError, TypeError) as e:
            return Verdict("failed", False, _bounded(
                f"the checker wrote no valid outputs/grade.json ({e}); ask the host"))
        return Verdict("passed" if passed else "failed", passed,
                       _bounded(grade.get("feedback", "")))

    def _score(self, submission_id: int, competition: Competition, first: Executed,
               host_unit: str | None) -> Verdict:
        entries = {"score.ipynb": SCORING_NOTEBOOK,
                   "labels.csv": self.blobs.get(competition.labels_sha256),
                   **{f"submission/{name}": data for name, data in first.outputs.items()}}
        done = execute(self.work_root / f"sub-{submission_id}-score", entries, "score.ipynb",
                       {"metric": competition.metric, "split_key": competition.split_key,
                        "public_percent": competition.public_percent},
                       host_unit, self.limits, ["score.json"], self.step_timeout)
        if not done.ok:
            # the scoring notebook's own messages never quote a label
            return Verdict("failed", False, _bounded(f"not scored: {done.error}"))
        try:
            score = json.loads(done.outputs["score.json"])
        except (KeyError, ValueError):
            return Verdict("failed", False, "not scored: the scorer wrote no score")
        public, private = _finite(score.get("public")), _finite(score.get("private"))
        feedback = (f"{score.get('predicted', 0)} predictions scored; "
                    f"{score.get('missing', 0)} ids missing, {score.get('unknown', 0)} unknown")
        return Verdict("scored", None, feedback, public, private)

    def _record(self, submission_id: int, verdict: Verdict) -> None:
        with self.session_factory() as s:
            write_transaction(s)
            sub = s.get(Submission, submission_id)
            if sub is None or sub.status != "grading":
                s.rollback()
                return
            sub.status, sub.passed, sub.feedback = verdict.status, verdict.passed, verdict.feedback
            sub.public_score, sub.private_score = verdict.public_score, verdict.private_score
            sub.graded_at = utcnow()
            s.commit()


def remove_stale(work_root: Path) -> None:
    """Directories a crashed service left under ``work_root`` (their processes killed)."""
    for path in Path(work_root).glob("sub-*"):
        with contextlib.suppress(OSError):
            kill_run_processes(None, path)
            shutil.rmtree(path, ignore_errors=True)
    os.makedirs(work_root, exist_ok=True)
