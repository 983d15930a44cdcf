"""What changed between two versions of a product, for the operator who reviews the newer one.

A readable diff in the manner of nbdime, without its dependency: the manifest (normalized YAML,
line by line), the notebook cell by cell (sources and metadata; outputs are not compared: a
bundle's notebook is run, not read for its outputs), the notebook's own metadata, and the files
(added, removed, changed by sha256). Everything comes from the versions' stored canonical
archives; nothing here writes.

:func:`version_diff` is blocking (it opens archives in the blob store): run it in an executor.
"""

from __future__ import annotations

import difflib
import json
import zipfile
from dataclasses import dataclass, field

import yaml

from .blobs import BlobStore
from .bundle import MANIFEST
from .orm import Product, Version

#: a notebook member larger than this is not diffed (it is reported as changed, by digest)
MAX_NOTEBOOK_BYTES = 8 * 2**20
#: the diff shows at most this many lines in all; the rest is summarized
MAX_LINES = 4000
CONTEXT = 3


@dataclass
class _Budget:
    left: int = MAX_LINES
    truncated: bool = False

    def take(self, lines: list[dict]) -> list[dict]:
        if len(lines) <= self.left:
            self.left -= len(lines)
            return lines
        self.truncated = True
        kept, self.left = lines[:self.left], 0
        return kept


@dataclass
class _Side:
    """One version's reviewable parts."""

    version: str
    manifest: str
    notebook_path: str
    notebook: dict | None
    files: dict[str, str] = field(default_factory=dict)


def line_diff(old: str, new: str, context: int = CONTEXT) -> list[dict]:
    """``[{op, text}]``: ``op`` is ``"+"``, ``"-"``, ``" "`` (context) or ``"@"`` (a hunk
    header); an empty list when the texts are equal."""
    if old == new:
        return []
    out = []
    for line in difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="",
                                     n=context):
        if line.startswith(("---", "+++")):
            continue
        op = line[:1] if line[:1] in "+- " else "@"
        out.append({"op": op, "text": line if op == "@" else line[1:]})
    return out


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _meta(value: object) -> str:
    return json.dumps(value or {}, indent=1, sort_keys=True, ensure_ascii=False)


def _cell(cell: dict) -> dict:
    return {"cell_type": cell.get("cell_type", "code"), "source": _source(cell),
            "metadata": _meta(cell.get("metadata"))}


def _cell_entry(status: str, old: dict | None, new: dict | None, old_index: int | None,
                new_index: int | None, budget: _Budget) -> dict:
    a, b = old or {"source": "", "metadata": _meta({})}, new or {"source": "",
                                                                 "metadata": _meta({})}
    return {
        "status": status, "old_index": old_index, "new_index": new_index,
        "cell_type": (new or old)["cell_type"],
        "old_type": old["cell_type"] if old and new and old["cell_type"] != new["cell_type"]
        else None,
        "source": budget.take(line_diff(a["source"], b["source"],
                                        context=10**6 if status != "changed" else CONTEXT)),
        "metadata": budget.take(line_diff(a["metadata"], b["metadata"])
                                if status == "changed" or (new or old)["metadata"] != "{}"
                                else []),
    }


def notebook_diff(old: dict | None, new: dict | None) -> dict:
    """Cells aligned by their type and source (difflib), then diffed: ``{"metadata": lines,
    "cells": [{status, old_index, new_index, cell_type, source, metadata}], "unchanged": n,
    "truncated": bool}``; ``status`` is added, removed or changed (unchanged cells are only
    counted)."""
    budget = _Budget()
    a = [_cell(c) for c in (old or {}).get("cells", [])]
    b = [_cell(c) for c in (new or {}).get("cells", [])]
    keys_a = [(c["cell_type"], c["source"]) for c in a]
    keys_b = [(c["cell_type"], c["source"]) for c in b]
    cells: list[dict] = []
    unchanged = 0
    matcher = difflib.SequenceMatcher(a=keys_a, b=keys_b, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            for i, j in zip(range(i1, i2), range(j1, j2), strict=True):
                if a[i]["metadata"] != b[j]["metadata"]:  # same source, new tags or metadata
                    cells.append(_cell_entry("changed", a[i], b[j], i, j, budget))
                else:
                    unchanged += 1
            continue
        paired = min(i2 - i1, j2 - j1) if tag == "replace" else 0
        for k in range(paired):  # an edited cell: shown as a change, not a removal and an add
            cells.append(_cell_entry("changed", a[i1 + k], b[j1 + k], i1 + k, j1 + k, budget))
        for i in range(i1 + paired, i2):
            cells.append(_cell_entry("removed", a[i], None, i, None, budget))
        for j in range(j1 + paired, j2):
            cells.append(_cell_entry("added", None, b[j], None, j, budget))
    metadata = budget.take(line_diff(_meta((old or {}).get("metadata")),
                                     _meta((new or {}).get("metadata"))))
    return {"metadata": metadata, "cells": cells, "unchanged": unchanged,
            "truncated": budget.truncated}


def _load_side(blobs: BlobStore, version: Version) -> _Side:
    manifest = json.loads(version.manifest)
    nb_path = manifest.get("notebook") or "main.ipynb"
    notebook = None
    with zipfile.ZipFile(blobs.path(version.sha256)) as archive:
        try:
            info = archive.getinfo(nb_path)
        except KeyError:
            info = None
        if info is not None and info.file_size <= MAX_NOTEBOOK_BYTES:
            try:
                notebook = json.loads(archive.read(info))
            except ValueError:
                notebook = None
    return _Side(version=version.version,
                 manifest=yaml.safe_dump(manifest, sort_keys=True, allow_unicode=True),
                 notebook_path=nb_path, notebook=notebook,
                 files=json.loads(version.file_digests or "{}"))


def previous_version(product: Product, version: Version) -> Version | None:
    """What a reviewer compares against: the version on sale (what subscribers use now) when
    it is another one, else the latest version submitted before this one."""
    current = product.current_version
    if current is not None and current is not version:
        return current
    earlier = [v for v in product.versions if v.id < version.id]
    return earlier[-1] if earlier else None


def version_diff(blobs: BlobStore, product: Product, version: Version) -> dict:
    """The review diff of ``version`` against :func:`previous_version` (against nothing for a
    first version: everything is added)."""
    before = previous_version(product, version)
    new = _load_side(blobs, version)
    old = _load_side(blobs, before) if before is not None else None
    files = []
    for path in sorted(set(new.files) | set(old.files if old else {})):
        a = old.files.get(path) if old else None
        b = new.files.get(path)
        if a != b:
            files.append({"path": path, "status": "added" if a is None else
                          "removed" if b is None else "changed", "old": a, "new": b})
    manifest = line_diff(old.manifest if old else "", new.manifest,
                         context=CONTEXT if old else 10**6)
    nb = notebook_diff(old.notebook if old else None, new.notebook)
    return {
        "previous": None if before is None else {"version": before.version,
                                                 "state": before.state,
                                                 "sha256": before.sha256},
        "manifest_file": MANIFEST, "manifest": manifest[:MAX_LINES],
        "notebook_path": new.notebook_path, "notebook": nb,
        "notebook_readable": new.notebook is not None,
        "files": files, "unchanged_files": len(new.files) - sum(
            1 for f in files if f["status"] != "removed"),
    }
