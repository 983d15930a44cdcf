"""What each caller may read of a federated project: its details (for approved members, the
initiator's unit and operators: :func:`project_json`), the listing's public summary for
everyone else (:func:`list_projects`), members, rounds and aggregates as the API shows them.
Split from :mod:`.projects` (opening a project), which re-exports these names."""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import points
from ..auth import SCOPE_PUBLISH, Caller
from . import economy
from .common import (
    APPROVED,
    ENDED,
    INITIATOR,
    REFUSED,
    active_members,
    allow_list_of,
    iso,
    latest_round,
    may_view,
    membership,
    membership_state,
    require_viewer,
)
from .orm import FLAggregate, FLMember, FLProject, FLRound, FLUnitKey, FLUpdate


def member_json(member: FLMember) -> dict:
    """A membership as its own unit, the project's members and operators see it."""
    return {
        "unit": member.unit.slug,
        "role": member.role,
        "status": member.status,
        "state": membership_state(member),
        "joined_by": member.joined_by,
        "joined_at": iso(member.joined_at),
        "left_at": iso(member.left_at),
        "decided_by": member.decided_by,
        "decided_at": iso(member.decided_at),
        "x25519_public_key": member.public_key,
        "x25519_signature": member.key_signature,
        "has_wrapped_key": member.wrapped_key is not None or member.role == INITIATOR,
        "wrapped_by": member.wrapped_by,
    }


def project_json(session: Session, project: FLProject, caller: Caller) -> dict:
    """The project's details: for approved members, the initiator's unit and operators only
    (403 for everyone else)."""
    require_viewer(session, caller, project, "reading a federated project's details")
    current = (
        latest_round(session, project, project.current_round) if project.current_round else None
    )
    return {
        "id": project.id,
        "name": project.name,
        "title": project.title,
        "task": project.task,
        "unit": project.unit.slug,
        "initiator": project.initiator,
        "state": project.state,
        "rounds": project.rounds,
        "quorum": project.quorum,
        "min_updates": project.min_updates,
        "deadline_seconds": project.deadline_seconds,
        "key_size": project.key_size,
        "public_key": json.loads(project.public_key),
        "key_fingerprint": project.key_fingerprint,
        "pack": json.loads(project.pack_spec),
        "dp": json.loads(project.dp) if project.dp else None,
        "model": {"sha256": project.model_sha256, **json.loads(project.model_spec)},
        "current_round": project.current_round,
        "round": round_summary(session, project, current) if current else None,
        "members": [member_json(m) for m in project.members],
        "allow_units": allow_list_of(project),
        "is_member": membership_state(membership(session, project, caller.unit)) == APPROVED,
        "membership": membership_state(membership(session, project, caller.unit)),
        "created_at": iso(project.created_at),
        "finished_at": iso(project.finished_at),
        "products": [p.name for p in economy.project_products(session, project)],
        "contribution_measure": project.contribution_measure,
        "pool": points.format_points(economy.pool_of(session, project)[1]),
    }


def may_join(session: Session, caller: Caller, project: FLProject, member: FLMember | None) -> bool:
    """Whether the caller may ask to join: a publisher of a unit that is not in the project
    (or left it, and was not refused), while the project has not finished or filled up."""
    if SCOPE_PUBLISH not in caller.scopes or caller.unit is None or project.state in ENDED:
        return False
    if member is not None and (member.left_at is None or member.status == REFUSED):
        return False
    return len(active_members(session, project)) < json.loads(project.pack_spec)["max_parties"]


def list_projects(session: Session, caller: Caller) -> list[dict]:
    """Every project, newest first. A unit needs to see a project to ask to join it, so
    everyone gets its public summary (name, title, initiator unit, state, whether the caller
    may ask to join, the caller unit's membership state); those who may view the details get
    the rest of the entry too."""
    out = []
    for project in session.scalars(select(FLProject).order_by(FLProject.id.desc())):
        member = membership(session, project, caller.unit)
        entry = {
            "id": project.id,
            "name": project.name,
            "title": project.title,
            "unit": project.unit.slug,
            "state": project.state,
            # shown before a unit joins: loo_weight lets members learn each unit's update
            "contribution_measure": project.contribution_measure,
            "may_join": may_join(session, caller, project, member),
            "membership": membership_state(member),
            "is_member": membership_state(member) == APPROVED,
        }
        if may_view(session, caller, project):
            entry.update(
                {
                    "task": project.task,
                    "rounds": project.rounds,
                    "current_round": project.current_round,
                    "key_size": project.key_size,
                    "members": [m.unit.slug for m in active_members(session, project)],
                    "pending": [
                        m.unit.slug
                        for m in project.members
                        if m.status == "pending" and m.left_at is None
                    ],
                    "created_at": iso(project.created_at),
                }
            )
        out.append(entry)
    return out


def unit_key_json(key: FLUnitKey) -> dict:
    return {
        "unit": key.unit.slug,
        "ed25519_public_key": key.public_key,
        "registered_at": iso(key.registered_at),
        "log_index": key.log_index,
    }


def round_summary(session: Session, project: FLProject, rnd: FLRound) -> dict:
    updates = list(
        session.scalars(select(FLUpdate).where(FLUpdate.round_id == rnd.id).order_by(FLUpdate.id))
    )
    aggregate = session.get(FLAggregate, rnd.id)
    return {
        "number": rnd.number,
        "attempt": rnd.attempt,
        "state": rnd.state,
        "base_round": rnd.base_round,
        "base_sha256": rnd.base_sha256,
        "opened_at": iso(rnd.opened_at),
        "deadline": iso(rnd.deadline),
        "closed_at": iso(rnd.closed_at),
        "close_reason": rnd.close_reason,
        "quorum": project.quorum,
        "min_updates": project.min_updates,
        "active_members": len(active_members(session, project)),
        "updates": [
            {
                "unit": u.member.unit.slug,
                "submitter": u.submitter,
                "sha256": u.sha256,
                "size": u.size,
                "weight": u.weight,
                "clipped": u.clipped,
                "log_index": u.log_index,
                "created_at": iso(u.created_at),
            }
            for u in updates
        ],
        "aggregate": aggregate_json(aggregate) if aggregate else None,
    }


def aggregate_json(aggregate: FLAggregate) -> dict:
    return {
        "sha256": aggregate.sha256,
        "size": aggregate.size,
        "parties": aggregate.parties,
        "total_weight": aggregate.total_weight,
        "contributors": json.loads(aggregate.contributors),
        "log_index": aggregate.log_index,
        "created_at": iso(aggregate.created_at),
    }


def round_json(session: Session, project: FLProject, rnd: FLRound) -> dict:
    attempts = session.scalars(
        select(FLRound)
        .where(FLRound.project_id == project.id, FLRound.number == rnd.number)
        .order_by(FLRound.attempt)
    )
    return {
        **round_summary(session, project, rnd),
        "project": project.id,
        "attempts": [
            {
                "attempt": a.attempt,
                "state": a.state,
                "deadline": iso(a.deadline),
                "closed_at": iso(a.closed_at),
                "close_reason": a.close_reason,
            }
            for a in attempts
        ],
    }
