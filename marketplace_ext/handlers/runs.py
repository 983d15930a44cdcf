"""Remote-run handlers under ``api/runs``: submit (JSON, or multipart with a data file that is
stored only once the run is authorized), list, follow, cancel, and the run's outputs, which a
refunded run withholds from its caller."""

from __future__ import annotations

import json

from tornado import web

from .. import (
    remote_run,
)
from ..auth import SCOPE_SUBSCRIBE
from ..errors import (
    InvalidField,
    NotFound,
    PayloadTooLarge,
    PlatformUnavailable,
)
from .base import MULTIPART_ENVELOPE, APIHandler


class RunsHandler(APIHandler):
    """JSON body, or multipart: field ``request`` (the same JSON) and file ``data`` (a CSV or
    Parquet file the notebook gets as ``input_path``)."""

    def max_body_bytes(self) -> int:
        if self.request.method == "POST":  # multipart with the data file (JSON stays 1 MiB)
            return self.market.max_file_bytes + MULTIPART_ENVELOPE
        return self.body_limit

    def check_before_body(self) -> None:
        if self.request.method == "POST":
            self.caller.require(SCOPE_SUBSCRIBE, "running a product")

    @web.authenticated
    async def get(self):
        """The caller's runs (``scope=mine``, the default) or its unit's (``scope=unit``)."""
        limit = self.int_argument("limit", 20, 1, 100)
        offset = self.int_argument("offset", 0, 0, 10**9)
        scope = self.get_query_argument("scope", "mine")
        runs, total = await self.in_db(_runs_json, self.market, self.caller, scope,
                                       self.get_query_argument("status", None), limit, offset)
        self.write_json({"runs": runs, "total": total, "limit": limit, "offset": offset,
                         "scope": scope})

    @web.authenticated
    async def post(self):
        market = self.market
        staged = name = None
        try:
            if self.request.files or self.get_body_argument("request", None) is not None:
                body = self._multipart_request()
                files = self.request.files.get("data")
                if not files:
                    raise InvalidField("upload the data file as multipart field 'data'", "data")
                # checked and staged (written, not yet addressable) off the event loop; stored
                # only once the run is authorized, charged and queued, below
                name, staged = await self.in_io(self._check_and_stage, files[0])
            else:
                body = self.json_body()
            if staged is None and self.caller.unit:
                # a run on a unit platform that is down or restarting takes no points: 503 up front
                down = await self.in_io(market.data_platform.unit_down, self.caller.unit)
                if down:
                    raise PlatformUnavailable(down, "unit")
            answer = await self.in_write(submit_run, market, self.caller, body, staged, name)
        finally:
            if staged is not None:
                await self.in_io(staged.discard)  # refused or failed: the staged file goes
        market.runner.kick()
        self.write_json(answer, status=201)


    def _check_and_stage(self, upload: dict) -> tuple[str, object]:
        data, limit = upload["body"], self.market.max_file_bytes
        if len(data) > limit:
            raise PayloadTooLarge(f"the uploaded file is {len(data)} bytes; the limit is "
                                  f"{limit}", "data")
        name = remote_run.check_upload(upload["filename"], data, limit)
        return name, self.market.blobs.stage(data)

    def _multipart_request(self) -> dict:
        raw = self.get_body_argument("request", None)
        if raw is None:
            raise InvalidField("send the run request as multipart field 'request' (JSON)",
                               "request")
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise InvalidField(f"request is not valid JSON: {e}", "request") from e
        if not isinstance(body, dict):
            raise InvalidField("request must be a JSON object", "request")
        return body


def submit_run(session, market, caller, body: dict, staged, name: str | None) -> dict:
    """Blocking (the db executor, in a write transaction): charge and queue the run; an
    authorized upload enters the store (a rename of the staged file) before the commit, so a
    failed commit leaves an orphan blob for blob_gc, never a run without its file."""
    run = remote_run.submit_run(session, caller, body, market.run_timeout,
                                market.run_max_timeout, (staged.sha256, name) if staged else None)
    if staged is not None:
        staged.commit()
    session.flush()
    return remote_run.run_json(session, run, market.service_prefix, caller)


def _runs_json(session, market, caller, scope: str, status: str | None, limit: int,
               offset: int) -> tuple[list[dict], int]:
    """Blocking (the db executor): one page of runs as the API lists them, and the total."""
    days = market.refunded_output_days
    runs, total = remote_run.list_runs(session, caller, scope, status, limit, offset)
    return [remote_run.run_json(session, r, market.service_prefix, caller, days)
            for r in runs], total


def _run_json(session, market, caller, run: str) -> dict:
    """Blocking (the db executor): the caller's run ``run`` as the API shows it."""
    days = market.refunded_output_days
    found = remote_run.get_run(session, caller, run, days)
    return remote_run.run_json(session, found, market.service_prefix, caller, days)


class RunHandler(APIHandler):
    @web.authenticated
    async def get(self, run):
        self.write_json(await self.in_db(_run_json, self.market, self.caller, run))


class RunCancelHandler(APIHandler):
    @web.authenticated
    async def post(self, run):
        self.write_json(await self.in_db(_cancel, self.market, self.caller, run))


class RunOutputHandler(APIHandler):
    @web.authenticated
    async def get(self, run):
        found = await self.in_db(_readable_run, self.caller, run,
                                 self.market.refunded_output_days)
        if not found.html_sha256:
            raise NotFound(f"run {found.id} has no output yet ({found.status})", "run")
        self.set_header("Content-Type", "text/html; charset=utf-8")
        # product code wrote this page: no scripts, no same-origin access to the service
        self.set_header("Content-Security-Policy", "sandbox")
        await self.stream_blob(found.html_sha256)


class RunArtifactHandler(APIHandler):
    @web.authenticated
    async def get(self, run, name):
        found = await self.in_db(_readable_run, self.caller, run,
                                 self.market.refunded_output_days)
        sha = json.loads(found.artifacts or "{}").get(name)
        if sha is None:
            raise NotFound(f"run {found.id} has no artifact {name!r}", "name")
        self.set_attachment(name)
        self.set_header("X-Content-SHA256", sha)
        if found.log_index is not None:
            self.set_header("X-Log-Index", str(found.log_index))
        await self.stream_blob(sha)


def _cancel(session, market, caller, run: str) -> dict:
    """Blocking (the db executor): cancel the caller's run (others' runs: 404 first)."""
    run_id = remote_run.get_run(session, caller, run).id
    # the runner commits the cancellation in its own write transaction: end this read first,
    # and touch no expired object after it (a refresh would begin a deferred transaction, which
    # SQLite refuses to upgrade to a write once another writer has committed meanwhile)
    session.rollback()
    cancelled = market.runner.cancel(session, run_id)
    return remote_run.run_json(session, cancelled, market.service_prefix, caller)


def _readable_run(session, caller, run: str, days: int):
    """The run, if the caller may read its outputs (its columns are loaded: read it after the
    session closed)."""
    found = remote_run.get_run(session, caller, run, days)
    remote_run.check_outputs_readable(session, caller, found, days)
    return found


default_handlers = [
    (r"/api/runs", RunsHandler),
    (r"/api/runs/(?P<run>[^/]+)", RunHandler),
    (r"/api/runs/(?P<run>[^/]+)/cancel", RunCancelHandler),
    (r"/api/runs/(?P<run>[^/]+)/output.html", RunOutputHandler),
    (r"/api/runs/(?P<run>[^/]+)/artifacts/(?P<name>.+)", RunArtifactHandler),
]
