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

from . import catalog, certlog, points
from .auth import SCOPE_SUBSCRIBE, Caller
from .errors import Forbidden, InvalidField
from .orm import Entitlement
from .predict import check_rows
from .units import get_unit


@dataclass(frozen=True)
class CallPlan:
    product: str
    version: str
    version_id: int
    bundle_sha256: str
    unit: str  # the caller's unit: its platform is the kernel's SPARK_REMOTE
    rows: list
    entitlement_id: int | None


def plan_call(session: Session, caller: Caller, product_name: str, body: dict,
              max_rows: int) -> CallPlan:
    caller.require(SCOPE_SUBSCRIBE, "calling a tool product")
    product = catalog.get_product(session, product_name, caller)
    if product.kind != "tool":
        raise InvalidField(f"{product_name!r} is a {product.kind} product; only tools answer "
                           "remote calls", "product")
    rows = body.get("rows")
    check_rows(rows, max_rows)
    if caller.unit is None:
        raise Forbidden(f"{caller.name} is not a member of any unit", "unit")
    version = catalog.usable_version(product, caller)
    entitlement = points.check(session, get_unit(session, caller.unit), product, "remote_call")
    return CallPlan(product=product.name, version=version.version, version_id=version.id,
                    bundle_sha256=version.sha256, unit=caller.unit, rows=rows,
                    entitlement_id=entitlement.id if entitlement else None)


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def record_call(session: Session, caller: Caller, plan: CallPlan, predictions: list) -> int:
    """Consume the per-use order and certify the call; returns the log index."""
    entitlement = (session.get(Entitlement, plan.entitlement_id)
                   if plan.entitlement_id is not None else None)
    points.consume(session, entitlement)
    return certlog.append(
        session, "prediction", caller.name, caller.unit, _digest(predictions),
        product=plan.product, version=plan.version, bundle_sha256=plan.bundle_sha256,
        rows=len(plan.rows), rows_sha256=_digest(plan.rows),
        order=entitlement.order_id if entitlement else None)
