"""Run pages: the form generated from a product's papermill parameters (typed inputs, the
defaults, each parameter's comment as help; the unit's tables or an uploaded CSV/Parquet file),
one run (live progress, cancel, the output in a sandboxed iframe, artifacts) and the run
history of the caller and its unit.

They call what ``api/runs`` calls (:mod:`..remote_run`, :mod:`..run_form`): the same checks,
the same charge, the same field errors, shown next to the field.
"""

from __future__ import annotations

import asyncio
import json

from tornado import web

from .. import catalog, points, remote_run, run_form
from ..auth import SCOPE_SUBSCRIBE
from ..errors import InvalidField, MarketError, PayloadTooLarge, PlatformUnavailable
from ..orm import Version
from ..units import get_unit
from .base import MULTIPART_ENVELOPE, PageHandler

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

    def _context(self, name: str, requested: str | None) -> dict:
        product = catalog.get_product(self.db, name, self.caller)
        version: Version = catalog.usable_version(product, self.caller, requested)
        spec = json.loads(version.parameters or "{}")
        return {"product": catalog.product_summary(product, self.caller),
                "version": version.version, "requested_version": requested or "",
                "spec": spec, "fields": run_form.form_fields(spec),
                "access": run_access(self.db, self.caller, product),
                "default_timeout": self.market.run_timeout,
                "max_timeout": self.market.run_max_timeout,
                "max_file_mb": max(self.market.max_file_bytes // 2**20, 1)}

    @web.authenticated
    def get(self, product):
        self.render_template("run_form.html",
                             **self._context(product, self.get_query_argument("version", None)))

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
                    name, staged = await asyncio.get_running_loop().run_in_executor(
                        None, self._check_and_stage, files[0])
                    upload = (staged.sha256, name)
                elif data != "platform":
                    raise InvalidField("data must be 'platform' (your unit's tables) or "
                                       "'upload' (a file)", "data")
                # no await from here on: the write transaction starts with self.db
                ctx = self._context(product, requested)
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
                    down = market.data_platform.unit_down(caller.unit)
                    if down:
                        raise PlatformUnavailable(down, "data")
                run = remote_run.submit_run(self.db, caller, body, market.run_timeout,
                                            market.run_max_timeout, upload)
                if staged is not None:
                    staged.commit()  # authorized: the file enters the store
                self.db.commit()
            except MarketError as e:
                self.db.rollback()  # nothing charged, queued or stored
                form = {k: self.get_body_argument(k, "") for k in self.request.body_arguments}
                self.render_form_error("run_form.html", e, form=form,
                                       **self._context(product, requested))
                return
        finally:
            if staged is not None:
                staged.discard()
        market.runner.kick()
        self.redirect_after_post(f"runs/{run.id}")

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
    def get(self):
        scope = self.get_query_argument("scope", "mine")
        status = self.get_query_argument("status", "") or None
        try:
            offset = max(int(self.get_query_argument("offset", "0")), 0)
            limit = min(max(int(self.get_query_argument("limit", str(PAGE_SIZE))), 1), 100)
        except ValueError:
            offset, limit = 0, PAGE_SIZE
        error, runs, total = None, [], 0
        try:
            found, total = remote_run.list_runs(self.db, self.caller, scope, status, limit,
                                                offset)
            days = self.market.refunded_output_days
            runs = [remote_run.run_json(self.db, r, self.market.service_prefix, self.caller,
                                        days) for r in found]
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

    def _render(self, run_id: str, status: int = 200, errors: dict | None = None) -> None:
        days = self.market.refunded_output_days
        found = remote_run.get_run(self.db, self.caller, run_id, days)
        run = remote_run.run_json(self.db, found, self.market.service_prefix, self.caller, days)
        self.render_template("run.html", status=status, run=run, final=run["status"] in
                             FINAL_STATUSES, errors=errors or {})

    @web.authenticated
    def get(self, run):
        self._render(run)

    @web.authenticated
    def post(self, run):
        """Cancel the run (the only action of this page)."""
        action = self.get_body_argument("action", "")
        try:
            found = remote_run.get_run(self.db, self.caller, run)  # others' runs: 404 first
            if action != "cancel":
                raise InvalidField("the only action here is 'cancel'", "action")
            self.db.rollback()  # the runner commits the cancellation in its own transaction
            with self.market.session_factory() as session:
                self.market.runner.cancel(session, found.id)
        except MarketError as e:
            self.db.rollback()
            self._render(run, status=e.status, errors={"_form": e.message})
            return
        self.redirect_after_post(f"runs/{found.id}")


default_handlers = [
    (r"/products/(?P<product>[^/]+)/run", RunFormPage),
    (r"/runs", RunsPage),
    (r"/runs/(?P<run>[^/]+)", RunPage),
]
