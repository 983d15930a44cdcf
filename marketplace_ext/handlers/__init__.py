"""Tornado handlers: ``api`` (JSON REST) and ``pages`` (HTML), each with ``default_handlers``."""

from . import api, pages

default_handlers = api.default_handlers + pages.default_handlers
