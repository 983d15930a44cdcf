"""Leave-one-out aggregates, the input of the opt-in contribution measure ``loo_weight``
(:mod:`.economy`). A project offers them only if it was opened with
``contribution_measure: "loo_weight"`` (shown to every unit before it joins); otherwise a
request for one is a 409 naming ``project`` and the measure is the data weight alone.

For a published round of at least three updates, an approved member may fetch the encrypted
sum of every update of that round but one unit's: the service multiplies the other
ciphertexts (``packing.add_encrypted``) without decrypting anything. The member decrypts it
with the project key, evaluates the resulting model on its own validation data and posts the
result as the metric ``loo.<unit>``.

The price, stated in the README: the difference between a round's aggregate and its
leave-one-out aggregate is that unit's (weighted, quantized) update, so every key-holding
member can learn it. A round of two updates has no leave-one-out aggregate (it would be the
other unit's update in the clear).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..auth import Caller
from ..blobs import BlobStore
from ..errors import Conflict, NotFound
from . import economy, packing
from .common import MIN_UPDATES_FLOOR, PUBLISHED, require_member, spec_of
from .orm import FLProject, FLRound, FLUpdate


@dataclass(frozen=True)
class LeaveOneOutJob:
    spec: packing.PackSpec
    shas: tuple[str, ...]
    parties: int
    total_weight: int
    left_out: str


def loo_job(
    session: Session, caller: Caller, project: FLProject, number: int, unit: str
) -> LeaveOneOutJob:
    """What to add for round ``number`` without ``unit``'s update (members only)."""
    require_member(session, caller, project, "reading a leave-one-out aggregate")
    if project.contribution_measure != economy.LOO:
        raise Conflict(
            f"project {project.name!r} did not opt in to the leave-one-out "
            f"measure (contribution_measure is {project.contribution_measure}): "
            "its members never see a sum that leaves one unit out",
            "project",
        )
    rnd = session.scalar(
        select(FLRound)
        .where(
            FLRound.project_id == project.id, FLRound.number == number, FLRound.state == PUBLISHED
        )
        .limit(1)
    )
    if rnd is None:
        raise NotFound(f"round {number} of project {project.name!r} has no aggregate yet", "round")
    updates = list(
        session.scalars(select(FLUpdate).where(FLUpdate.round_id == rnd.id).order_by(FLUpdate.id))
    )
    others = [u for u in updates if u.member.unit.slug != unit]
    if len(others) == len(updates):
        raise NotFound(f"unit {unit[:64]!r} sent no update to round {number}", "unit")
    if len(others) < MIN_UPDATES_FLOOR:
        raise Conflict(
            f"round {number} has {len(updates)} updates; leaving one out would "
            "reveal a single unit's update",
            "round",
        )
    return LeaveOneOutJob(
        spec_of(project),
        tuple(u.sha256 for u in others),
        len(others),
        sum(u.weight for u in others),
        unit,
    )


def loo_sum(job: LeaveOneOutJob, blobs: BlobStore) -> bytes:
    """The encrypted sum (CPU-bound: a worker thread's job)."""
    cts = [packing.ciphertexts_from_bytes(job.spec, blobs.get(sha)) for sha in job.shas]
    return packing.ciphertexts_to_bytes(job.spec, packing.add_encrypted(job.spec, cts))
