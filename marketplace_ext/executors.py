"""The service's named thread pools: blocking work runs in one of them, never on the event loop
(Tornado's rule: never block the IOLoop; ``GET api/loop-lag`` shows how well it is kept).

- ``db``: handlers' database work (``in_db``: a session of its own, committed by the work);
- ``io``: file and blob reads and writes (uploads, bundles, downloads streamed in chunks);
- ``spark``: calls to the units' data platforms (queries, exports, views built on approval);
- ``log``: the transparency log's integration (one thread: one integrator).

On SQLite, small writes of one kind that arrive together (purchases) can also run as one
transaction with one commit (``in_batched_write``, :mod:`marketplace_ext.write_batches`).

Each has its size as a trait of the service (``db_threads``, ``io_threads``, ``spark_threads``,
``log_threads``). A pool of its own per kind of work keeps a slow kind (a Spark export of a
minute) from taking the threads another (a purchase's transaction) needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy.orm import Session, sessionmaker

from .orm import write_transaction
from .write_batches import WriteBatcher

T = TypeVar("T")

NAMES = ("db", "io", "spark", "log")


class NamedExecutors:
    """One :class:`ThreadPoolExecutor` per name in :data:`NAMES`, sized by ``sizes``."""

    def __init__(self, sizes: dict[str, int], session_factory: sessionmaker,
                 write_batch: int = 32):
        missing = [n for n in NAMES if n not in sizes]
        if missing:
            raise ValueError(f"no size for executor(s) {missing}")
        for name, size in sizes.items():
            if size < 1:
                raise ValueError(f"{name}_threads must be at least 1, not {size}")
        self.pools = {name: ThreadPoolExecutor(sizes[name], thread_name_prefix=name)
                      for name in NAMES}
        self.session_factory = session_factory
        # group commit where the database has one writer anyway; elsewhere (and with a batch
        # of 1) each write is its own transaction in the db pool
        bind = getattr(session_factory, "kw", {}).get("bind")  # (None: no database at all)
        sqlite = bind is not None and bind.dialect.name == "sqlite"
        self.batcher = WriteBatcher(session_factory, write_batch) \
            if sqlite and write_batch > 1 else None

    def __getitem__(self, name: str) -> ThreadPoolExecutor:
        return self.pools[name]

    async def run(self, name: str, work: Callable[..., T], *args) -> T:
        """``work(*args)`` in executor ``name``; the loop serves other requests meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self.pools[name], work, *args)

    async def in_db(self, work: Callable[..., T], *args) -> T:
        """``work(session, *args)`` in the ``db`` executor with a session of its own, closed
        afterwards (``work`` commits what it writes; a write starts with
        ``write_transaction(session)``)."""
        return await self.run("db", self._with_session, work, *args)

    async def in_write(self, work: Callable[..., T], *args) -> T:
        """``work(session, *args)`` as one write transaction in the ``db`` executor: begun as a
        writer, committed if ``work`` returns, rolled back (nothing written) if it raises."""
        return await self.run("db", self._with_session, self._write, work, *args)

    async def in_batched_write(self, work: Callable[..., T], *args) -> T:
        """Like :meth:`in_write`, but on SQLite in the next batch of the write batcher: the
        work runs in a savepoint of a transaction shared with the works queued beside it, and
        its result comes back once that transaction committed. ``work`` must not commit."""
        if self.batcher is None:
            return await self.in_write(work, *args)
        return await self.batcher.run(work, *args)

    def _with_session(self, work: Callable[..., T], *args) -> T:
        session: Session
        with self.session_factory() as session:
            return work(session, *args)

    @staticmethod
    def _write(session: Session, work: Callable[..., T], *args) -> T:
        write_transaction(session)
        result = work(session, *args)
        session.commit()
        return result

    def shutdown(self) -> None:
        """Stop taking work; what runs finishes in its thread, queued work is dropped."""
        for pool in self.pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        if self.batcher is not None:
            self.batcher.close()
