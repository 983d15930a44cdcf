"""Tornado handlers: ``api`` (JSON REST), ``runs`` (remote runs), ``m2d`` (model-to-data), ``fl``
(federated learning) and ``pages`` (HTML), each with ``default_handlers``."""

from . import api, fl, m2d, m2d_pages, pages, runs

default_handlers = (api.default_handlers + runs.default_handlers + m2d.default_handlers
                    + fl.default_handlers + m2d_pages.default_handlers
                    + pages.default_handlers)
