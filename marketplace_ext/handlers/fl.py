"""Handlers of the federated-learning zone under ``api/fl/``; the rules are in
:mod:`marketplace_ext.federated` (``projects``: opening and reading, ``enrolment``: joining,
approval and keys, ``rounds``: rounds, updates, aggregates and metrics)."""

from __future__ import annotations

import asyncio

from tornado import web

from ..auth import SCOPE_PUBLISH
from ..errors import InvalidField, MarketError, PayloadTooLarge, Unauthenticated
from ..federated import common, enrolment, projects, rounds
from .base import APIHandler

MAX_ROUND = common.MAX_ROUNDS


def _round_number(raw: str) -> int:
    return common.parse_query_int(raw, "round", 1, MAX_ROUND)


def _get_project(db, ident: str):
    return common.get_project(db, ident)


class ProjectsHandler(APIHandler):
    @web.authenticated
    async def get(self):
        self.write_json({"projects": await self.in_db(projects.list_projects, self.caller)})

    @web.authenticated
    async def post(self):
        caller = self.caller
        caller.require(SCOPE_PUBLISH, "opening a federated project")
        body = self.json_body()
        # base64 and zip checks of the model: off the event loop, before any transaction
        req = await self.in_io(projects.parse_project_request, body,
                               self.market.fl_max_parameters)
        # the model stored before the transaction (create_project then only finds it): a
        # refused project leaves an orphan blob for blob_gc, never a row without its blob
        await self.in_io(self.market.blobs.put, req.model_zip)
        answer = await self.in_write(_create_project, caller, req, self.market.blobs)
        self.set_header("Location", f"{self.market.service_prefix}api/fl/projects/{answer['id']}")
        self.write_json(answer, status=201)


def _read(session, caller, project: str, view, *args):
    """Blocking (the db executor): ``view(session, caller, found, *args)`` of the project
    ``project`` (404 first)."""
    return view(session, caller, _get_project(session, project), *args)


def _project_json(session, caller, found) -> dict:
    return projects.project_json(session, found, caller)


def _members_json(session, caller, found) -> dict:
    common.require_viewer(session, caller, found, "reading a project's members")
    return {"members": [projects.member_json(m) for m in found.members]}


def _unit_key_json(session, unit: str) -> dict:
    return projects.unit_key_json(enrolment.get_unit_key(session, unit))


def _rounds_json(session, caller, found) -> dict:
    common.require_viewer(session, caller, found, "reading rounds")
    return {"rounds": [projects.round_json(session, found, common.get_round(session, found, n))
                       for n in range(1, found.current_round + 1)]}


def _round_json(session, caller, found, number: str) -> dict:
    common.require_viewer(session, caller, found, "reading a round")
    return projects.round_json(session, found,
                               common.get_round(session, found, _round_number(number)))


def _metrics_json(session, caller, found) -> dict:
    return {"metrics": rounds.metrics_json(session, caller, found)}


def _create_project(session, caller, req, blobs) -> dict:
    project = projects.create_project(session, caller, req, blobs)
    return projects.project_json(session, project, caller)


# --- writes: each runs as one write transaction in the db executor (``in_write``) and returns
# plain values (JSON), never an ORM object that outlives its session


def _join(session, caller, project: str, key: str | None, signature) -> tuple[dict, bool]:
    member, created = enrolment.join(session, caller, _get_project(session, project), key,
                                     signature)
    return projects.member_json(member), created


def _member_write(session, caller, project: str, action, *args) -> dict:
    """``action(session, caller, found, *args)`` on the project ``project`` (404 first); the
    membership it returns, as JSON."""
    return projects.member_json(action(session, caller, _get_project(session, project), *args))


def _register_unit_key(session, caller, unit: str, key: str) -> tuple[dict, bool]:
    found, changed = enrolment.register_unit_key(session, caller, unit, key)
    return projects.unit_key_json(found), changed


def _start_round(session, caller, project: str) -> dict:
    found = _get_project(session, project)
    return projects.round_json(session, found, rounds.start(session, caller, found))


def _check_update(session, caller, project: str, number: int, weight: str | None,
                  clipped: str | None, fingerprint: str | None) -> rounds.UpdateRequest:
    """Read only: an update's announcement checked (a frozen dataclass of plain values)."""
    return rounds.check_update(session, caller, _get_project(session, project), number, weight,
                               clipped, fingerprint)


def _record_update(session, caller, project: str, update: rounds.UpdateRequest, sha: str,
                   size: int) -> dict:
    recorded, rnd = rounds.record_update(session, caller, _get_project(session, project),
                                         update, sha, size)
    return {"round": rnd.number, "attempt": rnd.attempt, "round_state": rnd.state,
            "weight": recorded.weight, "clipped": recorded.clipped,
            "log_index": recorded.log_index}


def _post_metrics(session, caller, project: str, body: dict) -> int:
    return rounds.post_metrics(session, caller, _get_project(session, project), body).round


