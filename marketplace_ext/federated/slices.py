"""The service's side of split decryption (:mod:`.split_decrypt`): sealed slices of a published
aggregate, posted and fetched by members.

The layout is derived from the published aggregate (its ciphertext count and the round's
contributors). A member (publish scope, approved, not left) posts a slice's sealed bytes; the
service checks only what it can without a key (the round is published, the slice exists, the
size is the layout's) and keeps the first post of each slice (any member may post any missing
slice: that is how a slice whose owner is away is taken over). Members read the layout with
what was posted, and the sealed bytes. Nothing here can open a slice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..auth import Caller
from ..errors import Conflict, InvalidField, NotFound
from ..orm import utcnow
from . import split_decrypt
from .common import (
    PUBLISHED,
    iso,
    latest_round,
    parse_query_int,
    require_acting_member,
    require_member,
    spec_of,
)
from .orm import FLAggregate, FLProject, FLRound, FLSlice

#: the largest slice index a path may name (a layout has at most one slice per member)
MAX_SLICE = 100_000


def parse_slice(raw: str) -> int:
    """A slice index from a path: a 400 naming ``slice`` unless an integer in range."""
    return parse_query_int(raw, "slice", 0, MAX_SLICE)


def _published(
    session: Session, project: FLProject, number: int, for_post: bool
) -> tuple[FLRound, FLAggregate]:
    rnd = session.scalar(
        select(FLRound)
        .where(
            FLRound.project_id == project.id, FLRound.number == number, FLRound.state == PUBLISHED
        )
        .limit(1)
    )
    if rnd is None:
        if latest_round(session, project, number) is None:
            raise NotFound(f"project {project.name!r} has no round {number} (yet)", "round")
        message = f"round {number} of project {project.name!r} is not published yet"
        if for_post:
            raise Conflict(message + ": there is nothing to decrypt", "round")
        raise NotFound(message, "round")
    return rnd, session.get(FLAggregate, rnd.id)


def layout_of(project: FLProject, aggregate: FLAggregate) -> split_decrypt.SliceLayout:
    return split_decrypt.layout(spec_of(project).ciphertexts, json.loads(aggregate.contributors))


@dataclass(frozen=True)
class SlicePost:
    """A checked slice post, before its bytes are stored."""

    round_id: int
    number: int
    index: int
    member_id: int
    unit: str
    expected_bytes: int


def check_post(
    session: Session, caller: Caller, project: FLProject, number: int, index: int, size: int
) -> SlicePost:
    """Everything about a posted slice that the service can check (again in the write
    transaction that records it)."""
    member = require_acting_member(session, caller, project, "posting a decrypted slice")
    rnd, aggregate = _published(session, project, number, for_post=True)
    plan = layout_of(project, aggregate)
    if not 0 <= index < plan.count:
        raise NotFound(f"round {number} has slices 0..{plan.count - 1}; no slice {index}", "slice")
    expected = plan.sealed_size(index, split_decrypt.plaintext_width(spec_of(project)))
    if size != expected:
        raise InvalidField(f"slice {index} sealed is {expected} bytes, got {size}", "body")
    if (
        session.scalar(select(FLSlice.id).where(FLSlice.round_id == rnd.id, FLSlice.slice == index))
        is not None
    ):
        raise Conflict(f"slice {index} of round {number} is posted already", "slice")
    return SlicePost(rnd.id, number, index, member.id, member.unit.slug, expected)


def record_post(
    session: Session, caller: Caller, project: FLProject, req: SlicePost, sha256: str, size: int
) -> FLSlice:
    """Record a checked slice (its bytes already in the blob store); the first post wins."""
    again = check_post(session, caller, project, req.number, req.index, size)
    if again.round_id != req.round_id:
        raise Conflict(f"round {req.number} changed while the slice arrived", "round")
    row = FLSlice(
        round_id=req.round_id,
        slice=req.index,
        member_id=req.member_id,
        submitter=caller.name,
        sha256=sha256,
        size=size,
        created_at=utcnow(),
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(
            f"slice {req.index} of round {req.number} is posted already", "slice"
        ) from None
    return row


def slices_json(session: Session, caller: Caller, project: FLProject, number: int) -> dict:
    """The layout of round ``number``'s aggregate with each slice's owner and post."""
    require_member(session, caller, project, "reading a round's slices")
    rnd, aggregate = _published(session, project, number, for_post=False)
    plan = layout_of(project, aggregate)
    width = split_decrypt.plaintext_width(spec_of(project))
    posted = {
        s.slice: s for s in session.scalars(select(FLSlice).where(FLSlice.round_id == rnd.id))
    }
    listed = []
    for i in range(plan.count):
        start, stop = plan.bounds(i)
        row = posted.get(i)
        listed.append(
            {
                "slice": i,
                "start": start,
                "stop": stop,
                "owner": plan.owner(i),
                "size": plan.sealed_size(i, width),
                "posted": row is not None,
                "posted_by": row.member.unit.slug if row else None,
                "sha256": row.sha256 if row else None,
                "posted_at": iso(row.created_at) if row else None,
            }
        )
    return {
        "round": rnd.number,
        "attempt": rnd.attempt,
        "aggregate_sha256": aggregate.sha256,
        "ciphertexts": plan.ciphertexts,
        "plaintext_bytes": width,
        "parties": aggregate.parties,
        "total_weight": aggregate.total_weight,
        "units": list(plan.units),
        "slices": listed,
    }


def slice_blob(
    session: Session, caller: Caller, project: FLProject, number: int, index: int
) -> tuple[FLRound, FLSlice]:
    """The posted slice ``index`` of round ``number`` (members only)."""
    require_member(session, caller, project, "reading a decrypted slice")
    rnd, aggregate = _published(session, project, number, for_post=False)
    plan = layout_of(project, aggregate)
    if not 0 <= index < plan.count:
        raise NotFound(f"round {number} has slices 0..{plan.count - 1}; no slice {index}", "slice")
    row = session.scalar(select(FLSlice).where(FLSlice.round_id == rnd.id, FLSlice.slice == index))
    if row is None:
        raise NotFound(f"slice {index} of round {number} is not posted yet", "slice")
    return rnd, row
