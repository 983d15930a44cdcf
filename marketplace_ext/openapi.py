"""The OpenAPI document of the service, kept beside the handlers it describes."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml

from . import __version__

SPEC_PATH = Path(__file__).parent / "openapi.yaml"


@cache
def openapi_document() -> dict:
    spec = yaml.safe_load(SPEC_PATH.read_text())
    spec["info"]["version"] = __version__
    return spec
