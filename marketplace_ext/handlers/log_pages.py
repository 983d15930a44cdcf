"""The certification log in the browser: the latest checkpoints, the caller's own entries, and
one entry with its inclusion proof checked by the browser itself (``static/log.js``).

The page hands the browser nothing to trust but the log key it shows: the script fetches the
checkpoint, the entry and the proof from the JSON API (``api/log/...``) and checks them with
WebCrypto, then says which checks it ran itself."""

from __future__ import annotations

from tornado import web

from .. import certlog
from ..errors import NotFound
from ..ids import parse_id
from .base import PageHandler

PAGE_SIZE = 50


class LogPage(PageHandler):
    """Checkpoints, the caller's entries (paged with ``before``) and a box to open any entry."""

    nav = "log"

    @web.authenticated
    async def get(self):
        raw_index = self.get_query_argument("index", "").strip()
        if raw_index:  # the "open an entry" box: a GET form
            try:
                index = parse_id(raw_index, "log entry", "index")
            except NotFound:
                await self.render_log(errors={"index": f"{raw_index[:40]!r} is not an entry "
                                                        "number (0, 1, 2, ...)"},
                                      form={"index": raw_index}, status=400)
                return
            self.redirect(f"{self.market.service_prefix}log/{index}", status=303)
            return
        await self.render_log()

    async def render_log(self, status: int = 200, **ns) -> None:
        raw_before = self.get_query_argument("before", "")
        before = int(raw_before) if raw_before.isdigit() else None
        await self.render_from_db("log.html", _log_namespace, self.market.tlog, self.caller,
                                  before, status=status, log_key=self.market.tlog.vkey, **ns)


class LogEntryPage(PageHandler):
    """One entry as the caller may see it, and the in-browser verification of its proof."""

    nav = "log"

    @web.authenticated
    async def get(self, index):
        number = parse_id(index, "log entry", "index")
        await self.render_from_db("log_entry.html", _entry_namespace, self.market.tlog,
                                  self.caller, number, log_key=self.market.tlog.vkey)


def _latest(session, tlog) -> dict | None:
    try:
        return tlog.checkpoint(session)
    except NotFound:
        return None


def _log_namespace(session, tlog, caller, before: int | None) -> dict:
    """Blocking (the db executor): the latest checkpoints and a page of the caller's
    entries (``before`` an index, or the newest)."""
    entries = certlog.own_entries(session, caller, PAGE_SIZE + 1, before)
    more = len(entries) > PAGE_SIZE
    entries = entries[:PAGE_SIZE]
    return {"latest": _latest(session, tlog),
            "checkpoints": certlog.recent_checkpoints(session), "entries": entries,
            "next_before": entries[-1]["index"] if more and entries else None}


def _entry_namespace(session, tlog, caller, number: int) -> dict:
    """Blocking (the db executor): one entry as the caller may see it, and the checkpoint
    that includes it (None when it is not in a signed checkpoint yet: the page says so)."""
    entry = tlog.entry(session, number, viewer=caller)
    latest = _latest(session, tlog)
    if latest is not None and number >= latest["size"]:
        latest = None
    return {"entry": entry, "checkpoint": latest}


default_handlers = [
    (r"/log", LogPage),
    (r"/log/(?P<index>[^/]+)", LogEntryPage),
]
