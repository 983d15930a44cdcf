"""Publishing in the browser: a bundle zip dropped (or chosen) and checked before anything is
submitted, the sharing agreement accepted with a checkbox, and each product's version history.

The check is :func:`~marketplace_ext.publishing.check_upload` (nothing stored, nothing
recorded), reached two ways: the page's script calls ``POST api/bundles/validate`` as soon as a
file is dropped, and without scripts the form's "Check bundle" button posts the same file to
the page. "Submit for review" is :func:`~marketplace_ext.publishing.publish_upload`, which
validates again and stores nothing unless everything passes.
"""

from __future__ import annotations

from sqlalchemy import select
from tornado import web

from .. import catalog, publishing
from ..auth import SCOPE_PUBLISH
from ..bundle import MANIFEST, BundleInvalid, BundleTooLarge
from ..errors import InvalidField, MarketError, PayloadTooLarge
from ..orm import Product, Unit
from .base import MULTIPART_ENVELOPE, APIHandler, PageHandler


class _BundleUpload:
    """A route that takes a bundle zip as multipart field ``bundle`` (publishers only)."""

    def max_body_bytes(self) -> int:
        if self.request.method == "POST":
            return self.market.bundle_limits.max_total_bytes + MULTIPART_ENVELOPE
        return self.body_limit

    def check_before_body(self) -> None:
        if self.request.method == "POST":
            self.caller.require(SCOPE_PUBLISH, "publishing a product")

    def uploaded_bundle(self) -> tuple[bytes, str]:
        files = self.request.files.get("bundle")
        if not files or not files[0]["body"]:
            raise InvalidField("choose the bundle zip (or drop it on the form)", "bundle")
        data = files[0]["body"]
        limit = self.market.bundle_limits.max_total_bytes
        if len(data) > limit:
            raise PayloadTooLarge(f"bundle is {len(data)} bytes; the limit is {limit}", "bundle")
        return data, files[0].get("filename") or "bundle.zip"


class BundleValidateHandler(_BundleUpload, APIHandler):
    """``POST api/bundles/validate``: every problem of a bundle, by file and field, and what
    submitting it would do; stores and records nothing."""

    @web.authenticated
    async def post(self):
        data, _ = self.uploaded_bundle()
        self.write_json(await publishing.check_upload(self.market, self.caller, data))


def unit_products(session, caller) -> list[dict]:
    """The caller's unit's products with their latest version, for the publish page."""
    if caller.unit is None:
        return []
    products = session.scalars(select(Product).join(Unit, Product.unit_id == Unit.id)
                               .where(Unit.slug == caller.unit).order_by(Product.name)).all()
    out = []
    for p in products:
        latest = p.versions[-1] if p.versions else None
        out.append({**catalog.product_summary(p, caller),
                    "latest": catalog.version_json(latest) if latest else None,
                    "versions": len(p.versions)})
    return out


class PublishPage(_BundleUpload, PageHandler):
    nav = "publish"

    async def _render(self, status: int = 200, **ns) -> None:
        ns.setdefault("check", None)
        products = await self.in_db(unit_products, self.caller)
        self.render_template("publish.html", status=status, terms=self.market.sharing_terms,
                             products=products,
                             can_publish=SCOPE_PUBLISH in self.caller.scopes, **ns)

    @web.authenticated
    async def get(self):
        await self._render()

    @web.authenticated
    async def post(self):
        intent = self.get_body_argument("intent", "submit")
        form = {k: self.get_body_argument(k, "") for k in self.request.body_arguments}
        filename = ""
        try:
            data, filename = self.uploaded_bundle()
            if intent == "check":
                check = await publishing.check_upload(self.market, self.caller, data)
                await self._render(status=200 if check["valid"] else 400, form=form,
                                   check={**check, "filename": filename})
                return
            accept = self.get_body_argument("accept_terms", "") in ("true", "yes", "1", "on")
            result = await publishing.publish_upload(self.market, self.caller, data, accept)
        except (BundleInvalid, BundleTooLarge) as e:
            check = {"valid": False, "problems": publishing.problems_of(e), "filename": filename}
            await self._render(status=e.status, form=form, check=check,
                               errors={"bundle": "the bundle has problems: nothing was submitted"})
            return
        except MarketError as e:
            if e.field in ("name", "version", "kind"):  # the manifest clashes with the catalogue
                check = {"valid": False, "filename": filename, "problems": [
                    {"file": MANIFEST, "field": e.field, "message": e.message}]}
                await self._render(status=e.status, form=form, check=check, errors={
                    "bundle": "the bundle has problems: nothing was submitted"})
                return
            field = e.field if e.field in ("bundle", "accept_terms") else "_form"
            await self._render(status=e.status, form=form, errors={field: e.message})
            return
        self.redirect_after_post(f"publish/{result['product']}?submitted={result['version']}")


class ProductHistoryPage(PageHandler):
    """A product's version history (every state change, who, when, why) for its unit and
    operators, with the owner's shelf control."""

    nav = "publish"

    async def _render(self, product: str, status: int = 200, **ns) -> None:
        detail, unit, on_shelf = await self.in_db(_history, self.caller, product,
                                                  self.market.service_prefix)
        owner = (self.caller.unit == unit and SCOPE_PUBLISH in self.caller.scopes)
        self.render_template("publish_product.html", status=status, product=detail,
                             can_shelve=(owner or self.caller.is_operator) and on_shelf,
                             submitted=self.get_query_argument("submitted", ""),
                             shelved=self.get_query_argument("shelf", ""), **ns)

    @web.authenticated
    async def get(self, product):
        await self._render(product)

    @web.authenticated
    async def post(self, product):
        state = self.get_body_argument("state", "")
        reason = self.get_body_argument("reason", "").strip() or None
        try:
            await self.in_write(_set_shelf, self.caller, product, state, reason)
        except MarketError as e:  # rolled back: nothing written
            await self.render_form_error_history(product, e)
            return
        self.redirect_after_post(f"publish/{product}?shelf={state}")

    async def render_form_error_history(self, product: str, error: MarketError) -> None:
        form = {k: self.get_body_argument(k, "") for k in self.request.body_arguments}
        await self._render(product, status=error.status, form=form,
                           errors={error.field if error.field in ("reason", "state") else "_form":
                                   error.message})


def _history(session, caller, product: str, prefix: str) -> tuple[dict, str, bool]:
    """A product's detail (versions and their history), its unit, whether it is on sale."""
    p = catalog.get_product(session, product, caller)
    return catalog.product_detail(p, caller, prefix), p.unit.slug, p.current_version is not None


def _set_shelf(session, caller, product: str, state: str, reason: str | None) -> None:
    catalog.set_shelf(session, caller, catalog.get_product(session, product, caller), state,
                      reason)


default_handlers = [
    (r"/api/bundles/validate", BundleValidateHandler),
    (r"/publish", PublishPage),
    (r"/publish/(?P<product>[^/]+)", ProductHistoryPage),
]
