"""Promotion and ranking (issue 16 item 2): the shelf's published order, Trending, New, and
operators' featured products.

The published formula (also shown on the shelf, :data:`FORMULA`)::

    score = 2 * ln(1 + U) + (R - 3) + 2 ** (-d / 30)

- U: recent usage, the number of *distinct other units* that bought (a paid order) or ran
  (a finished run) the product in the last 90 days. Distinct units, not orders or points, so
  buying more often or paying more does not lift a product; the owning unit never counts.
- R: the rating with a Bayesian prior, ``(5 * 3 + sum of stars) / (5 + n)`` over the n
  visible reviews (hidden ones leave it): five imaginary 3-star reviews, so one 5-star review
  moves a product from 3 to 3.33, not to the top.
- d: days since the product's current version went on the shelf (recency, halving every 30
  days).

Ties go by name. Nothing in it can be bought: prices, points spent and featuring do not enter
it. Featuring is an operator's decision with a reason and a time window, certified in the log,
and shows the product in a separate, labelled "Featured" section; it never changes the score.

Trending: the most distinct other units using the product (orders, runs) in the last 14 days.
New: products whose first version went on the shelf in the last 30 days, newest first.

This module reads the catalogue's, the ledger's and the runner's tables (never writes them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, union
from sqlalchemy.orm import Session

from .. import catalog, certlog
from ..auth import Caller
from ..errors import Conflict, Forbidden, InvalidField, NotFound
from ..orm import Order, Product, Run, Transition, Version, utcnow
from . import ratings
from .ratings_orm import Feature

PRIOR_MEAN = 3.0
PRIOR_WEIGHT = 5
USAGE_DAYS = 90
USAGE_WEIGHT = 2.0
HALF_LIFE_DAYS = 30
TRENDING_DAYS = 14
NEW_DAYS = 30
SECTION_SIZE = 5
MAX_FEATURE_DAYS = 90

FORMULA = ("score = 2·ln(1 + U) + (R − 3) + 2^(−d/30), where U is the number of other units "
           "that ordered or ran the product in the last 90 days, R = (5·3 + Σ stars)/(5 + n) "
           "its rating with a Bayesian prior over n visible reviews, and d the days since its "
           "current version went on the shelf. Prices, points and featuring do not enter it.")


@dataclass(frozen=True)
class Score:
    score: float
    units_recent: int
    rating: float  # Bayesian
    reviews: int
    mean: float | None
    days_on_shelf: float

    def as_dict(self) -> dict:
        return {"score": round(self.score, 3), "units_recent": self.units_recent,
                "rating": round(self.rating, 2), "reviews": self.reviews, "mean": self.mean,
                "days_on_shelf": round(self.days_on_shelf, 1)}


def bayesian(total_stars: int, n: int) -> float:
    return (PRIOR_WEIGHT * PRIOR_MEAN + total_stars) / (PRIOR_WEIGHT + n)


def score_of(units_recent: int, rating: float, days: float) -> float:
    return (USAGE_WEIGHT * math.log1p(units_recent) + (rating - PRIOR_MEAN)
            + 2 ** (-max(days, 0.0) / HALF_LIFE_DAYS))


def recent_units(session: Session, product_ids: list[int], since: datetime,
                 until: datetime | None = None) -> dict[int, int]:
    """Distinct other units that bought (paid) or ran (finished) each product since ``since``
    (and before ``until``)."""
    if not product_ids:
        return {}
    orders = (select(Order.product_id.label("pid"), Order.unit_id.label("uid"))
              .join(Product, Product.id == Order.product_id)
              .where(Order.product_id.in_(product_ids), Order.status == "paid",
                     Order.unit_id != Product.unit_id, Order.created_at >= since))
    runs = (select(Run.product_id.label("pid"), Run.unit_id.label("uid"))
            .join(Product, Product.id == Run.product_id)
            .where(Run.product_id.in_(product_ids), Run.status == "succeeded",
                   Run.unit_id.is_not(None), Run.unit_id != Product.unit_id,
                   Run.created_at >= since))
    if until is not None:
        orders = orders.where(Order.created_at < until)
        runs = runs.where(Run.created_at < until)
    both = union(orders, runs).subquery()
    rows = session.execute(select(both.c.pid, func.count(func.distinct(both.c.uid)))
                           .group_by(both.c.pid)).all()
    found = dict(rows)
    return {pid: found.get(pid, 0) for pid in product_ids}


def shelf_dates(session: Session, product_ids: list[int]) -> dict[int, tuple]:
    """(first time any version went on the shelf, last time the current version did) per
    product, from the catalogue's transitions; (None, None) if never."""
    if not product_ids:
        return {}
    first = dict(session.execute(
        select(Version.product_id, func.min(Transition.at))
        .join(Transition, Transition.version_id == Version.id)
        .where(Version.product_id.in_(product_ids), Transition.to_state == catalog.ON_SHELF)
        .group_by(Version.product_id)).all())
    current = dict(session.execute(
        select(Product.id, func.max(Transition.at))
        .join(Transition, Transition.version_id == Product.current_version_id)
        .where(Product.id.in_(product_ids), Transition.to_state == catalog.ON_SHELF)
        .group_by(Product.id)).all())
    return {pid: (first.get(pid), current.get(pid)) for pid in product_ids}


