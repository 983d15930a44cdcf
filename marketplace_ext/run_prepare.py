"""Preparing a run: what it needs read from the database, then its sandbox workspace built.

The first step (:func:`load_inputs`) is a short read transaction; the second
(:func:`build_workspace`) is file work only: the bundle unpacked, an uploaded file copied in
under ``inputs/``, the job description papermill's runner reads, and the workspace sealed. Both
run in the runner's worker threads, never on the event loop.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from .blobs import BlobStore
from .errors import NotFound
from .orm import Run, Unit
from .sandbox.workspace import (
    CONTROL_DIR,
    INPUT_DIR,
    OUTPUT_DIR,
    Workspace,
    identity,
    inside,
    kernel_paths,
    sandbox_env,
)


@dataclass(frozen=True)
class RunInputs:
    """What a run needs from the database, read once."""

    bundle: bytes
    notebook: str
    outputs: list[str]
    extra_env: dict[str, str]
    kernel: str
    unit_slug: str | None
    parameters: dict
    upload: tuple[str, str] | None  # (sha256, name) of an uploaded file
    timeout: int


@dataclass
class Prepared:
    """A run ready to start: its sealed workspace, environment and limits."""

    outputs: list[str]
    env: dict[str, str]
    timeout: int
    space: Workspace
    read_only: list[str]
    platform_unit: str | None  # the unit whose data platform the run uses


def load_inputs(session: Session, run: Run, bundle_for: Callable, env_for: Callable,
                kernel_for: Callable | None, kernel_name: str) -> RunInputs:
    """Read what ``run`` needs (its bundle, environment, kernel, unit, parameters, upload)."""
    bundle, notebook, outputs = bundle_for(session, run)
    extra_env = dict(env_for(session, run) or {})
    kernel = (kernel_for(session, run) if kernel_for else None) or kernel_name
    unit = session.get(Unit, run.unit_id) if run.unit_id is not None else None
    upload = (run.data_sha256, run.data_name) if run.data_kind == "upload" else None
    return RunInputs(bundle, notebook, list(outputs), extra_env, kernel,
                     unit.slug if unit else None, json.loads(run.parameters or "{}"), upload,
                     run.timeout_seconds)


def build_workspace(run_id: int, workdir: Path, inputs: RunInputs,
                    blobs: BlobStore) -> Prepared:
    """Create and seal the run's workspace; a missing notebook or uploaded file is an error
    naming it."""
    slug = inputs.unit_slug
    space = Workspace(workdir, *identity(slug))
    space.create(inputs.bundle)
    notebook = inputs.notebook
    if inside(notebook, space.bundle) is None or not (space.bundle / notebook).is_file():
        raise ValueError(f"the bundle has no notebook {notebook!r}")
    context = {"run_id": run_id, "unit": slug or "", "output_dir": OUTPUT_DIR,
               "input_path": ""}
    if inputs.upload is not None:
        sha, name = inputs.upload
        source = blobs.path(sha)
        if not source.is_file():
            raise NotFound(f"the uploaded file {name!r} is missing from the store", "data")
        target = space.inputs / Path(name).name
        shutil.copyfile(source, target)
        target.chmod(0o644)
        context["input_path"] = str(space.work / INPUT_DIR / Path(name).name)
    (space.control / "job.json").write_text(json.dumps({
        "notebook": notebook, "output": f"{CONTROL_DIR}/output.ipynb",
        "html": f"{CONTROL_DIR}/output.html", "result": f"{CONTROL_DIR}/result.json",
        "kernel": inputs.kernel, "parameters": inputs.parameters, "context": context,
    }))
    space.seal()
    env = sandbox_env(inputs.extra_env, workdir, space.control / "runtime")
    # a run on an uploaded file does not need its platform: only a platform run fails with it
    on_platform = inputs.upload is None and "SPARK_REMOTE" in inputs.extra_env
    return Prepared(inputs.outputs, env, inputs.timeout, space,
                    kernel_paths(inputs.kernel, env), slug if on_platform else None)
