"""Model-to-data pages: the requests of the caller's unit, for owners and demanders.

``/m2d/{id}`` is one request: the data owner reads the submitted notebook rendered by nbconvert
(``/m2d/{id}/notebook.html``: sanitized, served with ``Content-Security-Policy: sandbox`` and
shown in an ``<iframe sandbox>``, so none of its scripts runs) and approves or rejects it, as
``POST api/m2d/{id}/decision`` does (:func:`~marketplace_ext.m2d.decide`); the demander follows
its status (the page's script polls ``GET api/m2d/{id}``) and downloads the returned files.
"""

from __future__ import annotations

import asyncio

from tornado import web

from .. import m2d, notebook_view
from ..auth import SCOPE_PUBLISH
from ..errors import MarketError
from .base import PageHandler

#: a run in these statuses is still going (its request may change)
ACTIVE_RUN = ("queued", "running")


class ModelToDataPage(PageHandler):
    """The requests of the caller's unit, with their code for the owner to read."""

    nav = "m2d"

    @web.authenticated
    def get(self):
        requests = m2d.list_requests(self.db, self.caller)
        code = {r.id: m2d.notebook_cells(self.market.blobs, r) for r in requests
                if r.status == "pending"}
        self.render_template(
            "m2d.html", caller=self.caller, code=code,
            requests=[m2d.request_json(self.db, self.caller, r, self.market.service_prefix)
                      for r in requests])


class ModelToDataRequestPage(PageHandler):
    """One request: its status, the rendered notebook, the decision, the returned files."""

    nav = "m2d"

    def _render(self, request: str, status: int = 200, **ns) -> None:
        with self.market.session_factory() as session:
            found = m2d.get_request(session, self.caller, request)
            info = m2d.request_json(session, self.caller, found, self.market.service_prefix,
                                    with_code=True)
        caller = self.caller
        owner = caller.unit == info["owner_unit"]
        run = info["run"]
        can_decide = owner and SCOPE_PUBLISH in caller.scopes and info["status"] == "pending"
        # the page follows the request until nothing changes any more (not while its owner
        # may be typing a reason)
        following = (info["status"] == "pending" and not can_decide) or (
            info["status"] == "approved" and (run is None or run["status"] in ACTIVE_RUN))
        self.render_template(
            "m2d_request.html", status=status, r=info, can_decide=can_decide,
            side="owner" if owner else "demander" if caller.unit == info["requester_unit"]
            else "operator", following=following,
            decided=self.get_query_argument("decided", ""), **ns)

    @web.authenticated
    def get(self, request):
        self._render(request)

    @web.authenticated
    def post(self, request):
        body = {"decision": self.get_body_argument("decision", ""),
                "reason": self.get_body_argument("reason", "").strip() or None}
        try:
            found = m2d.get_request(self.db, self.caller, request)
            decided = m2d.decide(self.db, self.caller, found, body)
            self.db.commit()
        except MarketError as e:
            self.db.rollback()
            form = {k: self.get_body_argument(k, "") for k in self.request.body_arguments}
            self._render(request, status=e.status, form=form,
                         errors={e.field if e.field in ("reason", "decision") else "_form":
                                 e.message})
            return
        if decided.run_id is not None:
            self.market.runner.kick()
        self.redirect_after_post(f"m2d/{decided.id}?decided={decided.status}")


class ModelToDataNotebookView(PageHandler):
    """The submitted notebook as sanitized HTML, for the owner's sandboxed iframe: no script,
    no same-origin access, nothing loaded from anywhere."""

    nav = "m2d"

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Security-Policy",
                        notebook_view.VIEW_CSP + "; frame-ancestors 'self'")

    @web.authenticated
    async def get(self, request):
        with self.market.session_factory() as session:
            found = m2d.get_request(session, self.caller, request)
            sha = found.notebook_sha256
        notebook = await asyncio.get_running_loop().run_in_executor(
            None, self.market.blobs.get, sha)
        html = await notebook_view.render(sha, notebook, self.market.tmp_dir)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(html)


default_handlers = [
    (r"/m2d", ModelToDataPage),
    (r"/m2d/(?P<request>[0-9]+)", ModelToDataRequestPage),
    (r"/m2d/(?P<request>[0-9]+)/notebook.html", ModelToDataNotebookView),
]
