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
    async def get(self):
        arg = self.get_query_argument
        filters = {k: arg(k, "").strip() for k in forum.TARGET_KINDS}
        q = arg("q", "").strip()
        page = _page_number(arg("page", None))
        await self.render_from_db("forum.html", _forum_namespace, self.caller, filters, q, page)


def _forum_namespace(session, caller, filters: dict[str, str], q: str, page: int) -> dict:
    """Blocking (the db executor): the thread list's namespace; a refused filter or search
    is shown next to its field (400), with no threads."""
    errors: dict[str, str] = {}
    target = None
    threads, total = [], 0
    try:
        if any(filters.values()):
            kind, ref = forum.parse_target(filters)
            target = (kind, forum.check_target(session, caller, kind, ref))
        query = forum.parse_query(q)
        threads, total = forum.list_threads(session, caller, target, query, page, PER_PAGE)
    except MarketError as e:
        errors[e.field or "_form"] = e.message
    keep = {k: v for k, v in {**filters, "q": q}.items() if v}
    new_link = "forum/new" + (f"?{urlencode({target[0]: target[1]})}" if target else "")
    return dict(
        http_status=400 if errors else 200, errors=errors,
        threads=[forum.thread_json(t, caller) for t in threads], total=total,
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
    async def post(self):
        body = {k: self.get_body_argument(k, "") for k in NEW_FIELDS}
        body = {k: v for k, v in body.items() if v != "" or k in ("title", "body")}
        try:
            thread_id = await self.in_write(_new_thread, self.caller, body)
        except MarketError as e:  # rolled back: nothing written
            if e.field not in NEW_FIELDS:
                e.field = None
            self.render_form_error("forum_new.html", e, **self._namespace())
            return
        self.redirect_after_post(f"forum/{thread_id}")


class ForumThreadPage(PageHandler):
    """A thread and one page of its posts; the reply form; operators hide or show the thread
    and each post (``action`` = ``reply``, ``moderate_thread`` or ``moderate_post``)."""

    nav = "forum"
    ACTIONS = ("reply", "moderate_thread", "moderate_post")

    @web.authenticated
    async def get(self, thread):
        page = _page_number(self.get_query_argument("page", None))
        await self.render_from_db("forum_thread.html", _thread_namespace, self.caller, thread,
                                  page, self.get_query_argument("done", ""))

    @web.authenticated
    async def post(self, thread):
        arg = self.get_body_argument
        form = {"action": arg("action", ""), "body": arg("body", ""), "hidden": arg("hidden", ""),
                "reason": arg("reason", ""), "post": arg("post", ""),
                "page": _page_number(arg("page", None))}
        try:
            done = await self.in_write(_thread_action, self.caller, thread, form)
        except MarketError as e:  # rolled back: nothing written
            if e.status == 404 and e.field == "thread":
                raise
            if e.field not in ("body", "reason"):
                e.field = None
            self.render_form_error("forum_thread.html", e, **await self.in_db(
                _thread_namespace, self.caller, thread, form["page"],
                self.get_query_argument("done", "")))
            return
        self.redirect_after_post(done)


def _new_thread(session, caller, body: dict) -> int:
    """Blocking (the db executor, one write transaction): a new thread; its id."""
    thread = forum.create_thread(session, caller, body)
    session.flush()
    return thread.id


def _thread_action(session, caller, thread: str, form: dict) -> str:
    """Blocking (the db executor, one write transaction): a reply, or an operator hiding or
    showing the thread or one of its posts; returns where the browser goes next."""
    action = form["action"]
    found = forum.get_thread(session, caller, thread)
    if action == "reply":
        post = forum.add_post(session, caller, found, {"body": form["body"]})
        session.flush()
        page = forum.page_of_post(session, post, PER_PAGE)
        return f"forum/{found.id}?page={page}&done=posted#post-{post.id}"
    if action not in ForumThreadPage.ACTIONS:
        raise InvalidField(f"action must be one of {', '.join(ForumThreadPage.ACTIONS)}",
                           "action")
    hidden, reason = forum.parse_moderation(
        {"hidden": form["hidden"] == "1", "reason": form["reason"] or None})
    target = found if action == "moderate_thread" else forum.get_post(session, caller,
                                                                      form["post"])
    if target is not found and target.thread_id != found.id:
        raise InvalidField("that post is in another thread", "post")
    forum.moderate(session, caller, target, hidden, reason)
    anchor = f"#post-{target.id}" if target is not found else ""
    return (f"forum/{found.id}?page={form['page']}"
            f"&done={'hidden' if hidden else 'shown'}{anchor}")


def _thread_namespace(session, caller, thread_id: str, page: int, done: str) -> dict:
    """A thread's page: the thread, one page of its posts, the reply form's limits."""
    shown = forum.thread_reading(session, caller, thread_id, page, PER_PAGE)
    return {**shown, "pages": max(1, -(-shown["total"] // PER_PAGE)),
            "max_body": forum.MAX_BODY, "notice": NOTICES.get(done)}


default_handlers = [
    (r"/forum", ForumPage),
    (r"/forum/new", ForumNewPage),
    (r"/forum/(?P<thread>[0-9]+)", ForumThreadPage),
]