def scores(session: Session, products: list[Product],
           now: datetime | None = None) -> dict[int, Score]:
    """The published score of each product (see the module docstring)."""
    now = now or utcnow()
    ids = [p.id for p in products]
    units = recent_units(session, ids, now - timedelta(days=USAGE_DAYS))
    stars = ratings.aggregate(session, ids)
    dates = shelf_dates(session, ids)
    result = {}
    for pid in ids:
        agg = stars[pid]
        rating = bayesian(agg["sum"], agg["count"])
        on_shelf = dates[pid][1]
        # never on the shelf (a draft its own unit sees): as old as can be
        days = (now - on_shelf).total_seconds() / 86400 if on_shelf else 10_000.0
        result[pid] = Score(score_of(units[pid], rating, days), units[pid], rating,
                            agg["count"], agg["mean"], days)
    return result


def rank(session: Session, products: list[Product], now: datetime | None = None) -> list[Product]:
    """``products`` in the published order: score, highest first, then name."""
    found = scores(session, products, now)
    return sorted(products, key=lambda p: (-found[p.id].score, p.name))


def _on_shelf(session: Session, caller: Caller) -> list[Product]:
    products, _ = catalog.list_products(session, caller, limit=10_000)
    return [p for p in products if p.current_version is not None
            and p.current_version.state == catalog.ON_SHELF]


def trending(session: Session, caller: Caller, now: datetime | None = None,
             limit: int = SECTION_SIZE) -> list[tuple[Product, int]]:
    """Products with the most distinct other units using them in the last 14 days (at least
    one), with that count."""
    now = now or utcnow()
    products = _on_shelf(session, caller)
    counts = recent_units(session, [p.id for p in products], now - timedelta(days=TRENDING_DAYS))
    chosen = sorted((p for p in products if counts[p.id] > 0),
                    key=lambda p: (-counts[p.id], p.name))
    return [(p, counts[p.id]) for p in chosen[:limit]]


def new_products(session: Session, caller: Caller, now: datetime | None = None,
                 limit: int = SECTION_SIZE) -> list[tuple[Product, datetime]]:
    """Products first put on the shelf in the last 30 days, newest first."""
    now = now or utcnow()
    products = _on_shelf(session, caller)
    dates = shelf_dates(session, [p.id for p in products])
    since = now - timedelta(days=NEW_DAYS)
    fresh = [(p, dates[p.id][0]) for p in products if dates[p.id][0] and dates[p.id][0] >= since]
    fresh.sort(key=lambda item: (item[1], item[0].id), reverse=True)
    return fresh[:limit]


