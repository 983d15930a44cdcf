"""The images of a product card (``card_images.py``): the README's PNG and JPEG files, served
to every logged-in caller who may see the product page, for nothing."""

from __future__ import annotations

import asyncio

from tornado import web

from .. import card_images
from .base import PageHandler


class CardImagePage(PageHandler):
    """One image the card of a version shows. No spending, no entitlement; who may not see the
    product (or this version) gets 404, a path that cannot be a card image 400 naming
    ``path``. The bundle is read off the event loop."""

    nav = "shelf"

    @web.authenticated
    async def get(self, product, version, path):
        caller = self.caller
        image = await self.in_db(card_images.find_card_image, caller, product, version, path)
        data = await asyncio.get_running_loop().run_in_executor(
            None, card_images.read_card_image, self.market.blobs, image)
        self.set_header("Content-Type", image.content_type)
        # a version's files never change; who may see the card can (shelf state), so a
        # private cache for an hour, revalidated by the ETag Tornado computes
        self.set_header("Cache-Control", "private, max-age=3600")
        self.set_header("X-Content-SHA256", image.sha256)
        self.finish(data)


default_handlers = [
    (r"/products/(?P<product>[^/]+)/versions/(?P<version>[^/]+)/card/(?P<path>.+)",
     CardImagePage),
]
