"""The OpenAPI document of the service, kept beside the handlers it describes.

``openapi.yaml`` holds the marketplace's paths and shared components; each further concern
(``openapi_fl.yaml``: federated learning) keeps its own paths and components in a part file
that is merged in here, so the contract of a concern lives beside its handlers."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import yaml

from . import __version__

SPEC_PATH = Path(__file__).parent / "openapi.yaml"
PART_PATHS = tuple(Path(__file__).parent / f"openapi_{part}.yaml"
                   for part in ("fl", "reviews", "topics", "forum", "workshops",
                                "retrain", "fl_slices"))


class SpecConflict(ValueError):
    """Two parts of the OpenAPI document define the same path or component."""


def _merge(spec: dict, part: dict, source: str) -> None:
    for path, item in (part.get("paths") or {}).items():
        if path in spec["paths"]:
            raise SpecConflict(f"{source} redefines path {path}")
        spec["paths"][path] = item
    for section, entries in (part.get("components") or {}).items():
        target = spec["components"].setdefault(section, {})
        for name, value in (entries or {}).items():
            if name in target:
                raise SpecConflict(f"{source} redefines components.{section}.{name}")
            target[name] = value


_METHODS = ("get", "put", "post", "delete", "patch")
_ERROR = {"$ref": "#/components/responses/Error"}


def _add_standard_errors(spec: dict) -> None:
    """The answers every route may give, documented once here rather than on each operation
    of every part: 401 when it needs a login, 404 for a path id or name that does not exist
    (``ids.parse_id``), 400 for a bad parameter or body, 413 for a body over its limit."""
    default_security = spec.get("security")
    for item in spec["paths"].values():
        shared = item.get("parameters", [])
        for method in _METHODS:
            op = item.get(method)
            if op is None:
                continue
            responses = op.setdefault("responses", {})
            params = shared + op.get("parameters", [])
            if op.get("security", default_security):
                responses.setdefault("401", _ERROR)
            if any(p.get("in") == "path" or "parameters/Product" in p.get("$ref", "")
                   or "parameters/Version" in p.get("$ref", "") for p in params):
                responses.setdefault("404", _ERROR)
            if any(p.get("in") in ("query", "header") or "parameters/Limit" in p.get("$ref", "")
                   or "parameters/Offset" in p.get("$ref", "") for p in params) \
                    or "requestBody" in op:
                responses.setdefault("400", _ERROR)
            if "requestBody" in op:
                responses.setdefault("413", _ERROR)


@cache
def _document() -> dict:
    spec = yaml.safe_load(SPEC_PATH.read_text())
    for part_path in PART_PATHS:
        _merge(spec, yaml.safe_load(part_path.read_text()), part_path.name)
    _add_standard_errors(spec)
    spec["info"]["version"] = __version__
    return spec


def openapi_document() -> dict:
    """The whole document (a copy: callers may not change the cached one)."""
    return copy.deepcopy(_document())
