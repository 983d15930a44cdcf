"""Leases: which service process does a piece of work, when several share one database.

The service can run as several processes, on one host or several, against PostgreSQL. Work
that exactly one of them must do at a time is taken through a lease, a row claimed with
``SELECT ... FOR UPDATE SKIP LOCKED`` and valid until its ``expires_at``:

- *named* leases (:func:`acquire`), for singleton jobs: the log integrator and the federated
  round coordinator. The holder renews its lease each pass; if it dies, another process takes
  the job over once the lease has expired, and picks up what was left (a round still
  ``aggregating``, entries not yet integrated), so nothing is lost;
- *run* leases (:mod:`.run_leases`), one per running run.

A lease outlives its holder by at most its time to live, which is the failover delay; the
holder renews it well before (a third of it). Expiry is judged by the database's clock
stand-in, this process's UTC clock: hosts must keep their clocks in step (NTP) to within a
small part of the time to live.

Each process has one :func:`process_id`: host, pid and a random part, so a restarted process
with a recycled pid is still someone else.
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .orm import Lease, utcnow

_PROCESS_ID = f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(4)}"

#: the named leases the service uses
LOG_INTEGRATOR = "log-integrator"
FL_COORDINATOR = "fl-coordinator"


def process_id() -> str:
    """This process's identity as a lease holder (fixed for the life of the process; a forked
    child gets its own)."""
    global _PROCESS_ID
    host, pid, _ = _PROCESS_ID.rsplit(":", 2)
    if int(pid) != os.getpid():  # forked
        _PROCESS_ID = f"{host}:{os.getpid()}:{secrets.token_hex(4)}"
    return _PROCESS_ID


def holder_is_dead_here(owner: str | None) -> bool:
    """Whether ``owner`` was a process of this host that no longer runs (it can be taken over
    at once instead of after its lease expires). Unknown hosts are never judged dead."""
    if not owner:
        return True
    try:
        host, pid, _ = owner.rsplit(":", 2)
        pid_number = int(pid)
    except ValueError:
        return True
    if host != socket.gethostname()[:80]:
        return False
    if owner == process_id():
        return False
    try:
        os.kill(pid_number, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    # the pid runs, but it may be a recycled one: a live holder of ours renews in time anyway
    return False


def acquire(session: Session, name: str, owner: str, ttl: float,
            now: datetime | None = None) -> bool:
    """Take or renew the lease ``name`` for ``owner`` for ``ttl`` seconds, in the caller's
    write transaction (the caller commits). True if ``owner`` holds it now; False if another
    holder's lease is still valid, or another process is claiming it this very moment."""
    if ttl <= 0:
        raise ValueError("a lease's time to live must be positive")
    now = now or utcnow()
    lease = session.scalars(select(Lease).where(Lease.name == name)
                            .with_for_update(skip_locked=True)
                            .execution_options(populate_existing=True)).first()
    if lease is None:
        if session.get(Lease, name) is not None:  # exists, but locked by a claimant
            return False
        try:
            with session.begin_nested():
                session.add(Lease(name=name, owner=owner,
                                  expires_at=now + timedelta(seconds=ttl)))
        except IntegrityError:  # another process created it first
            return False
        return True
    if lease.owner != owner and lease.expires_at > now and not holder_is_dead_here(lease.owner):
        return False
    lease.owner, lease.expires_at = owner, now + timedelta(seconds=ttl)
    session.flush()
    return True


def release(session: Session, name: str, owner: str) -> None:
    """Give the lease up (a clean stop), so another process need not wait for it to expire."""
    lease = session.get(Lease, name, with_for_update=True)
    if lease is not None and lease.owner == owner:
        lease.expires_at = utcnow() - timedelta(seconds=1)
        session.flush()


def holder(session: Session, name: str, now: datetime | None = None) -> str | None:
    """Who holds ``name`` now (None: nobody, or an expired holder)."""
    lease = session.get(Lease, name)
    if lease is None or lease.expires_at <= (now or utcnow()):
        return None
    return lease.owner