class ProjectHandler(APIHandler):
    @web.authenticated
    async def get(self, project):
        self.write_json(await self.in_db(_read, self.caller, project, _project_json))


class JoinHandler(APIHandler):
    @web.authenticated
    async def post(self, project):
        body = self.json_body() if self.request.body else {}
        common.reject_unknown(body, {"x25519_public_key", "x25519_signature"})
        key = body.get("x25519_public_key")
        key = common.parse_x25519_key(key) if key is not None else None
        member, created = await self.in_write(_join, self.caller, project, key,
                                              body.get("x25519_signature"))
        self.write_json(member, status=201 if created else 200)


class MembersHandler(APIHandler):
    @web.authenticated
    async def get(self, project):
        self.write_json(await self.in_db(_read, self.caller, project, _members_json))


class MemberHandler(APIHandler):
    @web.authenticated
    async def put(self, project, unit):
        body = self.json_body()
        self.write_json(await self.in_write(_member_write, self.caller, project,
                                            enrolment.register_key, unit, body))

    @web.authenticated
    async def delete(self, project, unit):
        self.write_json(await self.in_write(_member_write, self.caller, project,
                                            enrolment.leave, unit))


class DecisionHandler(APIHandler):
    @web.authenticated
    async def post(self, project, unit):
        body = self.json_body()
        self.write_json(await self.in_write(_member_write, self.caller, project,
                                            enrolment.decide, unit, body))


class UnitKeyHandler(APIHandler):
    @web.authenticated
    async def get(self, unit):
        self.write_json(await self.in_db(_unit_key_json, unit))

    @web.authenticated
    async def put(self, unit):
        body = self.json_body()
        common.reject_unknown(body, {"ed25519_public_key"})
        key = enrolment.parse_signing_key(body.get("ed25519_public_key"))
        found, changed = await self.in_write(_register_unit_key, self.caller, unit, key)
        self.write_json(found, status=201 if changed else 200)


class KeysHandler(APIHandler):
    @web.authenticated
    async def get(self, project):
        self.write_json(await self.in_db(_read, self.caller, project, enrolment.keys_json))

    @web.authenticated
    async def post(self, project):
        body = self.json_body()
        self.write_json(await self.in_write(_member_write, self.caller, project,
                                            enrolment.post_wrapped_key, body), status=201)


class ModelHandler(APIHandler):
    """The project's model, streamed in chunks read on the io executor."""

    @web.authenticated
    async def get(self, project):
        project_id, sha = await self.in_db(_model_of, self.caller, project)
        self.set_attachment(f"fl-project-{project_id}-model.zip", "application/zip")
        self.set_header("X-Content-SHA256", sha)
        await self.stream_blob(sha)


def _model_of(session, caller, project: str) -> tuple[int, str]:
    found = _get_project(session, project)
    common.require_member(session, caller, found, "downloading a project's model")
    return found.id, found.model_sha256


class RoundsHandler(APIHandler):
    @web.authenticated
    async def get(self, project):
        self.write_json(await self.in_db(_read, self.caller, project, _rounds_json))

    @web.authenticated
    async def post(self, project):
        self.write_json(await self.in_write(_start_round, self.caller, project), status=201)


class RoundHandler(APIHandler):
    @web.authenticated
    async def get(self, project, number):
        self.write_json(await self.in_db(_read, self.caller, project, _round_json, number))


