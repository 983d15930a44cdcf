"""The authorization matrix's rows for the exchange's reviews routes (API and pages), merged into
test_authz_matrix's EXPECTED and BUILDERS. Same unit is ``a``, another unit ``b``.

The review the ``/api/reviews/{review}`` rows act on is made once, lazily: unit e (not a matrix
role) buys one use of unit a's tool and rates it, so "same unit" is the product's publisher
(who may reply), and nobody in the matrix is its author (nobody edits it). The order is
refunded at teardown. Nothing else here spends points: every other refusal comes before any
write, and the operator's rows feature the matrix's own tool for a day and type the
throwaway unit."""

from __future__ import annotations

from authz_objects import Builder, Call, Cell, Ctx, R

LOGIN, RELOGIN = 302, 303
P = "/api/products/{product}"
RV = "/api/reviews/{review}"

EXPECTED: dict[tuple[str, str], dict[str, Cell]] = {
    # reviews of a product only its unit sees (a submitted version): as the product itself
    (P + "/reviews", "GET"): R(401, 200, 404, 200, 404, 200),
    # rating unit a's tool: its own unit may not, unit b never used it, the operator is in no
    # unit (every refusal before the stars are read: nothing written)
    (P + "/reviews", "POST"): R(401, "403 field=product", "403 field=version",
                                "403 field=product", "403 field=version", "403 field=unit"),
    (RV, "GET"): R(401, 200, 200, 200, 200, 200),
    # only its author (in unit e) edits it
    (RV, "PUT"): R(401, "403 field=review", "403 field=review", "403 field=review",
                   "403 field=review", "403 field=review"),
    # the product's unit's publishers reply
    (RV + "/reply", "POST"): R(401, 403, 403, 200, 403, 403),
    (RV + "/hide", "POST"): R(401, 403, 403, 403, 403, 200),
    ("/api/ranking", "GET"): R(401, 200, 200, 200, 200, 200),
    ("/api/features", "GET"): R(401, 200, 200, 200, 200, 200),
    ("/api/features", "POST"): R(401, 403, 403, 403, 403, 201),
    ("/api/report", "GET"): R(401, 200, 200, 200, 200, 200),
    ("/api/units/{unit}/type", "POST"): R(401, 403, 403, 403, 403, 200),
    # pages
    ("/products/{product}/reviews", "GET"): R(LOGIN, 200, 404, 200, 404, 200),
    # an empty rating of unit a's tool: refused as the API's POST, before the stars
    ("/products/{product}/reviews", "POST"): R(RELOGIN, 403, 403, 403, 403, 403),
    ("/features", "GET"): R(LOGIN, 200, 200, 200, 200, 200),
    # an empty form: the operator gets as far as the missing product
    ("/features", "POST"): R(RELOGIN, 403, 403, 403, 403, 400),
    ("/report", "GET"): R(LOGIN, 200, 200, 200, 200, 200),
}


def review_of_tool(ctx: Ctx) -> int:
    """Unit e's review of unit a's tool (made on first use; its order refunded at teardown)."""
    if "review" not in ctx.objects:
        rater = ctx.users["subscriber-e"]
        tool = ctx["tool"]["name"]
        order = rater.order(tool, "per_use")["id"]
        ctx.cleanup.append(lambda: ctx.op.http.post(ctx.op.url + f"api/orders/{order}/refund",
                                                    json={"reason": "authorization matrix"}))
        made = rater.request("POST", f"products/{tool}/reviews",
                             json={"stars": 4, "text": "authorization matrix"})
        ctx.objects["review"] = made["id"]
    return ctx.objects["review"]


def _get(path: str) -> Builder:
    return lambda ctx, role, fresh: Call("GET", path.format(**ctx.objects))


def _review_call(method: str, suffix: str, body: dict) -> Builder:
    def build(ctx, role, fresh):
        return Call(method, f"api/reviews/{review_of_tool(ctx)}{suffix}", {"json": body})
    return build


def _rate(ctx, role, fresh):
    return Call("POST", f"api/products/{ctx['tool']['name']}/reviews", {"json": {"stars": 4}})


def _feature(ctx, role, fresh):
    return Call("POST", "api/features", {"json": {
        "product": ctx["tool"]["name"], "days": 1, "reason": "authorization matrix"}})


def _unit_type(ctx, role, fresh):
    return Call("POST", f"api/units/{ctx['unit']}/type", {"json": {"type": "research_institute"}})


def _rate_form(ctx, role, fresh):
    return Call("POST", f"products/{ctx['tool']['name']}/reviews",
                {"data": {"action": "rate", "stars": "", "text": ""}})


BUILDERS: dict[tuple[str, str], Builder] = {
    (P + "/reviews", "GET"): _get("api/products/{submitted[name]}/reviews"),
    (P + "/reviews", "POST"): _rate,
    (RV, "GET"): _review_call("GET", "", {}),
    (RV, "PUT"): _review_call("PUT", "", {"stars": 1, "text": "not mine"}),
    (RV + "/reply", "POST"): _review_call("POST", "/reply", {"reply": "authorization matrix"}),
    (RV + "/hide", "POST"): _review_call("POST", "/hide", {"reason": "authorization matrix"}),
    ("/api/ranking", "GET"): _get("api/ranking"),
    ("/api/features", "GET"): _get("api/features"),
    ("/api/features", "POST"): _feature,
    ("/api/report", "GET"): _get("api/report"),
    ("/api/units/{unit}/type", "POST"): _unit_type,
    ("/products/{product}/reviews", "GET"): _get("products/{submitted[name]}/reviews"),
    ("/products/{product}/reviews", "POST"): _rate_form,
    ("/features", "GET"): _get("features"),
    ("/features", "POST"): lambda ctx, role, fresh: Call(
        "POST", "features", {"data": {"product": "", "days": "", "reason": ""}}),
    ("/report", "GET"): _get("report"),
}
