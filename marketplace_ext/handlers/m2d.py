"""Model-to-data handlers: submit a notebook to a data product, the owner's decision, and the
files that come back."""

from __future__ import annotations

import asyncio

from tornado import web

from .. import m2d
from ..errors import InvalidField
from ..orm import write_transaction
from .base import APIHandler

STATUSES = ("pending", "approved", "rejected")


class ModelToDataHandler(APIHandler):
    @web.authenticated
    def get(self):
        status = self.get_query_argument("status", None)
        if status is not None and status not in STATUSES:
            raise InvalidField(f"status must be one of {', '.join(STATUSES)}", "status")
        prefix = self.market.service_prefix
        self.write_json({"requests": [
            m2d.request_json(self.db, self.caller, r, prefix)
            for r in m2d.list_requests(self.db, self.caller, status)]})

    @web.authenticated
    async def post(self):
        market = self.market
        body = self.json_body()
        caller = self.caller
        # nbformat and papermill are slow: before any write transaction opens
        notebook, inspected = await asyncio.get_running_loop().run_in_executor(
            None, m2d.read_notebook, body.get("notebook"))
        with market.session_factory() as session:
            write_transaction(session)
            request = m2d.submit(session, market.blobs, caller, body, notebook, inspected,
                                 market.run_timeout, market.run_max_timeout)
            session.commit()
            self.write_json(m2d.request_json(session, caller, request, market.service_prefix,
                                             with_code=True), status=201)


class ModelToDataRequestHandler(APIHandler):
    @web.authenticated
    def get(self, request):
        found = m2d.get_request(self.db, self.caller, request)
        self.write_json(m2d.request_json(self.db, self.caller, found, self.market.service_prefix,
                                         with_code=True))


class ModelToDataNotebookHandler(APIHandler):
    """The submitted code, for the owner to read before deciding (and for the demander)."""

    @web.authenticated
    def get(self, request):
        found = m2d.get_request(self.db, self.caller, request)
        self.set_attachment(f"m2d-request-{found.id}.ipynb", "application/x-ipynb+json")
        self.set_header("X-Content-SHA256", found.notebook_sha256)
        self.finish(self.market.blobs.get(found.notebook_sha256))


class ModelToDataDecisionHandler(APIHandler):
    @web.authenticated
    def post(self, request):
        found = m2d.get_request(self.db, self.caller, request)
        decided = m2d.decide(self.db, self.caller, found, self.json_body())
        self.db.commit()
        if decided.run_id is not None:
            self.market.runner.kick()
        self.write_json(m2d.request_json(self.db, self.caller, decided,
                                         self.market.service_prefix))


class ModelToDataFileHandler(APIHandler):
    @web.authenticated
    def get(self, request, path):
        found = m2d.get_request(self.db, self.caller, request)
        data, sha = m2d.released_file(self.db, self.market.blobs, self.caller, found, path)
        self.set_attachment(path)
        self.set_header("X-Content-SHA256", sha)
        self.finish(data)


default_handlers = [
    (r"/api/m2d", ModelToDataHandler),
    (r"/api/m2d/(?P<request>[^/]+)", ModelToDataRequestHandler),
    (r"/api/m2d/(?P<request>[^/]+)/notebook", ModelToDataNotebookHandler),
    (r"/api/m2d/(?P<request>[^/]+)/decision", ModelToDataDecisionHandler),
    (r"/api/m2d/(?P<request>[^/]+)/files/(?P<path>.+)", ModelToDataFileHandler),
]
