"""Ratings and reviews (issue 16 item 1): evaluation from market feedback.

- Only a unit that has *used* a version may rate it: a paid order placed while that version
  was on sale, or a finished run (remote run, model-to-data) of that version by the unit. The
  owning unit does not rate its own product; an operator (in no unit) does not rate.
- One rating per user per version (1-5 stars and a Markdown text), editable by its author for
  :data:`EDIT_WINDOW`; a new version is rated afresh.
- The owning unit's publishers may reply; operators may hide a review with a reason. Making a
  review and hiding one are certified in the log (``review``, ``review_hidden``); the product's
  unit is told of a new review in its inbox (``review_new``).
- Texts are stored as typed and shown only through :func:`render_text` (mistune, then nh3), so
  a ``<script>`` is stored inert and shown inert.

This module reads the catalogue's, the ledger's and the runner's tables (never writes them).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .. import catalog, certlog, points
from ..auth import SCOPE_PUBLISH, SCOPE_SUBSCRIBE, Caller
from ..errors import Conflict, Forbidden, InvalidField, NotFound
from ..ids import json_int, parse_id
from ..orm import Order, Product, Run, Unit, Version, utcnow
from . import inbox
from .ratings_orm import Review

EDIT_WINDOW = timedelta(days=14)
MAX_TEXT = 5000
MAX_REASON = 1000
STARS = range(1, 6)


# --- input -------------------------------------------------------------------------------------


def validate_stars(value: object) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    value = json_int(value)  # 4.0 is the integer 4 in JSON
    if not isinstance(value, int) or isinstance(value, bool) or value not in STARS:
        raise InvalidField("stars must be a whole number from 1 to 5", "stars")
    return value


def validate_text(value: object, field: str = "text", required: bool = False,
                  limit: int = MAX_TEXT) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise InvalidField(f"{field} must be a string", field)
    value = value.strip()
    if required and not value:
        raise InvalidField(f"{field} is required", field)
    if len(value) > limit:
        raise InvalidField(f"{field} is longer than {limit} characters", field)
    return value


def render_text(markdown: str) -> str:
    """A review's or a reply's text as HTML, sanitized by nh3 (untrusted input)."""
    return catalog.render_readme(markdown)


# --- who may rate ------------------------------------------------------------------------------


def has_used(session: Session, unit_id: int, version_id: int) -> bool:
    """Whether the unit used this version: a paid order placed while it was on sale, or a
    finished run of it (any sharing mode that runs: remote run, model-to-data)."""
    ordered = session.scalar(select(func.count()).select_from(Order).where(
        Order.unit_id == unit_id, Order.version_id == version_id, Order.status == "paid"))
    if ordered:
        return True
    ran = session.scalar(select(func.count()).select_from(Run).where(
        Run.unit_id == unit_id, Run.version_id == version_id, Run.status == "succeeded"))
    return bool(ran)


@dataclass(frozen=True)
class Eligibility:
    """Whether the caller may rate a version now, and if not, why (shown on the page)."""

    allowed: bool
    reason: str
    existing: Review | None = None


def eligibility(session: Session, caller: Caller, product: Product,
                version: Version | None) -> Eligibility:
    if version is None:
        return Eligibility(False, "this product has no version on sale")
    if SCOPE_SUBSCRIBE not in caller.scopes:
        return Eligibility(False, "rating needs the subscriber role")
    if caller.unit is None:
        return Eligibility(False, "only members of a unit that used the product rate it")
    if caller.unit == product.unit.slug:
        return Eligibility(False, "your unit publishes this product; users rate it")
    unit = session.scalar(select(Unit).where(Unit.slug == caller.unit))
    if unit is not None and points.co_owns(session, product, unit.id):
        return Eligibility(False, "your unit co-owns this product; users rate it")
    existing = session.scalar(select(Review).where(Review.version_id == version.id,
                                                   Review.user_name == caller.name))
    if existing is not None:
        return Eligibility(False, f"you rated version {version.version} already", existing)
    unit = session.scalar(select(Unit).where(Unit.slug == caller.unit))
    if not has_used(session, unit.id, version.id):
        return Eligibility(False, f"your unit has not used version {version.version} yet "
                                  "(an order, a run or a call)")
    return Eligibility(True, "")


def _version(product: Product, version: object) -> Version:
    if version is None or version == "":
        if product.current_version is None:
            raise NotFound(f"{product.name!r} has no version on sale", "version")
        return product.current_version
    if not isinstance(version, str):
        raise InvalidField("version must be a string such as '1.0.0'", "version")
    return catalog.get_version(product, version)


# --- actions -----------------------------------------------------------------------------------


def rate(session: Session, caller: Caller, product_name: str, version: object, stars: object,
         text: object, now: datetime | None = None) -> Review:
    """The caller rates a version of ``product_name`` (default: the one on sale). Refusals
    name their field, who may not rate first: ``product``/``version`` (404 unknown),
    ``unit``/``product`` (403: no unit, own product), ``version`` (409 rated already, 403
    not used), then ``stars``/``text`` (400). Nothing is written on refusal."""
    caller.require(SCOPE_SUBSCRIBE, "rating a product")
    if not isinstance(product_name, str) or not product_name:
        raise InvalidField("product is required: the product's name", "product")
    product = catalog.get_product(session, product_name, caller)
    chosen = _version(product, version)
    if chosen.state not in (catalog.ON_SHELF, catalog.OFF_SHELF, catalog.SUPERSEDED):
        raise NotFound(f"version {chosen.version} of {product.name!r} was never on sale",
                       "version")
    if caller.unit is None:
        raise Forbidden(f"{caller.name} is not a member of any unit; only units that used a "
                        "product rate it", "unit")
    if caller.unit == product.unit.slug:
        raise Forbidden("a unit does not rate its own product", "product")
    own = session.scalar(select(Unit).where(Unit.slug == caller.unit))
    if own is not None and points.co_owns(session, product, own.id):
        raise Forbidden("a unit does not rate a product it co-owns", "product")
    found = eligibility(session, caller, product, chosen)
    if found.existing is not None:
        raise Conflict(f"{caller.name} rated version {chosen.version} of {product.name!r} "
                       f"already (review {found.existing.id}); edit that one", "version")
    if not found.allowed:
        raise Forbidden(f"only units that used version {chosen.version} of {product.name!r} "
                        "rate it: order it, run it or call it first", "version")
    stars = validate_stars(stars)
    text = validate_text(text)
    now = now or utcnow()
    unit = session.scalar(select(Unit).where(Unit.slug == caller.unit))
    review = Review(product_id=product.id, version_id=chosen.id, unit_id=unit.id,
                    user_name=caller.name, stars=stars, text=text, created_at=now,
                    updated_at=now)
    session.add(review)
    try:
        session.flush()
    except IntegrityError as e:  # the same user's concurrent rating won the race
        raise Conflict(f"{caller.name} rated version {chosen.version} already", "version") \
            from e
    review.log_index = certlog.append(
        session, "review", caller.name, caller.unit, f"review:{review.id}",
        product=product.name, version=chosen.version, stars=stars,
        text_sha256=hashlib.sha256(text.encode()).hexdigest())
    inbox.notify_unit(session, product.unit, "review_new",
                      f"{'★' * stars} for {product.name} {chosen.version} from unit "
                      f"{caller.unit}", link=f"products/{product.name}#reviews",
                      exclude=(caller.name,))
    session.flush()
    return review


def get_review(session: Session, review_id: object) -> Review:
    review = session.get(Review, parse_id(review_id, "review", "review"))
    if review is None:
        raise NotFound(f"no review {review_id!r}", "review")
    return review


def visible_product(session: Session, review: Review, caller: Caller) -> Product:
    product = session.get(Product, review.product_id)
    catalog.get_product(session, product.name, caller)  # 404 to whoever may not see it
    return product


def edit(session: Session, caller: Caller, review_id: object, stars: object, text: object,
         now: datetime | None = None) -> Review:
    """The author changes their rating within :data:`EDIT_WINDOW` of making it."""
    review = get_review(session, review_id)
    visible_product(session, review, caller)
    if review.user_name != caller.name:
        raise Forbidden("only its author edits a review", "review")
    stars = validate_stars(stars)
    text = validate_text(text)
    now = now or utcnow()
    if review.hidden_at is not None:
        raise Conflict("an operator hid this review; it cannot be edited", "review")
    if now - review.created_at > EDIT_WINDOW:
        raise Conflict(f"a review is editable for {EDIT_WINDOW.days} days after it was made",
                       "review")
    review.stars, review.text, review.updated_at = stars, text, now
    session.flush()
    return review


def reply(session: Session, caller: Caller, review_id: object, text: object,
          now: datetime | None = None) -> Review:
    """A publisher of the product's unit answers a review (again: replaces the answer)."""
    review = get_review(session, review_id)
    product = visible_product(session, review, caller)
    if caller.unit != product.unit.slug or SCOPE_PUBLISH not in caller.scopes:
        raise Forbidden(f"only publishers of unit {product.unit.slug!r} reply to reviews of "
                        f"{product.name!r}", "review")
    text = validate_text(text, "reply", required=True)
    review.reply, review.reply_by, review.reply_at = text, caller.name, now or utcnow()
    session.flush()
    return review


