"""HTML pages of the shop: the shelf, a product, buying it. Browsers log in through hub OAuth
(redirect). Each handler parses, authorizes, calls the same domain function as the JSON API
(``handlers/api.py``) and renders; a POST that succeeds redirects (303) to its result."""

from __future__ import annotations

import uuid

from jupyterhub.services.auth import HubOAuthCallbackHandler
from sqlalchemy import select
from sqlalchemy.orm import Session
from tornado import web

from .. import catalog, interface, ledger_views, points, product_envs, purchase
from ..auth import Caller
from ..errors import MarketError, NotFound
from ..federated import coowned as fl_coowned
from ..federated import economy as fl_economy
from ..orm import Version
from ..units import get_unit
from .base import PageHandler
from .reviews import reviews_page, shelf_sections


def shown_error(error: MarketError, fields: tuple[str, ...]) -> MarketError:
    """``error`` as a page shows it: next to its field when the form has that field, in the
    page's banner (``_form``) otherwise; same message and status."""
    if error.field in fields:
        return error
    shown = MarketError(error.message, None)
    shown.status, shown.code = error.status, error.code
    return shown


def unit_balance(session: Session, caller: Caller) -> tuple[object, int | None]:
    """The caller's unit and its balance in centipoints (None, None outside any unit)."""
    if caller.unit is None:
        return None, None
    unit = get_unit(session, caller.unit)
    return unit, points.unit_account(session, unit).balance


def product_namespace(session: Session, market, caller: Caller, name: str) -> dict:
    """What every page about one product shows: its detail, its usage, the caller's
    entitlements to it, its files (with their certified sha256) and views."""
    p = catalog.get_product(session, name, caller)
    detail = catalog.product_detail(p, caller, market.service_prefix)
    unit, _ = unit_balance(session, caller)
    sharing = detail["manifest"].get("sharing", [])
    return {
        "product": detail,
        "stats": ledger_views.usage_stats(session, p),
        "reviews": reviews_page(session, caller, p, 3, 0),  # the aggregate, the latest three
        "envs": product_envs.environments(market.envs, p, caller),
        "entitlements": ledger_views.list_entitlements(session, unit, p) if unit else [],
        "own_product": caller.unit is not None and caller.unit == p.unit.slug,
        "files": catalog.version_files(p.current_version) if "download" in sharing else [],
        "views": (interface.view_schemas(p)
                  if p.kind == "data" and p.current_version is not None else []),
        "sharing": sharing,
        # federated projects opened on it, and a co-owned model's owners (federated.economy)
        "fl_projects": fl_economy.projects_on_product(session, p),
        "co_owners": fl_coowned.co_owners(session, p),
    }


class HomeHandler(PageHandler):
    """Who am I, my unit's balance, and the shelf: search, filters by kind, tag and unit,
    sorted by name, newest or most used."""

    nav = "shelf"

    @web.authenticated
    async def get(self):
        arg = self.get_query_argument
        filters = {"q": arg("q", "").strip(), "kind": arg("kind", ""), "tag": arg("tag", ""),
                   "unit": arg("unit", ""), "sort": arg("sort", "rank")}
        await self.render_from_db("home.html", self._shelf, self.caller, filters)

    def _shelf(self, session: Session, caller: Caller, filters: dict) -> dict:
        """Blocking (the db executor): the shelf page's namespace."""
        unit, balance = unit_balance(session, caller)
        facets = catalog.shelf_facets(session, caller)
        # a filter value the shelf does not offer is ignored (a stale bookmark), not an error
        if filters["kind"] not in catalog.KINDS:
            filters["kind"] = ""
        if filters["tag"] not in facets["tags"]:
            filters["tag"] = ""
        if filters["unit"] not in facets["units"]:
            filters["unit"] = ""
        if filters["sort"] not in catalog.SORTS:
            filters["sort"] = "rank"
        products, total = catalog.list_products(
            session, caller, kind=filters["kind"] or None, tag=filters["tag"] or None,
            unit=filters["unit"] or None, q=filters["q"] or None, sort=filters["sort"],
            limit=200)
        using = ledger_views.units_using_counts(session, products)
        review_queue = []
        if caller.is_operator:
            review_queue = session.scalars(
                select(Version).where(Version.state == catalog.SUBMITTED).order_by(Version.id)
            ).all()
        try:
            checkpoint = self.market.tlog.checkpoint(session)
        except NotFound:
            checkpoint = None
        return dict(
            unit=unit, balance=points.format_points(balance) if balance is not None else None,
            filters=filters, facets=facets, kinds=catalog.KINDS, checkpoint=checkpoint,
            products=[{**catalog.product_summary(p, caller), "units_using": using[p.id]}
                      for p in products],
            total=total, review_queue=review_queue,
            **shelf_sections(session, caller, products),  # featured, trending, new, ratings
            fl_shelf=fl_economy.federated_shelf(session),  # the shelf's federated section
        )


