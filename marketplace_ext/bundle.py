"""Reading and validating a product bundle: ``product.yaml`` + a parameterized notebook + files.

A bundle is a directory::

    product.yaml   the manifest (schemas/product.schema.json, plus the checks below)
    main.ipynb     the notebook, with one code cell tagged ``parameters`` (papermill convention)
    README.md      the product card
    files/         anything else the notebook needs

:func:`validate_dir` answers every problem at once, each with its file and field, so a publisher
fixes a bundle in one round. :func:`extract_upload` is the only way an uploaded archive reaches
the disk; :func:`canonical_archive` turns a directory back into the bytes whose sha256 identifies
a version.
"""

from __future__ import annotations

import ast
import copy
import difflib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import jsonschema
import nbformat
import yaml

from .errors import Conflict, InvalidField, MarketError, PayloadTooLarge

KINDS: tuple[str, ...] = ("data", "tool", "application")
PLAN_TYPES: tuple[str, ...] = ("per_use", "week", "month", "year")
SHARING_MODES: tuple[str, ...] = (
    "download", "interface", "remote_run", "remote_call", "model_to_data", "federated",
)
SHARING_BY_KIND: dict[str, tuple[str, ...]] = {
    "data": ("download", "interface", "model_to_data", "federated"),
    "tool": ("download", "remote_run", "remote_call"),
    "application": ("download", "remote_run"),
}
VIEW_RULES: tuple[str, ...] = ("drop", "hash", "generalize", "round", "noise", "keep")
# the parameters each rule takes, as marketplace_ext.platform applies them
RULE_PARAMS: dict[str, tuple[str, ...]] = {
    "drop": (), "hash": (), "keep": (), "generalize": ("to",), "round": ("digits",),
    "noise": ("scale",),
}
# What the run form can offer and papermill can inject: JSON-shaped Python literals.
PARAMETER_TYPES: tuple[str, ...] = ("str", "int", "float", "bool", "list", "dict")

MANIFEST = "product.yaml"
README = "README.md"
DEFAULT_NOTEBOOK = "main.ipynb"
DEFAULTS: dict = {
    "tags": [], "notebook": DEFAULT_NOTEBOOK, "inputs": [], "outputs": [], "requirements": None,
    "views": [], "predict": None, "further_training": None,
}
# Editor and OS droppings: never part of a bundle, never archived, never extracted.
IGNORED_NAMES = frozenset({".ipynb_checkpoints", "__pycache__", ".DS_Store", "__MACOSX", ".git"})
# A manifest is a page of YAML; anything bigger is a mistake or an attack on the parser.
MAX_MANIFEST_BYTES = 256 * 2**10
MAX_PATH_BYTES = 1024
MAX_NAME_BYTES = 255
# 1980-01-01 is the earliest time a zip header can hold.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_CHUNK = 2**16

