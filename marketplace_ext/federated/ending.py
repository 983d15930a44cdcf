"""How a federated project that never finishes ends, and how its pool comes back.

A project finishes when its last round is published (:mod:`.rounds`); then it is settled
(:func:`.economy.settle`). Two other ends keep a pool from being stuck in escrow:

* **cancelled**: the initiator's unit (a publisher of it) or an operator cancels a project that
  is enrolling or running (``POST api/fl/projects/{id}/cancel``). A finished project is
  settled instead (409 naming ``project``).
* **failed**: the coordinator's sweep (:func:`sweep_stalled`, in the same transaction that
  voids rounds at their deadline) ends a running project whose round has been void
  :data:`MAX_VOID_ATTEMPTS` times in a row (too few updates before each deadline).

Either way, in one transaction: the open or aggregating round becomes ``void`` (its updates
are never added), the project takes its end state, and the whole escrow goes back to the
initiator's unit in one transfer (``fl_pool_refund``, no fee), recorded as the project's
settlement (measure ``refund``) and certified as its ``fl_split`` entry (measure ``refund``,
the state, the reason and the amount). The settlement row (one per project, its primary key)
and the project's row lock make the refund happen exactly once: a second cancel returns the
first one's record and moves nothing, a concurrent settle or funding waits and is refused.
"""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .. import certlog, points
from ..auth import Caller
from ..errors import Conflict, Forbidden, InvalidField
from ..orm import Account, utcnow
from . import economy
from .common import (
    AGGREGATING,
    CANCELLED,
    ENROLLING,
    FAILED,
    INITIATOR,
    OPEN,
    RUNNING,
    SERVICE_ACTOR,
    VOID,
    reject_unknown,
    require_acting_member,
)
from .orm import FLProject, FLRound, FLSettlement

#: a running project fails when one of its rounds has been void this many times in a row
MAX_VOID_ATTEMPTS = 3
REFUND = "refund"
MAX_REASON = 300


def parse_reason(body: dict) -> str | None:
    """The optional ``reason`` of a cancel (at most 300 characters); 400 naming it."""
    reject_unknown(body, {"reason"})
    reason = body.get("reason")
    if reason is None:
        return None
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise InvalidField(f"reason must be a string of at most {MAX_REASON} characters", "reason")
    return reason.strip() or None


def cancel(
    session: Session, caller: Caller, project: FLProject, reason: str | None = None
) -> tuple[FLSettlement, bool]:
    """Cancel an enrolling or running project and give its pool back (a publisher of the
    initiator's unit, or an operator); returns (the refund's record, whether this call made
    it). Cancelling a cancelled or failed project again returns its record and moves nothing.
    Needs a write transaction; the caller commits."""
    if not caller.is_operator:
        member = require_acting_member(session, caller, project, "cancelling a federated project")
        if member.role != INITIATOR:
            raise Forbidden(
                f"only the initiator's unit ({project.unit.slug}) or an operator "
                f"cancels project {project.name!r}",
                "unit",
            )
    economy.lock_project(session, project)
    if project.state in (CANCELLED, FAILED):
        done = economy.current_settlement(session, project)
        if done is not None:
            return done, False
    if project.state not in (ENROLLING, RUNNING):
        raise Conflict(
            f"project {project.name!r} is {project.state}: a finished project is "
            "settled (its pool split), not cancelled",
            "project",
        )
    who = "an operator" if caller.is_operator else "the initiator's unit"
    return end_project(
        session, project, CANCELLED, caller.name, reason or f"cancelled by {who}"
    ), True


def end_project(
    session: Session,
    project: FLProject,
    state: str,
    actor: str,
    reason: str,
    now: datetime | None = None,
) -> FLSettlement:
    """End ``project`` (locked by the caller) as ``state`` without finishing it: void its
    open or aggregating round, and refund the whole pool to the initiator's unit in one
    certified transfer, recorded as its settlement."""
    now = now or utcnow()
    for rnd in session.scalars(
        select(FLRound)
        .where(FLRound.project_id == project.id, FLRound.state.in_((OPEN, AGGREGATING)))
        .with_for_update()
    ):
        rnd.state, rnd.close_reason, rnd.closed_at = VOID, state, now
    project.state, project.finished_at = state, now
    pool, _held = economy.pool_of(session, project)
    transfer, amount = None, 0
    if pool is not None:
        escrow = session.get(Account, pool.account_id)
        session.refresh(escrow)
        if escrow.balance > 0:
            transfer = points.escrow_refund(
                session,
                escrow,
                project.unit,
                actor,
                f"federated project {project.name} {state}: the pool goes back",
                kind="fl_pool_refund",
            )
            amount = sum(p.amount for p in transfer.postings if p.amount > 0)
    paid = {project.unit.slug: amount} if amount else {}
    inputs = {"measure": REFUND, "state": state, "reason": reason}
    settlement = FLSettlement(
        project_id=project.id,
        measure=REFUND,
        inputs=json.dumps(inputs, sort_keys=True),
        shares="{}",
        paid=json.dumps(paid),
        fee=0,
        transfer_id=transfer.id if transfer else None,
        decided_by=actor,
        created_at=now,
    )
    session.add(settlement)
    try:
        session.flush()
    except IntegrityError:  # settled or ended on another connection meanwhile
        raise Conflict(
            f"project {project.name!r} was settled or ended meanwhile", "project"
        ) from None
    settlement.log_index = certlog.append(
        session,
        "fl_split",
        actor,
        project.unit.slug,
        f"fl_project:{project.id}",
        project=project.name,
        project_id=project.id,
        measure=REFUND,
        state=state,
        reason=reason,
        inputs=inputs,
        shares={},
        pool=points.format_points(amount),
        funded=points.format_points(pool.funded if pool else 0),
        fee=points.format_points(0),
        paid={u: points.format_points(a) for u, a in paid.items()},
        transfer=transfer.id if transfer else None,
    )
    session.flush()
    return settlement


def sweep_stalled(session: Session, now: datetime | None = None) -> list[int]:
    """Fail every running project one of whose rounds has been void
    :data:`MAX_VOID_ATTEMPTS` times (its next attempt is open), refunding its pool. The
    coordinator calls it in the transaction that voids rounds at their deadline; returns the
    ids of the projects it ended."""
    now = now or utcnow()
    stalled = session.scalars(
        select(FLRound)
        .join(FLProject, FLProject.id == FLRound.project_id)
        .where(
            FLRound.state == OPEN, FLRound.attempt > MAX_VOID_ATTEMPTS, FLProject.state == RUNNING
        )
    )
    ended = []
    for rnd in list(stalled):
        project = session.get(FLProject, rnd.project_id)
        economy.lock_project(session, project)
        if project.state != RUNNING:
            continue
        end_project(
            session,
            project,
            FAILED,
            SERVICE_ACTOR,
            f"round {rnd.number} was void {rnd.attempt - 1} times: too few updates "
            "before each deadline",
            now,
        )
        ended.append(project.id)
    return ended


def ending_json(settlement: FLSettlement) -> dict:
    """The refund's record as the API and the page show it."""
    inputs = json.loads(settlement.inputs)
    return {
        "project": settlement.project_id,
        "state": inputs.get("state"),
        "reason": inputs.get("reason"),
        "refund": economy.settlement_json(settlement),
    }
