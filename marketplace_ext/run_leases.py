"""Run leases: which service process executes a run, and taking over the runs of one that died.

A runner claims the oldest ``queued`` run with ``FOR UPDATE SKIP LOCKED`` (two processes never
claim the same run) and holds it through a lease on the run's row (``lease_owner``,
``lease_expires_at``), renewed while it executes. A run whose lease has expired, or whose
holder was a process of this host that no longer exists, is *stale*: its holder died in the
middle of it. Whoever notices first takes it over: it is queued again while it has attempts
left (``max_attempts``; the notebook starts afresh, so a run's effects should be idempotent),
else it fails with ``on_finished`` (the refund), exactly once, by the process that took it.

A runner that owns its database alone (``exclusive``: the embedded default, one process)
treats every run left ``running`` by someone else as stale at start, without waiting.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .leases import holder_is_dead_here
from .orm import Run, utcnow


def claim_next(session: Session, owner: str, ttl: float,
               now: datetime | None = None) -> Run | None:
    """The oldest queued run, now ``running`` under ``owner``'s lease, in the caller's write
    transaction (the caller commits); None when nothing is queued or every queued run is
    being claimed by another process."""
    now = now or utcnow()
    run = session.scalars(select(Run).where(Run.status == "queued").order_by(Run.id)
                          .limit(1).with_for_update(skip_locked=True)).first()
    if run is None:
        return None
    run.status, run.started_at = "running", now
    run.cells_done = run.cells_total = 0
    run.lease_owner, run.lease_expires_at = owner, now + timedelta(seconds=ttl)
    run.attempts = (run.attempts or 0) + 1
    session.flush()
    return run


def renew(session: Session, owner: str, run_ids: list[int], ttl: float,
          now: datetime | None = None) -> set[int]:
    """Extend ``owner``'s leases on ``run_ids``; returns the ids it still holds (a run another
    process took over, or that finished meanwhile, is missing)."""
    if not run_ids:
        return set()
    now = now or utcnow()
    session.execute(update(Run).where(Run.id.in_(run_ids), Run.lease_owner == owner,
                                      Run.status == "running")
                    .values(lease_expires_at=now + timedelta(seconds=ttl)))
    return set(session.scalars(select(Run.id).where(Run.id.in_(run_ids),
                                                    Run.lease_owner == owner,
                                                    Run.status == "running")))


def _stale(run: Run, owner: str, exclusive: bool, now: datetime) -> bool:
    if run.status != "running" or run.lease_owner == owner:
        return False
    if exclusive or run.lease_owner is None:
        return True
    return run.lease_expires_at is None or run.lease_expires_at <= now \
        or holder_is_dead_here(run.lease_owner)


def stale_runs(session: Session, owner: str, exclusive: bool,
               now: datetime | None = None) -> list[int]:
    """Ids of running runs whose holder is gone (a cheap read, before any lock)."""
    now = now or utcnow()
    runs = session.scalars(select(Run).where(Run.status == "running",
                                             (Run.lease_owner != owner)
                                             | Run.lease_owner.is_(None)))
    return [r.id for r in runs if _stale(r, owner, exclusive, now)]


def take_over(session: Session, run_id: int, owner: str, ttl: float, max_attempts: int,
              exclusive: bool, now: datetime | None = None) -> str | None:
    """Take a stale run over in the caller's write transaction (the caller commits):
    ``"requeued"`` while it has attempts left, ``"fail"`` when the caller must now record it
    failed (it holds the run's lease for that), None if it is not stale any more or another
    process is taking it over."""
    now = now or utcnow()
    run = session.scalars(select(Run).where(Run.id == run_id).with_for_update(skip_locked=True)
                          .execution_options(populate_existing=True)).first()
    if run is None or not _stale(run, owner, exclusive, now):
        return None
    if max(run.attempts or 0, 1) < max_attempts:
        run.status, run.started_at = "queued", None
        run.lease_owner = run.lease_expires_at = None
        run.cells_done = run.cells_total = 0
        session.flush()
        return "requeued"
    run.lease_owner, run.lease_expires_at = owner, now + timedelta(seconds=ttl)
    session.flush()
    return "fail"


def give_up(session: Session, run_id: int, owner: str) -> None:
    """Let ``owner``'s lease on a run lapse now (it could not record the run's end), so the
    next start or sweep of any process retries at once."""
    session.execute(update(Run).where(Run.id == run_id, Run.lease_owner == owner)
                    .values(lease_expires_at=utcnow() - timedelta(seconds=1)))
