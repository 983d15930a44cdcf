"""The technology exchange beside the shop (the paper's section 2.1): ratings and promotion,
topic requests with escrowed bounties, the forum, workshops and competitions, and the inbox.

Each concern keeps its tables in its own ``*_orm.py`` module; importing this package registers
them all with ``orm.Base.metadata`` (the migrations and ``compare_metadata`` need that).
"""

from . import (  # noqa: F401  (their tables belong to the metadata)
    forum_orm,
    inbox_orm,
    ratings_orm,
    topics_orm,
    workshops_orm,
)
