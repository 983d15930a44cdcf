"""Federated-learning pages: the projects, opening one, joining, the initiator's decisions, and
a project's round timeline, metrics chart, members and DP budget.

Handlers only parse the form, call :mod:`marketplace_ext.federated` (the same functions as
``api/fl/...``) and render; a refused action shows the API's error next to its field, with
nothing written. Every query, write and render runs in the database executor (``in_db``,
``in_write``, ``render_from_db``), the model's zip check in a worker thread."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from tornado import web

from .. import start_here
from ..auth import SCOPE_PUBLISH
from ..errors import InvalidField, MarketError
from ..federated import common, economy, ending, enrolment, projects, report, rounds
from ..federated.common import MAX_MODEL_BYTES
from .base import MULTIPART_ENVELOPE, PageHandler

#: form fields holding integers / numbers, by the API's field name
INT_FIELDS = ("rounds", "quorum", "min_updates", "deadline_seconds", "key_size", "pack.bits",
              "pack.max_parties", "pack.max_weight", "pool")
FLOAT_FIELDS = ("pack.clip", "dp.noise_multiplier", "dp.clip_norm", "dp.delta")
#: the new-project form's own fields: an error naming another field (the caller's unit, say)
#: is shown above the form
FORM_FIELDS = frozenset(("name", "title", "task", "allow_units", "model", "public_key", "pack",
                         "dp", "products", "contribution_measure") + INT_FIELDS + FLOAT_FIELDS)
#: notices a redirect after a POST may show (``?done=``)
NOTICES = {
    "created": "Project opened. Partners can ask to join now; approve them below.",
    "join": "Your unit asked to join. The initiator's unit decides (units on its allow-list "
              "are approved at once).",
    "approve": "The unit is approved.", "refuse": "The unit is refused.",
    "start": "Round 1 is open.", "leave": "Your unit left the project.",
    "settle": "The project is settled: the split is certified and the pool paid.",
    "cancel": "The project is cancelled: its pool went back to the initiator's unit (once, "
              "certified in the log).",
}


def _number(raw: str, field: str, kind: type) -> int | float:
    try:
        return kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise InvalidField(f"{field} must be {what}", field) from None


def project_request_body(form: dict[str, str], model: bytes | None) -> dict:
    """The ``POST api/fl/projects`` body a filled-in form stands for (empty optional fields
    are left out, so the API's defaults apply); 400 naming the field for a non-number."""
    body: dict = {}
    for key in ("name", "title", "task", "contribution_measure"):
        if form.get(key, "").strip():
            body[key] = form[key].strip()
    for key in INT_FIELDS + FLOAT_FIELDS:
        raw = form.get(key, "").strip()
        if not raw:
            continue
        value = _number(raw, key, int if key in INT_FIELDS else float)
        head, _, tail = key.partition(".")
        if tail:
            body.setdefault(head, {})[tail] = value
        else:
            body[key] = value
    dp = body.pop("dp", None)
    if dp and dp.get("noise_multiplier"):
        body["dp"] = dp
    units = [u.strip() for u in form.get("allow_units", "").split(",") if u.strip()]
    if units:
        body["allow_units"] = units
    names = [p.strip() for p in form.get("products", "").split(",") if p.strip()]
    if names:
        body["products"] = names
    raw_key = form.get("public_key", "").strip()
    if raw_key:
        if raw_key.isdigit():
            body["public_key"] = {"n": raw_key}
        else:
            try:
                body["public_key"] = json.loads(raw_key)
            except ValueError:
                raise InvalidField('public_key must be the JSON {"n": "<decimal>"} your client '
                                   "wrote, or the decimal modulus", "public_key") from None
    if model is not None:
        body["model"] = base64.b64encode(model).decode()
    return body


class FLListPage(PageHandler):
    """Every project: the caller's unit's state in each, and a way to ask to join."""

    nav = "fl"

    @web.authenticated
    async def get(self):
        caller, lab = self.caller, start_here.lab_links(self.market.hub_prefix)
        await self.render_from_db(
            "fl.html", lambda s: {"projects": projects.list_projects(s, caller), "lab": lab})


class FLNewPage(PageHandler):
    """Open a project with a model bundle and the public key the initiator's client made."""

    nav = "fl"
    body_limit = MAX_MODEL_BYTES + MULTIPART_ENVELOPE

    def check_before_body(self) -> None:
        self.caller.require(SCOPE_PUBLISH, "opening a federated project")

    def _render(self, **ns) -> None:
        ns.setdefault("lab", start_here.lab_links(self.market.hub_prefix))
        ns.setdefault("key_sizes", common.KEY_SIZES)
        self.render_template("fl_new.html", **ns)

    @web.authenticated
    def get(self):
        self._render()

    @web.authenticated
    async def post(self):
        form = {k: self.get_body_argument(k, "") for k in self.request.body_arguments}
        files = self.request.files.get("model") or []
        caller, blobs = self.caller, self.market.blobs
        try:
            caller.require(SCOPE_PUBLISH, "opening a federated project")
            if not files or not files[0]["body"]:
                raise InvalidField("model is required: the zip of model.json and weights.pt",
                                   "model")
            body = project_request_body(form, files[0]["body"])
            req = await self.in_io(projects.parse_project_request, body,
                                   self.market.fl_max_parameters)
            # the model stored before the transaction, as the API does: the write lock is not
            # held through file I/O, and a refused project leaves an orphan blob for blob_gc
            await self.in_io(blobs.put, req.model_zip)
            project_id = await self.in_write(
                lambda s: projects.create_project(s, caller, req, blobs).id)
        except MarketError as e:
            if e.field not in FORM_FIELDS:
                e.field = None
            self.render_form_error("fl_new.html", e,
                                   lab=start_here.lab_links(self.market.hub_prefix),
                                   key_sizes=common.KEY_SIZES)
            return
        self.redirect_after_post(f"fl/{project_id}?done=created")


@dataclass(frozen=True)
class _View:
    """What the project page needs from the request, read on the loop."""

    caller: object
    lab: dict
    metric: str
    done: str


def project_namespace(session, view: _View, project_id: str) -> dict:
    """The project page's namespace (in the database executor)."""
    caller = view.caller
    project = common.get_project(session, project_id)
    summary = next(p for p in projects.list_projects(session, caller) if p["id"] == project.id)
    ns = {"summary": summary, "project": None, "lab": view.lab,
          "may_decide": (caller.unit == project.unit.slug and SCOPE_PUBLISH in caller.scopes),
          "may_cancel": (project.state in (common.ENROLLING, common.RUNNING)
                         and (caller.is_operator or (caller.unit == project.unit.slug
                                                     and SCOPE_PUBLISH in caller.scopes))),
          "notice": NOTICES.get(view.done)}
    if not common.may_view(session, caller, project):
        return ns
    detail = projects.project_json(session, project, caller)
    detail["timeline"] = report.timeline(session, project)
    metrics = rounds.metrics_json(session, caller, project)
    names = report.metric_names(metrics)
    metric = view.metric if view.metric in names else (names[0] if names else None)
    ns.update(project=detail, metrics=metrics, metric_names=names, metric=metric,
              chart=report.metric_chart(metrics, metric) if metric else None,
              budget=report.dp_budget(detail, metrics),
              economy=economy.economy_json(session, caller, project))
    return ns


def _act(session, caller, rules, project_id: str, action: str, unit: str) -> int:
    """One of the page's buttons, in one write transaction (nothing written when refused)."""
    if action not in FLProjectPage.ACTIONS:
        raise InvalidField(f"action must be one of {', '.join(FLProjectPage.ACTIONS)}",
                           "action")
    found = common.get_project(session, project_id)
    if action == "join":
        enrolment.join(session, caller, found, None)
    elif action in ("approve", "refuse"):
        enrolment.decide(session, caller, found, unit, {"decision": action})
    elif action == "start":
        rounds.start(session, caller, found)
    elif action == "settle":
        economy.settle(session, caller, found, rules, {})
    elif action == "cancel":
        ending.cancel(session, caller, found)
    else:
        enrolment.leave(session, caller, found, caller.unit or "")
    return found.id


class FLProjectPage(PageHandler):
    """A project: its details for those who may see them, its public summary for others; the
    join, approve/refuse, start, leave, settle and cancel buttons POST here with an
    ``action``."""

    nav = "fl"
    ACTIONS = ("join", "approve", "refuse", "start", "leave", "settle", "cancel")

    def _view(self) -> _View:
        return _View(self.caller, start_here.lab_links(self.market.hub_prefix),
                     self.get_query_argument("metric", ""),
                     self.get_query_argument("done", ""))

    @web.authenticated
    async def get(self, project):
        await self.render_from_db("fl_project.html", project_namespace, self._view(), project)

    @web.authenticated
    async def post(self, project):
        action = self.get_body_argument("action", "")
        unit = self.get_body_argument("unit", "")
        try:
            project_id = await self.in_write(_act, self.caller, self.market.economy, project,
                                             action, unit)
        except MarketError as e:
            # the buttons have no inputs of their own: the API's message goes above them,
            # with the field it names
            message = f"{e.field}: {e.message}" if e.field else e.message
            await self.render_from_db("fl_project.html", project_namespace, self._view(),
                                      project, status=e.status, errors={"_form": message})
            return
        self.redirect_after_post(f"fl/{project_id}?done={action}")


default_handlers = [
    (r"/fl", FLListPage),
    (r"/fl/new", FLNewPage),
    (r"/fl/(?P<project>[0-9]+)", FLProjectPage),
]
