"""Rounds of a federated project: starting, encrypted updates, deadlines, aggregation, metrics.

A round (one *attempt* of it, see below) is ``open`` until

* its **quorum** of updates has arrived, or every active (approved, not left) member has sent
  one (when at least ``min_updates`` did): it closes at once; or
* its **deadline** passes: with at least ``min_updates`` updates it closes with what arrived;
  with fewer it is **void** and a new attempt of the same round opens on the same global model
  (the next deadline counted from then). ``min_updates`` is never below 2, so an aggregate is
  never one party's update in disguise.

A closed round is ``aggregating`` until :class:`Coordinator` has multiplied its ciphertexts
(:func:`packing.add_encrypted`, in a worker thread) and ``published`` the result; publishing
opens the next round, or finishes the project after the last one. An update is refused (4xx,
nothing recorded) when it comes from a unit that is not an approved member (pending units
take no part), for a round that is not open, after the deadline, a second time from the same
unit, with a stale key fingerprint, of the wrong size, or holding a ciphertext outside
``0 < c < n^2`` (checked before it is stored, so it can never spoil a sum). Every accepted
update and every aggregate is certified in the transparency log in the transaction that
records it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .. import certlog, leases
from ..auth import Caller
from ..blobs import BlobStore
from ..errors import Conflict, Forbidden, InvalidField, NotFound
from ..exchange import inbox
from ..orm import utcnow, write_transaction
from . import ending, packing
from .common import (
    AGGREGATING,
    ENROLLING,
    FINISHED,
    INITIATOR,
    MAX_METRICS,
    METRIC_NAME_RE,
    OPEN,
    PUBLISHED,
    RUNNING,
    SERVICE_ACTOR,
    VOID,
    active_members,
    get_round,
    int_field,
    is_json_object,
    iso,
    latest_round,
    parse_query_int,
    reject_unknown,
    require_acting_member,
    require_member,
    require_viewer,
    spec_of,
)
from .orm import FLAggregate, FLMetric, FLProject, FLRound, FLUpdate

log = logging.getLogger(__name__)


def _open_round(
    session: Session,
    project: FLProject,
    number: int,
    attempt: int,
    base_round: int,
    base_sha256: str,
    now: datetime,
) -> FLRound:
    rnd = FLRound(
        project_id=project.id,
        number=number,
        attempt=attempt,
        state=OPEN,
        base_round=base_round,
        base_sha256=base_sha256,
        opened_at=now,
        deadline=now + timedelta(seconds=project.deadline_seconds),
    )
    session.add(rnd)
    project.current_round = number
    session.flush()
    again = f" (attempt {attempt})" if attempt > 1 else ""
    for member in active_members(session, project):  # the inbox, in this transaction
        inbox.notify_unit(
            session,
            member.unit_id,
            "fl_round_opened",
            f"Round {number}{again} of “{project.title}” is open",
            f"fl/{project.id}",
            body=f"Send your update before {iso(rnd.deadline)}.",
            ref=f"fl_round:{rnd.id}",
        )
    return rnd


#: members that have not sent their update are told a round is about to close when this share
#: of its window is left (at most an hour before the deadline)
CLOSING_NOTICE_SHARE = 0.25
CLOSING_NOTICE_MAX = timedelta(hours=1)


def warn_closing(session: Session, now: datetime | None = None) -> int:
    """Tell the units that still owe an open round their update that it is about to close,
    once per round attempt. Needs a write transaction; returns the notifications added."""
    now = now or utcnow()
    told = 0
    for rnd in list(
        session.scalars(select(FLRound).where(FLRound.state == OPEN, FLRound.deadline > now))
    ):
        project = session.get(FLProject, rnd.project_id)
        notice = min(
            timedelta(seconds=project.deadline_seconds * CLOSING_NOTICE_SHARE), CLOSING_NOTICE_MAX
        )
        ref = f"fl_round:{rnd.id}"
        if rnd.deadline - now > notice or inbox.already_notified(session, "fl_round_closing", ref):
            continue
        sent = set(session.scalars(select(FLUpdate.member_id).where(FLUpdate.round_id == rnd.id)))
        for member in active_members(session, project):
            if member.id not in sent:
                told += inbox.notify_unit(
                    session,
                    member.unit_id,
                    "fl_round_closing",
                    f"Round {rnd.number} of “{project.title}” closes at {iso(rnd.deadline)}",
                    f"fl/{project.id}",
                    body="Your unit has not sent its update yet.",
                    ref=ref,
                )
    return told


def start(session: Session, caller: Caller, project: FLProject) -> FLRound:
    """The initiator's unit opens round 1 once enough units have joined."""
    member = require_acting_member(session, caller, project, "starting a federated project")
    if member.role != INITIATOR:
        raise Forbidden(
            f"only the initiator's unit ({project.unit.slug}) starts project {project.name!r}",
            "unit",
        )
    if project.state != ENROLLING:
        raise Conflict(f"project {project.name!r} is {project.state}, not enrolling", "project")
    joined = len(active_members(session, project))
    if joined < project.min_updates:
        raise Conflict(
            f"{joined} unit(s) take part (approved); at least {project.min_updates} "
            "(min_updates) are needed to start",
            "members",
        )
    project.state = RUNNING
    return _open_round(session, project, 1, 1, 0, project.model_sha256, utcnow())