def hide(session: Session, caller: Caller, review_id: object, reason: object,
         now: datetime | None = None) -> Review:
    """An operator hides a review with a reason; certified. Hidden reviews leave the
    aggregate and the ranking; the page shows that one was hidden, and why."""
    if not caller.is_operator:
        raise Forbidden("only operators hide reviews", "review")
    review = get_review(session, review_id)
    reason = validate_text(reason, "reason", required=True, limit=MAX_REASON)
    if review.hidden_at is not None:
        raise Conflict(f"review {review.id} is hidden already", "review")
    product = session.get(Product, review.product_id)
    unit = session.get(Unit, review.unit_id)
    review.hidden_reason, review.hidden_by, review.hidden_at = reason, caller.name, \
        now or utcnow()
    review.hidden_log_index = certlog.append(
        session, "review_hidden", caller.name, unit.slug, f"review:{review.id}",
        product=product.name, reason=reason, review_log_index=review.log_index)
    session.flush()
    return review


# --- reading -----------------------------------------------------------------------------------


def aggregate(session: Session, product_ids: list[int]) -> dict[int, dict]:
    """Per product: the count and mean of its visible reviews (all versions) and how many of
    each star; products without reviews get count 0."""
    result = {pid: {"count": 0, "mean": None, "sum": 0, "histogram": {s: 0 for s in STARS}}
              for pid in product_ids}
    if not product_ids:
        return result
    rows = session.execute(
        select(Review.product_id, Review.stars, func.count())
        .where(Review.product_id.in_(product_ids), Review.hidden_at.is_(None))
        .group_by(Review.product_id, Review.stars)).all()
    for pid, stars, n in rows:
        entry = result[pid]
        entry["histogram"][stars] = n
        entry["count"] += n
        entry["sum"] += stars * n
    for entry in result.values():
        if entry["count"]:
            entry["mean"] = round(entry["sum"] / entry["count"], 2)
    return result


def list_reviews(session: Session, product: Product, limit: int = 50,
                 offset: int = 0) -> tuple[list[Review], int]:
    """A product's reviews, newest first (hidden ones included: shown as hidden)."""
    query = select(Review).where(Review.product_id == product.id)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    found = session.scalars(query.order_by(Review.created_at.desc(), Review.id.desc())
                            .limit(limit).offset(offset)).all()
    return list(found), total


def review_json(session: Session, review: Review, caller: Caller,
                now: datetime | None = None) -> dict:
    """A review as the API and pages show it. A hidden review keeps its stars, text and
    reply for operators and its author only; everyone sees that it was hidden and why."""
    now = now or utcnow()
    version = session.get(Version, review.version_id)
    unit = session.get(Unit, review.unit_id)
    hidden = review.hidden_at is not None
    full = not hidden or caller.is_operator or caller.name == review.user_name
    data = {
        "id": review.id, "product": version.product.name, "version": version.version,
        "unit": unit.slug, "user": review.user_name,
        "created_at": review.created_at.isoformat() + "Z",
        "updated_at": review.updated_at.isoformat() + "Z",
        "edited": review.updated_at != review.created_at,
        "editable": (caller.name == review.user_name and not hidden
                     and now - review.created_at <= EDIT_WINDOW),
        "log_index": review.log_index,
        "hidden": None if not hidden else {
            "reason": review.hidden_reason, "by": review.hidden_by,
            "at": review.hidden_at.isoformat() + "Z", "log_index": review.hidden_log_index},
        "stars": review.stars if full else None,
        "text": review.text if full else None,
        "html": render_text(review.text) if full else None,
        "reply": None,
    }
    if review.reply is not None and full:
        data["reply"] = {"text": review.reply, "html": render_text(review.reply),
                         "by": review.reply_by, "at": review.reply_at.isoformat() + "Z"}
    return data
