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
from .workshops import stage_home

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
    def get(self):
        found, total = workshops.list_workshops(self.db, 100, 0)
        self.render_template("workshops.html", total=total, workshops=[
            workshops.workshop_json(self.db, self.caller, w) for w in found])


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
    def post(self):
        form = {k: self.get_body_argument(k, "") for k in self.request.body_arguments}
        try:
            body = workshop_form_body(form, self.request.files.get("materials") or [])
            created = workshops.create_workshop(self.db, self.market.blobs, self.caller, body)
            self.db.commit()
        except MarketError as e:
            self.db.rollback()
            if e.field not in FORM_FIELDS:
                e.field = None
            self.render_form_error("workshop_new.html", e)
            return
        self.redirect_after_post(f"workshops/{created.id}?done=created")


class WorkshopPage(PageHandler):
    nav = "workshops"

    def _render(self, workshop_id: str, status: int = 200, **ns) -> None:
        found = workshops.get_workshop(self.db, workshop_id)
        data = workshops.workshop_json(self.db, self.caller, found, detail=True)
        boards = [competitions.leaderboard(self.db, self.caller, found,
                                           competitions.get_competition(self.db, found, c["name"]))
                  for c in data["competitions"]]
        mine = [workshops.submission_json(self.db, s, False)
                for s in workshops.list_submissions(self.db, self.caller, found)
                if s.user_name == self.caller.name]
        lab = (f"{self.market.hub_prefix}user-redirect/lab/tree/"
               f"{quote(workshops.lab_path(found))}")
        self.render_template("workshop.html", status=status, w=data, boards=boards,
                             mine=mine, lab_url=lab,
                             notice=NOTICES.get(self.get_query_argument("done", "")), **ns)

    @web.authenticated
    def get(self, workshop):
        self._render(workshop)

    @web.authenticated
    async def post(self, workshop):
        try:
            if self.get_body_argument("action", "") != "enrol":
                raise InvalidField("action must be enrol", "action")
            found = workshops.get_workshop(self.db, workshop)
            workshops.enrol(self.db, self.caller, found)
            self.db.commit()
        except MarketError as e:
            self.db.rollback()
            if e.status == 404:
                raise
            self._render(workshop, status=e.status,
                         errors={e.field or "_form": e.message})
            return
        sha, folder, wid = found.materials_sha256, workshops.home_folder(found), found.id
        self.db.close()
        await stage_home(self.market, self.caller.name, sha, folder)
        self.redirect_after_post(f"workshops/{wid}?done=enrolled")


default_handlers = [
    (r"/workshops", WorkshopsPage),
    (r"/workshops/new", NewWorkshopPage),  # before the pattern that would take "new" as an id
    (r"/workshops/(?P<workshop>[^/]+)", WorkshopPage),
]
