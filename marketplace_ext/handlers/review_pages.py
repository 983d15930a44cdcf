"""Operators' review: the queue of submitted versions, each with a readable diff against the
previous version (manifest, notebook sources and metadata, files), approve or reject with a
reason; and the shelf, where any product is taken off or put back.

The decision is :func:`~marketplace_ext.publishing.review_version` (the same as ``POST
api/products/{p}/versions/{v}/review``), the shelf :func:`~marketplace_ext.catalog.set_shelf`
(``POST api/products/{p}/shelf``).
"""

from __future__ import annotations

from urllib.parse import quote

from sqlalchemy import select
from tornado import web

from .. import catalog, publishing, review_diff
from ..auth import SCOPE_APPROVE
from ..errors import MarketError
from ..orm import Version
from .base import PageHandler


class _OperatorPage(PageHandler):
    nav = "review"

    def check_before_body(self) -> None:
        self.caller.require(SCOPE_APPROVE, "reviewing")


def review_queue(session) -> list[dict]:
    """Submitted versions, oldest first (first come, first reviewed)."""
    versions = session.scalars(select(Version).where(Version.state == catalog.SUBMITTED)
                               .order_by(Version.id)).all()
    return [{**catalog.version_json(v), "product": v.product.name, "title": v.title,
             "kind": v.product.kind, "unit": v.product.unit.slug,
             "first": len(v.product.versions) == 1} for v in versions]


class ReviewQueuePage(_OperatorPage):
    """The queue, and the shelf of every product with its off/on control."""

    async def _render(self, status: int = 200, **ns) -> None:
        queue, shelf = await self.in_db(_queue_and_shelf, self.caller)
        self.render_template("review.html", status=status, queue=queue, shelf=shelf,
                             decided=self.get_query_argument("decided", ""),
                             shelved=self.get_query_argument("shelved", ""), **ns)

    @web.authenticated
    async def get(self):
        self.caller.require(SCOPE_APPROVE, "reviewing")
        await self._render()

    @web.authenticated
    async def post(self):
        """Take a product off the shelf or put it back (``product``, ``state``, ``reason``)."""
        self.caller.require(SCOPE_APPROVE, "changing the shelf")
        name = self.get_body_argument("product", "")
        state = self.get_body_argument("state", "")
        reason = self.get_body_argument("reason", "").strip() or None
        try:
            await self.in_write(_set_shelf, self.caller, name, state, reason)
        except MarketError as e:  # rolled back: nothing written
            form = {k: self.get_body_argument(k, "") for k in self.request.body_arguments}
            await self._render(status=e.status, form=form, failed=name,
                               errors={"_form": f"{name}: {e.message}"})
            return
        self.redirect_after_post(f"review?shelved={quote(name)}")


class ReviewVersionPage(_OperatorPage):
    """One submitted version: what it is, the diff, and the decision."""

    async def _render(self, product: str, version: str, status: int = 200, **ns) -> None:
        # the diff reads both versions' bundles: in the db executor with the session it needs
        # (never a session used on the loop across an await)
        info, detail, diff = await self.in_db(_version_page, self.market.blobs, self.caller,
                                              product, version, self.market.service_prefix)
        self.render_template("review_version.html", status=status, product=info,
                             version=detail, diff=diff, **ns)

    @web.authenticated
    async def get(self, product, version):
        self.caller.require(SCOPE_APPROVE, "reviewing")
        await self._render(product, version)

    @web.authenticated
    async def post(self, product, version):
        # before the body too (an empty POST skips check_before_body): a refusal must not
        # render the review page
        self.caller.require(SCOPE_APPROVE, "reviewing")
        decision = self.get_body_argument("decision", "")
        reason = self.get_body_argument("reason", "").strip() or None
        try:
            await publishing.review_version(self.market, self.caller, product, version,
                                            decision, reason)
        except MarketError as e:
            form = {k: self.get_body_argument(k, "") for k in self.request.body_arguments}
            await self._render(product, version, status=e.status, form=form,
                               errors={e.field if e.field in ("reason", "decision")
                                       else "_form": e.message})
            return
        verb = "approved" if decision == "approve" else "rejected"
        self.redirect_after_post(f"review?decided={quote(f'{product} {version} {verb}')}")


def _queue_and_shelf(session, caller) -> tuple[list[dict], list[dict]]:
    products, _ = catalog.list_products(session, caller, limit=200)
    return review_queue(session), [catalog.product_summary(p, caller) for p in products
                                   if p.current_version is not None]


def _set_shelf(session, caller, name: str, state: str, reason: str | None) -> None:
    catalog.set_shelf(session, caller, catalog.get_product(session, name, caller), state, reason)


def _version_page(session, blobs, caller, product: str, version: str, prefix: str
                  ) -> tuple[dict, dict, object]:
    """Blocking: a submitted version's facts, its JSON and its diff against the previous."""
    p = catalog.get_product(session, product, caller)
    v = catalog.get_version(p, version)
    diff = review_diff.version_diff(blobs, p, v)
    info = {"name": p.name, "kind": p.kind, "unit": p.unit.slug, "title": v.title,
            "summary": v.summary, "card_html": catalog.render_readme(
                v.readme, catalog.card_image_base(prefix, p.name, v.version))}
    return info, catalog.version_json(v, full=True), diff


default_handlers = [
    (r"/review", ReviewQueuePage),
    (r"/review/(?P<product>[^/]+)/(?P<version>[^/]+)", ReviewVersionPage),
]