@dataclass(frozen=True)
class UpdateRequest:
    """A checked upload announcement, before its body is read."""

    project_id: int
    round_id: int
    number: int
    attempt: int
    member_id: int
    unit: str
    weight: int
    clipped: int
    key_fingerprint: str
    spec: packing.PackSpec

    @property
    def expected_bytes(self) -> int:
        return self.spec.update_bytes


def check_update(
    session: Session,
    caller: Caller,
    project: FLProject,
    number: int,
    weight_raw: str | None,
    clipped_raw: str | None,
    fingerprint: str | None,
    now: datetime | None = None,
) -> UpdateRequest:
    """Everything about an update that can be checked before its bytes arrive (and again, in
    the write transaction, before it is recorded)."""
    member = require_acting_member(session, caller, project, "sending an update")
    now = now or utcnow()
    rnd = latest_round(session, project, number)
    if rnd is None:
        raise NotFound(f"project {project.name!r} has no round {number} (yet)", "round")
    if rnd.state != OPEN or number != project.current_round:
        raise Conflict(
            f"round {number} of project {project.name!r} is closed ({rnd.state})", "round"
        )
    if now >= rnd.deadline:
        raise Conflict(
            f"round {number} of project {project.name!r} passed its deadline ({iso(rnd.deadline)})",
            "round",
        )
    if fingerprint is None:
        raise InvalidField(
            "key_fingerprint is required: the fingerprint of the Paillier key "
            "the update is encrypted with",
            "key_fingerprint",
        )
    if fingerprint != project.key_fingerprint:
        raise Conflict(
            "key_fingerprint is not the project's: the update is encrypted with a "
            "stale or foreign key",
            "key_fingerprint",
        )
    spec = spec_of(project)
    weight = parse_query_int(weight_raw, "weight", 1, spec.max_weight)
    clipped = parse_query_int(clipped_raw, "clipped", 0, spec.length)
    done = session.scalar(
        select(FLUpdate.id).where(FLUpdate.round_id == rnd.id, FLUpdate.member_id == member.id)
    )
    if done is not None:
        raise Conflict(
            f"unit {member.unit.slug} has sent its update for round {number} already", "round"
        )
    return UpdateRequest(
        project_id=project.id,
        round_id=rnd.id,
        number=number,
        attempt=rnd.attempt,
        member_id=member.id,
        unit=member.unit.slug,
        weight=weight,
        clipped=clipped,
        key_fingerprint=fingerprint,
        spec=spec,
    )


def check_update_bytes(spec: packing.PackSpec, data: bytes) -> None:
    """Refuse bytes that are not exactly the spec's ciphertexts, each a unit in ``Z*_{n^2}``.
    CPU-bound (a gcd per ciphertext): run it in a worker thread."""
    try:
        packing.ciphertexts_from_bytes(spec, data)
    except packing.ShapeMismatch as e:
        raise InvalidField(f"the update is not of this project's shape: {e}", "body") from None
    except packing.PackingError as e:
        raise InvalidField(f"the update holds an invalid ciphertext: {e}", "body") from None


