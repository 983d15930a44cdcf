"""JSON API of ratings and reviews, promotion and ranking, the Table 2 report and unit types
(issue 16 items 1, 2, 7); the contract is ``openapi_reviews.yaml``. Thin: parse, authorize
(the domain functions check who may act), call ``exchange.ratings``/``ranking``/``report``."""

from __future__ import annotations

from tornado import web

from .. import catalog, units
from ..auth import SCOPE_APPROVE
from ..errors import InvalidField
from ..exchange import ranking, ratings, report
from .api import unit_json
from .base import APIHandler


def reviews_page(session, caller, product, limit: int, offset: int) -> dict:
    """A product's reviews as the API returns them: the aggregate (all versions), the page of
    reviews, and whether the caller may rate the version on sale (and why not)."""
    found, total = ratings.list_reviews(session, product, limit, offset)
    agg = ratings.aggregate(session, [product.id])[product.id]
    can = ratings.eligibility(session, caller, product, product.current_version)
    return {
        "product": product.name,
        "version": product.current_version.version if product.current_version else None,
        "aggregate": {"count": agg["count"], "mean": agg["mean"],
                      "bayesian": round(ranking.bayesian(agg["sum"], agg["count"]), 2),
                      "histogram": {str(k): v for k, v in agg["histogram"].items()}},
        "can_rate": {"allowed": can.allowed, "reason": can.reason,
                     "review": can.existing.id if can.existing else None},
        "reviews": [ratings.review_json(session, r, caller) for r in found],
        "total": total, "limit": limit, "offset": offset,
    }


class ProductReviewsHandler(APIHandler):
    @web.authenticated
    def get(self, product):
        p = catalog.get_product(self.db, product, self.caller)
        limit = self.int_argument("limit", 50, 1, 200)
        offset = self.int_argument("offset", 0, 0, 10**9)
        self.write_json(reviews_page(self.db, self.caller, p, limit, offset))

    @web.authenticated
    def post(self, product):
        body = self.json_body()
        review = ratings.rate(self.db, self.caller, product, body.get("version"),
                              body.get("stars"), body.get("text"))
        self.db.commit()
        self.set_header("Location", f"{self.market.service_prefix}api/reviews/{review.id}")
        self.write_json(ratings.review_json(self.db, review, self.caller), status=201)


class ReviewHandler(APIHandler):
    @web.authenticated
    def get(self, review):
        found = ratings.get_review(self.db, review)
        ratings.visible_product(self.db, found, self.caller)
        self.write_json(ratings.review_json(self.db, found, self.caller))

    @web.authenticated
    def put(self, review):
        body = self.json_body()
        found = ratings.edit(self.db, self.caller, review, body.get("stars"), body.get("text"))
        self.db.commit()
        self.write_json(ratings.review_json(self.db, found, self.caller))


class ReviewReplyHandler(APIHandler):
    @web.authenticated
    def post(self, review):
        found = ratings.reply(self.db, self.caller, review, self.json_body().get("reply"))
        self.db.commit()
        self.write_json(ratings.review_json(self.db, found, self.caller))


class ReviewHideHandler(APIHandler):
    @web.authenticated
    def post(self, review):
        self.caller.require(SCOPE_APPROVE, "hiding a review")
        found = ratings.hide(self.db, self.caller, review, self.json_body().get("reason"))
        self.db.commit()
        self.write_json(ratings.review_json(self.db, found, self.caller))


def ranking_json(session, caller) -> dict:
    """The shelf's published order with each product's score and its parts, and the
    Featured, Trending and New sections."""
    products, _ = catalog.list_products(session, caller, limit=1000)
    scored = ranking.scores(session, products)
    ordered = sorted(products, key=lambda p: (-scored[p.id].score, p.name))
    return {
        "formula": ranking.FORMULA,
        "products": [{"product": p.name, **scored[p.id].as_dict()} for p in ordered],
        "featured": [ranking.feature_json(f, p) for f, p in ranking.features(session, caller)],
        "trending": [{"product": p.name, "units_recent": n}
                     for p, n in ranking.trending(session, caller)],
        "new": [{"product": p.name, "on_shelf_since": at.isoformat() + "Z"}
                for p, at in ranking.new_products(session, caller)],
    }


def shelf_sections(session, caller, products: list) -> dict:
    """What the shelf page shows beside its table: the Featured, Trending and New sections,
    the published formula and each listed product's rating (mean and count)."""
    stars = ratings.aggregate(session, [p.id for p in products])
    return {
        "featured": [(f, p, catalog.product_summary(p, caller))
                     for f, p in ranking.features(session, caller)],
        "trending": [(catalog.product_summary(p, caller), n)
                     for p, n in ranking.trending(session, caller)],
        "new": [(catalog.product_summary(p, caller), at)
                for p, at in ranking.new_products(session, caller)],
        "formula": ranking.FORMULA,
        "ratings": {p.name: stars[p.id] for p in products},
    }


class RankingHandler(APIHandler):
    @web.authenticated
    def get(self):
        self.write_json(ranking_json(self.db, self.caller))


class FeaturesHandler(APIHandler):
    @web.authenticated
    def get(self):
        raw = self.get_query_argument("all", "0")
        if raw not in ("0", "1"):
            raise InvalidField("all must be 0 (features running now) or 1 (every feature)", "all")
        current = raw == "0"
        self.write_json({"features": [
            ranking.feature_json(f, p)
            for f, p in ranking.features(self.db, self.caller, current_only=current)]})

    @web.authenticated
    def post(self):
        self.caller.require(SCOPE_APPROVE, "featuring a product")
        body = self.json_body()
        item = ranking.feature(self.db, self.caller, body.get("product"), body.get("starts_at"),
                               body.get("days"), body.get("reason"))
        self.db.commit()
        product = catalog.get_product(self.db, body["product"], self.caller)
        self.write_json(ranking.feature_json(item, product), status=201)


class ReportHandler(APIHandler):
    @web.authenticated
    def get(self):
        arg = self.get_query_argument
        fmt = arg("format", "json")
        if fmt not in ("json", "csv"):
            raise InvalidField("format must be json or csv", "format")
        result = report.table(self.db, self.caller, arg("sort", None), arg("order", None),
                              arg("unit_type", None))
        if fmt == "csv":
            self.set_attachment("table2-report.csv", "text/csv; charset=utf-8")
            self.finish(report.to_csv(result))
            return
        self.write_json(result)


class UnitTypeHandler(APIHandler):
    @web.authenticated
    def post(self, unit):
        self.caller.require(SCOPE_APPROVE, "changing a unit's type")
        found = units.set_unit_type(self.db, unit, self.json_body().get("type"))
        self.db.commit()
        self.write_json(unit_json(found))


default_handlers = [
    (r"/api/products/(?P<product>[^/]+)/reviews", ProductReviewsHandler),
    (r"/api/reviews/(?P<review>[^/]+)", ReviewHandler),
    (r"/api/reviews/(?P<review>[^/]+)/reply", ReviewReplyHandler),
    (r"/api/reviews/(?P<review>[^/]+)/hide", ReviewHideHandler),
    (r"/api/ranking", RankingHandler),
    (r"/api/features", FeaturesHandler),
    (r"/api/report", ReportHandler),
    (r"/api/units/(?P<unit>[^/]+)/type", UnitTypeHandler),
]
