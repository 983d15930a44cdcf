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
    async def get(self):
        unread_only = _flag(self.get_query_argument("unread", None), "unread")
        page = self.int_argument("page", 1, 1, 100_000)
        per_page = self.int_argument("per_page", 20, 1, inbox.MAX_PAGE)
        listed = await self.in_db(inbox.inbox_page, self.caller.name, unread_only, page,
                                  per_page)
        self.write_json({**listed, "page": page, "per_page": per_page})


class ReadHandler(APIHandler):
    @web.authenticated
    async def post(self):
        ids = inbox.parse_mark_request(self.json_body())
        self.write_json(await self.in_write(_mark_read, self.caller.name, ids))


class SettingsHandler(APIHandler):
    @web.authenticated
    async def get(self):
        self.write_json(await self.in_db(inbox.mail_setting_reading, self.caller.name,
                                         self.market.mail.enabled))

    @web.authenticated
    async def put(self):
        self.write_json(await self.in_write(_set_mail, self.caller.name, self.json_body(),
                                            self.market.mail.enabled))


def _mark_read(session, user: str, ids: list[int] | None) -> dict:
    marked = inbox.mark_read(session, user, ids)
    return {"marked": marked, "unread": inbox.unread_count(session, user)}


def _set_mail(session, user: str, body: dict, mail_available: bool) -> dict:
    return inbox.mail_setting_json(inbox.set_mail_setting(session, user, body), mail_available)


default_handlers = [
    (r"/api/inbox", InboxHandler),
    (r"/api/inbox/read", ReadHandler),
    (r"/api/inbox/settings", SettingsHandler),
]
