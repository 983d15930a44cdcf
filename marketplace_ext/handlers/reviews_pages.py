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

    def _namespace(self) -> dict:
        name = self.path_kwargs["product"]
        p = catalog.get_product(self.db, name, self.caller)
        data = reviews_page(self.db, self.caller, p, 200, 0)
        return {"product": catalog.product_summary(p, self.caller), "reviews": data,
                "own_product": self.caller.unit == p.unit.slug,
                "done": self.get_query_argument("done", "")}

    @web.authenticated
    def get(self, product):
        self.render_template("review_product.html", **self._namespace())

    @web.authenticated
    def post(self, product):
        arg = self.get_body_argument
        action = arg("action", "")
        try:
            if action == "rate":
                review = ratings.rate(self.db, self.caller, product, arg("version", None),
                                      arg("stars", None), arg("text", ""))
            elif action == "edit":
                review = ratings.edit(self.db, self.caller, arg("review", ""),
                                      arg("stars", None), arg("text", ""))
            elif action == "reply":
                review = ratings.reply(self.db, self.caller, arg("review", ""),
                                       arg("reply", ""))
            elif action == "hide":
                review = ratings.hide(self.db, self.caller, arg("review", ""),
                                      arg("reason", ""))
            else:
                raise MarketError("choose what to do: rate, edit, reply or hide", "action")
            if review.product_id != catalog.get_product(self.db, product, self.caller).id:
                raise MarketError("that review belongs to another product", "review")
            self.db.commit()
        except MarketError as e:
            self.db.rollback()  # nothing half-written
            self.render_form_error("review_product.html",
                                   shown_error(e, ACTION_FIELDS.get(action, ())),
                                   action=action, **self._namespace())
            return
        self.redirect_after_post(f"products/{product}/reviews?done={action}#review-{review.id}")


class FeaturesPage(PageHandler):
    """Featured products (running and past); operators feature one for some days, with a
    reason (certified). Featuring shows a product in the shelf's Featured section only."""

    nav = "shelf"

    def _namespace(self) -> dict:
        items = ranking.features(self.db, self.caller, current_only=False)
        products, _ = catalog.list_products(self.db, self.caller, limit=1000)
        return {"features": [ranking.feature_json(f, p) for f, p in items],
                "products": [p.name for p in products
                             if p.current_version is not None
                             and p.current_version.state == catalog.ON_SHELF],
                "done": self.get_query_argument("done", "")}

    @web.authenticated
    def get(self):
        self.render_template("review_features.html", **self._namespace())

    @web.authenticated
    def post(self):
        arg = self.get_body_argument
        try:
            item = ranking.feature(self.db, self.caller, arg("product", ""),
                                   arg("starts_at", "") or None, arg("days", ""),
                                   arg("reason", ""))
            self.db.commit()
        except MarketError as e:
            self.db.rollback()
            self.render_form_error("review_features.html",
                                   shown_error(e, ("product", "starts_at", "days", "reason")),
                                   **self._namespace())
            return
        self.redirect_after_post(f"features?done={item.id}")


class ReportPage(PageHandler):
    """The Table 2 report: per product units using it, investment saved, orders, points
    earned and rating; sort by any column, filter by the publishing unit's type, CSV."""

    nav = "report"

    @web.authenticated
    def get(self):
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
        result = report.table(self.db, self.caller, query["sort"] or None,
                              query["order"] or None, query["unit_type"] or None)
        self.render_template("report.html", report=result, unit_types=UNIT_TYPES)


default_handlers = [
    (r"/products/(?P<product>[^/]+)/reviews", ProductReviewsPage),
    (r"/features", FeaturesPage),
    (r"/report", ReportPage),
]
