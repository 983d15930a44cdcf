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
PART_PATHS = (Path(__file__).parent / "openapi_fl.yaml",)


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


@cache
def _document() -> dict:
    spec = yaml.safe_load(SPEC_PATH.read_text())
    for part_path in PART_PATHS:
        _merge(spec, yaml.safe_load(part_path.read_text()), part_path.name)
    spec["info"]["version"] = __version__
    return spec


def openapi_document() -> dict:
    """The whole document (a copy: callers may not change the cached one)."""
    return copy.deepcopy(_document())
