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

from . import sharing
from .auth import Caller
from .errors import InvalidField
from .orm import Version

MAX_SQL_CHARS = 20_000


@dataclass(frozen=True)
class QueryPlan:
    grant: sharing.Grant
    platform_unit: str  # the publisher's unit: its platform answers
    grants: frozenset[str]
    sql: str
    limit: int | None

    @property
    def product(self) -> str:
        return self.grant.product

    @property
    def version(self) -> str:
        return self.grant.version


def product_views(product) -> list[dict]:
    manifest = json.loads(product.current_version.manifest)
    return manifest.get("views", [])


def view_schemas(product) -> list[dict]:
    """What a subscriber may query: each published view with the columns it keeps (a dropped
    column is not there) and the rule applied to each, and its row filter."""
    def rule(spec: object) -> str:
        return spec if isinstance(spec, str) else (spec or {}).get("rule", "keep")

    return [{"view": v["view"], "row_filter": v.get("row_filter"),
             "columns": [{"name": name, "rule": rule(spec)}
                         for name, spec in v.get("columns", {}).items() if rule(spec) != "drop"]}
            for v in product_views(product)]


def publish_views(platform, unit: str, views: list[dict]) -> list[str]:
    """Create a data product's views on its unit's platform (blocking: run in an executor)."""
    return [platform.create_view(unit, policy) for policy in views]


def plan_query(session: Session, platform, caller: Caller, product_name: str,
               body: dict) -> QueryPlan:
    grant = sharing.authorize_use(session, caller, product_name, "interface")
    sql = body.get("sql")
    if not isinstance(sql, str) or not sql.strip():
        raise InvalidField("sql is required: one SELECT over the product's views", "sql")
    if len(sql) > MAX_SQL_CHARS:
        raise InvalidField(f"sql is longer than {MAX_SQL_CHARS} characters", "sql")
    limit = body.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                              or limit < 1):
        raise InvalidField("limit must be a positive integer", "limit")
    database = platform.database_for(grant.owner_unit)
    views = json.loads(session.get(Version, grant.version_id).manifest).get("views", [])
    grants = frozenset(f"{database}.{v['view']}" for v in views)
    return QueryPlan(grant=grant, platform_unit=grant.owner_unit, grants=grants, sql=sql,
                     limit=limit)


def record_query(session: Session, caller: Caller, plan: QueryPlan, result: dict) -> int:
    """Consume the per-use order and certify the query; returns the log index."""
    digest = hashlib.sha256(json.dumps(result, sort_keys=True, default=str).encode())
    return sharing.record_use(
        session, caller, plan.grant, "query", digest.hexdigest(),
        sql_sha256=hashlib.sha256(plan.sql.encode()).hexdigest(),
        rows=len(result.get("rows", [])), truncated=result.get("truncated", False))
