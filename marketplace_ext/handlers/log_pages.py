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
    def get(self):
        raw_index = self.get_query_argument("index", "").strip()
        if raw_index:  # the "open an entry" box: a GET form
            try:
                index = parse_id(raw_index, "log entry", "index")
            except NotFound:
                self.render_log(errors={"index": f"{raw_index[:40]!r} is not an entry number "
                                                  "(0, 1, 2, ...)"},
                                form={"index": raw_index}, status=400)
                return
            self.redirect(f"{self.market.service_prefix}log/{index}", status=303)
            return
        self.render_log()

    def render_log(self, status: int = 200, **ns) -> None:
        raw_before = self.get_query_argument("before", "")
        before = int(raw_before) if raw_before.isdigit() else None
        tlog = self.market.tlog
        try:
            latest = tlog.checkpoint(self.db)
        except NotFound:
            latest = None
        entries = certlog.own_entries(self.db, self.caller, PAGE_SIZE + 1, before)
        more = len(entries) > PAGE_SIZE
        entries = entries[:PAGE_SIZE]
        self.render_template(
            "log.html", status=status, latest=latest,
            checkpoints=certlog.recent_checkpoints(self.db), entries=entries,
            next_before=entries[-1]["index"] if more and entries else None,
            log_key=tlog.vkey, **ns)


class LogEntryPage(PageHandler):
    """One entry as the caller may see it, and the in-browser verification of its proof."""

    nav = "log"

    @web.authenticated
    def get(self, index):
        number = parse_id(index, "log entry", "index")
        entry = self.market.tlog.entry(self.db, number, viewer=self.caller)
        try:
            latest = self.market.tlog.checkpoint(self.db)
        except NotFound:
            latest = None
        if latest is not None and number >= latest["size"]:
            latest = None  # not in a signed checkpoint yet: the page says so
        self.render_template("log_entry.html", entry=entry, checkpoint=latest,
                             log_key=self.market.tlog.vkey)


default_handlers = [
    (r"/log", LogPage),
    (r"/log/(?P<index>[^/]+)", LogEntryPage),
]
