"""HTML pages of ratings and reviews, promotion and the Table 2 report: a product's reviews
(rate, edit, reply, hide), the operators' featuring page and the report (sortable, filter by
unit type, CSV through ``api/report?format=csv``). Each handler parses, calls the same domain
function as ``handlers/reviews.py`` and renders; a POST that succeeds redirects (303)."""

from __future__ import annotations

from tornado import web

from .. import catalog
from ..errors import MarketError
from ..exchange import ranking, ratings, report
from ..units import UNIT_TYPES
from .base import PageHandler
from .pages import shown_error
from .reviews import reviews_page

#: the form fields of each action on the reviews page (an error on another field, such as
#: ``version`` or ``review``, goes to the page's banner)
ACTION_FIELDS = {"rate": ("stars", "text"), "edit": ("stars", "text"), "reply": ("reply",),
                 "hide": ("reason",)}


class ProductReviewsPage(PageHandler):
    """A product's rating (mean, Bayesian, histogram) and its reviews; the form to rate the
    version on sale (for units that used it), the author's edit, the publisher's reply, the
    operator's hide."""

    nav = "shelf"

    @web.authenticated
    async def get(self, product):
        await self.render_from_db("review_product.html", _reviews_namespace, self.caller,
                                  product, self.get_query_argument("done", ""))

    @web.authenticated
    async def post(self, product):
        arg = self.get_body_argument
        action = arg("action", "")
        form = {"version": arg("version", None), "stars": arg("stars", None),
                "text": arg("text", ""), "review": arg("review", ""), "reply": arg("reply", ""),
                "reason": arg("reason", "")}
        try:
            review_id = await self.in_write(_review_action, self.caller, product, action, form)
        except MarketError as e:  # rolled back: nothing half-written
            self.render_form_error("review_product.html",
                                   shown_error(e, ACTION_FIELDS.get(action, ())),
                                   action=action, **await self.in_db(
                                       _reviews_namespace, self.caller, product,
                                       self.get_query_argument("done", "")))
            return
        self.redirect_after_post(f"products/{product}/reviews?done={action}#review-{review_id}")


class FeaturesPage(PageHandler):
    """Featured products (running and past); operators feature one for some days, with a
    reason (certified). Featuring shows a product in the shelf's Featured section only."""

    nav = "shelf"

    @web.authenticated
    async def get(self):
        await self.render_from_db("review_features.html", _features_namespace, self.caller,
                                  self.get_query_argument("done", ""))

    @web.authenticated
    async def post(self):
        arg = self.get_body_argument
        try:
            item_id = await self.in_write(_feature, self.caller, arg("product", ""),
                                          arg("starts_at", "") or None, arg("days", ""),
                                          arg("reason", ""))
        except MarketError as e:  # rolled back: nothing written
            self.render_form_error("review_features.html",
                                   shown_error(e, ("product", "starts_at", "days", "reason")),
                                   **await self.in_db(_features_namespace, self.caller,
                                                      self.get_query_argument("done", "")))
            return
        self.redirect_after_post(f"features?done={item_id}")


class ReportPage(PageHandler):
    """The Table 2 report: per product units using it, investment saved, orders, points
    earned and rating; sort by any column, filter by the publishing unit's type, CSV."""

    nav = "report"

    @web.authenticated
    async def get(self):
        arg = self.get_query_argument
        query = {"sort": arg("sort", ""), "order": arg("order", ""),
                 "unit_type": arg("unit_type", "")}
        # a stale bookmark's unknown value falls back to the default, as the shelf's filters
        if query["sort"] not in report.SORT_KEYS:
            query["sort"] = ""
        if query["order"] not in ("asc", "desc"):
            query["order"] = ""
        if query["unit_type"] not in UNIT_TYPES:
            query["unit_type"] = ""
        result = await self.in_db(report.table, self.caller, query["sort"] or None,
                                  query["order"] or None, query["unit_type"] or None)
        self.render_template("report.html", report=result, unit_types=UNIT_TYPES)


def _review_action(session, caller, product: str, action: str, form: dict) -> int:
    """Blocking (the db executor, one write transaction): rate, edit, reply or hide a review
    of ``product``; the review's id."""
    if action == "rate":
        review = ratings.rate(session, caller, product, form["version"], form["stars"],
                              form["text"])
    elif action == "edit":
        review = ratings.edit(session, caller, form["review"], form["stars"], form["text"])
    elif action == "reply":
        review = ratings.reply(session, caller, form["review"], form["reply"])
    elif action == "hide":
        review = ratings.hide(session, caller, form["review"], form["reason"])
    else:
        raise MarketError("choose what to do: rate, edit, reply or hide", "action")
    if review.product_id != catalog.get_product(session, product, caller).id:
        raise MarketError("that review belongs to another product", "review")
    session.flush()
    return review.id


def _feature(session, caller, product: str, starts_at: str | None, days: str,
             reason: str) -> int:
    """Blocking (the db executor, one write transaction): an operator features a product."""
    item = ranking.feature(session, caller, product, starts_at, days, reason)
    session.flush()
    return item.id


def _reviews_namespace(session, caller, name: str, done: str) -> dict:
    """Blocking (the db executor): a product's reviews page (404 if the caller cannot see
    the product)."""
    p = catalog.get_product(session, name, caller)
    return {"product": catalog.product_summary(p, caller),
            "reviews": reviews_page(session, caller, p, 200, 0),
            "own_product": caller.unit == p.unit.slug, "done": done}


def _features_namespace(session, caller, done: str) -> dict:
    """Blocking (the db executor): every feature, and the products on the shelf to feature."""
    items = ranking.features(session, caller, current_only=False)
    products, _ = catalog.list_products(session, caller, limit=1000)
    return {"features": [ranking.feature_json(f, p) for f, p in items],
            "products": [p.name for p in products if p.current_version is not None
                         and p.current_version.state == catalog.ON_SHELF],
            "done": done}


default_handlers = [
    (r"/products/(?P<product>[^/]+)/reviews", ProductReviewsPage),
    (r"/features", FeaturesPage),
    (r"/report", ReportPage),
]