SCHEMA_PATH = Path(__file__).parent / "schemas" / "product.schema.json"
TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "product_templates"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a bundle."""

    file: str  # bundle-relative path; "" for the bundle or uploaded archive as a whole
    field: str | None  # e.g. "plans[0].price", "kernel", "notebook.parameters"
    message: str

    def __str__(self) -> str:
        parts = (self.file or "bundle", self.field, self.message)
        return ": ".join(part for part in parts if part)


def _summary(problems: list[Problem]) -> str:
    if len(problems) == 1:
        return str(problems[0])
    return f"{len(problems)} bundle problems:\n" + "\n".join(f"- {p}" for p in problems)


class BundleInvalid(InvalidField):
    """The bundle breaks one or more rules; ``problems`` lists every one of them."""

    def __init__(self, problems: list[Problem]):
        if not problems:
            raise ValueError("BundleInvalid needs at least one problem")
        self.problems = list(problems)
        super().__init__(_summary(self.problems), self.problems[0].field or "bundle")

    def to_dict(self) -> dict:
        return {**super().to_dict(), "problems": [vars(p) for p in self.problems]}


class BundleTooLarge(PayloadTooLarge):
    """The upload, a member or the whole bundle exceeds a size or count limit."""

    def __init__(self, problems: list[Problem]):
        if not problems:
            raise ValueError("BundleTooLarge needs at least one problem")
        self.problems = list(problems)
        super().__init__(_summary(self.problems), self.problems[0].field or "bundle")

    def to_dict(self) -> dict:
        return {**super().to_dict(), "problems": [vars(p) for p in self.problems]}


@dataclass(frozen=True)
class BundleLimits:
    max_file_bytes: int = 50 * 2**20
    max_total_bytes: int = 200 * 2**20
    max_files: int = 500
    price_min: int = 10
    price_max: int = 50
    known_kernels: frozenset[str] = frozenset({"grid-python"})


@dataclass
class Bundle:
    """A validated bundle on disk."""

    root: Path
    manifest: dict  # product.yaml with DEFAULTS applied
    notebook: str  # bundle-relative path
    # papermill.inspect_notebook: name -> {name, inferred_type_name, default, help}
    parameters: dict
    readme: str
    files: list[str]  # sorted bundle-relative paths of every file


# --- the checks --------------------------------------------------------------------------------


@dataclass
class _Report:
    problems: list[Problem] = field(default_factory=list)
    too_large: bool = False  # a size/count limit was hit: 413 rather than 400
    manifest: dict | None = None
    notebook: str = DEFAULT_NOTEBOOK
    parameters: dict = field(default_factory=dict)
    readme: str = ""
    files: list[str] = field(default_factory=list)

    def add(self, file: str, field: str | None, message: str, too_large: bool = False) -> None:
        self.problems.append(Problem(file, field, message))
        self.too_large = self.too_large or too_large

    def error(self) -> MarketError:
        return (BundleTooLarge if self.too_large else BundleInvalid)(self.problems)


def _fmt_bytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} bytes" if unit == "bytes" else f"{n:.1f} {unit}".replace(".0 ", " ")
        n /= 1024
    raise AssertionError("unreachable")


def _name_problem(name: str) -> str | None:
    """Why a single file or directory name cannot live in a bundle, or None."""
    if "\\" in name:
        return "its name contains a backslash; use '/' between directories and no '\\' in names"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "its name contains control characters"
    if len(name.encode()) > MAX_NAME_BYTES:
        return f"its name is longer than {MAX_NAME_BYTES} bytes"
    return None


def _walk(root: Path, report: _Report) -> dict[str, int]:
    """Every regular file under ``root`` (bundle-relative posix path -> size), never following
    a link: a link could point outside the bundle, so any link is a problem, not a file."""
    found: dict[str, int] = {}
    stack = [(root, "")]
    while stack:
        directory, prefix = stack.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name in IGNORED_NAMES:
                    continue
                rel = prefix + entry.name
                why = _name_problem(entry.name)
                if why:
                    report.add(rel, None, why)
                    continue
                if entry.is_symlink():
                    report.add(rel, None, "is a symbolic link; bundles hold no links (copy the "
                               "file or directory in instead)")
                elif entry.is_dir(follow_symlinks=False):
                    stack.append((Path(entry.path), rel + "/"))
                elif entry.is_file(follow_symlinks=False):
                    found[rel] = entry.stat(follow_symlinks=False).st_size
                else:
                    report.add(rel, None, "is not a regular file (a device, socket or pipe)")
    return dict(sorted(found.items()))


def _check_files(root: Path, limits: BundleLimits, report: _Report) -> dict[str, int]:
    sizes = _walk(root, report)
    for rel, size in sizes.items():
        if len(rel.encode()) > MAX_PATH_BYTES:
            report.add(rel, None, f"its path is longer than {MAX_PATH_BYTES} bytes")
        if size > limits.max_file_bytes:
            report.add(rel, None, f"is {_fmt_bytes(size)}; a file may be at most "
                       f"{_fmt_bytes(limits.max_file_bytes)}", too_large=True)
    if len(sizes) > limits.max_files:
        report.add("", None, f"the bundle holds {len(sizes)} files; the limit is "
                   f"{limits.max_files}", too_large=True)
    total = sum(sizes.values())
    if total > limits.max_total_bytes:
        report.add("", None, f"the bundle's files add up to {_fmt_bytes(total)}; the limit is "
                   f"{_fmt_bytes(limits.max_total_bytes)}", too_large=True)
    report.files = list(sizes)
    return sizes


def _path_problem(value: str) -> str | None:
    """Why a path named in the manifest could leave (or not name anything in) the bundle."""
    if not value:
        return "is empty"
    if "\\" in value:
        return f"{value!r} contains a backslash; write paths with '/'"
    if value.startswith("/") or re.match(r"^[A-Za-z]:", value):
        return f"{value!r} is absolute; write it relative to the bundle root"
    if ".." in value.split("/"):
        return f"{value!r} leaves the bundle ('..'); name a file inside it"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return f"{value!r} contains control characters"
    if str(PurePosixPath(value)) == ".":
        return f"{value!r} names the bundle root, not a file"
    return None


def _norm(value: str) -> str:
    return str(PurePosixPath(value))


# --- product.yaml ------------------------------------------------------------------------------


class _ManifestLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases (a "billion laughs" manifest expands exponentially in
    every later walk of it) and duplicate keys (YAML silently keeps the last one)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in product.yaml", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"the key {key!r} appears twice", key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


_schema_validator: jsonschema.Draft202012Validator | None = None


def _validator() -> jsonschema.Draft202012Validator:
    global _schema_validator
    if _schema_validator is None:
        schema = json.loads(SCHEMA_PATH.read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        _schema_validator = jsonschema.Draft202012Validator(schema)
    return _schema_validator


def _field(path) -> str | None:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{json.dumps(str(part))}]"
    return out or None


def _describe(value) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a mapping", type(None): "nothing (null)"}
    return f"{kinds.get(type(value), type(value).__name__)} ({json.dumps(value, default=str)})"


_TYPE_WORDS = {"string": "a string", "integer": "a whole number", "number": "a number",
               "boolean": "true or false", "array": "a list", "object": "a mapping",
               "null": "null"}


def _schema_problems(manifest, report: _Report) -> None:
    reported: set[tuple] = set()
    for err in _validator().iter_errors(manifest):
        path = list(err.absolute_path)
        kw, schema, value = err.validator, err.schema, err.instance
        if kw == "required":
            for name in err.validator_value:
                key = (tuple(path), name)
                if isinstance(value, dict) and name not in value and key not in reported:
                    reported.add(key)
                    wanted = schema.get("properties", {}).get(name, {}).get("description")
                    report.add(MANIFEST, _field([*path, name]),
                               "missing" + (f"; expected {wanted}" if wanted else ""))
        elif kw == "additionalProperties" and isinstance(schema.get("additionalProperties"), bool):
            known = list(schema.get("properties", {}))
            for name in value:
                if name in known:
                    continue
                close = difflib.get_close_matches(str(name), known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                report.add(MANIFEST, _field([*path, name]),
                           f"unknown field{hint}; the known fields here are {', '.join(known)}")
        elif kw == "type":
            wanted = err.validator_value
            wanted = [wanted] if isinstance(wanted, str) else wanted
            hint = ""
            if "string" in wanted and type(value) in (int, float):
                # YAML reads 1.0 as a number; the fix is quotes (and, for a version, a patch part)
                hint = f"; quote it: \"{value}\""
                pattern = schema.get("pattern")
                if pattern and not re.search(pattern, str(value)):
                    hint += f", and write {schema.get('description', 'a valid value')}"
            words = " or ".join(_TYPE_WORDS[w] for w in wanted)
            report.add(MANIFEST, _field(path), f"expected {words}, got {_describe(value)}{hint}")
        elif kw == "enum" and isinstance(value, str) and value in RULE_PARAMS and set(
                err.validator_value) == {r for r, p in RULE_PARAMS.items() if not p}:
            # `column: round`: the shorthand is only for rules without parameters
            params = ", ".join(f"{k}: ..." for k in RULE_PARAMS[value])
            report.add(MANIFEST, _field(path), f"rule {value!r} takes parameters, so it needs "
                       f"the mapping form {{rule: {value}, {params}}}")
        elif kw == "enum":
            report.add(MANIFEST, _field(path), f"unknown value {value!r}; expected one of: "
                       f"{', '.join(map(str, err.validator_value))}")
        elif kw == "pattern":
            wanted = schema.get("description") or f"a value matching {err.validator_value}"
            report.add(MANIFEST, _field(path), f"{value!r} is not valid; expected {wanted}")
        elif kw == "uniqueItems":
            seen: list = []
            dups = []
            for item in value:
                (dups if item in seen else seen).append(item)
            report.add(MANIFEST, _field(path), "lists "
                       + ", ".join(repr(d) for d in dict.fromkeys(map(str, dups)))
                       + " more than once")
        elif kw in ("minItems", "minProperties"):
            n = err.validator_value
            wanted = schema.get("description")
            report.add(MANIFEST, _field(path), f"must hold at least {n} "
                       f"{'entry' if n == 1 else 'entries'}" + (f"; {wanted}" if wanted else ""))
        elif kw == "maxItems":
            report.add(MANIFEST, _field(path), f"holds {len(value)} entries; at most "
                       f"{err.validator_value} are allowed")
        elif kw == "minLength":
            report.add(MANIFEST, _field(path), "must not be empty")
        elif kw == "maxLength":
            report.add(MANIFEST, _field(path), f"is {len(value)} characters long; at most "
                       f"{err.validator_value} are allowed")
        else:
            report.add(MANIFEST, _field(path), err.message)


def _non_string_keys(value, path: list, report: _Report) -> None:
    # YAML happily makes keys of 1, true or 2024-01-01; the manifest must stay JSON.
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                report.add(MANIFEST, _field(path) or None,
                           f"the key {key!r} is not a string; quote it")
            else:
                _non_string_keys(item, [*path, key], report)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _non_string_keys(item, [*path, i], report)


def _read_manifest(root: Path, sizes: dict[str, int], report: _Report) -> dict | None:
    if MANIFEST not in sizes:
        report.add(MANIFEST, None, "missing; every bundle has a product.yaml at its root "
                   "(start from `market new`)")
        return None
    if sizes[MANIFEST] > MAX_MANIFEST_BYTES:
        report.add(MANIFEST, None, f"is {_fmt_bytes(sizes[MANIFEST])}; a manifest may be at "
                   f"most {_fmt_bytes(MAX_MANIFEST_BYTES)}")
        return None
    try:
        text = (root / MANIFEST).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        report.add(MANIFEST, None, f"is not UTF-8 text (byte {e.start})")
        return None
    try:
        data = yaml.load(text, Loader=_ManifestLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = " ".join(filter(None, (getattr(e, "context", None), getattr(e, "problem", None))))
        report.add(MANIFEST, None, f"is not valid YAML: {where}{what or e}")
        return None
    if not isinstance(data, dict):
        report.add(MANIFEST, None, f"must be a mapping of fields (name: ..., kind: ...), got "
                   f"{_describe(data)}")
        return None
    n = len(report.problems)
    _non_string_keys(data, [], report)
    if len(report.problems) > n:
        return None
    _schema_problems(data, report)
    return data


def _check_manifest(m: dict, sizes: dict[str, int], limits: BundleLimits,
                    report: _Report) -> None:
    """The rules JSON Schema cannot say: configuration-dependent and cross-field ones. Each
    check looks only at fields of the right shape; the schema has reported the others."""
    kernel = m.get("kernel")
    if isinstance(kernel, str) and kernel and kernel not in limits.known_kernels:
        report.add(MANIFEST, "kernel", f"unknown kernel {kernel!r}; this marketplace runs "
                   f"{', '.join(sorted(limits.known_kernels))}")

    plans = m.get("plans") if isinstance(m.get("plans"), list) else []
    first_of: dict[str, int] = {}
    for i, plan in enumerate(plans):
        if not isinstance(plan, dict):
            continue
        price, kind = plan.get("price"), plan.get("type")
        if isinstance(price, int) and not isinstance(price, bool):
            if price < limits.price_min:
                report.add(MANIFEST, f"plans[{i}].price", f"{price} is below the minimum price "
                           f"{limits.price_min}")
            elif price > limits.price_max:
                report.add(MANIFEST, f"plans[{i}].price", f"{price} is above the maximum price "
                           f"{limits.price_max}")
        if isinstance(kind, str) and kind in PLAN_TYPES:
            if kind in first_of:
                report.add(MANIFEST, f"plans[{i}].type", f"plan type {kind!r} is already priced "
                           f"in plans[{first_of[kind]}]; give each plan type one price")
            else:
                first_of[kind] = i

    kind = m.get("kind") if m.get("kind") in KINDS else None
    sharing = m.get("sharing") if isinstance(m.get("sharing"), list) else []
    if kind:
        allowed = SHARING_BY_KIND[kind]
        for i, mode in enumerate(sharing):
            if mode in SHARING_MODES and mode not in allowed:
                report.add(MANIFEST, f"sharing[{i}]", f"{mode!r} is not a sharing mode of "
                           f"{kind} products; a {kind} product may offer {', '.join(allowed)}")
        views = m.get("views")
        if kind == "data" and not views:
            report.add(MANIFEST, "views", "a data product must declare at least one "
                       "desensitized view ({view, source, columns}); subscribers see only views")
        elif kind != "data" and views:
            report.add(MANIFEST, "views", f"only data products declare views; this is a {kind} "
                       "product (remove views or make it kind: data)")

    for name, key in (("inputs", "table"), ("outputs", "path"), ("views", "view")):
        items = m.get(name) if isinstance(m.get(name), list) else []
        first: dict[str, int] = {}
        for i, item in enumerate(items):
            value = item.get(key) if isinstance(item, dict) else None
            if not isinstance(value, str):
                continue
            if key == "path":
                why = _path_problem(value)
                if why:
                    report.add(MANIFEST, f"{name}[{i}].{key}", why)
                    continue
                value = _norm(value)
                if value in sizes:
                    # typically left over from a trial run in the bundle directory, and a run's
                    # results may hold rows of the data it ran on
                    report.add(MANIFEST, f"{name}[{i}].{key}", f"{value!r} is a run's output but "
                               "is also in the bundle; delete it before publishing")
            if value in first:
                report.add(MANIFEST, f"{name}[{i}].{key}", f"{value!r} is already declared in "
                           f"{name}[{first[value]}]")
            else:
                first[value] = i

    if kind == "data":
        for i, view in enumerate(m.get("views") if isinstance(m.get("views"), list) else []):
            if isinstance(view, dict):
                _check_view(view, ["views", i], report)

    req = m.get("requirements")
    if isinstance(req, str) and req:
        why = _path_problem(req)
        if why:
            report.add(MANIFEST, "requirements", why)
        elif _norm(req) not in sizes:
            report.add(MANIFEST, "requirements", f"{req!r} is not a file in the bundle")

    nb = m.get("notebook", DEFAULT_NOTEBOOK)
    if isinstance(nb, str) and nb:
        why = _path_problem(nb)
        if why:
            report.add(MANIFEST, "notebook", why)


def _check_view(view: dict, where: list, report: _Report) -> None:
    """Which parameters go with which rule; whether the columns exist in the real table is the
    data platform's check (marketplace_ext.platform.validate_policy) at review time."""
    if isinstance(view.get("view"), str) and view.get("view") == view.get("source"):
        report.add(MANIFEST, _field([*where, "view"]), "a view may not have the name of its "
                   "source table")
    columns = view.get("columns") if isinstance(view.get("columns"), dict) else {}
    exposed = False
    for column, spec in columns.items():
        if isinstance(spec, str):
            spec = {"rule": spec}
        if not isinstance(spec, dict) or spec.get("rule") not in RULE_PARAMS:
            exposed = True  # the schema reported its shape; "exposes nothing" would be noise
            continue
        rule, path = spec["rule"], [*where, "columns", column]
        exposed = exposed or rule != "drop"
        for key in spec:
            if key != "rule" and key not in RULE_PARAMS[rule]:
                takes = ", ".join(RULE_PARAMS[rule]) or "no parameters"
                report.add(MANIFEST, _field([*path, key]), f"rule {rule!r} takes {takes}, not "
                           f"{key!r}")
        for key in RULE_PARAMS[rule]:
            if key not in spec and rule != "round":  # round defaults to 0 digits
                needs = {"to": "month, year or the name of another column the view keeps",
                         "scale": "the scale of the noise, a number > 0"}[key]
                report.add(MANIFEST, _field([*path, key]), f"missing; rule {rule!r} needs "
                           f"{needs}")
    if columns and not exposed:
        report.add(MANIFEST, _field([*where, "columns"]), "every column is dropped; the view "
                   "exposes nothing (mark the shared columns keep, hash, round, ...)")


