"""Workshop and competition handlers under ``api/workshops``; the rules are in
:mod:`marketplace_ext.exchange.workshops`, :mod:`~marketplace_ext.exchange.competitions` and
grading in :mod:`~marketplace_ext.exchange.grading`."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

from tornado import web

from ..exchange import competitions, workshops
from .base import APIHandler

W = r"/api/workshops/(?P<workshop>[^/]+)"


def homes_dir(market) -> Path:
    """Where enrolled trainees' materials wait for their next spawn (GridSpawner's
    ``workshop_materials_dir``)."""
    return Path(market.var_dir) / workshops.HOMES_DIR


async def stage_home(market, user: str, materials_sha256: str, folder: str) -> None:
    """Stage a workshop's materials for ``user``'s JupyterLab home, off the event loop."""
    def stage() -> None:
        files = workshops.unzip_files(market.blobs.get(materials_sha256))
        workshops.write_home_materials(homes_dir(market), user, folder, files)

    await asyncio.get_running_loop().run_in_executor(None, stage)


class WorkshopsHandler(APIHandler):
    @web.authenticated
    def get(self):
        limit = self.int_argument("limit", 50, 1, 200)
        offset = self.int_argument("offset", 0, 0, 10**9)
        found, total = workshops.list_workshops(self.db, limit, offset)
        self.write_json({"workshops": [workshops.workshop_json(self.db, self.caller, w)
                                       for w in found],
                         "total": total, "limit": limit, "offset": offset})

    def check_before_body(self) -> None:
        if self.request.method == "POST":
            workshops.require_host_role(self.caller)

    @web.authenticated
    def post(self):
        body = self.json_body()
        workshop = workshops.create_workshop(self.db, self.market.blobs, self.caller, body)
        self.db.commit()
        self.set_header("Location", f"{self.market.service_prefix}api/workshops/{workshop.id}")
        self.write_json(workshops.workshop_json(self.db, self.caller, workshop, detail=True),
                        status=201)


class WorkshopHandler(APIHandler):
    @web.authenticated
    def get(self, workshop):
        found = workshops.get_workshop(self.db, workshop)
        self.write_json(workshops.workshop_json(self.db, self.caller, found, detail=True))


class EnrolmentHandler(APIHandler):
    @web.authenticated
    async def post(self, workshop):
        found = workshops.get_workshop(self.db, workshop)
        workshops.enrol(self.db, self.caller, found)
        self.db.commit()
        answer = workshops.workshop_json(self.db, self.caller, found, detail=True)
        sha, folder = found.materials_sha256, workshops.home_folder(found)
        self.db.close()  # no transaction held across the await
        await stage_home(self.market, self.caller.name, sha, folder)
        self.write_json(answer, status=201)


class MaterialsHandler(APIHandler):
    @web.authenticated
    async def get(self, workshop):
        found = workshops.get_workshop(self.db, workshop)
        workshops.require_participant(self.db, self.caller, found, "the materials")
        sha, folder = found.materials_sha256, workshops.lab_path(found)
        self.db.close()  # no transaction held across the await
        files = await asyncio.get_running_loop().run_in_executor(
            None, lambda: workshops.unzip_files(self.market.blobs.get(sha)))
        self.write_json({"folder": folder,
                         "files": {path: base64.b64encode(data).decode()
                                   for path, data in sorted(files.items())}})


class ExercisesHandler(APIHandler):
    @web.authenticated
    def post(self, workshop):
        found = workshops.get_workshop(self.db, workshop)
        exercise = workshops.add_exercise(self.db, self.market.blobs, self.caller, found,
                                          self.json_body())
        self.db.commit()
        self.write_json(workshops.workshop_json(self.db, self.caller, found, detail=True)
                        | {"exercise": exercise.name}, status=201)


def _accepted(handler: APIHandler, sub) -> None:
    handler.db.commit()
    handler.market.grader.submit(sub.id)
    handler.set_header("Location", f"{handler.market.service_prefix}api/workshops/"
                                   f"{sub.workshop_id}/submissions/{sub.id}")
    handler.write_json(workshops.submission_json(handler.db, sub, False), status=202)


class ExerciseSubmissionsHandler(APIHandler):
    @web.authenticated
    def post(self, workshop, exercise):
        found = workshops.get_workshop(self.db, workshop)
        sub = workshops.submit_exercise(self.db, self.market.blobs, self.caller, found,
                                        exercise, self.json_body())
        _accepted(self, sub)


class CompetitionsHandler(APIHandler):
    @web.authenticated
    def post(self, workshop):
        found = workshops.get_workshop(self.db, workshop)
        competition = competitions.create_competition(self.db, self.market.blobs, self.caller,
                                                      found, self.json_body())
        self.db.commit()
        self.write_json(competitions.leaderboard(self.db, self.caller, found, competition),
                        status=201)


class CompetitionHandler(APIHandler):
    @web.authenticated
    def get(self, workshop, competition):
        found = workshops.get_workshop(self.db, workshop)
        comp = competitions.get_competition(self.db, found, competition)
        self.write_json(competitions.leaderboard(self.db, self.caller, found, comp))


class CompetitionSubmissionsHandler(APIHandler):
    @web.authenticated
    def post(self, workshop, competition):
        found = workshops.get_workshop(self.db, workshop)
        sub = competitions.submit(self.db, self.market.blobs, self.caller, found, competition,
                                  self.json_body())
        _accepted(self, sub)


class AwardsHandler(APIHandler):
    @web.authenticated
    def post(self, workshop, competition):
        found = workshops.get_workshop(self.db, workshop)
        comp = competitions.get_competition(self.db, found, competition)
        prize = competitions.award(self.db, self.caller, found, comp, self.json_body())
        self.db.commit()
        self.write_json({"user": prize.user_name, "points": prize.amount // 100,
                         "transfer": prize.transfer_id, "log_index": prize.log_index},
                        status=201)


class SubmissionsHandler(APIHandler):
    @web.authenticated
    def get(self, workshop):
        found = workshops.get_workshop(self.db, workshop)
        subs = workshops.list_submissions(self.db, self.caller, found)
        self.write_json({"submissions": [
            workshops.submission_json(self.db, s, _reveal(self.db, self.caller, found, s))
            for s in subs]})


class SubmissionHandler(APIHandler):
    @web.authenticated
    def get(self, workshop, submission):
        found = workshops.get_workshop(self.db, workshop)
        sub = workshops.get_submission(self.db, self.caller, found, submission)
        self.write_json(workshops.submission_json(self.db, sub,
                                                  _reveal(self.db, self.caller, found, sub)))


def _reveal(db, caller, workshop, sub) -> bool:
    if sub.competition_id is None:
        return False
    comp = db.get(competitions.Competition, sub.competition_id)
    return competitions.private_visible(caller, workshop, comp)


default_handlers = [
    (r"/api/workshops", WorkshopsHandler),
    (W, WorkshopHandler),
    (W + r"/enrolment", EnrolmentHandler),
    (W + r"/materials", MaterialsHandler),
    (W + r"/exercises", ExercisesHandler),
    (W + r"/exercises/(?P<exercise>[^/]+)/submissions", ExerciseSubmissionsHandler),
    (W + r"/competitions", CompetitionsHandler),
    (W + r"/competitions/(?P<competition>[^/]+)", CompetitionHandler),
    (W + r"/competitions/(?P<competition>[^/]+)/submissions", CompetitionSubmissionsHandler),
    (W + r"/competitions/(?P<competition>[^/]+)/awards", AwardsHandler),
    (W + r"/submissions", SubmissionsHandler),
    (W + r"/submissions/(?P<submission>[^/]+)", SubmissionHandler),
]
