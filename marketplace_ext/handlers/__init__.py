"""Tornado handlers: ``api`` (JSON REST), ``runs`` (remote runs), ``m2d`` (model-to-data), ``fl``
(federated learning), the exchange (``reviews``, ``topics``, ``forum``, ``inbox``,
``workshops``) and ``*_pages`` (HTML), each with ``default_handlers``."""

from . import (
    account_pages,
    admin_pages,
    api,
    card_pages,
    fl,
    fl_economy,
    fl_pages,
    fl_slices,
    forum,
    forum_pages,
    inbox,
    inbox_pages,
    log_pages,
    log_tiles,
    m2d,
    m2d_pages,
    pages,
    publish_pages,
    retrain,
    review_pages,
    reviews,
    reviews_pages,
    run_pages,
    runs,
    tools_pages,
    topics,
    topics_pages,
    workshops,
    workshops_pages,
)

default_handlers = (api.default_handlers + runs.default_handlers + m2d.default_handlers
                    + fl.default_handlers + fl_economy.default_handlers + fl_slices.default_handlers
                    + m2d_pages.default_handlers + run_pages.default_handlers
                    + pages.default_handlers + tools_pages.default_handlers
                    + account_pages.default_handlers + publish_pages.default_handlers
                    + review_pages.default_handlers + admin_pages.default_handlers
                    + fl_pages.default_handlers + log_pages.default_handlers
                    + log_tiles.default_handlers
                    # the technology exchange
                    + reviews.default_handlers + reviews_pages.default_handlers
                    + topics.default_handlers + topics_pages.default_handlers
                    + forum.default_handlers + forum_pages.default_handlers
                    + inbox.default_handlers + inbox_pages.default_handlers
                    + workshops.default_handlers + workshops_pages.default_handlers
                    # further training of tools, card images (issue 17)
                    + retrain.default_handlers + card_pages.default_handlers)