def record_update(
    session: Session, caller: Caller, project: FLProject, req: UpdateRequest, sha256: str, size: int
) -> tuple[FLUpdate, FLRound]:
    """Record and certify a checked update (its bytes already in the blob store under
    ``sha256``) in the caller's write transaction; closes the round when it completes the
    quorum. The state is checked again here: it may have moved while the body arrived."""
    again = check_update(
        session, caller, project, req.number, str(req.weight), str(req.clipped), req.key_fingerprint
    )
    if again.round_id != req.round_id:
        raise Conflict(
            f"round {req.number} was reopened while the update arrived; send it again", "round"
        )
    # the round's row lock serialises concurrent updates' quorum counts (PostgreSQL; SQLite
    # writers are serialised by write_transaction already)
    rnd = session.get(FLRound, req.round_id, with_for_update=True)
    update = FLUpdate(
        round_id=rnd.id,
        member_id=req.member_id,
        submitter=caller.name,
        sha256=sha256,
        size=size,
        weight=req.weight,
        clipped=req.clipped,
        key_fingerprint=req.key_fingerprint,
        created_at=utcnow(),
    )
    session.add(update)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(
            f"unit {req.unit} has sent its update for round {req.number} already", "round"
        ) from None
    update.log_index = certlog.append(
        session,
        "fl_contribution",
        caller.name,
        caller.unit,
        subject=sha256,
        project=project.name,
        project_id=project.id,
        round=req.number,
        attempt=req.attempt,
        weight=req.weight,
        clipped=req.clipped,
        size=size,
        key_fingerprint=req.key_fingerprint,
    )
    count = session.scalar(
        select(func.count()).select_from(FLUpdate).where(FLUpdate.round_id == rnd.id)
    )
    active = len(active_members(session, project))
    if count >= project.quorum or (count >= active and count >= project.min_updates):
        _close(rnd, "quorum" if count >= project.quorum else "all_members", utcnow())
    session.flush()
    return update, rnd


def _close(rnd: FLRound, reason: str, now: datetime) -> None:
    rnd.state, rnd.close_reason, rnd.closed_at = AGGREGATING, reason, now


def close_expired(session: Session, now: datetime | None = None) -> list[int]:
    """Close every open round past its deadline: with at least ``min_updates`` updates it goes
    to aggregation, with fewer it is void and a new attempt opens on the same global model.
    Returns the ids of the rounds closed for aggregation. Needs a write transaction."""
    now = now or utcnow()
    closed = []
    due = session.scalars(select(FLRound).where(FLRound.state == OPEN, FLRound.deadline <= now))
    for rnd in list(due):
        # the project's row first, as cancelling and publishing take it; then the round as
        # that lock sees it (a cancel may have voided it meanwhile)
        session.execute(
            select(FLProject.id).where(FLProject.id == rnd.project_id).with_for_update()
        )
        session.refresh(rnd)
        if rnd.state != OPEN:
            continue
        project = session.get(FLProject, rnd.project_id)
        count = session.scalar(
            select(func.count()).select_from(FLUpdate).where(FLUpdate.round_id == rnd.id)
        )
        if count >= project.min_updates:
            _close(rnd, "deadline", now)
            closed.append(rnd.id)
            log.info(
                "round %s/%s of project %s closed at its deadline with %s updates",
                rnd.number,
                rnd.attempt,
                project.name,
                count,
            )
        else:
            rnd.state, rnd.close_reason, rnd.closed_at = VOID, "too_few", now
            session.flush()
            _open_round(
                session, project, rnd.number, rnd.attempt + 1, rnd.base_round, rnd.base_sha256, now
            )
            log.info(
                "round %s of project %s void at its deadline (%s of %s updates); attempt %s opened",
                rnd.number,
                project.name,
                count,
                project.min_updates,
                rnd.attempt + 1,
            )
    session.flush()
    return closed


def due_work(session: Session, now: datetime | None = None) -> tuple[bool, list[int]]:
    """(whether some open round is past its deadline, ids of rounds awaiting aggregation):
    a cheap read, so the periodic tick takes the write lock only when there is work."""
    now = now or utcnow()
    expired = (
        session.scalar(
            select(FLRound.id).where(FLRound.state == OPEN, FLRound.deadline <= now).limit(1)
        )
        is not None
    )
    aggregating = list(
        session.scalars(select(FLRound.id).where(FLRound.state == AGGREGATING).order_by(FLRound.id))
    )
    return expired, aggregating


