"""Tornado handlers: ``api`` (JSON REST), ``runs`` (remote runs), ``m2d`` (model-to-data), ``fl``
(federated learning) and ``pages`` (HTML), each with ``default_handlers``."""

from . import (
    account_pages,
    admin_pages,
    api,
    fl,
    fl_pages,
    log_pages,
    m2d,
    m2d_pages,
    pages,
    publish_pages,
    review_pages,
    run_pages,
    runs,
    tools_pages,
)

default_handlers = (api.default_handlers + runs.default_handlers + m2d.default_handlers
                    + fl.default_handlers + m2d_pages.default_handlers + run_pages.default_handlers
                    + pages.default_handlers + tools_pages.default_handlers
                    + account_pages.default_handlers + publish_pages.default_handlers
                    + review_pages.default_handlers + admin_pages.default_handlers
                    + fl_pages.default_handlers + log_pages.default_handlers)
