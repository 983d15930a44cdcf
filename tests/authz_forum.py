"""The authorization matrix's rows for the exchange's forum and inbox routes (API and pages),
merged into test_authz_matrix's EXPECTED and BUILDERS. Same unit is ``a``, another unit ``b``.

The forum's rows act on a thread publisher-a opens (lazily, once) on the matrix's *submitted*
product of unit a: a product another unit cannot see, so its thread does not exist for unit b
(404), while unit a and operators read it. Rows that succeed post a new thread on that product
(out of sight of the demo's units) or a reply in it; moderation rows *show* the thread or post
(``hidden: false``): who may moderate gets 200 and nothing visible changes. The inbox is each
user's own: marking an id that is no one's is a 404 naming ``ids`` for everyone, and the
e-mail setting is put to "off" (as every demo user has it). Page forms carry a value the domain
refuses after its checks (no title, no text, no action): 400 for who may post."""

from __future__ import annotations

import secrets

from authz_objects import Builder, Call, Cell, Ctx, R

LOGIN, RELOGIN = 302, 303
TH = "/api/forum/threads/{thread}"
NO_ID = 9_223_372_036_854_775_000

EXPECTED: dict[tuple[str, str], dict[str, Cell]] = {
    ("/api/forum/threads", "GET"): R(401, 200, 200, 200, 200, 200),
    # a thread on unit a's unreleased product: unit b cannot see the product (404 naming it)
    ("/api/forum/threads", "POST"): R(401, 201, "404 field=product", 201, "404 field=product",
                                      201),
    (TH, "GET"): R(401, 200, "404 field=thread", 200, "404 field=thread", 200),
    (TH + "/posts", "POST"): R(401, 201, "404 field=thread", 201, "404 field=thread", 201),
    # operators moderate; the others who see the thread are refused
    (TH + "/moderation", "POST"): R(401, 403, "404 field=thread", 403, "404 field=thread", 200),
    ("/api/forum/posts/{post}/moderation", "POST"):
        R(401, 403, "404 field=thread", 403, "404 field=thread", 200),
    ("/api/inbox", "GET"): R(401, 200, 200, 200, 200, 200),
    ("/api/inbox/read", "POST"): R(401, "404 field=ids", "404 field=ids", "404 field=ids",
                                   "404 field=ids", "404 field=ids"),
    ("/api/inbox/settings", "GET"): R(401, 200, 200, 200, 200, 200),
    ("/api/inbox/settings", "PUT"): R(401, 200, 200, 200, 200, 200),
    # pages
    ("/forum", "GET"): R(LOGIN, 200, 200, 200, 200, 200),
    ("/forum/new", "GET"): R(LOGIN, 200, 200, 200, 200, 200),
    ("/forum/new", "POST"): R(RELOGIN, 400, 400, 400, 400, 400),
    ("/forum/{thread}", "GET"): R(LOGIN, 200, 404, 200, 404, 200),
    ("/forum/{thread}", "POST"): R(RELOGIN, 400, 404, 400, 404, 400),
    ("/inbox", "GET"): R(LOGIN, 200, 200, 200, 200, 200),
    ("/inbox", "POST"): R(RELOGIN, 400, 400, 400, 400, 400),
}


def _thread(ctx: Ctx) -> dict:
    """publisher-a's thread on the submitted product, and its first post (made once)."""
    if "forum_thread" not in ctx.objects:
        made = ctx.pub.request("POST", "forum/threads", json={
            "title": "Authorization matrix", "body": "A thread the matrix reads.",
            "product": ctx["submitted"]["name"]})
        ctx.objects["forum_thread"] = {"id": made["thread"]["id"], "post": made["posts"][0]["id"]}
    return ctx.objects["forum_thread"]


def _threads_get(ctx: Ctx, role: str, fresh: bool) -> Call:
    return Call("GET", "api/forum/threads?category=general&q=authorization")


def _threads_post(ctx: Ctx, role: str, fresh: bool) -> Call:
    return Call("POST", "api/forum/threads", {"json": {
        "title": f"authz {secrets.token_hex(3)}", "body": "authorization matrix",
        "product": ctx["submitted"]["name"]}})


def _thread_get(ctx: Ctx, role: str, fresh: bool) -> Call:
    return Call("GET", f"api/forum/threads/{_thread(ctx)['id']}")


def _reply(ctx: Ctx, role: str, fresh: bool) -> Call:
    return Call("POST", f"api/forum/threads/{_thread(ctx)['id']}/posts",
                {"json": {"body": "authorization matrix reply"}})


def _moderate_thread(ctx: Ctx, role: str, fresh: bool) -> Call:
    return Call("POST", f"api/forum/threads/{_thread(ctx)['id']}/moderation",
                {"json": {"hidden": False}})


def _moderate_post(ctx: Ctx, role: str, fresh: bool) -> Call:
    return Call("POST", f"api/forum/posts/{_thread(ctx)['post']}/moderation",
                {"json": {"hidden": False}})


def _get(path: str) -> Builder:
    return lambda ctx, role, fresh: Call("GET", path)


def _thread_page(ctx: Ctx, role: str, fresh: bool) -> Call:
    return Call("GET", f"forum/{_thread(ctx)['id']}")


def _thread_form(ctx: Ctx, role: str, fresh: bool) -> Call:
    return Call("POST", f"forum/{_thread(ctx)['id']}", {"data": {"action": "reply", "body": ""}})


BUILDERS: dict[tuple[str, str], Builder] = {
    ("/api/forum/threads", "GET"): _threads_get,
    ("/api/forum/threads", "POST"): _threads_post,
    (TH, "GET"): _thread_get,
    (TH + "/posts", "POST"): _reply,
    (TH + "/moderation", "POST"): _moderate_thread,
    ("/api/forum/posts/{post}/moderation", "POST"): _moderate_post,
    ("/api/inbox", "GET"): _get("api/inbox?unread=true&per_page=5"),
    ("/api/inbox/read", "POST"): lambda ctx, role, fresh: Call(
        "POST", "api/inbox/read", {"json": {"ids": [NO_ID]}}),
    ("/api/inbox/settings", "GET"): _get("api/inbox/settings"),
    ("/api/inbox/settings", "PUT"): lambda ctx, role, fresh: Call(
        "PUT", "api/inbox/settings", {"json": {"enabled": False}}),
    ("/forum", "GET"): _get("forum?category=general"),
    ("/forum/new", "GET"): _get("forum/new?category=general"),
    ("/forum/new", "POST"): lambda ctx, role, fresh: Call(
        "POST", "forum/new", {"data": {"title": "", "body": "", "category": "general"}}),
    ("/forum/{thread}", "GET"): _thread_page,
    ("/forum/{thread}", "POST"): _thread_form,
    ("/inbox", "GET"): _get("inbox"),
    ("/inbox", "POST"): lambda ctx, role, fresh: Call("POST", "inbox", {"data": {"action": ""}}),
}