@dataclass(frozen=True)
class AggregationJob:
    round_id: int
    spec: packing.PackSpec
    shas: tuple[str, ...]
    weights: tuple[int, ...]
    units: tuple[str, ...]


def aggregation_job(session: Session, round_id: int) -> AggregationJob | None:
    rnd = session.get(FLRound, round_id)
    if rnd is None or rnd.state != AGGREGATING:
        return None
    project = session.get(FLProject, rnd.project_id)
    updates = list(
        session.scalars(select(FLUpdate).where(FLUpdate.round_id == rnd.id).order_by(FLUpdate.id))
    )
    return AggregationJob(
        round_id,
        spec_of(project),
        tuple(u.sha256 for u in updates),
        tuple(u.weight for u in updates),
        tuple(u.member.unit.slug for u in updates),
    )


def add_updates(job: AggregationJob, blobs: BlobStore) -> bytes:
    """The encrypted sum of a round's updates (CPU-bound: a worker thread's job)."""
    cts = [packing.ciphertexts_from_bytes(job.spec, blobs.get(sha)) for sha in job.shas]
    return packing.ciphertexts_to_bytes(job.spec, packing.add_encrypted(job.spec, cts))


def publish_aggregate(
    session: Session, job: AggregationJob, sha256: str, size: int, now: datetime | None = None
) -> FLAggregate | None:
    """Record and certify the aggregate of an ``aggregating`` round, then open the next round
    (or finish the project). Needs a write transaction; a round already published is left."""
    now = now or utcnow()
    rnd = session.get(FLRound, job.round_id)
    if rnd is None:
        return None
    # the project's row before the log's and the round's, as cancelling takes them
    # (ending.cancel): a cancel racing this publish waits for it, or this waits and finds the
    # round void, instead of a deadlock
    session.execute(select(FLProject.id).where(FLProject.id == rnd.project_id).with_for_update())
    session.refresh(rnd)
    if rnd.state != AGGREGATING:
        return None
    project = session.get(FLProject, rnd.project_id)
    aggregate = FLAggregate(
        round_id=rnd.id,
        sha256=sha256,
        size=size,
        parties=len(job.shas),
        total_weight=sum(job.weights),
        contributors=json.dumps(job.units),
        created_at=now,
    )
    session.add(aggregate)
    session.flush()
    aggregate.log_index = certlog.append(
        session,
        "fl_aggregate",
        SERVICE_ACTOR,
        project.unit.slug,
        subject=sha256,
        project=project.name,
        project_id=project.id,
        round=rnd.number,
        attempt=rnd.attempt,
        parties=aggregate.parties,
        total_weight=aggregate.total_weight,
        contributions=list(job.shas),
    )
    rnd.state = PUBLISHED
    if rnd.number < project.rounds:
        _open_round(session, project, rnd.number + 1, 1, rnd.number, sha256, now)
    else:
        project.state, project.finished_at = FINISHED, now
    session.flush()
    return aggregate


def aggregate_of(
    session: Session, caller: Caller, project: FLProject, number: int
) -> tuple[FLRound, FLAggregate]:
    require_member(session, caller, project, "reading an aggregate")
    rnd = session.scalar(
        select(FLRound)
        .where(
            FLRound.project_id == project.id, FLRound.number == number, FLRound.state == PUBLISHED
        )
        .limit(1)
    )
    if rnd is None:
        get_round(session, project, number)  # 404 for a round that does not exist
        raise NotFound(f"round {number} of project {project.name!r} has no aggregate yet", "round")
    return rnd, session.get(FLAggregate, rnd.id)


# --- metrics --------------------------------------------------------------------------------


