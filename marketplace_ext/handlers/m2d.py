"""Model-to-data handlers: submit a notebook to a data product, the owner's decision, and the
files that come back."""

from __future__ import annotations

from tornado import web

from .. import m2d
from ..errors import InvalidField
from .base import APIHandler

STATUSES = ("pending", "approved", "rejected")


class ModelToDataHandler(APIHandler):
    @web.authenticated
    async def get(self):
        status = self.get_query_argument("status", None)
        if status is not None and status not in STATUSES:
            raise InvalidField(f"status must be one of {', '.join(STATUSES)}", "status")
        self.write_json({"requests": await self.in_db(_requests_json, self.caller, status,
                                                      self.market.service_prefix)})

    @web.authenticated
    async def post(self):
        market = self.market
        body = self.json_body()
        caller = self.caller
        # nbformat and papermill are slow: before any write transaction opens
        notebook, inspected = await self.in_io(m2d.read_notebook, body.get("notebook"))
        # the notebook stored before the transaction (m2d.submit then only finds it there): a
        # refused request leaves an orphan blob for blob_gc, never a row without its blob
        await self.in_io(market.blobs.put, notebook)
        self.write_json(await self.in_write(submit_request, market, caller, body, notebook,
                                            inspected), status=201)


def submit_request(session, market, caller, body: dict, notebook: bytes,
                   inspected: dict) -> dict:
    """Blocking (the db executor, in a write transaction): the request recorded, as JSON."""
    request = m2d.submit(session, market.blobs, caller, body, notebook, inspected,
                         market.run_timeout, market.run_max_timeout)
    session.flush()
    return m2d.request_json(session, caller, request, market.service_prefix, with_code=True)


def decide_request(session, caller, request: str, body: dict,
                   prefix: str) -> tuple[dict, int | None]:
    """Blocking (the db executor, in a write transaction): the owner's decision; the request
    as JSON and the run it queued, if any."""
    decided = m2d.decide(session, caller, m2d.get_request(session, caller, request), body)
    session.flush()
    return m2d.request_json(session, caller, decided, prefix), decided.run_id


def _requests_json(session, caller, status: str | None, prefix: str) -> list[dict]:
    return [m2d.request_json(session, caller, r, prefix)
            for r in m2d.list_requests(session, caller, status)]


def _request_json(session, caller, request: str, prefix: str) -> dict:
    found = m2d.get_request(session, caller, request)
    return m2d.request_json(session, caller, found, prefix, with_code=True)


class ModelToDataRequestHandler(APIHandler):
    @web.authenticated
    async def get(self, request):
        self.write_json(await self.in_db(_request_json, self.caller, request,
                                         self.market.service_prefix))


class ModelToDataNotebookHandler(APIHandler):
    """The submitted code, for the owner to read before deciding (and for the demander)."""

    @web.authenticated
    async def get(self, request):
        found = await self.in_db(m2d.get_request, self.caller, request)
        self.set_attachment(f"m2d-request-{found.id}.ipynb", "application/x-ipynb+json")
        self.set_header("X-Content-SHA256", found.notebook_sha256)
        await self.stream_blob(found.notebook_sha256)


class ModelToDataDecisionHandler(APIHandler):
    @web.authenticated
    async def post(self, request):
        answer, run_id = await self.in_write(decide_request, self.caller, request,
                                             self.json_body(), self.market.service_prefix)
        if run_id is not None:
            self.market.runner.kick()
        self.write_json(answer)


class ModelToDataFileHandler(APIHandler):
    @web.authenticated
    async def get(self, request, path):
        sha = await self.in_db(_released_sha, self.caller, request, path)
        self.set_attachment(path)
        self.set_header("X-Content-SHA256", sha)
        await self.stream_blob(sha)


def _released_sha(session, caller, request: str, path: str) -> str:
    return m2d.released_sha(m2d.get_request(session, caller, request), path)


default_handlers = [
    (r"/api/m2d", ModelToDataHandler),
    (r"/api/m2d/(?P<request>[^/]+)", ModelToDataRequestHandler),
    (r"/api/m2d/(?P<request>[^/]+)/notebook", ModelToDataNotebookHandler),
    (r"/api/m2d/(?P<request>[^/]+)/decision", ModelToDataDecisionHandler),
    (r"/api/m2d/(?P<request>[^/]+)/files/(?P<path>.+)", ModelToDataFileHandler),
]
