"""The inbox page: the caller's notifications (all or unread, paged), opening one (marks it
read, then goes to what it is about), marking read, and the e-mail copy setting. Handlers call
:mod:`marketplace_ext.exchange.inbox` (the same functions as ``api/inbox``)."""

from __future__ import annotations

from tornado import web

from ..errors import InvalidField, MarketError, NotFound
from ..exchange import inbox
from ..ids import parse_id
from .base import PageHandler

PER_PAGE = 20
NOTICES = {"read": "Marked read.", "all": "Everything is marked read.",
           "mail_on": "E-mail copies are on.", "mail_off": "E-mail copies are off."}


class InboxPage(PageHandler):
    nav = "inbox"
    ACTIONS = ("open", "read", "read_all", "mail")

    def _query(self) -> tuple:
        """(user, unread only, page, mail available, done) from the request."""
        unread_only = self.get_query_argument("show", "") == "unread"
        try:
            page = min(max(int(self.get_query_argument("page", "1")), 1), 100_000)
        except ValueError:
            page = 1
        return (self.caller.name, unread_only, page, self.market.mail.enabled,
                self.get_query_argument("done", ""))

    @web.authenticated
    async def get(self):
        self.render_template("inbox.html", **await self.in_db(_inbox_namespace,
                                                              *self._query()))

    @web.authenticated
    async def post(self):
        user = self.caller.name
        arg = self.get_body_argument
        action = arg("action", "")
        back = self.get_query_argument("show", "")
        back = "inbox?show=unread&" if back == "unread" else "inbox?"
        try:
            if action in ("open", "read"):
                ident = parse_id(arg("id", ""), "notification", "id")
                link = await self.in_write(_mark_one, user, ident)
                if action == "open":
                    self.redirect_after_post(link or "inbox")
                    return
                self.redirect_after_post(back + "done=read")
            elif action == "read_all":
                await self.in_write(inbox.mark_read, user)
                self.redirect_after_post(back + "done=all")
            elif action == "mail":
                enabled = arg("enabled", "") == "1"
                body = {"enabled": enabled, **({"email": arg("email", "")} if enabled else {})}
                await self.in_write(inbox.set_mail_setting, user, body)
                self.redirect_after_post(back + ("done=mail_on" if enabled else "done=mail_off"))
            else:
                raise InvalidField(f"action must be one of {', '.join(self.ACTIONS)}", "action")
        except MarketError as e:  # rolled back: nothing written
            if isinstance(e, NotFound) or e.field not in ("email", "enabled"):
                e.field = None
            self.render_form_error("inbox.html", e,
                                   **await self.in_db(_inbox_namespace, *self._query()))


def _mark_one(session, user: str, ident: int) -> str:
    """Blocking (the db executor, one write transaction): notification ``ident`` marked
    read; its link."""
    inbox.mark_read(session, user, [ident])
    return inbox.link_of(session, user, ident)


def _inbox_namespace(session, user: str, unread_only: bool, page: int, mail_available: bool,
                     done: str) -> dict:
    """Blocking (the db executor): the inbox page's namespace (plain data)."""
    rows, total = inbox.list_notifications(session, user, unread_only, page, PER_PAGE)
    setting = inbox.mail_setting(session, user)
    return {"notifications": [inbox.notification_json(n) for n in rows], "total": total,
            "page": page, "pages": max(1, -(-total // PER_PAGE)), "unread_only": unread_only,
            "mail": inbox.mail_setting_json(setting, mail_available),
            "notice": NOTICES.get(done)}


default_handlers = [
    (r"/inbox", InboxPage),
]
