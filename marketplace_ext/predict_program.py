"""What a remote call executes and returns: its errors, the posted rows, the program of a tool
version (its notebook's code cells with the rows injected, or a ``module:function`` entry
point) and the predictions read back. :mod:`marketplace_ext.predict` runs it in warm kernels.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat
import yaml

from .errors import InvalidField, MarketError
from .sandbox import files
from .sandbox.workspace import OUTPUT_DIR, inside

PREDICTIONS = f"{OUTPUT_DIR}/predictions.json"
ENTRY_POINT_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
# a line of the parameters cell that binds a name: ``name = ...`` or ``name: type = ...``
_PARAMETER_LINE = re.compile(r"^([A-Za-z_]\w*)\s*(?::[^=]*)?=(?!=)")


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


def encode_rows(rows: list[dict]) -> str:
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
class Program:
    """What a call executes: ``cells`` as (code cell number, source); the injected cell follows
    the cell numbered ``inject_after``. ``entry_point`` replaces the notebook when set."""

    cells: tuple[tuple[int, str], ...] = ()
    inject_after: int = 0
    set_output_dir: bool = False
    entry_point: str | None = None


def read_program(root: Path) -> Program:
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
        return Program(entry_point=entry_point)
    name = manifest.get("notebook") or "main.ipynb"
    path = inside(name, root) if isinstance(name, str) else None
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
    return Program(tuple(cells), inject_after, "output_dir" in declared)


def prelude(work: Path, rows_json: str) -> str:
    """The first cell of every call, run by the kernel itself (nothing in the sandbox's working
    directory is written by the service): back to the working directory (a cell may have
    changed it), an empty ``outputs/`` (a stale answer is never returned), the posted rows."""
    return f"""\
def __market_reset():
    import os, shutil
    os.chdir({str(work)!r})
    if os.path.islink({OUTPUT_DIR!r}) or os.path.isfile({OUTPUT_DIR!r}):
        os.unlink({OUTPUT_DIR!r})
    else:
        shutil.rmtree({OUTPUT_DIR!r}, ignore_errors=True)
    os.mkdir({OUTPUT_DIR!r})
__market_reset()
__market_rows = {rows_json!r}"""


def rows_cell(program: Program) -> str:
    code = "rows = __import__('json').loads(__market_rows)"
    if program.set_output_dir:
        code += f"\noutput_dir = {OUTPUT_DIR!r}"
    return code


def entry_point_cell(work: Path, entry_point: str) -> str:
    module, function = entry_point.split(":")
    return f"""\
def __market_predict():
    import importlib, json, pathlib, sys
    here = {str(work)!r}
    if here not in sys.path:
        sys.path.insert(0, here)
    rows = json.loads(__market_rows)
    result = getattr(importlib.import_module({module!r}), {function!r})(rows)

    def plain(value):
        if hasattr(value, "tolist"):
            return value.tolist()
        raise TypeError(f"{{type(value).__name__}} is not JSON serializable")

    pathlib.Path({PREDICTIONS!r}).write_text(json.dumps(result, default=plain))
__market_predict()"""


def read_predictions(work: Path, max_bytes: int) -> list:
    # the sandboxed kernel owns work/: no link is followed, only a regular file is read
    try:
        data = files.read_inside(work, PREDICTIONS, max_bytes)
    except FileNotFoundError:
        raise PredictError(f"the notebook wrote no {PREDICTIONS}") from None
    except files.UnsafeFile as e:
        raise PredictError(f"{PREDICTIONS} is not a regular file of the working directory "
                           f"({e})") from None
    except OSError as e:
        raise PredictError(f"{PREDICTIONS} is not a readable file ({e.strerror})") from None
    try:
        value = json.loads(data)
    except ValueError as e:
        raise PredictError(f"{PREDICTIONS} is not valid JSON: {e}") from None
    if not isinstance(value, list):
        raise PredictError(f"{PREDICTIONS} must hold a JSON array, not {_kind(value)}")
    return value
