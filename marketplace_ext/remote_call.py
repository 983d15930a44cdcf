"""The remote-call sharing mode: a tool product answers rows with predictions, from a warm
kernel per tool version (:mod:`marketplace_ext.predict`).

As for queries, the call is authorized in one short read, runs outside any transaction, and
only a call that answered consumes the per-use order and is certified (:func:`record_call`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from sqlalchemy.orm import Session

from . import sharing
from .auth import Caller
from .predict import check_rows


@dataclass(frozen=True)
class CallPlan:
    grant: sharing.Grant
    unit: str  # the caller's unit: its platform is the kernel's SPARK_REMOTE
    rows: list

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
        return self.grant.bundle_sha256


def plan_call(session: Session, caller: Caller, product_name: str, body: dict,
              max_rows: int) -> CallPlan:
    grant = sharing.authorize_use(session, caller, product_name, "remote_call")
    rows = body.get("rows")
    check_rows(rows, max_rows)
    return CallPlan(grant=grant, unit=grant.unit, rows=rows)


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def record_call(session: Session, caller: Caller, plan: CallPlan, predictions: list) -> int:
    """Consume the per-use order and certify the call; returns the log index."""
    return sharing.record_use(
        session, caller, plan.grant, "prediction", _digest(predictions),
        bundle_sha256=plan.bundle_sha256, rows=len(plan.rows), rows_sha256=_digest(plan.rows))
