"""The inbox's JSON API under ``api/inbox``: the caller's notifications (paged, unread
first-class), marking them read, and the caller's e-mail copy setting. Everyone sees only
their own inbox; see :mod:`marketplace_ext.exchange.inbox`."""

from __future__ import annotations

from tornado import web

from ..errors import InvalidField
from ..exchange import inbox
from .base import APIHandler


def _flag(raw: str | None, name: str) -> bool:
    if raw is None or raw == "false":
        return False
    if raw == "true":
        return True
    raise InvalidField(f"{name} must be true or false", name)


class InboxHandler(APIHandler):
    @web.authenticated
    def get(self):
        user = self.caller.name
        unread_only = _flag(self.get_query_argument("unread", None), "unread")
        page = self.int_argument("page", 1, 1, 100_000)
        per_page = self.int_argument("per_page", 20, 1, inbox.MAX_PAGE)
        rows, total = inbox.list_notifications(self.db, user, unread_only, page, per_page)
        self.write_json({"notifications": [inbox.notification_json(n) for n in rows],
                         "total": total, "unread": inbox.unread_count(self.db, user),
                         "page": page, "per_page": per_page})


class ReadHandler(APIHandler):
    @web.authenticated
    def post(self):
        ids = inbox.parse_mark_request(self.json_body())
        marked = inbox.mark_read(self.db, self.caller.name, ids)
        self.db.commit()
        self.write_json({"marked": marked, "unread": inbox.unread_count(self.db,
                                                                         self.caller.name)})


class SettingsHandler(APIHandler):
    @web.authenticated
    def get(self):
        setting = inbox.mail_setting(self.db, self.caller.name)
        self.write_json(inbox.mail_setting_json(setting, self.market.mail.enabled))

    @web.authenticated
    def put(self):
        setting = inbox.set_mail_setting(self.db, self.caller.name, self.json_body())
        self.db.commit()
        self.write_json(inbox.mail_setting_json(setting, self.market.mail.enabled))


default_handlers = [
    (r"/api/inbox", InboxHandler),
    (r"/api/inbox/read", ReadHandler),
    (r"/api/inbox/settings", SettingsHandler),
]
