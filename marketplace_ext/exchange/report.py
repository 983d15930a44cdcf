"""The Table 2 report (issue 16 item 7): per product, the units using it, the investment saved
(users - 1, as the source paper counts it: every user but the builder did not build it
again), the paid orders, the points its unit earned from them (the supplier's share, after
the operator's fee) and its rating. Sortable, filterable by the publishing unit's type, and
exported as CSV.

Everyone logged in reads it, over the products they may see (the shelf; their own unit's;
operators: all). This module reads the catalogue's and the ledger's tables (never writes).
"""

from __future__ import annotations

import csv
import io

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .. import catalog, ledger_views, points
from ..auth import Caller
from ..errors import InvalidField
from ..orm import Order, Unit
from ..units import UNIT_TYPES
from . import ranking, ratings

#: sortable columns -> the row value they sort by
SORT_KEYS = ("product", "unit", "unit_type", "units_using", "investment_saved", "orders",
             "points_earned", "rating", "reviews")
COLUMNS = ("product", "title", "kind", "unit", "unit_type", "units_using", "investment_saved",
           "orders", "points_earned", "rating", "reviews", "rating_bayesian")
MAX_ROWS = 1000


def validate_query(sort: object, order: object, unit_type: object) -> tuple[str, str, str | None]:
    sort = sort or "units_using"
    order = order or ("asc" if sort in ("product", "unit", "unit_type") else "desc")
    if sort not in SORT_KEYS:
        raise InvalidField(f"sort must be one of {', '.join(SORT_KEYS)}", "sort")
    if order not in ("asc", "desc"):
        raise InvalidField("order must be asc or desc", "order")
    if unit_type in (None, ""):
        unit_type = None
    elif unit_type not in UNIT_TYPES:
        raise InvalidField(f"unit_type must be one of {', '.join(UNIT_TYPES)}", "unit_type")
    return sort, order, unit_type


def _sales(session: Session, product_ids: list[int]) -> dict[int, tuple[int, int]]:
    """(paid orders, supplier's share in centipoints) per product."""
    rows = session.execute(
        select(Order.product_id, func.count(), func.coalesce(func.sum(Order.price - Order.fee), 0))
        .where(Order.product_id.in_(product_ids), Order.status == "paid")
        .group_by(Order.product_id)).all()
    found = {pid: (int(n), int(earned)) for pid, n, earned in rows}
    return {pid: found.get(pid, (0, 0)) for pid in product_ids}


def table(session: Session, caller: Caller, sort: object = None, order: object = None,
          unit_type: object = None) -> dict:
    """The report: ``rows`` (one per product the caller may see), the totals, the query."""
    sort, order, unit_type = validate_query(sort, order, unit_type)
    products, _ = catalog.list_products(session, caller, limit=MAX_ROWS)
    unit_types = dict(session.execute(select(Unit.id, Unit.type)).all())
    if unit_type is not None:
        products = [p for p in products if unit_types[p.unit_id] == unit_type]
    ids = [p.id for p in products]
    using = ledger_views.units_using_counts(session, products)
    sales = _sales(session, ids) if ids else {}
    stars = ratings.aggregate(session, ids)
    rows = []
    for p in products:
        summary = catalog.product_summary(p, caller)
        n_orders, earned = sales[p.id]
        agg = stars[p.id]
        rows.append({
            "product": p.name, "title": summary["title"], "kind": p.kind, "unit": p.unit.slug,
            "unit_type": unit_types[p.unit_id], "units_using": using[p.id],
            "investment_saved": using[p.id] - 1, "orders": n_orders,
            "points_earned": points.format_points(earned), "centipoints_earned": earned,
            "rating": agg["mean"], "reviews": agg["count"],
            "rating_bayesian": round(ranking.bayesian(agg["sum"], agg["count"]), 2),
        })

    def value(row: dict):
        return row["centipoints_earned"] if sort == "points_earned" else row[sort]

    # by name first; the sort is stable (also reversed), so equal values stay by name, and a
    # product without a rating goes last whichever the direction
    rows.sort(key=lambda r: r["product"])
    present = [r for r in rows if value(r) is not None]
    present.sort(key=value, reverse=(order == "desc"))
    rows = present + [r for r in rows if value(r) is None]
    totals = {
        "products": len(rows),
        "units_using": sum(r["units_using"] for r in rows),
        "investment_saved": sum(r["investment_saved"] for r in rows),
        "orders": sum(r["orders"] for r in rows),
        "points_earned": points.format_points(sum(r["centipoints_earned"] for r in rows)),
    }
    return {"rows": rows, "totals": totals, "sort": sort, "order": order,
            "unit_type": unit_type, "unit_types": UNIT_TYPES}


def to_csv(report: dict) -> str:
    """The report's rows as CSV (a header line, then one line per product)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for row in report["rows"]:
        writer.writerow(["" if row[c] is None else _safe_cell(row[c]) for c in COLUMNS])
    return out.getvalue()


def _safe_cell(value: object) -> object:
    """A text cell a spreadsheet would read as a formula is prefixed with ' (CSV injection:
    titles are publishers' text)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
