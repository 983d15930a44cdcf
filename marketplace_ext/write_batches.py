"""Group commit: many small write transactions of one kind run as one, on SQLite.

SQLite has one writer at a time, so a purchase's throughput is one over the time the writer
lock is held: its statements, then a commit that waits for the disk. :class:`WriteBatcher` runs
the queued works of a kind on one thread, each in a SAVEPOINT of one shared transaction, and
commits once for the whole batch (PostgreSQL and InnoDB do the same with their WAL flushes):

- a work that raises is rolled back to its savepoint and its caller gets the error; the other
  works of the batch are not affected;
- a failed commit fails every work of the batch, and nothing of it is written;
- a caller's answer is set only after the commit, so nothing is reported that is not durable.

With one waiting work it is an ordinary transaction; batches grow only when callers queue up.
On PostgreSQL writers run concurrently under row locks, and a batch would hold its rows (the
operator's account, which every purchase credits) for the whole batch: works run one
transaction each there (:meth:`NamedExecutors.in_write`).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from sqlalchemy.orm import Session, sessionmaker

from .orm import write_transaction

log = logging.getLogger(__name__)

T = TypeVar("T")

_STOP = object()


class WriteBatcher:
    """One thread running queued ``work(session, *args)`` calls in batches of at most
    ``max_batch`` per transaction (see the module docstring)."""

    def __init__(self, session_factory: sessionmaker, max_batch: int = 32,
                 name: str = "db-batch"):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.session_factory = session_factory
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()
        self.batches = 0  # committed batches and the works in them (for tests and benchmarks)
        self.works = 0

    def submit(self, work: Callable[..., T], *args) -> Future:
        """Queue ``work(session, *args)``; the future holds its result once committed."""
        future: Future = Future()
        self._queue.put((work, args, future))
        return future

    async def run(self, work: Callable[..., T], *args) -> T:
        """``work(session, *args)`` in the next batch, awaited from the event loop."""
        return await asyncio.wrap_future(self.submit(work, *args))

    def close(self) -> None:
        """Finish the queued works, then stop the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout=60)

    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    self._queue.put(_STOP)  # after this batch
                    break
                batch.append(item)
            try:
                self._run_batch(batch)
            except Exception:  # never leave the thread (the buyers behind would wait forever)
                log.exception("the write batcher failed a batch")
                for _work, _args, future in batch:
                    if not future.done():
                        future.set_exception(RuntimeError("the write batch failed"))

    def _run_batch(self, batch: list[tuple[Callable, tuple, Future]]) -> None:
        done: list[tuple[Future, object]] = []
        try:
            session: Session
            with self.session_factory() as session:
                write_transaction(session)
                for work, args, future in batch:
                    if not future.set_running_or_notify_cancel():
                        continue
                    try:
                        # (the savepoint's release flushes what the work wrote first, so
                        # a failing flush is this work's error too)
                        with session.begin_nested():
                            result = work(session, *args)
                    except BaseException as e:  # this work only: its savepoint rolled back
                        future.set_exception(e)
                        continue
                    done.append((future, result))
                session.commit()
        except BaseException as e:  # the commit (or the transaction) failed: nothing written
            log.exception("a batch of %d writes failed as a whole", len(batch))
            for future, _result in done:
                future.set_exception(e)
            for _work, _args, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        self.batches += 1
        self.works += len(done)
        for future, result in done:
            future.set_result(result)
