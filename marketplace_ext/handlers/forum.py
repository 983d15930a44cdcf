"""The forum's JSON API under ``api/forum/``; the rules are in
:mod:`marketplace_ext.exchange.forum` (threads on a product, a topic or a category, sanitized
Markdown, mentions, moderation, paging and search)."""

from __future__ import annotations

from tornado import web

from ..errors import InvalidField
from ..exchange import forum
from .base import APIHandler

PAGE_LIMIT = 100_000


def _categories() -> list[dict]:
    return [{"slug": slug, "label": label} for slug, label in forum.CATEGORIES.items()]


class ThreadsHandler(APIHandler):
    """``GET``: threads (all, or of one ``product``/``topic``/``category``), ``q`` searching
    titles and posts, paged. ``POST``: a new thread with its first post."""

    @web.authenticated
    async def get(self):
        arg = self.get_query_argument
        filters = {k: arg(k, None) for k in forum.TARGET_KINDS}
        target = None
        for name, value in filters.items():
            if value == "":
                raise InvalidField(f"{name} is empty: leave it out to see every thread", name)
        if any(v is not None for v in filters.values()):
            target = forum.parse_target(filters)  # checked for the caller in the listing
        q = forum.parse_query(arg("q", None))
        page = self.int_argument("page", 1, 1, PAGE_LIMIT)
        per_page = self.int_argument("per_page", 20, 1, forum.MAX_PER_PAGE)
        listed = await self.in_db(forum.threads_listing, self.caller, target, q, page,
                                  per_page)
        self.write_json({"threads": listed["threads"], "total": listed["total"],
                         "page": page, "per_page": per_page, "categories": _categories()})

    @web.authenticated
    async def post(self):
        answer = await self.in_write(_create_thread, self.caller, self.json_body())
        self.set_header("Location", f"{self.market.service_prefix}api/forum/threads/"
                                    f"{answer['thread']['id']}")
        self.write_json(answer, status=201)


class ThreadHandler(APIHandler):
    @web.authenticated
    async def get(self, thread):
        page = self.int_argument("page", 1, 1, PAGE_LIMIT)
        per_page = self.int_argument("per_page", 20, 1, forum.MAX_PER_PAGE)
        self.write_json(await self.in_db(forum.thread_reading, self.caller, thread, page,
                                         per_page))


class PostsHandler(APIHandler):
    @web.authenticated
    async def post(self, thread):
        body = self.json_body()
        self.write_json(await self.in_write(_add_post, self.caller, thread, body), status=201)


class ThreadModerationHandler(APIHandler):
    @web.authenticated
    async def post(self, thread):
        body = self.json_body()
        self.write_json(await self.in_write(_moderate, self.caller, "thread", thread, body))


class PostModerationHandler(APIHandler):
    @web.authenticated
    async def post(self, post):
        body = self.json_body()
        self.write_json(await self.in_write(_moderate, self.caller, "post", post, body))


# blocking (the db executor, each one write transaction): the forum's writes, answered as JSON


def _create_thread(session, caller, body: dict) -> dict:
    thread = forum.create_thread(session, caller, body)
    session.flush()
    return forum.thread_page(session, caller, thread)


def _add_post(session, caller, thread: str, body: dict) -> dict:
    found = forum.get_thread(session, caller, thread)
    post = forum.add_post(session, caller, found, body)
    session.flush()
    return forum.post_json(post, caller)


def _moderate(session, caller, kind: str, ident: str, body: dict) -> dict:
    """Hide or show a thread (``kind`` "thread") or a post (404 first, then the body)."""
    found = (forum.get_thread if kind == "thread" else forum.get_post)(session, caller, ident)
    hidden, reason = forum.parse_moderation(body)
    forum.moderate(session, caller, found, hidden, reason)
    session.flush()
    return (forum.thread_json if kind == "thread" else forum.post_json)(found, caller)


default_handlers = [
    (r"/api/forum/threads", ThreadsHandler),
    (r"/api/forum/threads/(?P<thread>[^/]+)", ThreadHandler),
    (r"/api/forum/threads/(?P<thread>[^/]+)/posts", PostsHandler),
    (r"/api/forum/threads/(?P<thread>[^/]+)/moderation", ThreadModerationHandler),
    (r"/api/forum/posts/(?P<post>[^/]+)/moderation", PostModerationHandler),
]
