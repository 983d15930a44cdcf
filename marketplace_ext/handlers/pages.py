"""HTML pages of the service; browsers log in through hub OAuth (redirect)."""

from __future__ import annotations

from jupyterhub.services.auth import HubOAuthCallbackHandler
from sqlalchemy import select
from tornado import web

from .. import catalog, points, product_envs
from ..errors import NotFound
from ..orm import Version
from ..units import get_unit
from .base import PageHandler


class HomeHandler(PageHandler):
    """Who am I, my unit's balance, and the shelf with its filters."""

    nav = "shelf"

    @web.authenticated
    def get(self):
        caller = self.caller
        unit = get_unit(self.db, caller.unit) if caller.unit else None
        balance = points.format_points(points.unit_account(self.db, unit).balance) if unit else None
        kind = self.get_query_argument("kind", "") or None
        q = self.get_query_argument("q", "") or None
        products, total = catalog.list_products(
            self.db, caller, kind=kind if kind in catalog.KINDS else None, q=q, limit=200)
        review_queue = []
        if caller.is_operator:
            review_queue = self.db.scalars(
                select(Version).where(Version.state == catalog.SUBMITTED).order_by(Version.id)
            ).all()
        try:
            checkpoint = self.market.tlog.checkpoint(self.db)
        except NotFound:
            checkpoint = None
        self.render_template(
            "home.html", caller=caller, unit=unit, balance=balance, kind=kind or "", q=q or "",
            checkpoint=checkpoint,
            products=[catalog.product_summary(p, caller) for p in products], total=total,
            kinds=catalog.KINDS, review_queue=review_queue,
        )


class ProductPage(PageHandler):
    @web.authenticated
    def get(self, product):
        p = catalog.get_product(self.db, product, self.caller)
        envs = product_envs.environments(self.market.envs, p, self.caller)
        self.render_template("product.html", caller=self.caller,
                             product=catalog.product_detail(p, self.caller),
                             stats=points.usage_stats(self.db, p), envs=envs)


default_handlers = [
    (r"/?", HomeHandler),
    (r"/products/(?P<product>[^/]+)", ProductPage),
    (r"/oauth_callback", HubOAuthCallbackHandler),
]
