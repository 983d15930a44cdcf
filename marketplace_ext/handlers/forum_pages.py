"""The forum's pages: the thread list (categories, a product's or a topic's threads, search,
paging), a new thread, and a thread with its posts, the reply form and, for operators, the
moderation buttons. Handlers parse the form, call :mod:`marketplace_ext.exchange.forum` (the
same functions as ``api/forum``) and render; a refused form shows the error next to its field,
with nothing written."""

from __future__ import annotations

from urllib.parse import urlencode

from tornado import web

from ..errors import InvalidField, MarketError
from ..exchange import forum
from .base import PageHandler

PER_PAGE = 20
NEW_FIELDS = ("title", "body", "category", "product", "topic")
NOTICES = {"hidden": "Hidden. Everyone but operators sees only the reason.",
           "shown": "Shown again.", "posted": "Your reply is posted."}


def _page_number(raw: str | None) -> int:
    try:
        value = int(raw or 1)
    except ValueError:
        return 1
    return min(max(value, 1), 100_000)


class ForumPage(PageHandler):
    """Threads, latest activity first; filtered by category, product or topic; searched."""

    nav = "forum"

    @web.authenticated
    def get(self):
        arg = self.get_query_argument
        filters = {k: arg(k, "").strip() for k in forum.TARGET_KINDS}
        q = arg("q", "").strip()
        page = _page_number(arg("page", None))
        errors: dict[str, str] = {}
        target = None
        threads, total = [], 0
        try:
            if any(filters.values()):
                kind, ref = forum.parse_target(filters)
                target = (kind, forum.check_target(self.db, self.caller, kind, ref))
            query = forum.parse_query(q)
            threads, total = forum.list_threads(self.db, self.caller, target, query, page,
                                                PER_PAGE)
        except MarketError as e:
            errors[e.field or "_form"] = e.message
        keep = {k: v for k, v in {**filters, "q": q}.items() if v}
        new_link = "forum/new" + (f"?{urlencode({target[0]: target[1]})}" if target else "")
        self.render_template(
            "forum.html", status=400 if errors else 200, errors=errors,
            threads=[forum.thread_json(t, self.caller) for t in threads], total=total,
            page=page, pages=max(1, -(-total // PER_PAGE)), categories=forum.CATEGORIES,
            target=target and {"kind": target[0], "ref": target[1],
                               "label": forum.target_label(*target),
                               "link": forum.target_link(*target)},
            q=q, keep=urlencode(keep), new_link=new_link)


class ForumNewPage(PageHandler):
    """A new thread: a title, the category (or the product or topic it came from) and the
    first post in Markdown."""

    nav = "forum"

    def _namespace(self) -> dict:
        return {"categories": forum.CATEGORIES, "max_body": forum.MAX_BODY,
                "max_title": forum.MAX_TITLE}

    @web.authenticated
    def get(self):
        form = {k: self.get_query_argument(k, "") for k in ("category", "product", "topic")}
        self.render_template("forum_new.html", form={k: v for k, v in form.items() if v},
                             **self._namespace())

    @web.authenticated
    def post(self):
        body = {k: self.get_body_argument(k, "") for k in NEW_FIELDS}
        body = {k: v for k, v in body.items() if v != "" or k in ("title", "body")}
        try:
            thread = forum.create_thread(self.db, self.caller, body)
            self.db.commit()
        except MarketError as e:
            self.db.rollback()
            if e.field not in NEW_FIELDS:
                e.field = None
            self.render_form_error("forum_new.html", e, **self._namespace())
            return
        self.redirect_after_post(f"forum/{thread.id}")


class ForumThreadPage(PageHandler):
    """A thread and one page of its posts; the reply form; operators hide or show the thread
    and each post (``action`` = ``reply``, ``moderate_thread`` or ``moderate_post``)."""

    nav = "forum"
    ACTIONS = ("reply", "moderate_thread", "moderate_post")

    def _namespace(self, thread_id: str, page: int) -> dict:
        thread = forum.get_thread(self.db, self.caller, thread_id)
        shown = forum.thread_page(self.db, self.caller, thread, page, PER_PAGE)
        return {**shown, "pages": max(1, -(-shown["total"] // PER_PAGE)),
                "max_body": forum.MAX_BODY,
                "notice": NOTICES.get(self.get_query_argument("done", ""))}

    @web.authenticated
    def get(self, thread):
        page = _page_number(self.get_query_argument("page", None))
        self.render_template("forum_thread.html", **self._namespace(thread, page))

    @web.authenticated
    def post(self, thread):
        action = self.get_body_argument("action", "")
        arg = self.get_body_argument
        try:
            found = forum.get_thread(self.db, self.caller, thread)
            if action == "reply":
                post = forum.add_post(self.db, self.caller, found, {"body": arg("body", "")})
                self.db.commit()
                page = forum.page_of_post(self.db, post, PER_PAGE)
                self.redirect_after_post(f"forum/{found.id}?page={page}&done=posted"
                                         f"#post-{post.id}")
                return
            if action not in self.ACTIONS:
                raise InvalidField(f"action must be one of {', '.join(self.ACTIONS)}",
                                   "action")
            hidden, reason = forum.parse_moderation(
                {"hidden": arg("hidden", "") == "1", "reason": arg("reason", "") or None})
            target = found if action == "moderate_thread" else forum.get_post(
                self.db, self.caller, arg("post", ""))
            if target is not found and target.thread_id != found.id:
                raise InvalidField("that post is in another thread", "post")
            forum.moderate(self.db, self.caller, target, hidden, reason)
            self.db.commit()
        except MarketError as e:
            self.db.rollback()
            if e.status == 404 and e.field == "thread":
                raise
            page = _page_number(arg("page", None))
            if e.field not in ("body", "reason"):
                e.field = None
            self.render_form_error("forum_thread.html", e, **self._namespace(thread, page))
            return
        anchor = f"#post-{target.id}" if target is not found else ""
        self.redirect_after_post(f"forum/{found.id}?page={_page_number(arg('page', None))}"
                                 f"&done={'hidden' if hidden else 'shown'}{anchor}")


default_handlers = [
    (r"/forum", ForumPage),
    (r"/forum/new", ForumNewPage),
    (r"/forum/(?P<thread>[0-9]+)", ForumThreadPage),
]