@web.stream_request_body
class UpdatesHandler(APIHandler):
    """The body is the update's ciphertexts (``application/octet-stream``, the fixed-width
    bytes of ``packing.ciphertexts_to_bytes``); ``weight``, ``clipped`` and
    ``key_fingerprint`` are query arguments. Everything but the bytes is checked before the
    body is read, and a body larger than the project's update size is never read."""

    # a refused request's body up to this size is read and dropped, so the connection (the
    # proxy keeps it alive) stays usable; a larger one is refused before it is read
    DISCARD_LIMIT = 64 * 1024
    # class defaults: Tornado may answer an error (an unsupported method, a bad path) before
    # prepare() ran, and write_error reads this
    _close = False

    async def prepare(self):
        await self.authenticate()
        self._chunks: list[bytes] = []
        self._received = 0
        self._update = None
        self._refusal: MarketError | None = None
        self._close = False
        if self.request.method != "POST":
            return
        length = self.request.headers.get("Content-Length", "")
        announced = int(length) if length.isascii() and length.isdigit() else None
        if not self.current_user:
            # 401 at once (@web.authenticated would answer an anonymous POST 403), the body
            # unread: the proxy must not reuse the connection if one was announced
            self._close = bool(announced) or announced is None
            raise Unauthenticated("log in through the hub or send 'Authorization: token ...'")
        try:
            self._update = await self._check(announced)
        except MarketError as e:
            limit = self._update.expected_bytes if self._update else self.DISCARD_LIMIT
            if announced is None or announced > limit:
                self._close = True  # tell the proxy not to reuse this connection
                raise
            self._refusal = e  # answered once the (small) body is in
            self._update = None
        self.request.connection.set_max_body_size(announced)

    async def _check(self, announced: int | None) -> rounds.UpdateRequest:
        caller = self.caller
        number = _round_number(self.path_kwargs["number"])
        # (read only, in the db executor; the body is not read before prepare() returns)
        update = await self.in_db(
            _check_update, caller, self.path_kwargs["project"], number,
            self.get_query_argument("weight", None), self.get_query_argument("clipped", None),
            self.get_query_argument("key_fingerprint", None))
        expected = update.expected_bytes
        if announced is None:
            raise InvalidField("send the update with a Content-Length header", "body")
        if announced > expected:
            self._update = update
            raise PayloadTooLarge(f"the update is {announced} bytes; this project's updates "
                                  f"are {expected} bytes", "body")
        if announced != expected:
            raise InvalidField(f"the update is {announced} bytes; this project's updates are "
                               f"{expected} bytes", "body")
        return update

    def data_received(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._update is not None and self._received <= self._update.expected_bytes:
            self._chunks.append(chunk)

    def write_error(self, status_code: int, **kwargs) -> None:
        if self._close:
            self.set_header("Connection", "close")
        super().write_error(status_code, **kwargs)

    @web.authenticated
    async def post(self, project, number):
        if self._refusal is not None:
            raise self._refusal
        update = self._update
        if self._received != update.expected_bytes:
            raise InvalidField(f"the update is {self._received} bytes; this project's updates "
                               f"are {update.expected_bytes} bytes", "body")
        data = b"".join(self._chunks)
        self._chunks = []
        # CPU-bound (a gcd per ciphertext): the default executor, as no named pool is for CPU
        # work (db, io, spark and log would each be held by it)
        await asyncio.get_running_loop().run_in_executor(None, rounds.check_update_bytes,
                                                         update.spec, data)
        sha = await self.in_io(self.market.blobs.put, data)
        recorded = await self.in_write(_record_update, self.caller, project, update, sha,
                                       len(data))
        if recorded["round_state"] == common.AGGREGATING:
            self.market.fl.kick()
        self.write_json({"round": recorded["round"], "attempt": recorded["attempt"],
                         "round_state": recorded["round_state"], "unit": update.unit,
                         "sha256": sha, "size": len(data), "weight": recorded["weight"],
                         "clipped": recorded["clipped"], "log_index": recorded["log_index"]},
                        status=201)


class AggregateHandler(APIHandler):
    """A round's aggregate, streamed in chunks read on the io executor."""

    @web.authenticated
    async def get(self, project, number):
        found = await self.in_db(_aggregate_of, self.caller, project, number)
        self.set_attachment(f"fl-project-{found['project']}-round-{found['round']}"
                            "-aggregate.bin")
        self.set_header("X-Content-SHA256", found["sha256"])
        self.set_header("X-Log-Index", str(found["log_index"]))
        self.set_header("X-FL-Attempt", str(found["attempt"]))
        self.set_header("X-FL-Parties", str(found["parties"]))
        self.set_header("X-FL-Total-Weight", str(found["total_weight"]))
        await self.stream_blob(found["sha256"])


def _aggregate_of(session, caller, project: str, number: str) -> dict:
    found = _get_project(session, project)
    rnd, aggregate = rounds.aggregate_of(session, caller, found, _round_number(number))
    return {"project": found.id, "round": rnd.number, "attempt": rnd.attempt,
            "sha256": aggregate.sha256, "log_index": aggregate.log_index,
            "parties": aggregate.parties, "total_weight": aggregate.total_weight}


class MetricsHandler(APIHandler):
    @web.authenticated
    async def get(self, project):
        self.write_json(await self.in_db(_read, self.caller, project, _metrics_json))

    @web.authenticated
    async def post(self, project):
        body = self.json_body()
        number = await self.in_write(_post_metrics, self.caller, project, body)
        self.write_json({"round": number, "unit": self.caller.unit}, status=201)


_P = r"/api/fl/projects/(?P<project>[^/]+)"

default_handlers = [
    (r"/api/fl/projects", ProjectsHandler),
    (r"/api/fl/units/(?P<unit>[^/]+)/signing-key", UnitKeyHandler),
    (_P, ProjectHandler),
    (_P + r"/join", JoinHandler),
    (_P + r"/members", MembersHandler),
    (_P + r"/members/(?P<unit>[^/]+)", MemberHandler),
    (_P + r"/members/(?P<unit>[^/]+)/decision", DecisionHandler),
    (_P + r"/keys", KeysHandler),
    (_P + r"/model", ModelHandler),
    (_P + r"/rounds", RoundsHandler),
    (_P + r"/rounds/(?P<number>[^/]+)", RoundHandler),
    (_P + r"/rounds/(?P<number>[^/]+)/updates", UpdatesHandler),
    (_P + r"/rounds/(?P<number>[^/]+)/aggregate", AggregateHandler),
    (_P + r"/metrics", MetricsHandler),
]
