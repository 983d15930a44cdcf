"""Reading a finished run's results back from its sandbox's working directory.

The sandboxed code owned that directory: every read goes through :mod:`.sandbox.files` (no
link followed, regular files only, bounded sizes), so an output named ``outputs/x.pt`` that is
a link to ``var/marketplace_kek`` is refused rather than returned.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .blobs import BlobStore
from .sandbox import files
from .sandbox.workspace import CONTROL_DIR, inside

MAX_NOTEBOOK_BYTES = 256 * 2**20  # an executed notebook or its HTML


def notebook_progress(data: bytes | None) -> tuple[int, int] | None:
    """(code cells executed, code cells in all) of papermill's output notebook (its bytes), or
    None while it is absent or half written."""
    if data is None:
        return None
    try:
        nb = json.loads(data)
        cells = [c for c in nb["cells"] if c.get("cell_type") == "code"]
        done = sum(1 for c in cells
                   if c.get("metadata", {}).get("papermill", {}).get("status")
                   in ("completed", "failed"))
        return done, len(cells)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def read_progress(work: Path, seen: tuple[int, int] | None
                  ) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """The progress of the notebook papermill is writing in ``work/.market-run`` when it
    changed since ``seen`` (its mtime and size, returned for the next call), else None."""
    try:
        fd = files.open_inside(work, ".market-run/output.ipynb")
    except OSError:
        return None, seen
    with open(fd, "rb") as f:
        st = os.fstat(f.fileno())
        signature = (st.st_mtime_ns, st.st_size)
        if signature == seen or st.st_size > MAX_NOTEBOOK_BYTES:
            return None, seen
        progress = notebook_progress(f.read())
    return progress, (signature if progress is not None else seen)


def collect_outputs(blobs: BlobStore, work: Path, outputs: list[str],
                    max_bytes: int) -> tuple[dict[str, str], list[str]]:
    """The declared ``outputs`` (paths relative to ``work``) stored as blobs: ``{path:
    sha256}``, and the problems (missing, not a regular file, a link, too large)."""
    artifacts: dict[str, str] = {}
    problems: list[str] = []
    for rel in outputs:
        if inside(rel, work) is None:
            problems.append(f"declared output {rel!r} is outside the working directory")
            continue
        try:
            artifacts[rel] = blobs.put(files.read_inside(work, rel, max_bytes))
        except FileNotFoundError:
            problems.append(f"declared output {rel!r} was not produced")
        except files.UnsafeFile as e:
            size = size_of(work, rel)
            problems.append(
                f"declared output {rel!r} is {size} bytes; at most {max_bytes} are returned"
                if size is not None else f"declared output {rel!r} is not a file ({e})")
        except OSError as e:
            problems.append(f"declared output {rel!r} is not readable ({e.strerror})")
    return artifacts, problems


def json_object(raw: bytes | None) -> dict | None:
    try:
        value = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def exists_inside(root: Path, rel: str) -> bool:
    try:
        os.close(files.open_inside(root, rel))
    except OSError:
        return False
    return True


def size_of(root: Path, rel: str) -> int | None:
    """The size of a regular file that is too large to read; None for anything else."""
    try:
        return files.size_inside(root, rel)
    except OSError:
        return None


def tail(path: Path, lines: int = 5, limit: int = 2000) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""
    return " | ".join(text.splitlines()[-lines:])[-limit:]


def store_results(blobs: BlobStore, work: Path, status: str, error: str | None,
                  outputs: list[str], max_artifact_bytes: int) -> tuple[str, str | None, dict]:
    """Put a finished run's executed notebook, its HTML and (on success) its declared outputs
    in the blob store; returns the final (status, error, columns to record). A declared output
    that is missing, too big or not a regular file fails the run, naming it."""
    extra: dict = {}
    nb = files.try_read_inside(work, f"{CONTROL_DIR}/output.ipynb", MAX_NOTEBOOK_BYTES)
    progress = notebook_progress(nb)
    if progress is not None:  # a whole notebook (a killed run may leave half of one)
        extra["output_sha256"] = blobs.put(nb)
        done, total = progress
        extra["cells_done"], extra["cells_total"] = (total if status == "succeeded"
                                                     else done), total
        html = files.try_read_inside(work, f"{CONTROL_DIR}/output.html", MAX_NOTEBOOK_BYTES)
        if html is not None:
            extra["html_sha256"] = blobs.put(html)
    artifacts, problems = collect_outputs(blobs, work, outputs, max_artifact_bytes)
    if problems:
        status, error, artifacts = "failed", "; ".join(problems), {}
    extra["artifacts"] = json.dumps(artifacts, sort_keys=True)
    return status, error, extra
