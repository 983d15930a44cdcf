"""Operators' review: the queue of submitted versions, each with a readable diff against the
previous version (manifest, notebook sources and metadata, files), approve or reject with a
reason; and the shelf, where any product is taken off or put back.

The decision is :func:`~marketplace_ext.publishing.review_version` (the same as ``POST
api/products/{p}/versions/{v}/review``), the shelf :func:`~marketplace_ext.catalog.set_shelf`
(``POST api/products/{p}/shelf``).
"""

from __future__ import annotations

import asyncio
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

    def _render(self, status: int = 200, **ns) -> None:
        with self.market.session_factory() as session:
            queue = review_queue(session)
            products, _ = catalog.list_products(session, self.caller, limit=200)
            shelf = [catalog.product_summary(p, self.caller) for p in products
                     if p.current_version is not None]
        self.render_template("review.html", status=status, queue=queue, shelf=shelf,
                             decided=self.get_query_argument("decided", ""),
                             shelved=self.get_query_argument("shelved", ""), **ns)

    @web.authenticated
    def get(self):
        self.caller.require(SCOPE_APPROVE, "reviewing")
        self._render()

    @web.authenticated
    def post(self):
        """Take a product off the shelf or put it back (``product``, ``state``, ``reason``)."""
        self.caller.require(SCOPE_APPROVE, "changing the shelf")
        name = self.get_body_argument("product", "")
        state = self.get_body_argument("state", "")
        reason = self.get_body_argument("reason", "").strip() or None
        try:
            p = catalog.get_product(self.db, name, self.caller)
            catalog.set_shelf(self.db, self.caller, p, state, reason)
            self.db.commit()
        except MarketError as e:
            self.db.rollback()
            form = {k: self.get_body_argument(k, "") for k in self.request.body_arguments}
            self._render(status=e.status, form=form, failed=name,
                         errors={"_form": f"{name}: {e.message}"})
            return
        self.redirect_after_post(f"review?shelved={quote(name)}")


class ReviewVersionPage(_OperatorPage):
    """One submitted version: what it is, the diff, and the decision."""

    async def _render(self, product: str, version: str, status: int = 200, **ns) -> None:
        with self.market.session_factory() as session:
            p = catalog.get_product(session, product, self.caller)
            v = catalog.get_version(p, version)
            diff = await asyncio.get_running_loop().run_in_executor(
                None, review_diff.version_diff, self.market.blobs, p, v)
            detail = catalog.version_json(v, full=True)
            info = {"name": p.name, "kind": p.kind, "unit": p.unit.slug, "title": v.title,
                    "summary": v.summary, "card_html": catalog.render_readme(v.readme)}
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


default_handlers = [
    (r"/review", ReviewQueuePage),
    (r"/review/(?P<product>[^/]+)/(?P<version>[^/]+)", ReviewVersionPage),
]