# --- featuring ---------------------------------------------------------------------------------


def parse_time(value: object, field: str) -> datetime:
    """An ISO 8601 time (a trailing Z or offset is read as UTC), naive UTC as stored."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidField(f"{field} is required: an ISO 8601 time such as "
                           "2026-12-24T00:00:00Z", field)
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        if parsed.tzinfo is not None:
            parsed = (parsed - parsed.utcoffset()).replace(tzinfo=None)
    except (ValueError, OverflowError):
        raise InvalidField(f"{field} is not an ISO 8601 time: {value[:40]!r}", field) from None
    return parsed


def validate_days(value: object) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if (not isinstance(value, int) or isinstance(value, bool)
            or not 1 <= value <= MAX_FEATURE_DAYS):
        raise InvalidField(f"days must be a whole number from 1 to {MAX_FEATURE_DAYS}", "days")
    return value


def feature(session: Session, caller: Caller, product_name: object, starts_at: object,
            days: object, reason: object, now: datetime | None = None) -> Feature:
    """An operator features an on-shelf product for ``days`` (1-90) from ``starts_at``
    (default: now), with a reason; certified as ``feature``. A window that is over already
    is refused (409, ``starts_at``)."""
    if not caller.is_operator:
        raise Forbidden("only operators feature products", "product")
    if not isinstance(product_name, str) or not product_name:
        raise InvalidField("product is required: the product's name", "product")
    now = now or utcnow()
    # left out (or null): from now; an empty string is not a time
    start = now if starts_at is None else parse_time(starts_at, "starts_at")
    days = validate_days(days)
    reason = ratings.validate_text(reason, "reason", required=True, limit=ratings.MAX_REASON)
    try:
        end = start + timedelta(days=days)
    except OverflowError:
        raise InvalidField("starts_at is too far in the future", "starts_at") from None
    if end <= now:
        raise Conflict("that window is over already: choose a later starts_at", "starts_at")
    product = catalog.get_product(session, product_name, caller)
    if product.current_version is None or product.current_version.state != catalog.ON_SHELF:
        raise NotFound(f"no product {product_name!r} on the shelf", "product")
    item = Feature(product_id=product.id, starts_at=start, ends_at=end, reason=reason,
                   created_by=caller.name, created_at=now)
    session.add(item)
    session.flush()
    item.log_index = certlog.append(
        session, "feature", caller.name, product.unit.slug, f"feature:{item.id}",
        product=product.name, starts_at=start.isoformat() + "Z",
        ends_at=end.isoformat() + "Z", reason=reason)
    session.flush()
    return item


def features(session: Session, caller: Caller, now: datetime | None = None,
             current_only: bool = True) -> list[tuple[Feature, Product]]:
    """Features (running now, or all for ``current_only=False``) of products the caller may
    see, newest first; a product off the shelf is not shown as featured."""
    now = now or utcnow()
    query = select(Feature, Product).join(Product, Product.id == Feature.product_id)
    if current_only:
        query = query.where(Feature.starts_at <= now, Feature.ends_at > now)
    rows = session.execute(query.order_by(Feature.starts_at.desc(), Feature.id.desc())).all()
    shown, seen = [], set()
    for item, product in rows:
        on_shelf = (product.current_version is not None
                    and product.current_version.state == catalog.ON_SHELF)
        if current_only and (not on_shelf or product.id in seen):
            continue
        if not on_shelf and not (caller.is_operator or caller.unit == product.unit.slug):
            continue
        seen.add(product.id)
        shown.append((item, product))
    return shown


def feature_json(item: Feature, product: Product, now: datetime | None = None) -> dict:
    now = now or utcnow()
    return {"id": item.id, "product": product.name, "reason": item.reason,
            "starts_at": item.starts_at.isoformat() + "Z",
            "ends_at": item.ends_at.isoformat() + "Z", "by": item.created_by,
            "running": item.starts_at <= now < item.ends_at, "log_index": item.log_index}
