"""The interface sharing mode: SQL over a data product's published views, run on the
publisher's platform (entitlement checked, row limit, only the granted views).

The blocking parts run outside any database transaction: the views are created on the
publisher's platform when an operator approves a data product (:func:`publish_views`), and a
query runs in an executor between the read that authorizes it and the write that consumes the
per-use order and certifies it (:func:`record_query`).
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
from .units import get_unit

MAX_SQL_CHARS = 20_000


@dataclass(frozen=True)
class QueryPlan:
    product: str
    version: str
    platform_unit: str  # the publisher's unit: its platform answers
    grants: frozenset[str]
    sql: str
    limit: int | None
    entitlement_id: int | None


def product_views(product) -> list[dict]:
    manifest = json.loads(product.current_version.manifest)
    return manifest.get("views", [])


def publish_views(platform, unit: str, views: list[dict]) -> list[str]:
    """Create a data product's views on its unit's platform (blocking: run in an executor)."""
    return [platform.create_view(unit, policy) for policy in views]


def plan_query(session: Session, platform, caller: Caller, product_name: str,
               body: dict) -> QueryPlan:
    caller.require(SCOPE_SUBSCRIBE, "querying a data product")
    product = catalog.get_product(session, product_name, caller)
    if product.kind != "data":
        raise InvalidField(f"{product_name!r} is a {product.kind} product; only data products "
                           "answer queries", "product")
    sql = body.get("sql")
    if not isinstance(sql, str) or not sql.strip():
        raise InvalidField("sql is required: one SELECT over the product's views", "sql")
    if len(sql) > MAX_SQL_CHARS:
        raise InvalidField(f"sql is longer than {MAX_SQL_CHARS} characters", "sql")
    limit = body.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                              or limit < 1):
        raise InvalidField("limit must be a positive integer", "limit")
    if caller.unit is None:
        raise Forbidden(f"{caller.name} is not a member of any unit", "unit")
    entitlement = points.check(session, get_unit(session, caller.unit), product, "interface")
    owner = product.unit.slug
    database = platform.database_for(owner)
    grants = frozenset(f"{database}.{v['view']}" for v in product_views(product))
    return QueryPlan(product=product.name, version=product.current_version.version,
                     platform_unit=owner, grants=grants, sql=sql, limit=limit,
                     entitlement_id=entitlement.id if entitlement else None)


def record_query(session: Session, caller: Caller, plan: QueryPlan, result: dict) -> int:
    """Consume the per-use order and certify the query; returns the log index."""
    if plan.entitlement_id is not None:
        points.consume(session, session.get(Entitlement, plan.entitlement_id))
    digest = hashlib.sha256(json.dumps(result, sort_keys=True, default=str).encode())
    return certlog.append(
        session, "query", caller.name, caller.unit, digest.hexdigest(), product=plan.product,
        version=plan.version, sql_sha256=hashlib.sha256(plan.sql.encode()).hexdigest(),
        rows=len(result.get("rows", [])), truncated=result.get("truncated", False),
        order=(session.get(Entitlement, plan.entitlement_id).order_id
               if plan.entitlement_id else None),
    )
