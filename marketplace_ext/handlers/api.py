"""JSON REST handlers under ``api/``; the contract is ``openapi.yaml``."""

from __future__ import annotations

from sqlalchemy import text
from tornado import web

from .. import (
    __version__,
    catalog,
    interface,
    ledger_views,
    points,
    product_envs,
    purchase,
    remote_call,
)
from ..auth import SCOPE_APPROVE, SCOPE_PUBLISH
from ..downloads import extract_file, plan_export, plan_file, record_export, record_file
from ..errors import (
    Forbidden,
    InvalidField,
    MethodNotAllowed,
)
from ..hubapi import ROLE_GROUPS
from ..ids import parse_id
from ..openapi import openapi_document
from ..publishing import publish_upload, review_version
from ..units import get_unit, list_units, validate_slug, validate_unit_type
from .base import MULTIPART_ENVELOPE, APIHandler


def unit_json(unit, member_count: int | None = None) -> dict:
    data = {"slug": unit.slug, "name": unit.name, "hub_group": unit.hub_group,
            "type": unit.type, "created_at": unit.created_at.isoformat() + "Z"}
    if member_count is not None:
        data["member_count"] = member_count
    return data


class HealthHandler(APIHandler):
    """Liveness for the launcher and probes; needs no login and reveals nothing private."""

    def get_current_user(self):
        return None

    async def get(self):
        await self.in_db(_ping)
        self.write_json({"status": "ok", "version": __version__})


def _ping(session) -> None:
    session.execute(text("SELECT 1"))


class LoopLagHandler(APIHandler):
    """Operators: how late the service's event loop ran its timer over the last ``seconds``
    (see :mod:`marketplace_ext.looplag`)."""

    @web.authenticated
    def get(self):
        self.caller.require(SCOPE_APPROVE, "reading the service's loop lag")
        seconds = self.int_argument("seconds", 60, 1, 3600)
        self.write_json(self.market.loop_lag.stats(seconds))


class OpenAPIHandler(APIHandler):
    def get_current_user(self):
        return None

    def get(self):
        self.write_json(openapi_document())


class MeHandler(APIHandler):
    @web.authenticated
    async def get(self):
        caller = self.caller
        unit = await self.in_db(_unit_json, caller.unit) if caller.unit else None
        self.write_json({
            "name": caller.name,
            "unit": unit,
            "roles": caller.roles,
            "scopes": sorted(caller.scopes),
        })


class UnitsHandler(APIHandler):
    @web.authenticated
    async def get(self):
        self.write_json({"units": await self.in_db(_units_json)})

    @web.authenticated
    async def post(self):
        self.caller.require(SCOPE_APPROVE, "creating a unit")
        body = self.json_body()
        slug = validate_slug(body.get("slug"))
        if "name" not in body:
            raise InvalidField("name is required: the unit's display name", "name")
        unit = await self.market.units.create_unit(
            slug, body["name"], self.caller.name,
            validate_unit_type(body.get("type", "provincial_company")))
        self.set_header("Location", f"{self.market.service_prefix}api/units/{unit.slug}")
        self.write_json(unit_json(unit, 0), status=201)


class UnitHandler(APIHandler):
    @web.authenticated
    async def get(self, unit):
        info, listed = await self.in_db(_unit_members, unit)
        self.caller.require_unit_or_operator(info["slug"], "listing a unit's members")
        hub = self.market.hub
        role_members = {role: await hub.group_members(group) for role, group in ROLE_GROUPS.items()}
        members = [
            {
                "user": m["user"],
                "roles": sorted(r for r, users in role_members.items() if m["user"] in users),
                "added_at": m["added_at"],
                "added_by": m["added_by"],
            }
            for m in listed
        ]
        self.write_json({**info, "member_count": len(members), "members": members})


def _unit_json(session, slug: str) -> dict:
    return unit_json(get_unit(session, slug))


def _units_json(session) -> list[dict]:
    return [unit_json(u, n) for u, n in list_units(session)]


def _unit_members(session, slug: str) -> tuple[dict, list[dict]]:
    """A unit (404 if there is none) and its members, without their roles (the hub's)."""
    unit = get_unit(session, slug)
    return unit_json(unit), [{"user": m.user_name, "added_at": m.added_at.isoformat() + "Z",
                              "added_by": m.added_by} for m in unit.members]


class UnitMemberHandler(APIHandler):
    @web.authenticated
    async def put(self, unit, user):
        self.caller.require(SCOPE_APPROVE, "managing unit members")
        body = self.json_body() if self.request.body else {}
        roles = body.get("roles")
        if roles is not None:
            if (not isinstance(roles, list) or not all(isinstance(r, str) for r in roles)
                    or not set(roles) <= set(ROLE_GROUPS)):
                raise InvalidField(
                    f"roles must be a list drawn from {sorted(ROLE_GROUPS)}", "roles"
                )
            roles = set(roles)
        member, created = await self.market.units.add_member(
            unit, user, self.caller.name, roles
        )
        self.write_json(
            {"user": member.user_name, "unit": unit,
             "roles": await self.market.hub.roles_of(member.user_name)},
            status=201 if created else 200,
        )

    @web.authenticated
    async def delete(self, unit, user):
        self.caller.require(SCOPE_APPROVE, "managing unit members")
        await self.market.units.remove_member(unit, user)
        self.set_status(204)
        self.finish()


class TermsHandler(APIHandler):
    @web.authenticated
    def get(self):
        self.write_json({"terms": self.market.sharing_terms})


class ProductsHandler(APIHandler):
    @web.authenticated
    async def get(self):
        kind = self.get_query_argument("kind", None)
        if kind is not None and kind not in catalog.KINDS:
            raise InvalidField(f"kind must be one of {', '.join(catalog.KINDS)}", "kind")
        limit = self.int_argument("limit", 50, 1, 200)
        offset = self.int_argument("offset", 0, 0, 10**9)
        arg = self.get_query_argument
        filters = {"kind": kind, "tag": arg("tag", None), "unit": arg("unit", None),
                   "q": arg("q", None), "sort": arg("sort", "name")}
        products, total = await self.in_db(_products_json, self.caller, filters, limit, offset)
        self.write_json({"products": products, "total": total, "limit": limit,
                         "offset": offset})

    def max_body_bytes(self) -> int:
        if self.request.method == "POST":  # the bundle upload (multipart)
            return self.market.bundle_limits.max_total_bytes + MULTIPART_ENVELOPE
        return self.body_limit

    def check_before_body(self) -> None:
        if self.request.method == "POST":
            self.caller.require(SCOPE_PUBLISH, "publishing a product")

    @web.authenticated
    async def post(self):
        data, accept = self.bundle_upload()
        result = await publish_upload(self.market, self.caller, data, accept)
        self.write_json(result, status=201 if result["created"] else 200)


def _products_json(session, caller, filters: dict, limit: int, offset: int,
                   ) -> tuple[list[dict], int]:
    items, total = catalog.list_products(session, caller, limit=limit, offset=offset,
                                         **filters)
    return [catalog.product_summary(p, caller) for p in items], total


class ProductHandler(APIHandler):
    @web.authenticated
    async def get(self, product):
        self.write_json(await self.in_db(_product_json, self.market, self.caller, product))


def _product_json(session, market, caller, product: str) -> dict:
    p = catalog.get_product(session, product, caller)
    return {**catalog.product_detail(p, caller, market.service_prefix),
            "stats": ledger_views.usage_stats(session, p),
            "environments": product_envs.environments(market.envs, p, caller)}


class ReviewHandler(APIHandler):
    @web.authenticated
    async def post(self, product, version):
        self.caller.require(SCOPE_APPROVE, "reviewing a version")
        body = self.json_body()
        self.write_json(await review_version(self.market, self.caller, product, version,
                                             body.get("decision"), body.get("reason")))


class ShelfHandler(APIHandler):
    @web.authenticated
    async def post(self, product):
        body = self.json_body()
        self.write_json(await self.in_write(_set_shelf, self.caller, product, body))


def _set_shelf(session, caller, product: str, body: dict) -> dict:
    p = catalog.get_product(session, product, caller)
    v = catalog.set_shelf(session, caller, p, body.get("state"), body.get("reason"))
    session.flush()
    return catalog.version_json(v, full=True)


class OrdersHandler(APIHandler):
    @web.authenticated
    async def get(self):
        if self.caller.unit is None:
            raise Forbidden(f"{self.caller.name} is not a member of any unit; ask an operator",
                            "unit")
        limit = self.int_argument("limit", 50, 1, 200)
        offset = self.int_argument("offset", 0, 0, 10**9)
        orders, total = await self.in_db(_orders_json, self.caller.unit, limit, offset)
        self.write_json({"orders": orders, "total": total, "limit": limit, "offset": offset})

    @web.authenticated
    async def post(self):
        product, plan, key = purchase.validate_order_request(self.json_body())
        body, created = await self.market.executors.in_batched_write(
            _buy, self.caller, self.market.economy, product, plan, key)
        self.write_json(body, status=201 if created else 200)


def _orders_json(session, unit: str, limit: int, offset: int) -> tuple[list[dict], int]:
    orders, total = ledger_views.list_orders(session, get_unit(session, unit), limit, offset)
    return [ledger_views.order_json(o) for o in orders], total


def _buy(session, caller, economy, product: str, plan: str, key: str) -> tuple[dict, bool]:
    # in a write transaction (batched with other purchases on SQLite), committed by the caller
    order_id, created = purchase.buy(session, caller, economy, product, plan, key)
    return ledger_views.order_document(session, order_id), created


class OrderRefundHandler(APIHandler):
    @web.authenticated
    async def post(self, order):
        self.caller.require(SCOPE_APPROVE, "refunding an order")
        reason = self.json_body().get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidField("reason is required: why the order is refunded", "reason")
        self.write_json(await self.in_write(_refund, self.caller.name, order, reason.strip()))


def _refund(session, operator: str, order: str, reason: str) -> dict:
    found = points.get_order(session, order)
    points.refund(session, found, operator, reason)
    session.flush()
    return ledger_views.order_json(found)


class UnitAccountHandler(APIHandler):
    @web.authenticated
    async def get(self, unit):
        slug = (await self.in_db(_unit_json, unit))["slug"]
        self.caller.require_unit_or_operator(slug, "reading a unit's account")
        limit = self.int_argument("limit", 50, 1, 200)
        offset = self.int_argument("offset", 0, 0, 10**9)
        self.write_json({**await self.in_db(_statement, slug, limit, offset),
                         "limit": limit, "offset": offset})


def _statement(session, slug: str, limit: int, offset: int) -> dict:
    account = points.unit_account(session, get_unit(session, slug))
    return ledger_views.statement(session, account, limit, offset)


class AccountsHandler(APIHandler):
    @web.authenticated
    async def get(self):
        self.caller.require(SCOPE_APPROVE, "listing every account")
        self.write_json({"accounts": await self.in_db(ledger_views.all_accounts)})


class SpendOnPostOnly:
    """GET of a path that spends a use: refused, so a link or an ``<img>`` never spends."""

    refused_methods = ("GET",)  # not listed in a 405's Allow header

    @web.authenticated
    def get(self, *args, **kwargs):
        raise MethodNotAllowed("downloading spends a use, so it takes a POST; its answer "
                               "carries a short-lived link to GET the file", "method")


class FileDownloadHandler(SpendOnPostOnly, APIHandler):
    """POST spends a use on one file of a version and answers a link; the file itself is
    served, streamed, by :class:`DownloadLinkHandler` (a GET never spends)."""

    @web.authenticated
    async def post(self, product, version, path):
        caller = self.caller
        plan = await self.in_db(plan_file, caller, product, version, path)
        # stored before the use is recorded: a failure between the two leaves an orphan blob
        # (blob_gc collects it), never a spent use without its file
        await self.in_io(extract_file, self.market.blobs, plan)
        index = await self.in_write(record_file, caller, plan)
        self._write_link(plan.sha256, plan.filename, "application/octet-stream", index)

    def _write_link(self, sha256: str, filename: str, content_type: str, log_index: int,
                    **extra) -> None:
        token, link = self.market.download_links.mint(self.caller.name, sha256, filename,
                                                      content_type, log_index)
        self.write_json({"url": f"{self.market.service_prefix}api/downloads/{token}",
                         "sha256": sha256, "filename": filename, "log_index": log_index,
                         "expires_in": self.market.download_links.ttl_seconds, **extra})


class ViewExportHandler(FileDownloadHandler):
    """A data product's desensitized view as CSV or Parquet (download mode)."""

    @web.authenticated
    async def post(self, product, view):
        market = self.market
        body = self.json_body() if self.request.body else {}
        fmt = body.get("format", self.get_query_argument("format", "csv"))
        plan = await self.in_db(plan_export, market.data_platform, self.caller, product, view,
                                fmt)
        data, rows, truncated = await self.in_spark(
            market.data_platform.export_view, plan.platform_unit, plan.view, plan.format)
        await self.in_io(market.blobs.put, data)
        digest, index = await self.in_write(record_export, self.caller, plan, data, rows,
                                            truncated)
        self._write_link(digest, f"{view}.{fmt}", "text/csv; charset=utf-8" if fmt == "csv"
                         else "application/vnd.apache.parquet", index, rows=rows,
                         truncated=truncated)


class DownloadLinkHandler(APIHandler):
    """The file behind a link minted by a download or export POST: free, as often as needed,
    for the user it was minted for, until it expires."""

    @web.authenticated
    async def get(self, token):
        link = self.market.download_links.open(token, self.caller.name)
        self.set_attachment(link.filename, link.content_type)
        self.set_header("X-Content-SHA256", link.sha256)
        if link.log_index is not None:
            self.set_header("X-Log-Index", str(link.log_index))
        await self.stream_blob(link.sha256)  # in chunks read on the io executor


class LogKeyHandler(APIHandler):
    @web.authenticated
    def get(self):
        tlog = self.market.tlog
        self.write_json({"origin": tlog.origin, "log_key": tlog.vkey,
                         "witnesses": {n: str(w.key) for n, w in tlog.witnesses.items()},
                         "quorum": tlog.quorum})


class CheckpointHandler(APIHandler):
    @web.authenticated
    async def get(self):
        size = self.get_query_argument("size", None)
        if size is not None:
            size = self.int_argument("size", 0, 0, 2**62)
        self.write_json(await self.in_db(self.market.tlog.checkpoint, size))


class LogEntryHandler(APIHandler):
    """The public part of an entry for everyone; its details and salt for its parties and
    operators (see :func:`marketplace_ext.certlog.access`)."""

    @web.authenticated
    async def get(self, index):
        number = parse_id(index, "log entry", "index")
        self.write_json(await self.in_db(self.market.tlog.entry, number, self.caller))


class InclusionProofHandler(APIHandler):
    @web.authenticated
    async def get(self):
        index = self.required_int("index")
        size = self.required_int("size")
        self.write_json(await self.in_db(self.market.tlog.inclusion, index, size))


class ConsistencyProofHandler(APIHandler):
    @web.authenticated
    async def get(self):
        old = self.required_int("old")
        new = self.required_int("new")
        self.write_json(await self.in_db(self.market.tlog.consistency, old, new))


class CosignaturesHandler(APIHandler):
    @web.authenticated
    async def post(self):
        body = self.json_body()
        self.write_json(await self.in_write(self.market.tlog.add_cosignature,
                                            body.get("cosignature")))


class QueryHandler(APIHandler):
    @web.authenticated
    async def post(self, product):
        market = self.market
        plan = await self.in_db(interface.plan_query, market.data_platform, self.caller, product,
                                self.json_body())
        result = await self.in_spark(market.data_platform.query, plan.platform_unit, plan.sql,
                                     plan.grants, plan.limit)
        index = await self.in_write(interface.record_query, self.caller, plan, result)
        self.set_header("X-Log-Index", str(index))
        self.write_json({**result, "log_index": index})


class PredictHandler(APIHandler):
    @web.authenticated
    async def post(self, product):
        market = self.market
        plan = await self.in_db(remote_call.plan_call, self.caller, product, self.json_body(),
                                market.predict_max_rows)
        predictions = await market.predict(plan)
        index = await self.in_write(remote_call.record_call, self.caller, plan, predictions)
        self.set_header("X-Log-Index", str(index))
        self.write_json({"predictions": predictions, "version": plan.version,
                         **({"model": plan.derived_model} if plan.derived_model else {}),
                         "log_index": index})


default_handlers = [
    (r"/api/health", HealthHandler),
    (r"/api/openapi.json", OpenAPIHandler),
    (r"/api/me", MeHandler),
    (r"/api/units", UnitsHandler),
    (r"/api/units/(?P<unit>[^/]+)", UnitHandler),
    (r"/api/units/(?P<unit>[^/]+)/members/(?P<user>[^/]+)", UnitMemberHandler),
    (r"/api/terms", TermsHandler),
    (r"/api/products", ProductsHandler),
    (r"/api/products/(?P<product>[^/]+)", ProductHandler),
    (r"/api/products/(?P<product>[^/]+)/versions/(?P<version>[^/]+)/review", ReviewHandler),
    (r"/api/products/(?P<product>[^/]+)/shelf", ShelfHandler),
    (r"/api/orders", OrdersHandler),
    (r"/api/orders/(?P<order>[^/]+)/refund", OrderRefundHandler),
    (r"/api/units/(?P<unit>[^/]+)/account", UnitAccountHandler),
    (r"/api/accounts", AccountsHandler),
    (r"/api/products/(?P<product>[^/]+)/versions/(?P<version>[^/]+)/files/(?P<path>.+)",
     FileDownloadHandler),
    (r"/api/products/(?P<product>[^/]+)/views/(?P<view>[^/]+)/export", ViewExportHandler),
    (r"/api/downloads/(?P<token>[^/]+)", DownloadLinkHandler),
    (r"/api/loop-lag", LoopLagHandler),
    (r"/api/log/key", LogKeyHandler),
    (r"/api/log/checkpoint", CheckpointHandler),
    (r"/api/log/entries/(?P<index>[^/]+)", LogEntryHandler),
    (r"/api/log/proof/inclusion", InclusionProofHandler),
    (r"/api/log/proof/consistency", ConsistencyProofHandler),
    (r"/api/log/cosignatures", CosignaturesHandler),
    (r"/api/products/(?P<product>[^/]+)/query", QueryHandler),
    (r"/api/products/(?P<product>[^/]+)/predict", PredictHandler),
]
