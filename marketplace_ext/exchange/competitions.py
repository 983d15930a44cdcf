"""Competitions inside a workshop, in the manner of Kaggle's: a task whose labels stay on the
host's side of the platform.

- The host uploads the labels (CSV ``id,label``, extra columns ignored); the features trainees
  predict from are ordinary workshop materials.
- Trainees submit prediction notebooks that write ``outputs/predictions.csv`` (``id,
  prediction``); :mod:`.grading` runs them in the sandbox without the labels, then scores the
  predictions in a second sandbox that has them.
- A row belongs to the public split when HMAC-SHA256(split key, id) falls under
  ``public_percent``; the key is random per competition and never leaves the service, so the
  public score tells nothing about which rows decide the private one.
- The public leaderboard ranks each trainee's best public score at any time; the private
  ranking (the final one) ranks the same submissions by their private score, shown to
  trainees once the deadline has passed.
- After the deadline the host (or an operator) may award points to winners: from the host's
  unit account (an operator host: the operator account) to the winner's unit, certified.
"""

from __future__ import annotations

import csv
import io
import secrets
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import certlog, points
from ..auth import Caller
from ..blobs import BlobStore
from ..errors import Conflict, InvalidField, NotFound
from ..ids import json_int
from ..orm import Unit, utcnow
from .workshops import (
    NAME_RE,
    _submission,
    _text,
    is_host,
    parse_time,
    require_host,
)
from .workshops_orm import Award, Competition, Enrolment, Submission, Workshop

METRICS = {"accuracy": True, "mae": False}  # metric -> higher is better
MAX_LABEL_BYTES = 512 * 1024
MAX_AWARD_POINTS = 1000


def parse_labels(raw: object) -> bytes:
    """The host's labels as CSV text with the columns ``id`` and ``label`` and unique ids."""
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidField("labels must be CSV text with the columns id and label", "labels")
    data = raw.encode("utf-8")
    if len(data) > MAX_LABEL_BYTES:
        raise InvalidField(f"labels are {len(data)} bytes; the limit is {MAX_LABEL_BYTES}",
                           "labels")
    try:
        rows = list(csv.DictReader(io.StringIO(raw)))
    except csv.Error as e:
        raise InvalidField(f"labels are not valid CSV: {e}", "labels") from None
    if not rows or "id" not in rows[0] or "label" not in rows[0]:
        raise InvalidField("labels need a header with the columns id and label, and rows",
                           "labels")
    ids = [str(r["id"]).strip() for r in rows]
    if len(set(ids)) != len(ids) or not all(ids):
        raise InvalidField("labels: every row needs an id, and ids must be unique", "labels")
    if len(ids) < 2:
        raise InvalidField("labels need at least two rows (a public and a private split)",
                           "labels")
    return data


def create_competition(session: Session, blobs: BlobStore, caller: Caller,
                       workshop: Workshop, body: dict, now: datetime | None = None
                       ) -> Competition:
    require_host(caller, workshop, "adding a competition")
    name = body.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidField("name must be 1-64 lowercase letters, digits and '-'", "name")
    title = _text(body, "title", 200)
    metric = body.get("metric", "accuracy")
    if metric not in METRICS:
        raise InvalidField(f"metric must be one of {', '.join(METRICS)}", "metric")
    deadline = parse_time(body.get("deadline"), "deadline", now)
    percent = json_int(body.get("public_percent", 50))
    if not isinstance(percent, int) or isinstance(percent, bool) or not 1 <= percent <= 99:
        raise InvalidField("public_percent must be an integer from 1 to 99", "public_percent")
    labels = parse_labels(body.get("labels"))
    if session.scalar(select(Competition.id).where(Competition.workshop_id == workshop.id,
                                                   Competition.name == name)) is not None:
        raise Conflict(f"the workshop has a competition {name!r} already", "name")
    competition = Competition(workshop_id=workshop.id, name=name, title=title, metric=metric,
                              deadline=deadline, public_percent=percent,
                              labels_sha256=blobs.put(labels),
                              split_key=secrets.token_hex(32))
    session.add(competition)
    session.flush()
    return competition


def get_competition(session: Session, workshop: Workshop, name: str) -> Competition:
    competition = session.scalar(select(Competition).where(
        Competition.workshop_id == workshop.id, Competition.name == name))
    if competition is None:
        raise NotFound(f"workshop {workshop.id} has no competition {name!r}", "competition")
    return competition


def submit(session: Session, blobs: BlobStore, caller: Caller, workshop: Workshop,
           name: str, body: dict, now: datetime | None = None) -> Submission:
    """Queue a prediction notebook; 409 naming ``deadline`` once the deadline has passed."""
    competition = get_competition(session, workshop, name)
    if (now or utcnow()) >= competition.deadline:
        raise Conflict(f"the competition closed at {competition.deadline.isoformat()}Z",
                       "deadline")
    return _submission(session, blobs, caller, workshop, body, competition_id=competition.id)


def closed(competition: Competition, now: datetime | None = None) -> bool:
    return (now or utcnow()) >= competition.deadline


