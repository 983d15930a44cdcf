"""The log as C2SP tlog-tiles (see :mod:`marketplace_ext.tiles`): the checkpoint note, hash
tiles and entry bundles, for monitors and standard tooling. Like the rest of the log's API they
need a login (a monitor uses an API token); what they serve is the public part only."""

from __future__ import annotations

from tornado import web

from .. import tiles
from .base import APIHandler

# full tiles never change: a mirror may keep them forever (private: the API needs a login)
IMMUTABLE = "private, max-age=31536000, immutable"


class TlogCheckpointHandler(APIHandler):
    @web.authenticated
    async def get(self):
        note = (await self.in_db(self.market.tlog.checkpoint))["checkpoint"]
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(note)


class TlogTileHandler(APIHandler):
    @web.authenticated
    async def get(self, path):
        tile = tiles.parse_tile_path(path)
        data = await self.in_db(tiles.read_tile, tile)
        self.set_header("Content-Type", "application/octet-stream")
        if not tile.partial:
            self.set_header("Cache-Control", IMMUTABLE)
        self.finish(data)


default_handlers = [
    (r"/api/log/tlog/checkpoint", TlogCheckpointHandler),
    (r"/api/log/tlog/tile/(?P<path>.+)", TlogTileHandler),
]