# --- the notebook ------------------------------------------------------------------------------


def _check_parameters_cell(source: str, params: dict, nb_rel: str, report: _Report) -> None:
    """Every assignment in the parameters cell must be one papermill understood, with a type the
    run form knows and a literal default of that type."""
    where = "notebook.parameters"
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        report.add(nb_rel, where, f"the parameters cell is not valid Python: line {e.lineno}: "
                   f"{e.msg}")
        return
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        # papermill parses the cell line by line with a regex: chained or unpacking
        # assignments and values holding '=' are silently skipped, so the run form lacks them
        if len(targets) == 1 and isinstance(targets[0], ast.Name) and targets[0].id in params:
            continue
        shown = " = ".join(ast.unparse(t) for t in targets)
        report.add(nb_rel, where, f"line {node.lineno} ({shown}): papermill cannot read this as "
                   "a parameter; write one parameter per line as `name: type = value  # help`, "
                   "with no other '=' on the line (not in the value, not in the help comment)")
    for name, p in params.items():
        f = f"{where}.{name}"
        declared = p["inferred_type_name"]
        base = declared.split("[", 1)[0].strip()
        if declared == "None":
            report.add(nb_rel, f, f"has no type; papermill infers types only from annotations: "
                       f"write `{name}: <type> = {p['default']}` with one of "
                       f"{', '.join(PARAMETER_TYPES)}")
            continue
        if base not in PARAMETER_TYPES:
            report.add(nb_rel, f, f"type {declared!r} cannot be entered in the run form; use "
                       f"one of {', '.join(PARAMETER_TYPES)}")
            continue
        try:
            default = ast.literal_eval(p["default"])
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            report.add(nb_rel, f, f"default `{p['default']}` is not a literal; the run form "
                       "needs a literal default (a string, number, boolean, list, dict or None)")
            continue
        expected = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
                    "list": (list,), "dict": (dict,)}[base]
        if default is not None and (not isinstance(default, expected)
                                    or (isinstance(default, bool) and base != "bool")):
            report.add(nb_rel, f, f"default {p['default']} is {_describe(default)}, not the "
                       f"declared type {declared}")


