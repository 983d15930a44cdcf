"""Handlers of split decryption under ``api/fl/projects/{project}/rounds/{number}/slices``: the
layout and posts of a published aggregate's sealed slices (:mod:`marketplace_ext.federated
.slices`). Database work runs on the db executor, blob reads and writes on the io executor."""

from __future__ import annotations

from tornado import web

from ..auth import SCOPE_PUBLISH
from ..errors import InvalidField, NotFound
from ..federated import common, slices
from .base import APIHandler

#: a sealed slice's bytes are checked against the layout after they are read; this bounds what
#: is read at all (a slice of a 1M-parameter model among two members is about 1.5 MB)
MAX_SLICE_BYTES = 64 * 1024 * 1024


def _round(raw: str) -> int:
    """A round number from the path; one out of range does not exist (404, like a path id)."""
    try:
        return common.parse_query_int(raw, "round", 1, common.MAX_ROUNDS)
    except InvalidField:
        raise NotFound(f"no round {raw[:20]!r}", "round") from None


def _slice(raw: str) -> int:
    try:
        return slices.parse_slice(raw)
    except InvalidField:
        raise NotFound(f"no slice {raw[:20]!r}", "slice") from None


class SlicesHandler(APIHandler):
    @web.authenticated
    async def get(self, project, number):
        number = _round(number)
        caller = self.caller
        self.write_json(await self.in_db(
            lambda s: slices.slices_json(s, caller, common.get_project(s, project), number)))


class SliceHandler(APIHandler):
    body_limit = MAX_SLICE_BYTES

    def check_before_body(self) -> None:
        if self.request.method == "POST":
            self.caller.require(SCOPE_PUBLISH, "posting a decrypted slice")

    @web.authenticated
    async def get(self, project, number, index):
        number, index = _round(number), _slice(index)
        caller = self.caller

        def find(session):
            rnd, row = slices.slice_blob(session, caller, common.get_project(session, project),
                                         number, index)
            return rnd.attempt, row.sha256

        attempt, sha = await self.in_db(find)
        self.set_attachment(f"fl-project-{project}-round-{number}-slice-{index}.bin")
        self.set_header("X-Content-SHA256", sha)
        self.set_header("X-FL-Attempt", str(attempt))
        await self.stream_blob(sha)

    @web.authenticated
    async def post(self, project, number, index):
        number, index = _round(number), _slice(index)
        caller = self.caller
        data = bytes(self.request.body)
        req = await self.in_db(lambda s: slices.check_post(
            s, caller, common.get_project(s, project), number, index, len(data)))
        sha = await self.in_io(self.market.blobs.put, data)
        await self.in_write(lambda s: slices.record_post(
            s, caller, common.get_project(s, project), req, sha, len(data)).id)
        self.write_json({"round": number, "slice": index, "unit": req.unit, "sha256": sha,
                         "size": len(data)}, status=201)


_R = r"/api/fl/projects/(?P<project>[^/]+)/rounds/(?P<number>[^/]+)/slices"

default_handlers = [
    (_R, SlicesHandler),
    (_R + r"/(?P<index>[^/]+)", SliceHandler),
]