def private_visible(caller: Caller, workshop: Workshop, competition: Competition,
                    now: datetime | None = None) -> bool:
    """The private scores: the host and operators at any time, everyone after the deadline."""
    return closed(competition, now) or is_host(caller, workshop) or caller.is_operator


def _best(session: Session, competition: Competition) -> list[Submission]:
    """Each trainee's best public submission (earliest among equals), best first."""
    higher = METRICS[competition.metric]
    subs = session.scalars(select(Submission).where(
        Submission.competition_id == competition.id, Submission.status == "scored",
        Submission.public_score.is_not(None)).order_by(Submission.id)).all()
    best: dict[str, Submission] = {}
    for sub in subs:
        current = best.get(sub.user_name)
        if current is None or (sub.public_score > current.public_score if higher
                               else sub.public_score < current.public_score):
            best[sub.user_name] = sub
    return sorted(best.values(), key=lambda s: ((-s.public_score if higher else s.public_score),
                                                s.id))


def leaderboard(session: Session, caller: Caller, workshop: Workshop,
                competition: Competition, now: datetime | None = None) -> dict:
    """The public leaderboard, and the private (final) ranking when the caller may see it."""
    higher = METRICS[competition.metric]
    chosen = _best(session, competition)
    counts: dict[str, int] = {}
    for (user,) in session.execute(select(Submission.user_name).where(
            Submission.competition_id == competition.id)):
        counts[user] = counts.get(user, 0) + 1
    public = [{"rank": i, "user": s.user_name, "score": s.public_score, "submission": s.id,
               "submissions": counts.get(s.user_name, 0)}
              for i, s in enumerate(chosen, start=1)]
    result = {"competition": competition.name, "title": competition.title,
              "metric": competition.metric, "higher_is_better": higher,
              "deadline": competition.deadline.isoformat() + "Z",
              "closed": closed(competition, now), "public": public, "private": None}
    if private_visible(caller, workshop, competition, now):
        scored = [s for s in chosen if s.private_score is not None]
        scored.sort(key=lambda s: ((-s.private_score if higher else s.private_score), s.id))
        result["private"] = [{"rank": i, "user": s.user_name, "score": s.private_score,
                              "submission": s.id} for i, s in enumerate(scored, start=1)]
    awards = session.scalars(select(Award).where(Award.competition_id == competition.id)
                             .order_by(Award.id)).all()
    result["awards"] = [{"user": a.user_name, "points": points.format_points(a.amount),
                         "log_index": a.log_index} for a in awards]
    return result


def award(session: Session, caller: Caller, workshop: Workshop, competition: Competition,
          body: dict, now: datetime | None = None) -> Award:
    """Pay ``points`` (whole points) to ``user``, a trainee with a scored submission, once the
    competition is closed; from the host's unit account, or the operator account for an
    operator host. Certified; the caller commits."""
    require_host(caller, workshop, "awarding points")
    if not closed(competition, now):
        raise Conflict("awards are paid once the competition's deadline has passed",
                       "deadline")
    user = body.get("user")
    if not isinstance(user, str) or not user:
        raise InvalidField("user is required: the winner's user name", "user")
    amount = json_int(body.get("points"))
    if (not isinstance(amount, int) or isinstance(amount, bool)
            or not 1 <= amount <= MAX_AWARD_POINTS):
        raise InvalidField(f"points must be an integer from 1 to {MAX_AWARD_POINTS}", "points")
    if session.scalar(select(Submission.id).where(
            Submission.competition_id == competition.id, Submission.user_name == user,
            Submission.status == "scored").limit(1)) is None:
        raise InvalidField(f"{user!r} has no scored submission in this competition", "user")
    if session.scalar(select(Award.id).where(Award.competition_id == competition.id,
                                             Award.user_name == user)) is not None:
        raise Conflict(f"{user} has been awarded in this competition already", "user")
    enrolment = session.scalar(select(Enrolment).where(Enrolment.workshop_id == workshop.id,
                                                       Enrolment.user_name == user))
    payee = session.get(Unit, enrolment.unit_id)
    if workshop.host_unit_id is not None:
        host_unit = session.get(Unit, workshop.host_unit_id)
        payer = points.unit_account(session, host_unit)
    else:
        host_unit, payer = None, points.operator_account(session)
    if host_unit is not None and host_unit.id == payee.id:
        raise Conflict(f"{user} is in the host's own unit {payee.slug!r}: an award would not "
                       "move any point", "user")
    cents = amount * points.CENTS
    transfer = points.award(session, payer, payee, cents, caller.name,
                            memo=f"award: competition {competition.name} of workshop "
                                 f"{workshop.id} to {user}")
    prize = Award(competition_id=competition.id, user_name=user, unit_id=payee.id,
                  amount=cents, transfer_id=transfer.id, actor=caller.name)
    session.add(prize)
    session.flush()
    prize.log_index = certlog.append(
        session, "workshop_award", caller.name, host_unit.slug if host_unit else None,
        f"transfer:{transfer.id}", party_units=[payee.slug], transfer=transfer.id,
        workshop=workshop.id, competition=competition.name, winner=user,
        winner_unit=payee.slug, amount=points.format_points(cents),
        payer="operator" if host_unit is None else f"unit:{host_unit.slug}")
    session.flush()
    return prize
