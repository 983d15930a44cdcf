"""HTML pages of the service; browsers log in through hub OAuth (redirect)."""

from __future__ import annotations

from jupyterhub.services.auth import HubOAuthCallbackHandler
from sqlalchemy import select
from tornado import web

from .. import catalog, m2d, points, product_envs
from ..errors import NotFound
from ..orm import Version
from ..units import get_unit
from .base import BaseHandler

#: no inline script or style anywhere: a product card's README is publisher HTML (sanitized by
#: nh3), and the policy is the second line of defence if the sanitizer misses something
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'self'")


class PageHandler(BaseHandler):
    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", PAGE_CSP)
        self.set_header("X-Content-Type-Options", "nosniff")

    def render_template(self, name: str, **ns) -> None:
        template = self.settings["jinja_env"].get_template(name)
        ns.setdefault("prefix", self.market.service_prefix)
        ns.setdefault("hub_prefix", self.market.hub_prefix)
        self.finish(template.render(**ns))

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "message", None) or self._reason
        self.render_template("error.html", status_code=status_code, message=message)


class HomeHandler(PageHandler):
    """Who am I, my unit's balance, and the shelf with its filters."""

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


class ModelToDataPage(PageHandler):
    """The requests of the caller's unit, with their code for the owner to read."""

    @web.authenticated
    def get(self):
        requests = m2d.list_requests(self.db, self.caller)
        code = {r.id: m2d.notebook_cells(self.market.blobs, r) for r in requests}
        self.render_template(
            "m2d.html", caller=self.caller, code=code,
            requests=[m2d.request_json(self.db, self.caller, r, self.market.service_prefix)
                      for r in requests])


default_handlers = [
    (r"/?", HomeHandler),
    (r"/products/(?P<product>[^/]+)", ProductPage),
    (r"/m2d", ModelToDataPage),
    (r"/oauth_callback", HubOAuthCallbackHandler),
]
