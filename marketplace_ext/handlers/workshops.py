"""Workshop and competition handlers under ``api/workshops``; the rules are in
:mod:`marketplace_ext.exchange.workshops`, :mod:`~marketplace_ext.exchange.competitions` and
grading in :mod:`~marketplace_ext.exchange.grading`."""

from __future__ import annotations

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
    """Stage a workshop's materials for ``user``'s JupyterLab home, on the io executor."""
    def stage() -> None:
        files = workshops.unzip_files(market.blobs.get(materials_sha256))
        workshops.write_home_materials(homes_dir(market), user, folder, files)

    await market.executors.run("io", stage)


class IoBlobs:
    """The blob store as the workshop domain functions see it when they run in the db
    executor: each write runs on the io executor (the db thread waits for it, the event loop
    never does); so blob I/O stays on the io pool wherever it is called from."""

    def __init__(self, market):
        self.blobs, self.pool = market.blobs, market.executors["io"]

    def put(self, data: bytes) -> str:
        return self.pool.submit(self.blobs.put, data).result()

    def get(self, sha256: str) -> bytes:
        return self.pool.submit(self.blobs.get, sha256).result()


# --- reads and writes, each one call in the db executor ----------------------------------------


def workshops_listing(session, caller, limit: int, offset: int) -> tuple[list[dict], int]:
    found, total = workshops.list_workshops(session, limit, offset)
    return [workshops.workshop_json(session, caller, w) for w in found], total


def workshop_reading(session, caller, workshop: str) -> dict:
    found = workshops.get_workshop(session, workshop)
    return workshops.workshop_json(session, caller, found, detail=True)


def create_workshop_json(session, blobs, caller, body: dict) -> dict:
    workshop = workshops.create_workshop(session, blobs, caller, body)
    return workshops.workshop_json(session, caller, workshop, detail=True)


def enrol_caller(session, caller, workshop: str) -> tuple[dict, str, str]:
    """Enrol the caller; the workshop as it now stands, its materials' blob and the home
    folder they go to."""
    found = workshops.get_workshop(session, workshop)
    workshops.enrol(session, caller, found)
    session.flush()
    return (workshops.workshop_json(session, caller, found, detail=True),
            found.materials_sha256, workshops.home_folder(found))


def _materials_of(session, caller, workshop: str) -> tuple[str, str]:
    found = workshops.get_workshop(session, workshop)
    workshops.require_participant(session, caller, found, "the materials")
    return found.materials_sha256, workshops.lab_path(found)


def _add_exercise(session, blobs, caller, workshop: str, body: dict) -> dict:
    found = workshops.get_workshop(session, workshop)
    exercise = workshops.add_exercise(session, blobs, caller, found, body)
    return workshops.workshop_json(session, caller, found, detail=True) | {
        "exercise": exercise.name}


def _submit_exercise(session, blobs, caller, workshop: str, exercise: str,
                     body: dict) -> tuple[int, int, dict]:
    found = workshops.get_workshop(session, workshop)
    sub = workshops.submit_exercise(session, blobs, caller, found, exercise, body)
    return sub.id, sub.workshop_id, workshops.submission_json(session, sub, False)


def _create_competition(session, blobs, caller, workshop: str, body: dict) -> dict:
    found = workshops.get_workshop(session, workshop)
    competition = competitions.create_competition(session, blobs, caller, found, body)
    session.flush()
    return competitions.leaderboard(session, caller, found, competition)


def leaderboard_reading(session, caller, workshop: str, competition: str) -> dict:
    found = workshops.get_workshop(session, workshop)
    comp = competitions.get_competition(session, found, competition)
    return competitions.leaderboard(session, caller, found, comp)


def _submit_competition(session, blobs, caller, workshop: str, competition: str,
                        body: dict) -> tuple[int, int, dict]:
    found = workshops.get_workshop(session, workshop)
    sub = competitions.submit(session, blobs, caller, found, competition, body)
    return sub.id, sub.workshop_id, workshops.submission_json(session, sub, False)


def _award(session, caller, workshop: str, competition: str, body: dict) -> dict:
    found = workshops.get_workshop(session, workshop)
    comp = competitions.get_competition(session, found, competition)
    prize = competitions.award(session, caller, found, comp, body)
    session.flush()
    return {"user": prize.user_name, "points": prize.amount // 100,
            "transfer": prize.transfer_id, "log_index": prize.log_index}


def submissions_reading(session, caller, workshop: str) -> list[dict]:
    found = workshops.get_workshop(session, workshop)
    return [workshops.submission_json(session, s, _reveal(session, caller, found, s))
            for s in workshops.list_submissions(session, caller, found)]


def submission_reading(session, caller, workshop: str, submission: str) -> dict:
    found = workshops.get_workshop(session, workshop)
    sub = workshops.get_submission(session, caller, found, submission)
    return workshops.submission_json(session, sub, _reveal(session, caller, found, sub))


def _reveal(db, caller, workshop, sub) -> bool:
    if sub.competition_id is None:
        return False
    comp = db.get(competitions.Competition, sub.competition_id)
    return competitions.private_visible(caller, workshop, comp)


# --- handlers ----------------------------------------------------------------------------------


class WorkshopsHandler(APIHandler):
    @web.authenticated
    async def get(self):
        limit = self.int_argument("limit", 50, 1, 200)
        offset = self.int_argument("offset", 0, 0, 10**9)
        listed, total = await self.in_db(workshops_listing, self.caller, limit, offset)
        self.write_json({"workshops": listed, "total": total, "limit": limit,
                         "offset": offset})

    def check_before_body(self) -> None:
        if self.request.method == "POST":
            workshops.require_host_role(self.caller)

    @web.authenticated
    async def post(self):
        body = self.json_body()
        answer = await self.in_write(create_workshop_json, IoBlobs(self.market), self.caller, body)
        self.set_header("Location", f"{self.market.service_prefix}api/workshops/{answer['id']}")
        self.write_json(answer, status=201)


class WorkshopHandler(APIHandler):
    @web.authenticated
    async def get(self, workshop):
        self.write_json(await self.in_db(workshop_reading, self.caller, workshop))


class EnrolmentHandler(APIHandler):
    @web.authenticated
    async def post(self, workshop):
        answer, sha, folder = await self.in_write(enrol_caller, self.caller, workshop)
        await stage_home(self.market, self.caller.name, sha, folder)
        self.write_json(answer, status=201)


class MaterialsHandler(APIHandler):
    @web.authenticated
    async def get(self, workshop):
        sha, folder = await self.in_db(_materials_of, self.caller, workshop)
        files = await self.in_io(lambda: workshops.unzip_files(self.market.blobs.get(sha)))
        self.write_json({"folder": folder,
                         "files": {path: base64.b64encode(data).decode()
                                   for path, data in sorted(files.items())}})


class ExercisesHandler(APIHandler):
    @web.authenticated
    async def post(self, workshop):
        body = self.json_body()
        self.write_json(await self.in_write(_add_exercise, IoBlobs(self.market), self.caller,
                                            workshop, body), status=201)


def _accepted(handler: APIHandler, accepted: tuple[int, int, dict]) -> None:
    sub_id, workshop_id, answer = accepted
    handler.market.grader.submit(sub_id)
    handler.set_header("Location", f"{handler.market.service_prefix}api/workshops/"
                                   f"{workshop_id}/submissions/{sub_id}")
    handler.write_json(answer, status=202)


class ExerciseSubmissionsHandler(APIHandler):
    @web.authenticated
    async def post(self, workshop, exercise):
        body = self.json_body()
        _accepted(self, await self.in_write(_submit_exercise, IoBlobs(self.market),
                                            self.caller, workshop, exercise, body))


class CompetitionsHandler(APIHandler):
    @web.authenticated
    async def post(self, workshop):
        body = self.json_body()
        self.write_json(await self.in_write(_create_competition, IoBlobs(self.market),
                                            self.caller, workshop, body), status=201)


class CompetitionHandler(APIHandler):
    @web.authenticated
    async def get(self, workshop, competition):
        self.write_json(await self.in_db(leaderboard_reading, self.caller, workshop,
                                         competition))


class CompetitionSubmissionsHandler(APIHandler):
    @web.authenticated
    async def post(self, workshop, competition):
        body = self.json_body()
        _accepted(self, await self.in_write(_submit_competition, IoBlobs(self.market),
                                            self.caller, workshop, competition, body))


class AwardsHandler(APIHandler):
    @web.authenticated
    async def post(self, workshop, competition):
        body = self.json_body()
        self.write_json(await self.in_write(_award, self.caller, workshop, competition, body),
                        status=201)


class SubmissionsHandler(APIHandler):
    @web.authenticated
    async def get(self, workshop):
        self.write_json({"submissions": await self.in_db(submissions_reading, self.caller,
                                                         workshop)})


class SubmissionHandler(APIHandler):
    @web.authenticated
    async def get(self, workshop, submission):
        self.write_json(await self.in_db(submission_reading, self.caller, workshop,
                                         submission))


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
