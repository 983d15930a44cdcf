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
    def get(self):
        arg = self.get_query_argument
        filters = {k: arg(k, None) for k in forum.TARGET_KINDS}
        target = None
        for name, value in filters.items():
            if value == "":
                raise InvalidField(f"{name} is empty: leave it out to see every thread", name)
        if any(v is not None for v in filters.values()):
            kind, ref = forum.parse_target(filters)
            target = (kind, forum.check_target(self.db, self.caller, kind, ref))
        q = forum.parse_query(arg("q", None))
        page = self.int_argument("page", 1, 1, PAGE_LIMIT)
        per_page = self.int_argument("per_page", 20, 1, forum.MAX_PER_PAGE)
        threads, total = forum.list_threads(self.db, self.caller, target, q, page, per_page)
        self.write_json({"threads": [forum.thread_json(t, self.caller) for t in threads],
                         "total": total, "page": page, "per_page": per_page,
                         "categories": _categories()})

    @web.authenticated
    def post(self):
        thread = forum.create_thread(self.db, self.caller, self.json_body())
        self.db.commit()
        self.set_header("Location", f"{self.market.service_prefix}api/forum/threads/{thread.id}")
        self.write_json(forum.thread_page(self.db, self.caller, thread), status=201)


class ThreadHandler(APIHandler):
    @web.authenticated
    def get(self, thread):
        found = forum.get_thread(self.db, self.caller, thread)
        page = self.int_argument("page", 1, 1, PAGE_LIMIT)
        per_page = self.int_argument("per_page", 20, 1, forum.MAX_PER_PAGE)
        self.write_json(forum.thread_page(self.db, self.caller, found, page, per_page))


class PostsHandler(APIHandler):
    @web.authenticated
    def post(self, thread):
        found = forum.get_thread(self.db, self.caller, thread)
        post = forum.add_post(self.db, self.caller, found, self.json_body())
        self.db.commit()
        self.write_json(forum.post_json(post, self.caller), status=201)


class ThreadModerationHandler(APIHandler):
    @web.authenticated
    def post(self, thread):
        found = forum.get_thread(self.db, self.caller, thread)
        hidden, reason = forum.parse_moderation(self.json_body())
        forum.moderate(self.db, self.caller, found, hidden, reason)
        self.db.commit()
        self.write_json(forum.thread_json(found, self.caller))


class PostModerationHandler(APIHandler):
    @web.authenticated
    def post(self, post):
        found = forum.get_post(self.db, self.caller, post)
        hidden, reason = forum.parse_moderation(self.json_body())
        forum.moderate(self.db, self.caller, found, hidden, reason)
        self.db.commit()
        self.write_json(forum.post_json(found, self.caller))


default_handlers = [
    (r"/api/forum/threads", ThreadsHandler),
    (r"/api/forum/threads/(?P<thread>[^/]+)", ThreadHandler),
    (r"/api/forum/threads/(?P<thread>[^/]+)/posts", PostsHandler),
    (r"/api/forum/threads/(?P<thread>[^/]+)/moderation", ThreadModerationHandler),
    (r"/api/forum/posts/(?P<post>[^/]+)/moderation", PostModerationHandler),
]
