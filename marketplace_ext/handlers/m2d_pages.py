"""Model-to-data pages: the requests of the caller's unit, for owners and demanders.

``/m2d/{id}`` is one request: the data owner reads the submitted notebook rendered by nbconvert
(``/m2d/{id}/notebook.html``: sanitized, served with ``Content-Security-Policy: sandbox`` and
shown in an ``<iframe sandbox>``, so none of its scripts runs) and approves or rejects it, as
``POST api/m2d/{id}/decision`` does (:func:`~marketplace_ext.m2d.decide`); the demander follows
its status (the page's script polls ``GET api/m2d/{id}``) and downloads the returned files.
"""

from __future__ import annotations

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
    async def get(self):
        code, requests = await self.in_db(_requests_page, self.market, self.caller)
        self.render_template("m2d.html", caller=self.caller, code=code, requests=requests)


def _requests_page(session, market, caller) -> tuple[dict, list[dict]]:
    """Blocking (the db executor): the unit's requests as JSON and the pending ones' code."""
    requests = m2d.list_requests(session, caller)
    code = {r.id: m2d.notebook_cells(market.blobs, r) for r in requests
            if r.status == "pending"}
    return code, [m2d.request_json(session, caller, r, market.service_prefix) for r in requests]


def _request_info(session, caller, request: str, prefix: str) -> dict:
    return m2d.request_json(session, caller, m2d.get_request(session, caller, request), prefix,
                            with_code=True)


def _decide(session, caller, request: str, body: dict) -> tuple[int, str, int | None]:
    """Blocking (the db executor, in a write transaction): the owner's decision."""
    decided = m2d.decide(session, caller, m2d.get_request(session, caller, request), body)
    return decided.id, decided.status, decided.run_id


class ModelToDataRequestPage(PageHandler):
    """One request: its status, the rendered notebook, the decision, the returned files."""

    nav = "m2d"

    async def _render(self, request: str, status: int = 200, **ns) -> None:
        info = await self.in_db(_request_info, self.caller, request, self.market.service_prefix)
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
    async def get(self, request):
        await self._render(request)

    @web.authenticated
    async def post(self, request):
        body = {"decision": self.get_body_argument("decision", ""),
                "reason": self.get_body_argument("reason", "").strip() or None}
        try:
            ident, decided, run_id = await self.in_write(_decide, self.caller, request, body)
        except MarketError as e:  # rolled back: nothing written
            form = {k: self.get_body_argument(k, "") for k in self.request.body_arguments}
            await self._render(request, status=e.status, form=form,
                               errors={e.field if e.field in ("reason", "decision") else "_form":
                                       e.message})
            return
        if run_id is not None:
            self.market.runner.kick()
        self.redirect_after_post(f"m2d/{ident}?decided={decided}")


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
        sha = (await self.in_db(m2d.get_request, self.caller, request)).notebook_sha256
        notebook = await self.in_io(self.market.blobs.get, sha)
        html = await notebook_view.render(sha, notebook, self.market.tmp_dir)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(html)


default_handlers = [
    (r"/m2d", ModelToDataPage),
    (r"/m2d/(?P<request>[0-9]+)", ModelToDataRequestPage),
    (r"/m2d/(?P<request>[0-9]+)/notebook.html", ModelToDataNotebookView),
]
