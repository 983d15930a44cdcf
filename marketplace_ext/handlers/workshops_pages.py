"""Workshop pages: the list (with places left) and a workshop's page (materials and where they
are in JupyterLab, exercises and the caller's verdicts, competitions' leaderboards, enrolling).

Handlers parse the form, call :mod:`marketplace_ext.exchange.workshops` (the same functions as
``api/workshops``) and render; a refused enrolment (a full workshop) shows the API's error,
with nothing written."""

from __future__ import annotations

import base64
import re
from urllib.parse import quote

from tornado import web

from ..errors import InvalidField, MarketError
from ..exchange import competitions, workshops
from .base import MULTIPART_ENVELOPE, PageHandler
from .workshops import IoBlobs, create_workshop_json, enrol_caller, stage_home, workshops_listing

NOTICES = {"enrolled": "You are enrolled. The materials appear in your JupyterLab home, "
                       "under Workshops, when your server next starts.",
           "created": "Your workshop is open for enrolment. Add exercises and competitions "
                      "with the client (Market().add_exercise, add_competition)."}
#: the new-workshop form's own fields: an error naming another (the caller's unit) goes above
FORM_FIELDS = frozenset({"title", "summary", "starts_at", "capacity", "materials"})


def workshop_form_body(form: dict[str, str], files: list[dict]) -> dict:
    """The ``POST api/workshops`` body a filled-in form stands for: a ``datetime-local``
    start (UTC), a whole-number capacity, the uploaded files as materials (by file name)."""
    body: dict = {"title": form.get("title", ""), "summary": form.get("summary", "")}
    starts = form.get("starts_at", "").strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?", starts):
        starts += ":00Z" if len(starts) == 16 else "Z"
    body["starts_at"] = starts
    raw = form.get("capacity", "").strip()
    if not raw.isdigit():
        raise InvalidField("capacity must be a whole number of trainees", "capacity")
    body["capacity"] = int(raw)
    materials = {}
    for upload in files:
        name = (upload.get("filename") or "").replace("\\", "/").rsplit("/", 1)[-1]
        if name and upload.get("body"):
            materials[name] = base64.b64encode(upload["body"]).decode()
    body["materials"] = materials
    return body


class WorkshopsPage(PageHandler):
    nav = "workshops"

    @web.authenticated
    async def get(self):
        listed, total = await self.in_db(workshops_listing, self.caller, 100, 0)
        self.render_template("workshops.html", total=total, workshops=listed)


class NewWorkshopPage(PageHandler):
    """A host (a publisher, for its unit, or an operator) opens a workshop."""

    nav = "workshops"
    body_limit = workshops.MAX_MATERIAL_BYTES * 2 + MULTIPART_ENVELOPE

    def check_before_body(self) -> None:
        workshops.require_host_role(self.caller)

    @web.authenticated
    def get(self):
        workshops.require_host_role(self.caller)
        self.render_template("workshop_new.html")

    @web.authenticated
    async def post(self):
        form = {k: self.get_body_argument(k, "") for k in self.request.body_arguments}
        try:
            body = workshop_form_body(form, self.request.files.get("materials") or [])
            created = await self.in_write(create_workshop_json, IoBlobs(self.market), self.caller,
                                          body)
        except MarketError as e:
            if e.field not in FORM_FIELDS:
                e.field = None
            self.render_form_error("workshop_new.html", e)
            return
        self.redirect_after_post(f"workshops/{created['id']}?done=created")


class WorkshopPage(PageHandler):
    nav = "workshops"

    async def _render(self, workshop_id: str, status: int = 200, **ns) -> None:
        ns = await self.in_db(_workshop_namespace, self.caller, workshop_id) | ns
        ns["lab_url"] = f"{self.market.hub_prefix}user-redirect/lab/tree/{quote(ns['lab_url'])}"
        self.render_template("workshop.html", status=status,
                             notice=NOTICES.get(self.get_query_argument("done", "")), **ns)

    @web.authenticated
    async def get(self, workshop):
        await self._render(workshop)

    @web.authenticated
    async def post(self, workshop):
        try:
            if self.get_body_argument("action", "") != "enrol":
                raise InvalidField("action must be enrol", "action")
            answer, sha, folder = await self.in_write(enrol_caller, self.caller, workshop)
        except MarketError as e:
            if e.status == 404:
                raise
            await self._render(workshop, status=e.status,
                               errors={e.field or "_form": e.message})
            return
        await stage_home(self.market, self.caller.name, sha, folder)
        self.redirect_after_post(f"workshops/{answer['id']}?done=enrolled")


def _workshop_namespace(session, caller, workshop_id: str) -> dict:
    """Blocking (the db executor): a workshop's page: its detail, its competitions'
    leaderboards, the caller's own verdicts and where the materials are in JupyterLab."""
    found = workshops.get_workshop(session, workshop_id)
    data = workshops.workshop_json(session, caller, found, detail=True)
    boards = [competitions.leaderboard(session, caller, found,
                                       competitions.get_competition(session, found, c["name"]))
              for c in data["competitions"]]
    mine = [workshops.submission_json(session, s, False)
            for s in workshops.list_submissions(session, caller, found)
            if s.user_name == caller.name]
    return {"w": data, "boards": boards, "mine": mine, "lab_url": workshops.lab_path(found)}


default_handlers = [
    (r"/workshops", WorkshopsPage),
    (r"/workshops/new", NewWorkshopPage),  # before the pattern that would take "new" as an id
    (r"/workshops/(?P<workshop>[^/]+)", WorkshopPage),
]