class _ThisThreadOnly(logging.Filter):
    """Drops the records logged by the thread that created it; other threads (a concurrent
    papermill run in the service) keep their logs."""

    def __init__(self):
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread


def _check_notebook(root: Path, m: dict | None, sizes: dict[str, int], limits: BundleLimits,
                    report: _Report) -> None:
    raw = (m or {}).get("notebook", DEFAULT_NOTEBOOK)
    if not isinstance(raw, str) or _path_problem(raw) or not raw.endswith(".ipynb"):
        return  # reported with product.yaml's notebook field
    nb_rel = _norm(raw)
    report.notebook = nb_rel
    if nb_rel not in sizes:
        named = "" if "notebook" not in (m or {}) else " (named by product.yaml's notebook field)"
        report.add(nb_rel, None, f"missing: the notebook{named} is not in the bundle")
        return
    if sizes[nb_rel] > limits.max_file_bytes:
        return  # reported as oversize; not worth parsing
    try:
        nb = json.loads((root / nb_rel).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        report.add(nb_rel, None, f"is not UTF-8 text (byte {e.start}); save it from Jupyter")
        return
    except json.JSONDecodeError as e:
        report.add(nb_rel, None, f"is not valid notebook JSON: line {e.lineno}, column {e.colno}: "
                   f"{e.msg}")
        return
    except RecursionError:
        report.add(nb_rel, None, "is not valid notebook JSON: nested too deeply")
        return
    if not isinstance(nb, dict) or nb.get("nbformat") != 4:
        version = nb.get("nbformat") if isinstance(nb, dict) else None
        report.add(nb_rel, "nbformat", f"notebook format {version!r}; expected nbformat 4 "
                   "(save the notebook with JupyterLab or nbformat 5)")
        return
    try:
        with warnings.catch_warnings():
            # a missing cell id is a warning in nbformat, not a reason to refuse a bundle
            warnings.simplefilter("ignore")
            nbformat.validate(copy.deepcopy(nb), version=4)
    except nbformat.ValidationError as e:
        report.add(nb_rel, _field(e.absolute_path) or "nbformat",
                   f"is not a valid nbformat 4 notebook: {e.message.splitlines()[0]}")
        return

    meta = nb.get("metadata", {})
    spec = meta.get("kernelspec") or {}
    kernel = (m or {}).get("kernel")
    if not spec.get("name"):
        wanted = kernel if isinstance(kernel, str) and kernel else "grid-python"
        report.add(nb_rel, "metadata.kernelspec", "missing; papermill needs the notebook's "
                   f"kernel: select the {wanted} kernel in JupyterLab and save")
    elif isinstance(kernel, str) and kernel in limits.known_kernels and spec["name"] != kernel:
        # only for a known manifest kernel: an unknown one is reported once, on product.yaml
        report.add(nb_rel, "metadata.kernelspec.name", f"the notebook's kernel is "
                   f"{spec['name']!r} but product.yaml says {kernel!r}; select {kernel} in "
                   "JupyterLab and save, so both agree")
    language = (meta.get("language_info") or {}).get("name") or spec.get("language")
    if not language:
        report.add(nb_rel, "metadata.language_info", "missing; papermill needs the notebook's "
                   "language (save it once with a running kernel)")
    elif language != "python":
        report.add(nb_rel, "metadata.language_info.name", f"language {language!r}; papermill "
                   "infers parameters only for Python notebooks")

    tagged = [i for i, c in enumerate(nb["cells"])
              if "parameters" in (c.get("metadata", {}).get("tags") or [])]
    code = [i for i in tagged if nb["cells"][i]["cell_type"] == "code"]
    for i in tagged:
        if i not in code:
            report.add(nb_rel, f"cells[{i}]", f"is a {nb['cells'][i]['cell_type']} cell tagged "
                       "'parameters'; only the code cell holding the defaults gets the tag")
    if not code:
        report.add(nb_rel, "notebook.parameters", "no code cell is tagged 'parameters'; tag the "
                   "cell that assigns the defaults (papermill convention: cell toolbar > tags)")
        return
    if len(code) > 1:
        report.add(nb_rel, "notebook.parameters", " and ".join(f"cells[{i}]" for i in code)
                   + " are all tagged 'parameters'; papermill reads only the first: keep the "
                   "tag on one cell")
        return
    if not spec.get("name") or not language or language != "python":
        return  # papermill.inspect_notebook would fail for a reason reported above

    import papermill  # slow to import; only bundles that got this far need it

    # papermill formats the path with str.format (for parameterized paths): escape braces
    path = str((root / nb_rel).resolve()).replace("{", "{{").replace("}", "}}")
    # papermill logs "Unable to parse line" warnings; they become precise problems below
    quiet = _ThisThreadOnly()
    logging.getLogger("papermill").addFilter(quiet)
    try:
        params = papermill.inspect_notebook(path)
    except Exception as e:  # papermill's failures are not one class; each is a bundle problem
        report.add(nb_rel, "notebook.parameters", f"papermill cannot inspect the notebook: {e}")
        return
    finally:
        logging.getLogger("papermill").removeFilter(quiet)
    report.parameters = params
    source = nb["cells"][code[0]]["source"]
    _check_parameters_cell("".join(source) if isinstance(source, list) else source, params,
                           nb_rel, report)


def _check_readme(root: Path, sizes: dict[str, int], limits: BundleLimits,
                  report: _Report) -> None:
    if README not in sizes:
        report.add(README, None, "missing; the README.md is the product card shown on the shelf")
        return
    if sizes[README] > limits.max_file_bytes:
        return
    try:
        text = (root / README).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        report.add(README, None, f"is not UTF-8 text (byte {e.start})")
        return
    if not text.strip():
        report.add(README, None, "is empty; describe what the product does, the tables it reads "
                   "and what it returns")
    report.readme = text


def _check_requirements(root: Path, m: dict, sizes: dict[str, int], report: _Report) -> None:
    """The declared requirements file holds plain PyPI requirements only: it becomes a pip
    install on the marketplace's machine when the version is approved."""
    req = m.get("requirements")
    if not isinstance(req, str) or not req or _path_problem(req) or _norm(req) not in sizes:
        return  # reported by _check_manifest
    from .envs import RequirementsError, parse_requirements

    try:
        parse_requirements((root / _norm(req)).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        report.add(_norm(req), None, "is not UTF-8 text")
    except RequirementsError as e:
        for line, message in e.problems:
            report.add(_norm(req), f"line {line}" if line else None, message)


def _check_remote_call(m: dict, sizes: dict[str, int], report: _Report) -> None:
    """A remote call hands the posted rows to the notebook's ``rows`` parameter, or to the
    declared ``predict`` entry point; a tool offering it needs one of the two."""
    sharing = m.get("sharing") if isinstance(m.get("sharing"), list) else []
    entry = m.get("predict")
    if isinstance(entry, str) and ":" in entry:
        module = entry.split(":", 1)[0].replace(".", "/")
        if f"{module}.py" not in sizes and f"{module}/__init__.py" not in sizes:
            report.add(MANIFEST, "predict", f"the module of {entry!r} is not in the bundle "
                       f"(expected {module}.py)")
    elif "remote_call" in sharing and report.parameters \
            and "rows" not in report.parameters:
        report.add(MANIFEST, "sharing", "remote_call passes the posted rows to the notebook's "
                   "'rows' parameter: declare `rows: list = []` in the parameters cell, or "
                   "name a `predict: module:function` entry point")


def _check_further_training(m: dict, sizes: dict[str, int], report: _Report) -> None:
    """A tool offering further training names a bool parameter, a bundle file to replace and
    two declared outputs (the model, the training data's digest): see :mod:`.retrain`."""
    spec = m.get("further_training")
    if not isinstance(spec, dict):
        return
    if m.get("kind") != "tool":
        report.add(MANIFEST, "further_training", "only tools offer further training")
    declared = {_norm(o["path"]) for o in m.get("outputs") or []
                if isinstance(o, dict) and isinstance(o.get("path"), str)}
    param = spec.get("parameter")
    if isinstance(param, str) and report.parameters:  # empty: the notebook is reported
        found = report.parameters.get(param)
        if found is None or found.get("inferred_type_name") != "bool":
            report.add(MANIFEST, "further_training.parameter", f"{param!r} must be a bool "
                       f"parameter of the notebook (`{param}: bool = False`)")
    model = spec.get("model")
    if isinstance(model, str):
        why = _path_problem(model)
        if why or _norm(model) not in sizes:
            report.add(MANIFEST, "further_training.model", why or f"{model!r} is not a file "
                       "in the bundle")
    for key in ("output", "data_digest"):
        value = spec.get(key)
        if isinstance(value, str) and (_path_problem(value) or _norm(value) not in declared):
            report.add(MANIFEST, f"further_training.{key}", f"{value!r} must be one of the "
                       "declared outputs")


def _inspect(path: Path, limits: BundleLimits) -> _Report:
    report = _Report()
    root = Path(path)
    if not root.is_dir():
        report.add("", None, f"{root} is not a directory")
        return report
    sizes = _check_files(root, limits, report)
    manifest = _read_manifest(root, sizes, report)
    if manifest is not None:
        _check_manifest(manifest, sizes, limits, report)
        _check_requirements(root, manifest, sizes, report)
        report.manifest = {**copy.deepcopy(DEFAULTS), **manifest}
    _check_notebook(root, manifest, sizes, limits, report)
    if manifest is not None:
        _check_remote_call(manifest, sizes, report)
        _check_further_training(manifest, sizes, report)
    _check_readme(root, sizes, limits, report)

    # the manifest first, as publishers fix it first; then the notebook, the card, the rest
    def rank(p: Problem) -> int:
        order = {MANIFEST: 0, report.notebook: 1, README: 2, "": 4}
        return order.get(p.file, 3)

    report.problems.sort(key=rank)
    return report


def validate_dir(path: Path, limits: BundleLimits = BundleLimits()) -> list[Problem]:
    """Every problem of the bundle directory ``path`` at once; ``[]`` means it is valid."""
    return _inspect(Path(path), limits).problems


def load_bundle(path: Path, limits: BundleLimits = BundleLimits()) -> Bundle:
    """Validate and read the bundle at ``path``; raises :class:`BundleInvalid` (or
    :class:`BundleTooLarge` when a size limit is among the problems) listing every problem."""
    report = _inspect(Path(path), limits)
    if report.problems:
        raise report.error()
    assert report.manifest is not None
    return Bundle(root=Path(path).resolve(), manifest=report.manifest, notebook=report.notebook,
                  parameters=report.parameters, readme=report.readme, files=report.files)


# --- archives ----------------------------------------------------------------------------------


def canonical_archive(path: Path) -> bytes:
    """A zip of the bundle at ``path`` whose bytes depend only on file names and contents.

    Entries are sorted, carry 1980-01-01 and mode 0644, no directory entries and no extra
    fields. They are *stored*, not deflated: the sha256 of these bytes identifies a version, and
    deflate output differs between zlib builds, so compression would make the identity depend on
    the machine that computed it.
    """
    report = _Report()
    sizes = _walk(Path(path), report)
    if report.problems:
        raise report.error()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for rel in sizes:
            info = zipfile.ZipInfo(rel, date_time=ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3  # Unix, so external_attr holds a mode on every platform
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            zf.writestr(info, (Path(path) / rel).read_bytes())
    return buf.getvalue()


def archive_sha256(data: bytes) -> str:
    """The hex sha256 of an archive: a version's identity."""
    return hashlib.sha256(data).hexdigest()


def _member_problem(name: str) -> str | None:
    """Why an archive member name must not be unpacked, or None."""
    if "\x00" in name:
        return "contains a NUL byte"
    if "\\" in name:
        return "uses backslashes; zip member paths separate directories with '/'"
    if name.startswith("/"):
        return "is an absolute path; members must be relative to the bundle root"
    if re.match(r"^[A-Za-z]:", name):
        return "starts with a drive letter; members must be relative to the bundle root"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "contains control characters"
    parts = name.rstrip("/").split("/")
    if ".." in parts:
        return "leaves the bundle ('..' in its path)"
    if "" in parts or "." in parts:
        return "has an empty or '.' path component"
    if len(name.encode()) > MAX_PATH_BYTES or any(len(p.encode()) > MAX_NAME_BYTES for p in parts):
        return f"is too long (a path may have {MAX_PATH_BYTES} bytes, a name {MAX_NAME_BYTES})"
    return None


_SUPPORTED_COMPRESSION = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                          zipfile.ZIP_LZMA}


def _plan_members(zf: zipfile.ZipFile, limits: BundleLimits) -> list[tuple[zipfile.ZipInfo, str]]:
    """Check every member from the central directory alone (names, types, declared sizes) and
    return (member, bundle-relative path) for the files to unpack."""
    report = _Report()
    infos = zf.infolist()
    n_files = sum(1 for i in infos if not i.filename.endswith("/"))
    # directory entries are harmless but still cost a header each: cap them too
    if n_files > limits.max_files or len(infos) > 2 * limits.max_files:
        report.add("", None, f"the archive has {n_files} files ({len(infos)} entries); a bundle "
                   f"holds at most {limits.max_files} files", too_large=True)
        raise report.error()

    keep: list[zipfile.ZipInfo] = []
    seen: set[str] = set()
    declared = 0
    for info in infos:
        name = info.orig_filename
        member = f"member {name!r}"
        why = _member_problem(name)
        if why:
            report.add("", None, f"{member} {why}")
            continue
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            report.add("", None, f"{member} is a symbolic link; bundles hold no links")
            continue
        # many zip writers store permission bits without a file type: that is a plain file
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            report.add("", None, f"{member} is not a regular file (mode {oct(mode)})")
            continue
        if name.rstrip("/") in seen:
            report.add("", None, f"{member} appears twice in the archive")
            continue
        seen.add(name.rstrip("/"))
        if info.is_dir() or IGNORED_NAMES.intersection(name.split("/")):
            continue
        if info.flag_bits & 0x1:
            report.add("", None, f"{member} is encrypted; upload an unencrypted zip")
            continue
        if info.compress_type not in _SUPPORTED_COMPRESSION:
            report.add("", None, f"{member} uses compression method {info.compress_type}; use "
                       "deflate or no compression")
            continue
        if info.file_size > limits.max_file_bytes:
            report.add("", None, f"{member} declares {_fmt_bytes(info.file_size)}; a file may be "
                       f"at most {_fmt_bytes(limits.max_file_bytes)}", too_large=True)
            continue
        declared += info.file_size
        keep.append(info)
    if declared > limits.max_total_bytes:
        report.add("", None, f"the archive's files declare {_fmt_bytes(declared)} in all; a "
                   f"bundle may hold at most {_fmt_bytes(limits.max_total_bytes)}",
                   too_large=True)
    if not report.problems and not keep:
        report.add("", None, "the archive holds no files")
    if report.problems:
        raise report.error()

    # zipped from the parent directory: strip the one top-level directory every file shares
    names = [i.filename for i in keep]
    tops = {n.split("/", 1)[0] for n in names}
    strip = len(tops) == 1 and all("/" in n for n in names)
    plan = [(i, i.filename.split("/", 1)[1] if strip else i.filename) for i in keep]

    files = {rel for _, rel in plan}
    for _, rel in plan:
        parts = rel.split("/")
        for k in range(1, len(parts)):
            parent = "/".join(parts[:k])
            if parent in files:
                report.add("", None, f"{parent!r} is both a file and a directory in the archive")
                files.discard(parent)
    if report.problems:
        raise report.error()
    return plan


def _unpack(zf: zipfile.ZipFile, plan: list[tuple[zipfile.ZipInfo, str]], out: Path,
            limits: BundleLimits) -> None:
    total = 0
    for info, rel in plan:
        member = f"member {info.orig_filename!r}"
        cap = min(limits.max_file_bytes, limits.max_total_bytes - total)
        # Read at most one byte past the limit whatever the header says: zipfile stops at the
        # declared size, so a copy of the entry declaring cap + 1 lets us see a lie. zipfile
        # would check the CRC when it reaches that size, before we see the extra byte, so the
        # copy carries no CRC and we check it ourselves.
        probe = copy.copy(info)
        probe.file_size = cap + 1
        del probe.CRC
        crc = 0
        target = out.joinpath(*rel.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as dst, zf.open(probe) as src:
                while chunk := src.read(_CHUNK):
                    written += len(chunk)
                    if written > cap:
                        limit = ("a file may be at most " + _fmt_bytes(limits.max_file_bytes)
                                 if cap == limits.max_file_bytes else
                                 "the bundle may hold at most "
                                 + _fmt_bytes(limits.max_total_bytes) + " in all")
                        raise BundleTooLarge([Problem("", None, (
                            f"{member} decompresses to more than {_fmt_bytes(cap)} although "
                            f"it declares {_fmt_bytes(info.file_size)}; {limit}"))])
                    crc = zlib.crc32(chunk, crc)
                    dst.write(chunk)
        except MarketError:
            raise
        except Exception as e:  # zlib, bz2, lzma and zipfile each raise their own kinds
            raise BundleInvalid([Problem("", None, f"{member} cannot be unpacked: {e}")]) from e
        if written != info.file_size:
            raise BundleInvalid([Problem("", None, (
                f"{member} unpacks to {written} bytes but declares {info.file_size}; the "
                "archive is corrupt"))])
        if crc != info.CRC:
            raise BundleInvalid([Problem("", None, (
                f"{member} fails its CRC-32 check; the archive is corrupt"))])
        total += written


def extract_upload(data: bytes, dest: Path, limits: BundleLimits = BundleLimits()) -> Path:
    """Unpack the untrusted zip ``data`` into ``dest`` (new or empty) and validate the bundle.

    Returns ``dest``, holding a bundle that passes :func:`validate_dir`. A bundle may be zipped
    with or without one top-level directory. Raises :class:`BundleInvalid` or
    :class:`BundleTooLarge` naming every problem found; on any failure ``dest`` holds nothing.
    """
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} exists and is not an empty directory")
    if len(data) > limits.max_total_bytes:
        raise BundleTooLarge([Problem("", None, (
            f"the upload is {_fmt_bytes(len(data))}; a bundle may be at most "
            f"{_fmt_bytes(limits.max_total_bytes)}"))])
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except Exception as e:  # BadZipFile, but also struct/EOF errors on truncated data
        raise BundleInvalid([Problem("", None, f"the upload is not a zip archive ({e}); zip "
                                     "the bundle directory (or use `market publish`)")]) from e
    dest.parent.mkdir(parents=True, exist_ok=True)
    # unpack beside dest and rename at the end, so dest never holds half a bundle
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        with zf:
            plan = _plan_members(zf, limits)
            _unpack(zf, plan, staging, limits)
        report = _inspect(staging, limits)
        if report.problems:
            raise report.error()
        staging.chmod(0o755)
        if dest.exists():
            dest.rmdir()
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


# --- new products ------------------------------------------------------------------------------


def new_product(kind: str, name: str, dest_parent: Path) -> Path:
    """Copy the ``kind`` template to ``dest_parent/name`` with its name and title set; returns
    the new directory. Refuses a destination that exists."""
    if kind not in KINDS:
        raise InvalidField(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}", "kind")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9-]{1,62}", name):
        raise InvalidField(f"{name!r} is not a product name; expected a slug: a lowercase letter, "
                           "then 1-62 lowercase letters, digits or hyphens", "name")
    source = TEMPLATES_DIR / kind
    if not (source / MANIFEST).is_file():
        raise FileNotFoundError(f"no {kind} template at {source}")
    dest = Path(dest_parent) / name
    Path(dest_parent).mkdir(parents=True, exist_ok=True)
    try:
        dest.mkdir()  # claims the name atomically
    except FileExistsError:
        raise Conflict(f"{dest} already exists; choose another name or directory", "name") \
            from None
    try:
        shutil.copytree(source, dest, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(*IGNORED_NAMES))
        title = name.replace("-", " ").capitalize()
        manifest = dest / MANIFEST
        text = manifest.read_text()
        # edit the lines, not a re-dumped mapping, to keep the template's comments
        text, n1 = re.subn(r"(?m)^name:.*$", f"name: {name}", text, count=1)
        text, n2 = re.subn(r"(?m)^title:.*$", lambda _: f"title: {json.dumps(title)}", text,
                           count=1)
        if not (n1 and n2):
            raise RuntimeError(f"template {source / MANIFEST} has no top-level name/title line")
        manifest.write_text(text)
        readme = dest / README
        lines = readme.read_text().splitlines(keepends=True)
        if lines and lines[0].startswith("# "):
            readme.write_text(f"# {title}\n" + "".join(lines[1:]))
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest
