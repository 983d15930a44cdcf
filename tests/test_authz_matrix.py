"""The authorization matrix (issue 14 item 11): every route of the marketplace service, with
every HTTP method its handler implements, against six callers - anonymous, a subscriber and a
publisher of the unit that owns the object in the path, a subscriber and a publisher of another
unit, and an operator - each with the status the team's status-code contract expects.

The routes come from ``marketplace_ext.handlers.default_handlers``, so a new route or a new
method without a row in :data:`EXPECTED` fails :func:`test_every_route_has_expectations`.

"Same unit" is unit ``a`` throughout: it owns the products, the runs, the FL projects, the
model-to-data request (as the data owner; the demander is unit ``e``), the order's buyer and the
unit in the path; "another unit" is unit ``b``. A request that succeeds and changes state gets an
object of its own (a fresh run, product, request, project, member), so the rows do not depend
on each other's order; what would change shared demo state uses throwaway objects (a unit made
here, user names that are not demo users).

Rows marked in :data:`PENDING` are known to disagree with the contract while another part of
issue 14 lands; they are asserted like every other row (no xfail), and a failure names who is
on it.
"""

from __future__ import annotations

import base64
import re
import secrets

import authz_cards
import authz_fl_economy
import authz_fl_slices
import authz_forum
import authz_retrain
import authz_reviews
import authz_topics
import authz_workshops
import pytest
import requests
from authz_objects import PAGE_BUILDERS, PREDICT_BODY, ROLES, Builder, Call, Ctx, R, make_objects
from helpers import training_notebook
from tornado import web

from marketplace_ext.bundle import canonical_archive, new_product
from marketplace_ext.handlers import default_handlers

USERS = {"subscriber_same": "subscriber-a", "subscriber_other": "subscriber-b",
         "publisher_same": "publisher-a", "publisher_other": "publisher-b",
         "operator": "operator"}
METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")


def route_methods() -> set[tuple[str, str]]:
    """Every (pattern, method) the service answers: each method a handler implements itself
    (Tornado's own ``RequestHandler.<method>`` answers 405)."""
    found = set()
    for pattern, handler, *_ in default_handlers:
        for method in METHODS:
            impl = getattr(handler, method.lower(), None)
            if impl is not None and impl is not getattr(web.RequestHandler, method.lower()):
                found.add((route_name(pattern), method))
    return found


def route_name(pattern: str) -> str:
    """A route pattern with each named group as ``{name}``: the keys below read as paths and
    do not change when a group's regex is tightened."""
    return GROUP.sub(lambda m: "{" + m.group(1) + "}", pattern)


GROUP = re.compile(r"\(\?P<(\w+)>(?:\[[^\]]*\]|[^)\[])*\)")




A = "/api/products/{product}"
F = "/api/fl/projects/{project}"
M = "/api/m2d/{request}"
RUN = "/api/runs/{run}"
NOENT = "403 no_entitlement"
# pages redirect an anonymous browser to the hub's login; a form POSTed without a login goes
# there too (303), and comes back to its page afterwards
LOGIN = 302
RELOGIN = 303
#: a page that only sends a logged-in browser on to the product's page
TO_PRODUCT = "302 to=/products/"

EXPECTED: dict[tuple[str, str], dict[str, int | str]] = {
    ("/api/health", "GET"): R(200, 200, 200, 200, 200, 200),
    ("/api/openapi.json", "GET"): R(200, 200, 200, 200, 200, 200),
    ("/api/me", "GET"): R(401, 200, 200, 200, 200, 200),
    ("/api/units", "GET"): R(401, 200, 200, 200, 200, 200),
    # the operator's POST repeats the throwaway unit's slug: a second unit would start a
    # second Spark server for nothing (creation itself is exercised by every demo seed)
    ("/api/units", "POST"): R(401, 403, 403, 403, 403, 409),
    ("/api/units/{unit}", "GET"): R(401, 200, 403, 200, 403, 200),
    ("/api/units/{unit}/members/{user}", "PUT"):
        R(401, 403, 403, 403, 403, 201),
    ("/api/units/{unit}/members/{user}", "DELETE"):
        R(401, 403, 403, 403, 403, 204),
    ("/api/terms", "GET"): R(401, 200, 200, 200, 200, 200),
    ("/api/products", "GET"): R(401, 200, 200, 200, 200, 200),
    ("/api/products", "POST"): R(401, 403, 403, 201, 201, 403),
    # a check stores nothing: any publisher may check a bundle (problems are a 200 answer)
    ("/api/bundles/validate", "POST"): R(401, 403, 403, 200, 200, 403),
    # a product with a submitted version only: invisible to other units
    (A, "GET"): R(401, 200, 404, 200, 404, 200),
    (A + "/versions/{version}/review", "POST"): R(401, 403, 403, 403, 403, 200),
    (A + "/shelf", "POST"): R(401, 403, 403, 200, 403, 200),
    ("/api/orders", "GET"): R(401, 200, 200, 200, 200, 403),
    # a unit does not buy its own product; an operator belongs to no unit
    ("/api/orders", "POST"): R(401, 403, 201, 403, 201, 403),
    ("/api/orders/{order}/refund", "POST"): R(401, 403, 403, 403, 403, 200),
    ("/api/units/{unit}/account", "GET"): R(401, 200, 403, 200, 403, 200),
    ("/api/accounts", "GET"): R(401, 403, 403, 403, 403, 200),
    # sharing modes: the owner's unit uses its product freely, another unit needs an order,
    # an operator is in no unit; a GET never spends
    (A + "/versions/{version}/files/{path}", "GET"):
        R(401, 405, 405, 405, 405, 405),
    # an operator, in no unit, inspects the files it reviews and certifies (sharing.py's
    # inspection); every other mode needs a unit
    (A + "/versions/{version}/files/{path}", "POST"):
        R(401, 200, NOENT, 200, NOENT, 200),
    (A + "/views/{view}/export", "GET"): R(401, 405, 405, 405, 405, 405),
    (A + "/views/{view}/export", "POST"): R(401, 200, NOENT, 200, NOENT, 403),
    # a link is its minter's (publisher-a's) alone
    ("/api/downloads/{token}", "GET"): R(401, 404, 404, 200, 404, 404),
    ("/api/log/key", "GET"): R(401, 200, 200, 200, 200, 200),
    ("/api/log/checkpoint", "GET"): R(401, 200, 200, 200, 200, 200),
    ("/api/log/entries/{index}", "GET"): R(401, 200, 200, 200, 200, 200),
    ("/api/log/proof/inclusion", "GET"): R(401, 200, 200, 200, 200, 200),
    ("/api/log/proof/consistency", "GET"): R(401, 200, 200, 200, 200, 200),
    # anyone may offer a cosignature; a forged one is a 400 naming the field
    ("/api/log/cosignatures", "POST"): R(401, 400, 400, 400, 400, 400),
    ("/api/loop-lag", "GET"): R(401, 403, 403, 403, 403, 200),
    # C2SP tlog-tiles: the public part, for every logged-in caller and API token
    ("/api/log/tlog/checkpoint", "GET"): R(401, 200, 200, 200, 200, 200),
    ("/api/log/tlog/tile/{path}", "GET"): R(401, 200, 200, 200, 200, 200),
    (A + "/query", "POST"): R(401, 200, NOENT, 200, NOENT, 403),
    (A + "/predict", "POST"): R(401, 200, NOENT, 200, NOENT, 403),
    ("/api/runs", "GET"): R(401, 200, 200, 200, 200, 200),
    ("/api/runs", "POST"): R(401, 201, NOENT, 201, NOENT, 403),
    (RUN, "GET"): R(401, 200, 404, 200, 404, 200),
    (RUN + "/cancel", "POST"): R(401, 200, 404, 200, 404, 200),
    (RUN + "/output.html", "GET"): R(401, 200, 404, 200, 404, 200),
    (RUN + "/artifacts/{name}", "GET"): R(401, 200, 404, 200, 404, 200),
    # model-to-data: a request of unit e to unit a's data product
    ("/api/m2d", "GET"): R(401, 200, 200, 200, 200, 200),
    # the owner's unit does not send notebooks to itself (400 naming product)
    ("/api/m2d", "POST"): R(401, 400, NOENT, 400, NOENT, 403),
    (M, "GET"): R(401, 200, 404, 200, 404, 200),
    (M + "/notebook", "GET"): R(401, 200, 404, 200, 404, 200),
    # deciding needs the publish scope in the owner's unit
    (M + "/decision", "POST"): R(401, 403, 404, 200, 404, 403),
    # nothing released yet: a 404 naming the path for who may see the request, the request
    # itself for everyone else
    (M + "/files/{path}", "GET"):
        R(401, "404 field=path", "404 field=request", "404 field=path", "404 field=request",
          "404 field=path"),
    # federated learning: a running project initiated by unit a (partner: unit c); details
    # are for members, the initiator's unit and operators, keys, model and aggregates for
    # members only; acting takes the publish scope
    ("/api/fl/projects", "GET"): R(401, 200, 200, 200, 200, 200),
    ("/api/fl/projects", "POST"): R(401, 403, 403, 201, 201, 403),
    (F, "GET"): R(401, 200, 403, 200, 403, 200),
    # joining without being on the allow-list: a request the initiator decides on (201)
    (F + "/join", "POST"): R(401, 403, 403, 200, 201, 403),
    (F + "/members/{unit}/decision", "POST"): R(401, 403, 403, 200, 403, 403),
    # a unit's signing key, of the throwaway unit (no demo unit's key is touched): it has none
    # (404 for who may read keys), and only its own publishers register the first one
    ("/api/fl/units/{unit}/signing-key", "GET"):
        R(401, "404 field=unit", "404 field=unit", "404 field=unit", "404 field=unit",
          "404 field=unit"),
    ("/api/fl/units/{unit}/signing-key", "PUT"): R(401, 403, 403, 403, 403, 403),
    (F + "/members", "GET"): R(401, 200, 403, 200, 403, 200),
    # a member key must be signed with the unit's signing key, which the matrix does not
    # register for a demo unit: the owner's publisher gets as far as the missing signature
    (F + "/members/{unit}", "PUT"):
        R(401, 403, 403, "400 field=x25519_signature", 403, 403),
    # leaving names the caller's unit; the initiator's unit stays to the end (409)
    (F + "/members/{unit}", "DELETE"): R(401, 403, 403, 409, 403, 403),
    (F + "/keys", "GET"): R(401, 200, 403, 200, 403, 403),
    (F + "/keys", "POST"): R(401, 403, 403, "400 field=unit", 403, 403),
    (F + "/model", "GET"): R(401, 200, 403, 200, 403, 403),
    (F + "/rounds", "GET"): R(401, 200, 403, 200, 403, 200),
    (F + "/rounds", "POST"): R(401, 403, 403, 201, 403, 403),
    (F + "/rounds/{number}", "GET"): R(401, 200, 403, 200, 403, 200),
    (F + "/rounds/{number}/updates", "POST"):
        R(401, 403, 403, "400 field=key_fingerprint", 403, 403),
    (F + "/rounds/{number}/aggregate", "GET"):
        R(401, "404 field=round", 403, "404 field=round", 403, 403),
    (F + "/metrics", "GET"): R(401, 200, 403, 200, 403, 200),
    (F + "/metrics", "POST"): R(401, 403, 403, 201, 403, 403),
    # pages
    ("/?", "GET"): R(LOGIN, 200, 200, 200, 200, 200),
    ("/products/{product}", "GET"): R(LOGIN, 200, 404, 200, 404, 200),
    ("/m2d", "GET"): R(LOGIN, 200, 200, 200, 200, 200),
    # federated-learning and log pages (an empty POST changes nothing: 400 naming its field,
    # 403 for those who may not act; @web.authenticated answers an anonymous POST 403)
    ("/fl", "GET"): R(LOGIN, 200, 200, 200, 200, 200),
    ("/fl/new", "GET"): R(LOGIN, 200, 200, 200, 200, 200),
    ("/fl/new", "POST"): R(403, 403, 403, 400, 400, 403),
    ("/fl/{project}", "GET"): R(LOGIN, 200, 200, 200, 200, 200),
    ("/fl/{project}", "POST"): R(403, 400, 400, 400, 400, 400),
    ("/log", "GET"): R(LOGIN, 200, 200, 200, 200, 200),
    ("/log/{index}", "GET"): R(LOGIN, 200, 200, 200, 200, 200),
    # shop, tools, account and run pages. A form POST changes nothing: it carries a value the
    # domain refuses only after its authorization checks (a plan the product does not offer,
    # no rows, no SQL, an unknown export format, a file that is not there, a timeout past the
    # limit, no action), so who may act gets that 400 (the missing file's 404), who may not
    # 403, who may not see the object 404. GETs name the submitted product where the page
    # shows any product (invisible to other units), the tool where it acts on it.
    ("/account", "GET"): R(LOGIN, 200, 200, 200, 200, 200),
    ("/products/{product}/buy", "GET"): R(LOGIN, 200, 404, 200, 404, 200),
    # a period plan of a per-use product: refused after the operator's 403 (in no unit), before
    # the own-unit rule (the plan is checked first)
    ("/products/{product}/buy", "POST"): R(RELOGIN, 400, 400, 400, 400, 403),
    ("/products/{product}/try", "GET"): R(LOGIN, 200, 404, 200, 404, 200),
    ("/products/{product}/try", "POST"): R(RELOGIN, 400, 403, 400, 403, 403),
    ("/products/{product}/sql", "GET"): R(LOGIN, 200, 404, 200, 404, 200),
    ("/products/{product}/sql", "POST"): R(RELOGIN, 400, 403, 400, 403, 403),
    # a link page is its minter's (publisher-a's) alone, as the link
    ("/products/{product}/download", "GET"): R(LOGIN, 404, 404, 200, 404, 404),
    # an operator inspects without an order (as the API's file POST)
    ("/products/{product}/download", "POST"): R(RELOGIN, 404, 403, 404, 403, 404),
    ("/products/{product}/export", "GET"):
        R(LOGIN, TO_PRODUCT, TO_PRODUCT, TO_PRODUCT, TO_PRODUCT, TO_PRODUCT),
    ("/products/{product}/export", "POST"): R(RELOGIN, 400, 403, 400, 403, 403),
    # the form of the submitted version: a preview, for the owner's publishers and operators
    ("/products/{product}/run", "GET"): R(LOGIN, 403, 404, 200, 404, 200),
    ("/products/{product}/run", "POST"): R(RELOGIN, 400, 403, 400, 403, 403),
    ("/runs", "GET"): R(LOGIN, 200, 200, 200, 200, 200),
    ("/runs/{run}", "GET"): R(LOGIN, 200, 404, 200, 404, 200),
    ("/runs/{run}", "POST"): R(RELOGIN, 400, 404, 400, 404, 400),
    # publishing, review and administration pages (the operator has no publish scope)
    ("/publish", "GET"): R(LOGIN, 200, 200, 200, 200, 200),
    ("/publish", "POST"): R(RELOGIN, 403, 403, 400, 400, 403),
    ("/publish/{product}", "GET"): R(LOGIN, 200, 404, 200, 404, 200),
    # putting the tool on the shelf where it already is: 409 for who may change the shelf
    ("/publish/{product}", "POST"): R(RELOGIN, 403, 403, 409, 403, 409),
    ("/review", "GET"): R(LOGIN, 403, 403, 403, 403, 200),
    ("/review", "POST"): R(RELOGIN, 403, 403, 403, 403, 400),
    ("/review/{product}/{version}", "GET"): R(LOGIN, 403, 403, 403, 403, 200),
    ("/review/{product}/{version}", "POST"): R(RELOGIN, 403, 403, 403, 403, 400),
    ("/admin", "GET"): R(LOGIN, 403, 403, 403, 403, 200),
    ("/admin", "POST"): R(RELOGIN, 403, 403, 403, 403, 400),
    ("/admin/units/{unit}", "GET"): R(LOGIN, 403, 403, 403, 403, 200),
    ("/admin/units/{unit}", "POST"): R(RELOGIN, 403, 403, 403, 403, 400),
    # model-to-data: as the API's request and decision rows
    ("/m2d/{request}", "GET"): R(LOGIN, 200, 404, 200, 404, 200),
    ("/m2d/{request}", "POST"): R(RELOGIN, 403, 404, 400, 404, 403),
    ("/m2d/{request}/notebook.html", "GET"): R(LOGIN, 200, 404, 200, 404, 200),
    # the hub's OAuth callback without a code or state: refused for everyone
    ("/oauth_callback", "GET"): R(400, 400, 400, 400, 400, 400),
    # the technology exchange: each concern's rows live beside its objects
    **authz_reviews.EXPECTED, **authz_topics.EXPECTED, **authz_forum.EXPECTED,
    **authz_workshops.EXPECTED, **authz_retrain.EXPECTED, **authz_cards.EXPECTED,
    **authz_fl_economy.EXPECTED,
    **authz_fl_slices.EXPECTED,
}

#: cells that disagree with the contract while another part of the code catches up, as
#: (pattern, method, role): who is on it. They stay asserted (no xfail): a failure names them.
PENDING: dict[tuple[str, str, str], str] = {}


def get(path: str) -> Builder:
    return lambda ctx, role, fresh: Call("GET", path.format(**ctx.objects))


def post(path: str, body: dict | None = None) -> Builder:
    def build(ctx, role, fresh):
        return Call("POST", path.format(**ctx.objects),
                    {} if body is None else {"json": body})
    return build


def same_or_other(role: str) -> str:
    return "a" if role.endswith("_same") or role == "anonymous" else "b"


def _units_post(ctx, role, fresh):
    slug = ctx["unit"] if role == "operator" else f"authz-{secrets.token_hex(3)}"
    return Call("POST", "api/units", {"json": {"slug": slug, "name": "authorization matrix"}})


def _member_put(ctx, role, fresh):
    # refused rows name the caller's own unit, the operator's a throwaway one
    unit = ctx["unit"] if role == "operator" else same_or_other(role)
    return Call("PUT", f"api/units/{unit}/members/authz-{secrets.token_hex(4)}",
                {"json": {"roles": []}})


def _member_delete(ctx, role, fresh):
    if role == "operator":
        return Call("DELETE", f"api/units/{ctx['unit']}/members/{ctx.member()}")
    return Call("DELETE", f"api/units/{same_or_other(role)}/members/authz-nobody")


def _products_post(ctx, role, fresh):
    name = f"authz-new-{secrets.token_hex(3)}"
    bundle = new_product("tool", name, ctx.tmp / name)
    archive = canonical_archive(bundle)
    return Call("POST", "api/products", {
        "files": {"bundle": ("bundle.zip", archive, "application/zip")},
        "data": {"accept_terms": "true"}})


def _bundle_check(ctx, role, fresh):
    name = f"authz-check-{secrets.token_hex(3)}"
    archive = canonical_archive(new_product("tool", name, ctx.tmp / name))
    return Call("POST", "api/bundles/validate", {
        "files": {"bundle": ("bundle.zip", archive, "application/zip")}})


def _review(ctx, role, fresh):
    p = ctx.product("tool", approve=False) if fresh else ctx["submitted"]
    return Call("POST", f"api/products/{p['name']}/versions/{p['version']}/review",
                {"json": {"decision": "reject", "reason": "authorization matrix"}})


def _shelf(ctx, role, fresh):
    name = ctx.product("tool")["name"] if fresh else ctx["tool"]["name"]
    return Call("POST", f"api/products/{name}/shelf",
                {"json": {"state": "off", "reason": "authorization matrix"}})


def _order(ctx, role, fresh):
    return Call("POST", "api/orders", {"json": {
        "product": ctx["orderable"]["name"], "plan": "per_use",
        "idempotency_key": f"authz-{secrets.token_hex(8)}"}})


def _refund(ctx, role, fresh):
    order = ctx["order"] if not fresh else ctx.users["subscriber-a"].order(
        "ev-charger-layout", "per_use")["id"]
    return Call("POST", f"api/orders/{order}/refund", {"json": {"reason": "authorization matrix"}})


def _cancel(ctx, role, fresh):
    return Call("POST", f"api/runs/{ctx.run() if fresh else ctx['run']}/cancel")


def _runs_post(ctx, role, fresh):
    return Call("POST", "api/runs", {"json": {"product": ctx["tool"]["name"]}})


def _m2d_post(ctx, role, fresh):
    return Call("POST", "api/m2d", {"json": {
        "product": ctx["data"]["name"], "notebook": training_notebook(),
        "outputs": ["outputs/model.pt"]}})


def _decision(ctx, role, fresh):
    request = ctx.m2d_request() if fresh else ctx["m2d"]
    return Call("POST", f"api/m2d/{request}/decision",
                {"json": {"decision": "reject", "reason": "authorization matrix"}})


def _fl_post(ctx, role, fresh):
    return Call("POST", "api/fl/projects",
                {"json": {**ctx["fl_body"], "name": f"authz-{secrets.token_hex(4)}"}})


def _fl_join(ctx, role, fresh):
    project = ctx.fl_project(partner=None) if fresh else ctx["fl"]
    return Call("POST", f"api/fl/projects/{project}/join")


def _fl_key(ctx, role, fresh):
    return Call("PUT", f"api/fl/projects/{ctx['fl']}/members/{same_or_other(role)}",
                {"json": {"x25519_public_key": ctx["x25519"]}})


def _fl_leave(ctx, role, fresh):
    return Call("DELETE", f"api/fl/projects/{ctx['fl']}/members/{same_or_other(role)}")


def _fl_decision(ctx, role, fresh):
    project = ctx.fl_project(allow=False) if fresh else ctx["fl_enrolling"]
    return Call("POST", f"api/fl/projects/{project}/members/c/decision",
                {"json": {"decision": "approve"}})


def _signing_key_put(ctx, role, fresh):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    raw = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    return Call("PUT", f"api/fl/units/{ctx['unit']}/signing-key",
                {"json": {"ed25519_public_key": base64.urlsafe_b64encode(raw).decode()}})


def _fl_start(ctx, role, fresh):
    project = ctx.fl_project() if fresh else ctx["fl_enrolling"]
    return Call("POST", f"api/fl/projects/{project}/rounds")


def _fl_update(ctx, role, fresh):
    return Call("POST", f"api/fl/projects/{ctx['fl']}/rounds/1/updates", {
        "params": {"weight": 1, "clipped": 0}, "data": b"x",
        "headers": {"Content-Type": "application/octet-stream"}})


FP = "api/fl/projects/{fl}"
BUILDERS: dict[tuple[str, str], Builder] = {
    ("/api/health", "GET"): get("api/health"),
    ("/api/openapi.json", "GET"): get("api/openapi.json"),
    ("/api/me", "GET"): get("api/me"),
    ("/api/units", "GET"): get("api/units"),
    ("/api/units", "POST"): _units_post,
    ("/api/units/{unit}", "GET"): get("api/units/a"),
    ("/api/units/{unit}/members/{user}", "PUT"): _member_put,
    ("/api/units/{unit}/members/{user}", "DELETE"): _member_delete,
    ("/api/terms", "GET"): get("api/terms"),
    ("/api/products", "GET"): get("api/products"),
    ("/api/products", "POST"): _products_post,
    ("/api/bundles/validate", "POST"): _bundle_check,
    (A, "GET"): get("api/products/{submitted[name]}"),
    (A + "/versions/{version}/review", "POST"): _review,
    (A + "/shelf", "POST"): _shelf,
    ("/api/orders", "GET"): get("api/orders"),
    ("/api/orders", "POST"): _order,
    ("/api/orders/{order}/refund", "POST"): _refund,
    ("/api/units/{unit}/account", "GET"): get("api/units/a/account"),
    ("/api/accounts", "GET"): get("api/accounts"),
    (A + "/versions/{version}/files/{path}", "GET"):
        get("api/products/{tool[name]}/versions/{tool[version]}/files/README.md"),
    (A + "/versions/{version}/files/{path}", "POST"):
        post("api/products/{tool[name]}/versions/{tool[version]}/files/README.md"),
    (A + "/views/{view}/export", "GET"):
        get("api/products/{data[name]}/views/customers_public/export"),
    (A + "/views/{view}/export", "POST"):
        post("api/products/{data[name]}/views/customers_public/export", {"format": "csv"}),
    ("/api/downloads/{token}", "GET"): get("{link}"),
    ("/api/log/key", "GET"): get("api/log/key"),
    ("/api/loop-lag", "GET"): get("api/loop-lag?seconds=5"),
    ("/api/log/tlog/checkpoint", "GET"): get("api/log/tlog/checkpoint"),
    ("/api/log/tlog/tile/{path}", "GET"): get("api/log/tlog/tile/0/000.p/1"),
    ("/api/log/checkpoint", "GET"): get("api/log/checkpoint"),
    ("/api/log/entries/{index}", "GET"): get("api/log/entries/0"),
    ("/api/log/proof/inclusion", "GET"): get("api/log/proof/inclusion?index=0&size={size}"),
    ("/api/log/proof/consistency", "GET"): get("api/log/proof/consistency?old=1&new={size}"),
    ("/api/log/cosignatures", "POST"): post("api/log/cosignatures",
                                            {"cosignature": "— witness AAAA\n"}),
    (A + "/query", "POST"): post("api/products/{data[name]}/query",
                                 {"sql": "SELECT count(*) AS n FROM customers_public"}),
    (A + "/predict", "POST"): post("api/products/{tool[name]}/predict", PREDICT_BODY),
    ("/api/runs", "GET"): get("api/runs?scope=mine&limit=5"),
    ("/api/runs", "POST"): _runs_post,
    (RUN, "GET"): get("api/runs/{run}"),
    (RUN + "/cancel", "POST"): _cancel,
    (RUN + "/output.html", "GET"): get("api/runs/{run}/output.html"),
    (RUN + "/artifacts/{name}", "GET"): get("api/runs/{run}/artifacts/outputs/scores.csv"),
    ("/api/m2d", "GET"): get("api/m2d"),
    ("/api/m2d", "POST"): _m2d_post,
    (M, "GET"): get("api/m2d/{m2d}"),
    (M + "/notebook", "GET"): get("api/m2d/{m2d}/notebook"),
    (M + "/decision", "POST"): _decision,
    (M + "/files/{path}", "GET"): get("api/m2d/{m2d}/files/outputs/model.pt"),
    ("/api/fl/projects", "GET"): get("api/fl/projects"),
    ("/api/fl/projects", "POST"): _fl_post,
    (F, "GET"): get(FP),
    (F + "/join", "POST"): _fl_join,
    (F + "/members", "GET"): get(FP + "/members"),
    (F + "/members/{unit}", "PUT"): _fl_key,
    (F + "/members/{unit}", "DELETE"): _fl_leave,
    (F + "/members/{unit}/decision", "POST"): _fl_decision,
    ("/api/fl/units/{unit}/signing-key", "GET"): get("api/fl/units/{unit}/signing-key"),
    ("/api/fl/units/{unit}/signing-key", "PUT"): _signing_key_put,
    (F + "/keys", "GET"): get(FP + "/keys"),
    (F + "/keys", "POST"): post(FP + "/keys", {}),
    (F + "/model", "GET"): get(FP + "/model"),
    (F + "/rounds", "GET"): get(FP + "/rounds"),
    (F + "/rounds", "POST"): _fl_start,
    (F + "/rounds/{number}", "GET"): get(FP + "/rounds/1"),
    (F + "/rounds/{number}/updates", "POST"): _fl_update,
    (F + "/rounds/{number}/aggregate", "GET"): get(FP + "/rounds/1/aggregate"),
    (F + "/metrics", "GET"): get(FP + "/metrics"),
    (F + "/metrics", "POST"): post(FP + "/metrics", {"round": 0, "metrics": {"auc": 0.5}}),
    ("/?", "GET"): get(""),
    ("/products/{product}", "GET"): get("products/{submitted[name]}"),
    ("/m2d", "GET"): get("m2d"),
    ("/fl", "GET"): get("fl"),
    ("/fl/new", "GET"): get("fl/new"),
    ("/fl/new", "POST"): post("fl/new"),
    ("/fl/{project}", "GET"): get("fl/{fl}"),
    ("/fl/{project}", "POST"): post("fl/{fl}"),
    ("/log", "GET"): get("log"),
    ("/log/{index}", "GET"): get("log/0"),
    ("/oauth_callback", "GET"): get("oauth_callback"),
    **PAGE_BUILDERS,
    **authz_reviews.BUILDERS, **authz_topics.BUILDERS, **authz_forum.BUILDERS,
    **authz_workshops.BUILDERS, **authz_retrain.BUILDERS, **authz_cards.BUILDERS,
    **authz_fl_economy.BUILDERS,
    **authz_fl_slices.BUILDERS,
}


def test_every_route_has_expectations():
    """A route or method added to the service without a row here fails: decide who may call
    it first."""
    routes = route_methods()
    assert set(EXPECTED) == routes, {"missing": sorted(routes - set(EXPECTED)),
                                     "stale": sorted(set(EXPECTED) - routes)}
    assert set(BUILDERS) == routes
    assert {(pattern, method) for pattern, method, _ in PENDING} <= routes
    assert {role for _, _, role in PENDING} <= set(ROLES)
    assert all(set(row) == set(ROLES) for row in EXPECTED.values())


@pytest.fixture(scope="module")
def ctx(platform_proc, tmp_path_factory):
    c = make_objects(platform_proc.url, platform_proc.logins(), tmp_path_factory.mktemp("authz"))
    yield c
    for undo in reversed(c.cleanup):  # cancel runs, refund orders, reject pending requests
        undo()


def expected_parts(expected: int | str) -> tuple[int, str | None, str | None, str | None]:
    """(status, error code, field, a part of the redirect's Location)."""
    if isinstance(expected, int):
        login = "/hub/" if expected in (LOGIN, RELOGIN) else None
        return expected, None, None, login
    status, detail = expected.split(" ", 1)
    if detail.startswith("field="):
        return int(status), None, detail[len("field="):], None
    if detail.startswith("to="):
        return int(status), None, None, detail[len("to="):]
    return int(status), detail, None, None


def run_matrix(ctx: Ctx) -> tuple[int, list[str]]:
    """Send every cell's request; returns the number of cells and the mismatches."""
    sessions = {role: ctx.users[user].http for role, user in USERS.items()}
    sessions["anonymous"] = requests.Session()
    assert "Authorization" not in sessions["anonymous"].headers
    mismatches = []
    cells = 0
    # a route without a row fails test_every_route_has_expectations; the rest still run here
    keys = sorted(set(EXPECTED) & set(BUILDERS) & route_methods())
    for key in keys:
        for role in ROLES:
            status, error, field_, location = expected_parts(EXPECTED[key][role])
            call = BUILDERS[key](ctx, role, 200 <= status < 300)
            kwargs = dict(call.kwargs)
            # a connection of its own: a refusal may close it before the body is read
            kwargs["headers"] = {"Connection": "close", **kwargs.get("headers", {})}
            cells += 1
            try:
                r = sessions[role].request(call.method, ctx.url + call.path,
                                           allow_redirects=False, timeout=180, **kwargs)
            except requests.RequestException as e:
                mismatches.append(f"{call.method} {call.path} as {role}: got {e!r}, expected "
                                  f"{EXPECTED[key][role]}")
                continue
            _clean_up_after(ctx, key, r)
            ok = r.status_code == status
            if ok and (error or field_):
                body = r.json()
                ok = (error is None or body.get("error") == error) and (
                    field_ is None or body.get("field") == field_)
            if location is not None and ok:
                ok = location in r.headers.get("Location", "")
            if not ok:
                mismatches.append(f"{call.method} {call.path} as {role}: got {_describe(r)}, "
                                  f"expected {EXPECTED[key][role]}"
                                  + (f"  [pending: {PENDING[(*key, role)]}]"
                                     if (*key, role) in PENDING else ""))
    assert cells == len(keys) * len(ROLES)
    return cells, mismatches


def _clean_up_after(ctx: Ctx, key: tuple[str, str], r: requests.Response) -> None:
    """Runs the matrix started are cancelled, orders it placed refunded, at teardown."""
    if r.status_code == 201 and key == ("/api/runs", "POST"):
        run = r.json()["id"]
        ctx.cleanup.append(lambda: ctx.pub.http.post(ctx.pub.url + f"api/runs/{run}/cancel"))
    if r.status_code == 201 and key == ("/api/orders", "POST"):
        order = r.json()["id"]
        ctx.cleanup.append(lambda: ctx.op.http.post(ctx.op.url + f"api/orders/{order}/refund",
                                                    json={"reason": "authorization matrix"}))


def test_authorization_matrix(ctx):
    run = ctx.pub.request("GET", f"runs/{ctx['run']}")
    assert run["status"] == "succeeded" and "outputs/scores.csv" in run["artifacts"], run
    cells, mismatches = run_matrix(ctx)
    assert not mismatches, f"{len(mismatches)} of {cells} cells:\n" + "\n".join(mismatches)


def _describe(r: requests.Response) -> str:
    if r.is_redirect:
        return f"{r.status_code} to {r.headers.get('Location')}"
    try:
        body = r.json()
    except ValueError:
        return str(r.status_code)
    if isinstance(body, dict) and "error" in body:
        return f"{r.status_code} {body.get('error')} field={body.get('field')}"
    return str(r.status_code)
