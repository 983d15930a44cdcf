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

    def _namespace(self) -> dict:
        user = self.caller.name
        unread_only = self.get_query_argument("show", "") == "unread"
        try:
            page = min(max(int(self.get_query_argument("page", "1")), 1), 100_000)
        except ValueError:
            page = 1
        rows, total = inbox.list_notifications(self.db, user, unread_only, page, PER_PAGE)
        setting = inbox.mail_setting(self.db, user)
        return {"notifications": [inbox.notification_json(n) for n in rows], "total": total,
                "page": page, "pages": max(1, -(-total // PER_PAGE)), "unread_only": unread_only,
                "mail": inbox.mail_setting_json(setting, self.market.mail.enabled),
                "notice": NOTICES.get(self.get_query_argument("done", ""))}

    @web.authenticated
    def get(self):
        self.render_template("inbox.html", **self._namespace())

    @web.authenticated
    def post(self):
        user = self.caller.name
        arg = self.get_body_argument
        action = arg("action", "")
        back = self.get_query_argument("show", "")
        back = "inbox?show=unread&" if back == "unread" else "inbox?"
        try:
            if action in ("open", "read"):
                ident = parse_id(arg("id", ""), "notification", "id")
                inbox.mark_read(self.db, user, [ident])
                link = inbox.link_of(self.db, user, ident)
                self.db.commit()
                if action == "open":
                    self.redirect_after_post(link or "inbox")
                    return
                self.redirect_after_post(back + "done=read")
            elif action == "read_all":
                inbox.mark_read(self.db, user)
                self.db.commit()
                self.redirect_after_post(back + "done=all")
            elif action == "mail":
                enabled = arg("enabled", "") == "1"
                body = {"enabled": enabled, **({"email": arg("email", "")} if enabled else {})}
                inbox.set_mail_setting(self.db, user, body)
                self.db.commit()
                self.redirect_after_post(back + ("done=mail_on" if enabled else "done=mail_off"))
            else:
                raise InvalidField(f"action must be one of {', '.join(self.ACTIONS)}", "action")
        except MarketError as e:
            self.db.rollback()
            if isinstance(e, NotFound) or e.field not in ("email", "enabled"):
                e.field = None
            self.render_form_error("inbox.html", e, **self._namespace())


default_handlers = [
    (r"/inbox", InboxPage),
]
