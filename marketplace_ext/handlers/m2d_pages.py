"""Model-to-data pages: the requests of the caller's unit, for owners and demanders."""

from __future__ import annotations

from tornado import web

from .. import m2d
from .base import PageHandler


class ModelToDataPage(PageHandler):
    """The requests of the caller's unit, with their code for the owner to read."""

    nav = "m2d"

    @web.authenticated
    def get(self):
        requests = m2d.list_requests(self.db, self.caller)
        code = {r.id: m2d.notebook_cells(self.market.blobs, r) for r in requests}
        self.render_template(
            "m2d.html", caller=self.caller, code=code,
            requests=[m2d.request_json(self.db, self.caller, r, self.market.service_prefix)
                      for r in requests])


default_handlers = [
    (r"/m2d", ModelToDataPage),
]