class ProductPage(PageHandler):
    """The product card, plans, usage, versions, the caller's entitlements, and its tools:
    buy, try it (remote call), the SQL box (interface), files and view exports (download)."""

    nav = "shelf"

    @web.authenticated
    async def get(self, product):
        await self.render_from_db("product.html", product_namespace, self.market, self.caller,
                                  product)


BUY_FIELDS = ("plan", "idempotency_key")


class BuyPage(PageHandler):
    """Choose a plan, see its price and the balance after, confirm. The form carries an
    idempotency key made when the form is shown, so a second submit of the same form returns
    the first order instead of buying again. ``?order=<id>`` shows a placed order and its
    entitlement."""

    nav = "shelf"

    @staticmethod
    def _namespace(session: Session, caller: Caller, name: str) -> dict:
        p = catalog.get_product(session, name, caller)
        detail = catalog.product_summary(p, caller)
        unit, balance = unit_balance(session, caller)
        plans = []
        for plan in detail["plans"]:
            price = int(plan["price"]) * points.CENTS
            after = None if balance is None else balance - price
            plans.append({"type": plan["type"], "price": points.format_points(price),
                          "after": None if after is None else points.format_points(after),
                          "affordable": after is not None and after >= 0})
        return {"product": detail, "plans": plans, "unit": unit,
                "balance": None if balance is None else points.format_points(balance),
                "own_product": caller.unit == p.unit.slug,
                "idempotency_key": f"page-{uuid.uuid4().hex}"}

    @web.authenticated
    async def get(self, product):
        order_id = self.get_query_argument("order", None)
        chosen = self.get_query_argument("plan", "")
        await self.render_from_db("buy.html", self._page, self.caller, product, order_id,
                                  chosen)

    @classmethod
    def _page(cls, session: Session, caller: Caller, product: str, order_id: str | None,
              chosen: str) -> dict:
        ns = cls._namespace(session, caller, product)
        if order_id is not None:
            order = points.get_order(session, order_id)
            if caller.unit is None or order.unit.slug != caller.unit \
                    or order.product.name != product:
                raise NotFound(f"no order {order_id!r} of your unit", "order")
            ns["order"] = ledger_views.order_json(order)
        else:
            ns["form"] = {"plan": chosen} if chosen else {}
        return ns

    @web.authenticated
    async def post(self, product):
        body = {"product": product, "plan": self.get_body_argument("plan", None),
                "idempotency_key": self.get_body_argument("idempotency_key", None)}
        try:
            name, plan, key = purchase.validate_order_request(body)
            order = await self.in_write(_place_order, self.caller, self.market.economy, name,
                                        plan, key)
        except MarketError as e:  # rolled back: nothing half-written
            self.render_form_error("buy.html", shown_error(e, BUY_FIELDS),
                                   insufficient=isinstance(e, points.InsufficientPoints),
                                   **await self.in_db(self._namespace, self.caller, product))
            return
        self.redirect_after_post(f"products/{product}/buy?order={order}")


def _place_order(session: Session, caller: Caller, economy, product: str, plan: str,
                 key: str) -> int:
    return purchase.buy(session, caller, economy, product, plan, key)[0]


default_handlers = [
    (r"/?", HomeHandler),
    (r"/products/(?P<product>[^/]+)", ProductPage),
    (r"/products/(?P<product>[^/]+)/buy", BuyPage),
    (r"/oauth_callback", HubOAuthCallbackHandler),
]
