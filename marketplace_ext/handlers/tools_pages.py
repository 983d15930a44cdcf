"""HTML pages of a product's tools: "Try it" (remote call on pasted rows), the SQL box over a
data product's views (interface), and downloads of files and view exports (download mode).

Each calls what the JSON API's handler calls (``handlers/api.py``: ``PredictHandler``,
``QueryHandler``, ``FileDownloadHandler``, ``ViewExportHandler``). Spending a use takes a POST:
a file or an export POST spends, certifies and stores the bytes, then redirects (303) to a page
showing the file's sha256 and log index with a short-lived link that serves the bytes (a GET
that spends nothing). Predictions and query results are shown in the answer to their POST.
Blocking work (Spark, a warm kernel, blobs) runs outside the event loop and outside any
database transaction, as in the API.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from tornado import web

from .. import interface, remote_call
from ..downloads import extract_file, plan_export, plan_file, record_export, record_file
from ..errors import InvalidField, MarketError
from .base import PageHandler
from .pages import product_namespace, shown_error

#: what the "Try it" box holds before anyone types (the template tool's features)
TRY_EXAMPLE = "customer_id,mean_kwh,cv,zero_share,drop\nc1,9.5,0.2,0,0.05\nc2,3.1,0.9,0.4,0.6"


class ProductToolPage(PageHandler):
    """Common ground: the product's namespace from a short session of its own (async handlers
    never hold a transaction across an await), and errors shown next to their field."""

    nav = "shelf"
    template = ""
    fields: tuple[str, ...] = ()

    async def product_ns(self, product: str) -> dict:
        return await self.in_db(product_namespace, self.market, self.caller, product)

    async def show_error(self, product: str, error: MarketError, **ns) -> None:
        self.render_form_error(self.template, shown_error(error, self.fields),
                               **await self.product_ns(product), **ns)


class TryPage(ProductToolPage):
    """Paste rows as CSV or JSON and see a tool product's predictions (remote call)."""

    template = "try.html"
    fields = ("rows", "format")

    @web.authenticated
    async def get(self, product):
        self.render_template(self.template, example=TRY_EXAMPLE,
                             form={"rows": TRY_EXAMPLE, "format": "csv"},
                             **await self.product_ns(product))

    @web.authenticated
    async def post(self, product):
        market = self.market
        try:
            rows = remote_call.parse_rows(self.get_body_argument("rows", ""),
                                          self.get_body_argument("format", "csv"))
            plan = await self.in_db(remote_call.plan_call, self.caller, product,
                                    {"rows": rows}, market.predict_max_rows)
            predictions = await market.predict(plan)
            index = await self.in_write(remote_call.record_call, self.caller, plan, predictions)
        except MarketError as e:
            await self.show_error(product, e, example=TRY_EXAMPLE)
            return
        columns = sorted({k for p in predictions if isinstance(p, dict) for k in p},
                         key=lambda k: (k != "customer_id", k))
        self.render_template(
            self.template, example=TRY_EXAMPLE, predictions=predictions, columns=columns,
            log_index=index, version=plan.version,
            form={k: self.get_body_argument(k, "") for k in self.fields},
            **await self.product_ns(product))


def _limit(raw: str) -> int | None:
    if not raw.strip():
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidField("limit must be a whole number of rows", "limit") from None


class SqlPage(ProductToolPage):
    """A SQL box over a data product's granted views, their schemas beside it, and the
    answer as a table (interface)."""

    template = "sql.html"
    fields = ("sql", "limit")

    def _example(self, ns: dict) -> str:
        views = ns["views"]
        return f"SELECT * FROM {views[0]['view']} LIMIT 20" if views else "SELECT 1"

    @web.authenticated
    async def get(self, product):
        ns = await self.product_ns(product)
        self.render_template(self.template, form={"sql": self._example(ns), "limit": ""}, **ns)

    @web.authenticated
    async def post(self, product):
        market = self.market
        try:
            body = {"sql": self.get_body_argument("sql", ""),
                    "limit": _limit(self.get_body_argument("limit", ""))}
            plan = await self.in_db(interface.plan_query, market.data_platform, self.caller,
                                    product, body)
            result = await self.in_spark(market.data_platform.query, plan.platform_unit,
                                         plan.sql, plan.grants, plan.limit)
            index = await self.in_write(interface.record_query, self.caller, plan, result)
        except MarketError as e:
            await self.show_error(product, e)
            return
        self.render_template(self.template, result=result, log_index=index,
                             form={k: self.get_body_argument(k, "") for k in self.fields},
                             **await self.product_ns(product))


def redirect_to_link(handler: PageHandler, product: str, token_link: tuple, **extra) -> None:
    """303 to the page of a freshly minted download link (Post/Redirect/Get)."""
    token, _ = token_link
    query = urlencode({"link": token, **{k: v for k, v in extra.items() if v is not None}})
    handler.redirect_after_post(f"products/{quote(product, safe='')}/download?{query}")


class DownloadPage(ProductToolPage):
    """POST: spend a use on a file of a version, store it, redirect to the link page.
    GET ``?link=<token>``: the file's name, sha256 and log index, and the link that serves
    it (free, for this user, until it expires)."""

    template = "product.html"
    fields = ()

    @web.authenticated
    async def get(self, product):
        token = self.get_query_argument("link", "")
        if not token:  # back from a login that expired on the download form
            self.redirect(f"{self.market.service_prefix}products/{quote(product, safe='')}")
            return
        link = self.market.download_links.open(token, self.caller.name)
        extra = {k: self.get_query_argument(k, None) for k in ("rows", "truncated")}
        self.render_template(
            "download.html", link=link, url=f"{self.market.service_prefix}api/downloads/"
            f"{quote(token, safe='')}", expires_in=self.market.download_links.ttl_seconds,
            **extra, **await self.product_ns(product))

    @web.authenticated
    async def post(self, product):
        market, caller = self.market, self.caller
        try:
            version = self.get_body_argument("version", "")
            path = self.get_body_argument("path", "")
            if not path:
                raise InvalidField("choose a file to download", "path")
            plan = await self.in_db(plan_file, caller, product, version, path)
            # stored before the use is recorded, as in the API: a failure leaves an orphan
            # blob (blob_gc collects it), never a spent use without its file
            await self.in_io(extract_file, market.blobs, plan)
            index = await self.in_write(record_file, caller, plan)
        except MarketError as e:
            await self.show_error(product, e)
            return
        redirect_to_link(self, product, market.download_links.mint(
            caller.name, plan.sha256, plan.filename, "application/octet-stream", index))


class ExportPage(ProductToolPage):
    """POST: a data product's desensitized view exported as CSV or Parquet (download mode),
    then the link page, as for a file. (Its GET is the product page's export form.)"""

    template = "product.html"
    fields = ()

    @web.authenticated
    def get(self, product):  # back from a login that expired on the export form
        self.redirect(f"{self.market.service_prefix}products/{quote(product, safe='')}")

    @web.authenticated
    async def post(self, product):
        market = self.market
        try:
            view, fmt = self.get_body_argument("view", ""), self.get_body_argument("format", "csv")
            plan = await self.in_db(plan_export, market.data_platform, self.caller, product,
                                    view, fmt)
            data, rows, truncated = await self.in_spark(
                market.data_platform.export_view, plan.platform_unit, plan.view, plan.format)
            await self.in_io(market.blobs.put, data)
            digest, index = await self.in_write(record_export, self.caller, plan, data, rows,
                                                truncated)
        except MarketError as e:
            await self.show_error(product, e)
            return
        content_type = ("text/csv; charset=utf-8" if fmt == "csv"
                        else "application/vnd.apache.parquet")
        redirect_to_link(self, product, market.download_links.mint(
            self.caller.name, digest, f"{view}.{fmt}", content_type, index),
            rows=str(rows), truncated="yes" if truncated else None)


default_handlers = [
    (r"/products/(?P<product>[^/]+)/try", TryPage),
    (r"/products/(?P<product>[^/]+)/sql", SqlPage),
    (r"/products/(?P<product>[^/]+)/download", DownloadPage),
    (r"/products/(?P<product>[^/]+)/export", ExportPage),
]
