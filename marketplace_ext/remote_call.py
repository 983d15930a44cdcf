"""The remote-call sharing mode: a tool product answers rows with predictions, from a warm
kernel per tool version (:mod:`marketplace_ext.predict`).

As for queries, the call is authorized in one short read, runs outside any transaction, and
only a call that answered consumes the per-use order and is certified (:func:`record_call`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass

from sqlalchemy.orm import Session

from . import sharing
from .auth import Caller
from .errors import InvalidField
from .predict import check_rows


@dataclass(frozen=True)
class CallPlan:
    grant: sharing.Grant
    unit: str  # the caller's unit: its platform is the kernel's SPARK_REMOTE
    rows: list
    derived_model: int | None = None  # further training: the unit's derived model (retrain.py)
    derived_sha256: str | None = None

    @property
    def product(self) -> str:
        return self.grant.product

    @property
    def version(self) -> str:
        return self.grant.version

    @property
    def version_id(self) -> int:
        return self.grant.version_id

    @property
    def bundle_sha256(self) -> str:
        return self.derived_sha256 or self.grant.bundle_sha256


def plan_call(session: Session, caller: Caller, product_name: str, body: dict,
              max_rows: int) -> CallPlan:
    grant = sharing.authorize_use(session, caller, product_name, "remote_call")
    rows = body.get("rows")
    check_rows(rows, max_rows)
    if body.get("model") is not None:  # a derived model of the caller's unit (retrain.py)
        from .retrain import model_for_call

        derived = model_for_call(session, caller, grant, body["model"])
        return CallPlan(grant=grant, unit=grant.unit, rows=rows, derived_model=derived.id,
                        derived_sha256=derived.bundle_sha256)
    return CallPlan(grant=grant, unit=grant.unit, rows=rows)


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def record_call(session: Session, caller: Caller, plan: CallPlan, predictions: list) -> int:
    """Consume the per-use order and certify the call; returns the log index."""
    return sharing.record_use(
        session, caller, plan.grant, "prediction", _digest(predictions),
        bundle_sha256=plan.bundle_sha256, rows=len(plan.rows), rows_sha256=_digest(plan.rows),
        **({"derived_model": plan.derived_model} if plan.derived_model else {}))


ROW_FORMATS = ("csv", "json")


def _cell(value: str) -> object:
    """A CSV cell as the JSON value a person meant: a number if it reads as one, empty as
    null, text otherwise."""
    if value == "":
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def parse_rows(text: object, fmt: object) -> list:
    """Rows pasted into a page: CSV with a header line, or JSON (an array of objects, or one
    object). Raises a 400 naming ``rows`` (``format`` for an unknown format); the rows'
    shape is checked again by :func:`plan_call`."""
    if fmt not in ROW_FORMATS:
        raise InvalidField(f"format must be one of {', '.join(ROW_FORMATS)}", "format")
    if not isinstance(text, str) or not text.strip():
        raise InvalidField("rows are required: paste CSV with a header line, or JSON", "rows")
    if fmt == "json":
        try:
            rows = json.loads(text)
        except ValueError as e:
            raise InvalidField(f"rows are not valid JSON: {e}", "rows") from e
        return [rows] if isinstance(rows, dict) else rows
    reader = csv.DictReader(io.StringIO(text.strip()))
    if not reader.fieldnames or any(not (f or "").strip() for f in reader.fieldnames):
        raise InvalidField("the CSV needs a header line naming every column", "rows")
    rows = []
    for number, record in enumerate(reader, start=2):
        if None in record:  # more cells than the header names
            raise InvalidField(f"line {number} has more cells than the header", "rows")
        rows.append({k.strip(): _cell((v or "").strip()) for k, v in record.items()})
    return rows