def post_metrics(session: Session, caller: Caller, project: FLProject, body: dict) -> FLMetric:
    """A member's plaintext validation metrics for a round (0 = the initial model); posting
    again for the same round replaces them."""
    member = require_acting_member(session, caller, project, "posting metrics")
    reject_unknown(body, {"round", "metrics"})
    number = int_field(body, "round", 0, project.rounds)
    metrics = body.get("metrics")
    if not is_json_object(metrics) or not metrics:
        raise InvalidField("metrics must be a non-empty object of name: number", "metrics")
    if len(metrics) > MAX_METRICS:
        raise InvalidField(f"at most {MAX_METRICS} metrics", "metrics")
    clean = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not METRIC_NAME_RE.fullmatch(name):
            raise InvalidField(f"metric name {name[:80]!r} is not a short identifier", "metrics")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            clean[name] = None
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise InvalidField(f"metric {name!r} must be a number", f"metrics.{name}")
        clean[name] = value
    row = session.scalar(
        select(FLMetric).where(
            FLMetric.project_id == project.id,
            FLMetric.round == number,
            FLMetric.member_id == member.id,
        )
    )
    if row is None:
        row = FLMetric(project_id=project.id, round=number, member_id=member.id)
        session.add(row)
    row.submitter, row.metrics, row.created_at = caller.name, json.dumps(clean), utcnow()
    session.flush()
    return row


def metrics_json(session: Session, caller: Caller, project: FLProject) -> list[dict]:
    require_viewer(session, caller, project, "reading a project's metrics")
    rows = session.scalars(
        select(FLMetric)
        .where(FLMetric.project_id == project.id)
        .order_by(FLMetric.round, FLMetric.id)
    )
    return [
        {
            "round": r.round,
            "unit": r.member.unit.slug,
            "submitter": r.submitter,
            "metrics": json.loads(r.metrics),
            "created_at": iso(r.created_at),
        }
        for r in rows
    ]


# --- the coordinator: deadlines and aggregation ---------------------------------------------


class Coordinator:
    """Closes rounds at their deadline and aggregates closed rounds, off the event loop.

    :meth:`tick` is synchronous (run it in a worker thread); :meth:`loop` runs it every
    ``interval`` seconds or as soon as :meth:`kick` is called (an update completed a quorum).
    Rounds left ``aggregating`` by a crash are picked up again on the next tick.
    """

    def __init__(
        self,
        session_factory,
        blobs: BlobStore,
        interval: float = 1.0,
        lease_seconds: float | None = 30.0,
    ):
        self.session_factory = session_factory
        self.blobs = blobs
        self.interval = interval
        self.lease_seconds = lease_seconds
        self._wake: asyncio.Event | None = None
        self._lock = threading.Lock()

    def kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def tick(self, now: datetime | None = None) -> int:
        """One pass; returns the number of aggregates published. Only the service process
        holding the coordinator's lease works (several may share the database); the lease is
        renewed before each aggregation, so a process that dies mid-round hands the round over
        (still ``aggregating``) once its lease expires."""
        with self._lock:
            if not self._hold_lease():
                return 0
            with self.session_factory() as session:
                expired, _ = due_work(session, now)
            if expired:
                with self.session_factory() as session:
                    write_transaction(session)
                    close_expired(session, now)
                    ending.sweep_stalled(session, now)  # stalled projects fail, pools go back
                    session.commit()
            with self.session_factory() as session:
                _, pending = due_work(session, now)
            published = 0
            for round_id in pending:
                with self.session_factory() as session:
                    job = aggregation_job(session, round_id)
                if job is None or not self._hold_lease():
                    continue
                try:
                    data = add_updates(job, self.blobs)
                except Exception:  # one broken round must not hold up the others
                    log.exception("aggregating round %s failed; retrying later", round_id)
                    continue
                sha = self.blobs.put(data)
                with self.session_factory() as session:
                    write_transaction(session)
                    if publish_aggregate(session, job, sha, len(data), now) is not None:
                        published += 1
                    session.commit()
                log.info("round %s aggregated: %s updates -> %s", round_id, len(job.shas), sha[:12])
            return published

    def _hold_lease(self) -> bool:
        """Take or renew the coordinator's lease; always True without leases
        (``lease_seconds`` None: this process owns the database alone)."""
        if self.lease_seconds is None:
            return True
        with self.session_factory() as session:
            write_transaction(session)
            held = leases.acquire(
                session, leases.FL_COORDINATOR, leases.process_id(), self.lease_seconds
            )
            session.commit()
            return held

    async def loop(self) -> None:
        self._wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            try:
                await loop.run_in_executor(None, self.tick)
            except Exception:
                log.exception("federated round tick failed; retrying")
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass
