"""Run pages: the form generated from a product's papermill parameters (typed inputs, the
defaults, each parameter's comment as help; the unit's tables or an uploaded CSV/Parquet file),
one run (live progress, cancel, the output in a sandboxed iframe, artifacts) and the run
history of the caller and its unit.

They call what ``api/runs`` calls (:mod:`..remote_run`, :mod:`..run_form`): the same checks,
the same charge, the same field errors, shown next to the field.
"""

from __future__ import annotations

import json

from tornado import web

from .. import catalog, points, remote_run, run_form
from ..auth import SCOPE_SUBSCRIBE
from ..errors import InvalidField, MarketError, PayloadTooLarge, PlatformUnavailable
from ..orm import Version
from ..units import get_unit
from .base import MULTIPART_ENVELOPE, PageHandler
from .runs import submit_run

PAGE_SIZE = 20
FINAL_STATUSES = ("succeeded", "failed", "cancelled")


def run_access(session, caller, product) -> dict:
    """What running ``product`` costs the caller's unit now: ``{"state": "own" | "entitled" |
    "none" | "no_unit", "uses_left": n | None, "valid_until": iso | None}`` (read only)."""
    if caller.unit is None:
        return {"state": "no_unit", "uses_left": None, "valid_until": None}
    unit = get_unit(session, caller.unit)
    try:
        entitlement = points.check(session, unit, product, "remote_run")
    except MarketError as e:
        return {"state": "none", "message": e.message, "uses_left": None, "valid_until": None}
    if entitlement is None:
        return {"state": "own", "uses_left": None, "valid_until": None}
    until = entitlement.valid_until.isoformat() + "Z" if entitlement.valid_until else None
    return {"state": "entitled", "uses_left": entitlement.uses_left, "valid_until": until}


def _form_context(session, market, caller, name: str, requested: str | None) -> dict:
    """The run form's namespace: the product, the version it runs, its parameters' fields
    and what a run costs the caller's unit now."""
    product = catalog.get_product(session, name, caller)
    version: Version = catalog.usable_version(product, caller, requested)
    spec = json.loads(version.parameters or "{}")
    return {"product": catalog.product_summary(product, caller),
            "version": version.version, "requested_version": requested or "",
            "spec": spec, "fields": run_form.form_fields(spec),
            "access": run_access(session, caller, product),
            "default_timeout": market.run_timeout, "max_timeout": market.run_max_timeout,
            "max_file_mb": max(market.max_file_bytes // 2**20, 1)}


class RunFormPage(PageHandler):
    """``products/<name>/run``: GET the form, POST it (multipart when a file is uploaded)."""

    nav = "runs"

    def max_body_bytes(self) -> int:
        if self.request.method == "POST":
            return self.market.max_file_bytes + MULTIPART_ENVELOPE
        return self.body_limit

    def check_before_body(self) -> None:
        # as POST api/runs: no upload is read for a caller who may not run anything
        if self.request.method == "POST":
            self.caller.require(SCOPE_SUBSCRIBE, "running a product")

    async def _context(self, name: str, requested: str | None) -> dict:
        return await self.in_db(_form_context, self.market, self.caller, name, requested)

    @web.authenticated
    async def get(self, product):
        self.render_template("run_form.html", **await self._context(
            product, self.get_query_argument("version", None)))

    @web.authenticated
    async def post(self, product):
        market, caller = self.market, self.caller
        requested = self.get_body_argument("version", "") or None
        staged = None
        try:
            try:
                data = self.get_body_argument("data", "platform")
                upload = None
                if data == "upload":
                    files = self.request.files.get("data_file") or []
                    if not files or not files[0]["body"]:
                        raise InvalidField("choose a CSV or Parquet file to upload", "data")
                    # checked and staged off the event loop; stored once the run is authorized
                    name, staged = await self.in_io(self._check_and_stage, files[0])
                    upload = name
                elif data != "platform":
                    raise InvalidField("data must be 'platform' (your unit's tables) or "
                                       "'upload' (a file)", "data")
                ctx = await self._context(product, requested)
                values = {k: self.get_body_argument(k) for k in self.request.body_arguments
                          if k.startswith("parameters.")}
                body = {"product": product, "parameters": run_form.parse_values(ctx["spec"],
                                                                                values)}
                if requested:
                    body["version"] = requested
                timeout = self.get_body_argument("timeout_seconds", "").strip()
                if timeout:
                    if not timeout.isdigit():
                        raise InvalidField("timeout_seconds must be a whole number of seconds",
                                           "timeout_seconds")
                    body["timeout_seconds"] = int(timeout)
                if upload is None and caller.unit:
                    down = await self.in_io(market.data_platform.unit_down, caller.unit)
                    if down:
                        raise PlatformUnavailable(down, "data")
                # charged and queued in one transaction; an authorized file enters the store
                run = await self.in_write(submit_run, market, caller, body, staged, upload)
            except MarketError as e:  # rolled back: nothing charged, queued or stored
                form = {k: self.get_body_argument(k, "") for k in self.request.body_arguments}
                self.render_form_error("run_form.html", e, form=form,
                                       **await self._context(product, requested))
                return
        finally:
            if staged is not None:
                await self.in_io(staged.discard)
        market.runner.kick()
        self.redirect_after_post(f"runs/{run['id']}")

    def _check_and_stage(self, upload: dict) -> tuple[str, object]:
        data, limit = upload["body"], self.market.max_file_bytes
        if len(data) > limit:
            raise PayloadTooLarge(f"the uploaded file is {len(data)} bytes; the limit is "
                                  f"{limit}", "data")
        name = remote_run.check_upload(upload["filename"], data, limit)
        return name, self.market.blobs.stage(data)


class RunsPage(PageHandler):
    """``runs``: the caller's runs or its unit's, newest first, paged."""

    nav = "runs"

    @web.authenticated
    async def get(self):
        scope = self.get_query_argument("scope", "mine")
        status = self.get_query_argument("status", "") or None
        try:
            offset = max(int(self.get_query_argument("offset", "0")), 0)
            limit = min(max(int(self.get_query_argument("limit", str(PAGE_SIZE))), 1), 100)
        except ValueError:
            offset, limit = 0, PAGE_SIZE
        error, runs, total = None, [], 0
        try:
            runs, total = await self.in_db(_runs_page, self.market, self.caller, scope, status,
                                           limit, offset)
        except MarketError as e:
            error = e
        self.render_template(
            "runs.html", status=400 if error else 200, runs=runs, total=total, scope=scope,
            status_filter=status or "", offset=offset, page_size=limit,
            statuses=remote_run.RUN_STATUSES,
            errors={(error.field or "_form"): error.message} if error else {})


class RunPage(PageHandler):
    """``runs/<id>``: status and progress (runs.js follows it live), cancel (POST), the output
    in a sandboxed iframe and the artifacts."""

    nav = "runs"

    async def _render(self, run_id: str, status: int = 200, errors: dict | None = None) -> None:
        run = await self.in_db(_run_json, self.market, self.caller, run_id)
        self.render_template("run.html", status=status, run=run, final=run["status"] in
                             FINAL_STATUSES, errors=errors or {})

    @web.authenticated
    async def get(self, run):
        await self._render(run)

    @web.authenticated
    async def post(self, run):
        """Cancel the run (the only action of this page)."""
        action = self.get_body_argument("action", "")
        try:
            ident = await self.in_db(_cancel, self.market, self.caller, run, action)
        except MarketError as e:
            await self._render(run, status=e.status, errors={"_form": e.message})
            return
        self.redirect_after_post(f"runs/{ident}")


def _runs_page(session, market, caller, scope: str, status: str | None, limit: int,
               offset: int) -> tuple[list[dict], int]:
    found, total = remote_run.list_runs(session, caller, scope, status, limit, offset)
    days = market.refunded_output_days
    return [remote_run.run_json(session, r, market.service_prefix, caller, days)
            for r in found], total


def _run_json(session, market, caller, run_id: str) -> dict:
    days = market.refunded_output_days
    found = remote_run.get_run(session, caller, run_id, days)
    return remote_run.run_json(session, found, market.service_prefix, caller, days)


def _cancel(session, market, caller, run: str, action: str) -> int:
    """Blocking (the db executor): the caller's run cancelled (others' runs: 404 first)."""
    run_id = remote_run.get_run(session, caller, run).id
    if action != "cancel":
        raise InvalidField("the only action here is 'cancel'", "action")
    # the runner commits the cancellation in its own write transaction; no expired object is
    # touched after this rollback (see handlers/runs.py)
    session.rollback()
    market.runner.cancel(session, run_id)
    return run_id


default_handlers = [
    (r"/products/(?P<product>[^/]+)/run", RunFormPage),
    (r"/runs", RunsPage),
    (r"/runs/(?P<run>[^/]+)", RunPage),
]
