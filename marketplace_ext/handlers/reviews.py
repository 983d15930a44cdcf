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


def product_reviews(session, caller, product: str, limit: int, offset: int) -> dict:
    """:func:`reviews_page` of the product named ``product`` (404 if the caller cannot see
    it)."""
    return reviews_page(session, caller, catalog.get_product(session, product, caller), limit,
                        offset)


def review_reading(session, caller, review: str) -> dict:
    """A review as the API shows it, if the caller may see its product (404 otherwise)."""
    found = ratings.get_review(session, review)
    ratings.visible_product(session, found, caller)
    return ratings.review_json(session, found, caller)


class ProductReviewsHandler(APIHandler):
    @web.authenticated
    async def get(self, product):
        limit = self.int_argument("limit", 50, 1, 200)
        offset = self.int_argument("offset", 0, 0, 10**9)
        self.write_json(await self.in_db(product_reviews, self.caller, product, limit, offset))

    @web.authenticated
    async def post(self, product):
        body = self.json_body()
        answer = await self.in_write(_review_act, self.caller, ratings.rate, product,
                                     body.get("version"), body.get("stars"), body.get("text"))
        self.set_header("Location", f"{self.market.service_prefix}api/reviews/{answer['id']}")
        self.write_json(answer, status=201)


class ReviewHandler(APIHandler):
    @web.authenticated
    async def get(self, review):
        self.write_json(await self.in_db(review_reading, self.caller, review))

    @web.authenticated
    async def put(self, review):
        body = self.json_body()
        self.write_json(await self.in_write(_review_act, self.caller, ratings.edit, review,
                                            body.get("stars"), body.get("text")))


class ReviewReplyHandler(APIHandler):
    @web.authenticated
    async def post(self, review):
        reply = self.json_body().get("reply")
        self.write_json(await self.in_write(_review_act, self.caller, ratings.reply, review,
                                            reply))


class ReviewHideHandler(APIHandler):
    @web.authenticated
    async def post(self, review):
        self.caller.require(SCOPE_APPROVE, "hiding a review")
        reason = self.json_body().get("reason")
        self.write_json(await self.in_write(_review_act, self.caller, ratings.hide, review,
                                            reason))


def _review_act(session, caller, action, *args) -> dict:
    """Blocking (the db executor, one write transaction): ``action(session, caller, *args)``
    (rate, edit, reply, hide), then the review as it now stands."""
    review = action(session, caller, *args)
    session.flush()
    return ratings.review_json(session, review, caller)


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


def features_json(session, caller, current_only: bool) -> list[dict]:
    return [ranking.feature_json(f, p)
            for f, p in ranking.features(session, caller, current_only=current_only)]


class RankingHandler(APIHandler):
    @web.authenticated
    async def get(self):
        self.write_json(await self.in_db(ranking_json, self.caller))


class FeaturesHandler(APIHandler):
    @web.authenticated
    async def get(self):
        raw = self.get_query_argument("all", "0")
        if raw not in ("0", "1"):
            raise InvalidField("all must be 0 (features running now) or 1 (every feature)", "all")
        self.write_json({"features": await self.in_db(features_json, self.caller, raw == "0")})

    @web.authenticated
    async def post(self):
        self.caller.require(SCOPE_APPROVE, "featuring a product")
        self.write_json(await self.in_write(_feature, self.caller, self.json_body()),
                        status=201)


class ReportHandler(APIHandler):
    @web.authenticated
    async def get(self):
        arg = self.get_query_argument
        fmt = arg("format", "json")
        if fmt not in ("json", "csv"):
            raise InvalidField("format must be json or csv", "format")
        result = await self.in_db(report.table, self.caller, arg("sort", None),
                                  arg("order", None), arg("unit_type", None))
        if fmt == "csv":
            self.set_attachment("table2-report.csv", "text/csv; charset=utf-8")
            self.finish(report.to_csv(result))
            return
        self.write_json(result)


def _feature(session, caller, body: dict) -> dict:
    item = ranking.feature(session, caller, body.get("product"), body.get("starts_at"),
                           body.get("days"), body.get("reason"))
    session.flush()
    return ranking.feature_json(item, catalog.get_product(session, body["product"], caller))


def _set_unit_type(session, unit: str, unit_type) -> dict:
    found = units.set_unit_type(session, unit, unit_type)
    session.flush()
    return unit_json(found)


class UnitTypeHandler(APIHandler):
    @web.authenticated
    async def post(self, unit):
        self.caller.require(SCOPE_APPROVE, "changing a unit's type")
        self.write_json(await self.in_write(_set_unit_type, unit, self.json_body().get("type")))


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
