"""The certification log's tree nodes in the database: the ``log_nodes`` table as a
:class:`merkle.NodeStore` (one multi-row insert per integration; a proof's nodes, and the check
of its size against the integrated tree, in one statement), with the tree's upper levels kept in
memory (:class:`UpperNodeCache`). Used by :mod:`marketplace_ext.certlog`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import insert, select, text
from sqlalchemy.orm import Session

from .orm import LogNode

TREE_SIZE = text("SELECT tree_size FROM log_state WHERE id = 1")


class BeyondTree(Exception):
    """A proof was asked for at a size the integrated tree has not reached (``size``: the
    tree's size, read in the same statement as the proof's nodes)."""

    def __init__(self, size: int):
        super().__init__(f"beyond the tree ({size})")
        self.size = size


class SqlNodeStore:
    """:class:`merkle.NodeStore` over the ``log_nodes`` table, in one session.

    With ``within`` set, the first ``get_many`` also reads the integrated tree size in the same
    statement and raises :class:`BeyondTree` when ``within`` is beyond it: a proof is then one
    round trip to the database (the check and its nodes), not one for the size and one for the
    nodes."""

    def __init__(self, session: Session, within: int | None = None):
        self.session = session
        self.within = within

    def _check_within(self, tree_size: int | None) -> None:
        self.within, within = None, self.within  # checked once, by the first read
        if within is not None and within > (tree_size or 0):
            raise BeyondTree(tree_size or 0)

    def check_within(self) -> None:
        """Check ``within`` now, in a statement of its own, if no read has checked it yet (a
        proof that read no node from the database, or a request refused before reading)."""
        if self.within is not None:
            self._check_within(self.session.execute(TREE_SIZE).scalar())

    def get_many(self, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        keys = list(dict.fromkeys(keys))
        found: dict[tuple[int, int], bytes] = {}
        # point lookups on the primary key OR-ed together (SQLite's multi-index OR, PostgreSQL's
        # bitmap OR), as driver SQL with the integers inlined: building the same query as an
        # expression, or binding 2n parameters, costs more than the database's work (a proof
        # at a million entries is about 0.1 ms of server time)
        connection = self.session.connection()
        for start in range(0, len(keys), 200):
            where = " OR ".join(f"(level = {int(level)} AND idx = {int(idx)})"
                                for level, idx in keys[start:start + 200])
            sql = f"SELECT level, idx, hash FROM log_nodes WHERE {where}"
            if self.within is not None:  # the tree's size rides along as level -1
                sql += " UNION ALL SELECT -1, tree_size, '' FROM log_state WHERE id = 1"
                rows = connection.exec_driver_sql(sql).all()
                self._check_within(next((i for lv, i, _h in rows if lv == -1), None))
            else:
                rows = connection.exec_driver_sql(sql)
            found.update(((level, idx), bytes.fromhex(h)) for level, idx, h in rows
                         if level >= 0)
        return found

    def put_many(self, nodes: Iterable[tuple[int, int, bytes]]) -> None:
        rows = [{"level": level, "idx": idx, "hash": h.hex()} for level, idx, h in nodes]
        if rows:  # one multi-row insert per integration, not an ORM object per node
            self.session.flush()
            self.session.connection().execute(insert(LogNode), rows)


# complete subtrees at and above this level (256 leaves and more: C2SP's level-1 tiles and up)
# are few (about 2n/256) and never change once written, so a log keeps them in memory
UPPER_LEVEL = 8


class UpperNodeCache:
    """The tree's upper levels, kept in memory by one :class:`TransparencyLog`: loaded in one
    range query by the first proof after a (re)start, grown as proofs meet new nodes. A proof
    at a million entries then reads only its own 256-leaf region (at most 8 nodes) from the
    database. A node's hash depends only on committed entries, so a cached node is never
    stale, even when an integration that wrote it rolled back and runs again."""

    def __init__(self) -> None:
        self.nodes: dict[tuple[int, int], bytes] = {}
        self.loaded = False

    def load(self, session: Session) -> None:
        rows = session.execute(select(LogNode.level, LogNode.idx, LogNode.hash)
                               .where(LogNode.level >= UPPER_LEVEL))
        self.nodes.update(((level, idx), bytes.fromhex(h)) for level, idx, h in rows)
        self.loaded = True


class CachedNodeStore(SqlNodeStore):
    """:class:`SqlNodeStore` answering upper-level keys from an :class:`UpperNodeCache`."""

    def __init__(self, session: Session, cache: UpperNodeCache, within: int | None = None):
        super().__init__(session, within)
        self.cache = cache
        if not cache.loaded:
            cache.load(session)

    def get_many(self, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        found: dict[tuple[int, int], bytes] = {}
        missing = []
        for key in keys:
            h = self.cache.nodes.get(key) if key[0] >= UPPER_LEVEL else None
            if h is None:
                missing.append(key)
            else:
                found[key] = h
        if missing:
            fetched = super().get_many(missing)
            found.update(fetched)
            self.cache.nodes.update((k, h) for k, h in fetched.items() if k[0] >= UPPER_LEVEL)
        else:
            self.check_within()  # every node was cached: the size still needs its check
        return found
