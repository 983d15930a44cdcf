"""Workshops (the paper's offline training, section 2.1): a host (an operator or a publisher)
creates a workshop with a date, a capacity and materials (a bundle of notebooks); trainees
enrol; the materials appear in their JupyterLab home; exercises are graded by the host's
checker notebook (:mod:`.grading`); trainees get a reminder before it starts.

Materials reach a trainee's home through the spawner: on enrolment the service writes them
under ``<var>/workshop_homes/<user>/<folder>/`` (:func:`write_home_materials`, off the event
loop), and at every spawn :class:`marketplace_ext.spawner.GridSpawner` installs that tree into
``~/Workshops/`` as the user's own account (:mod:`marketplace_ext.start_here`), never
overwriting what the trainee edited. A trainee whose server is running also gets them with
``Market().workshop_materials(id)`` (the same files, ``api/workshops/{id}/materials``).

Competitions live in :mod:`.competitions`.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath

import nbformat
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..auth import SCOPE_PUBLISH, SCOPE_SUBSCRIBE, Caller
from ..blobs import BlobStore
from ..errors import Conflict, Forbidden, InvalidField, NotFound
from ..ids import json_int, parse_id
from ..orm import Unit, utcnow
from . import inbox
from .grading import unzip_files, zip_files
from .workshops_orm import Competition, Enrolment, Exercise, Submission, Workshop

MAX_MATERIAL_FILES = 30
MAX_MATERIAL_BYTES = 512 * 1024  # all of them, decoded
MATERIAL_SUFFIXES = (".ipynb", ".csv", ".md", ".py", ".txt", ".json")
#: names the grading sandbox keeps for itself (a material may not shadow them)
RESERVED_NAMES = {"outputs", "inputs", ".market-run", "submission", "submission.ipynb",
                  "labels.csv", "score.ipynb", "checker.ipynb"}
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
PATH_PART_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$")
MAX_CAPACITY = 500
MAX_AHEAD = timedelta(days=366)
REMIND_BEFORE = timedelta(hours=24)
HOME_FOLDER = "Workshops"
#: under the service's var dir: materials waiting for trainees' next spawn
HOMES_DIR = "workshop_homes"


# --- parsing -----------------------------------------------------------------------------------


def _text(body: dict, name: str, limit: int, required: bool = True) -> str:
    value = body.get(name, "" if not required else None)
    if value is None or not isinstance(value, str) or (required and not value.strip()):
        raise InvalidField(f"{name} is required (text)", name)
    if len(value) > limit:
        raise InvalidField(f"{name} is longer than {limit} characters", name)
    return value.strip()


def parse_time(raw: object, name: str, now: datetime | None = None) -> datetime:
    """An RFC 3339 date-time in the future (at most a year ahead), as naive UTC."""
    now = now or utcnow()
    example = f"{name} must be a date-time such as 2027-01-31T09:00:00Z"
    if not isinstance(raw, str) or "T" not in raw.upper():
        raise InvalidField(example, name)
    try:
        parsed = datetime.fromisoformat(raw.strip().replace("z", "Z"))
    except ValueError:
        raise InvalidField(example, name) from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    if parsed <= now:
        raise InvalidField(f"{name} must be in the future", name)
    if parsed > now + MAX_AHEAD:
        raise InvalidField(f"{name} may be at most {MAX_AHEAD.days} days ahead", name)
    return parsed


def _int(body: dict, name: str, low: int, high: int, default: int | None = None) -> int:
    value = json_int(body.get(name, default))
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidField(f"{name} must be an integer from {low} to {high}", name)
    return value


def _notebook(raw: object, name: str) -> bytes:
    """A notebook sent as its JSON object (or its text); validated by nbformat."""
    try:
        text = raw if isinstance(raw, str) else json.dumps(raw)
        if not isinstance(raw, str | dict):
            raise ValueError("expected a notebook")
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except Exception as e:  # nbformat raises several kinds
        raise InvalidField(f"{name} is not a valid notebook: {str(e).splitlines()[0][:200]}",
                           name) from None
    return nbformat.writes(nb).encode()


def parse_materials(raw: object) -> dict[str, bytes]:
    """``{"path": "<base64>"}``: notebooks and small files, relative paths of at most three
    parts; at least one notebook."""
    if not isinstance(raw, dict) or not raw:
        raise InvalidField("materials must be an object of path: base64 content, with at "
                           "least one notebook", "materials")
    if len(raw) > MAX_MATERIAL_FILES:
        raise InvalidField(f"materials may hold at most {MAX_MATERIAL_FILES} files", "materials")
    found: dict[str, bytes] = {}
    total = 0
    for path, content in raw.items():
        parts = PurePosixPath(path).parts if isinstance(path, str) else ()
        if (not parts or len(parts) > 3 or not all(PATH_PART_RE.fullmatch(p) for p in parts)
                or "/".join(parts) != path or parts[0] in RESERVED_NAMES):
            raise InvalidField(f"materials: {path!r} is not an allowed relative path "
                               "(letters, digits, ' ._-', at most 3 parts)", "materials")
        if not path.lower().endswith(MATERIAL_SUFFIXES):
            raise InvalidField(f"materials: {path!r} must end with one of "
                               f"{', '.join(MATERIAL_SUFFIXES)}", "materials")
        try:
            data = base64.b64decode(content, validate=True) if isinstance(content, str) else None
        except (binascii.Error, ValueError):
            data = None
        if data is None:
            raise InvalidField(f"materials: {path!r} must be base64 text", "materials")
        if path.endswith(".ipynb"):
            data = _notebook(data.decode("utf-8", "replace"), "materials")
        total += len(data)
        found[path] = data
    if total > MAX_MATERIAL_BYTES:
        raise InvalidField(f"materials hold {total} bytes; the limit is {MAX_MATERIAL_BYTES}",
                           "materials")
    if not any(p.endswith(".ipynb") for p in found):
        raise InvalidField("materials need at least one notebook (.ipynb)", "materials")
    return found


# --- workshops ---------------------------------------------------------------------------------


def require_host_role(caller: Caller) -> None:
    if not (caller.is_operator or SCOPE_PUBLISH in caller.scopes):
        raise Forbidden(f"hosting a workshop needs the publisher or operator role; "
                        f"{caller.name} has neither")


def _unit(session: Session, slug: str | None) -> Unit | None:
    return session.scalar(select(Unit).where(Unit.slug == slug)) if slug else None


def create_workshop(session: Session, blobs: BlobStore, caller: Caller, body: dict,
                    now: datetime | None = None) -> Workshop:
    require_host_role(caller)
    host_unit = _unit(session, caller.unit)
    if host_unit is None and not caller.is_operator:
        raise Forbidden(f"{caller.name} is not a member of any unit; ask an operator", "unit")
    title = _text(body, "title", 200)
    summary = _text(body, "summary", 5000, required=False)
    starts_at = parse_time(body.get("starts_at"), "starts_at", now)
    capacity = _int(body, "capacity", 1, MAX_CAPACITY)
    materials = parse_materials(body.get("materials"))
    workshop = Workshop(title=title, summary=summary, starts_at=starts_at, capacity=capacity,
                        host=caller.name, host_unit_id=host_unit.id if host_unit else None,
                        materials_sha256=blobs.put(zip_files(materials)),
                        materials=json.dumps(sorted(materials)))
    session.add(workshop)
    session.flush()
    return workshop


def get_workshop(session: Session, workshop_id: object) -> Workshop:
    workshop = session.get(Workshop, parse_id(workshop_id, "workshop", "workshop"))
    if workshop is None:
        raise NotFound(f"no workshop {workshop_id!r}", "workshop")
    return workshop


def is_host(caller: Caller, workshop: Workshop) -> bool:
    return caller.name == workshop.host


def require_host(caller: Caller, workshop: Workshop, action: str) -> None:
    """The host, or an operator."""
    if not (is_host(caller, workshop) or caller.is_operator):
        raise Forbidden(f"{action} is for the workshop's host ({workshop.host}) and operators")


def enrolled(session: Session, workshop: Workshop, user: str) -> Enrolment | None:
    return session.scalar(select(Enrolment).where(Enrolment.workshop_id == workshop.id,
                                                  Enrolment.user_name == user))


def enrolled_count(session: Session, workshop: Workshop) -> int:
    return session.scalar(select(func.count()).select_from(Enrolment)
                          .where(Enrolment.workshop_id == workshop.id))


def list_workshops(session: Session, limit: int = 50, offset: int = 0,
                   ) -> tuple[list[Workshop], int]:
    """Workshops, the next to start first (past ones after them, most recent first)."""
    total = session.scalar(select(func.count()).select_from(Workshop))
    now = utcnow()
    rows = session.scalars(select(Workshop)).all()
    upcoming = sorted((w for w in rows if w.starts_at >= now), key=lambda w: w.starts_at)
    past = sorted((w for w in rows if w.starts_at < now), key=lambda w: w.starts_at,
                  reverse=True)
    ordered = upcoming + past
    return ordered[offset:offset + limit], total


def enrol(session: Session, caller: Caller, workshop: Workshop) -> Enrolment:
    """Enrol the caller; 409 naming ``capacity`` when the workshop is full, ``workshop`` when
    the caller is enrolled already or hosts it. The capacity check holds under concurrent
    enrolments: the caller's write transaction is serialized (SQLite) or the workshop row is
    locked (PostgreSQL)."""
    caller.require(SCOPE_SUBSCRIBE, "enrolling in a workshop")
    unit = _unit(session, caller.unit)
    if unit is None:
        raise Forbidden(f"{caller.name} is not a member of any unit; ask an operator", "unit")
    session.execute(select(Workshop.id).where(Workshop.id == workshop.id).with_for_update())
    if is_host(caller, workshop):
        raise Conflict("the host does not enrol in their own workshop", "workshop")
    if enrolled(session, workshop, caller.name) is not None:
        raise Conflict(f"{caller.name} is enrolled in this workshop already", "workshop")
    if workshop.starts_at <= utcnow() - timedelta(days=1):
        raise Conflict("this workshop is over", "workshop")
    taken = enrolled_count(session, workshop)
    if taken >= workshop.capacity:
        raise Conflict(f"the workshop is full ({taken} of {workshop.capacity} places taken)",
                       "capacity")
    enrolment = Enrolment(workshop_id=workshop.id, user_name=caller.name, unit_id=unit.id)
    session.add(enrolment)
    try:
        session.flush()
    except IntegrityError:  # the same user twice at once
        raise Conflict(f"{caller.name} is enrolled in this workshop already",
                       "workshop") from None
    return enrolment


def require_participant(session: Session, caller: Caller, workshop: Workshop,
                        action: str) -> None:
    """Enrolled trainees, the host and operators."""
    if not (is_host(caller, workshop) or caller.is_operator
            or enrolled(session, workshop, caller.name) is not None):
        raise Forbidden(f"{action} is for the workshop's trainees (enrol first)", "workshop")


def materials(blobs: BlobStore, workshop: Workshop) -> dict[str, bytes]:
    return unzip_files(blobs.get(workshop.materials_sha256))


def home_folder(workshop: Workshop) -> str:
    """The folder under ``~/Workshops`` holding this workshop's materials."""
    words = re.sub(r"[^A-Za-z0-9]+", "-", workshop.title).strip("-")[:60] or "workshop"
    return f"{workshop.id}-{words}"


def lab_path(workshop: Workshop) -> str:
    return f"{HOME_FOLDER}/{home_folder(workshop)}"


USER_DIR_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,254}$")


def write_home_materials(root: Path, user: str, folder: str, files: dict[str, bytes]) -> None:
    """Blocking: stage ``files`` under ``root/<user>/<folder>/`` (the platform's, 0700) for
    the spawner to install at the user's next spawn."""
    if not USER_DIR_RE.fullmatch(user):
        return  # such a name gets the materials through the client only
    target = Path(root) / user / folder
    root_path = Path(root)
    root_path.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = target.with_name(f".{folder}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for rel, data in files.items():
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(mode=0o700, exist_ok=True)
    os.replace(tmp, target)


def read_home_materials(root: Path, user: str) -> dict[str, bytes]:
    """What :func:`write_home_materials` staged for ``user``: ``{"<folder>/<path>": bytes}``
    (links and other non-files skipped)."""
    if not USER_DIR_RE.fullmatch(user):
        return {}
    base = Path(root) / user
    if not base.is_dir() or base.is_symlink():
        return {}
    found: dict[str, bytes] = {}
    for path in sorted(base.rglob("*")):
        rel = path.relative_to(base)
        if rel.parts[0].startswith(".") or path.is_symlink() or not path.is_file():
            continue
        found[rel.as_posix()] = path.read_bytes()
    return found


# --- exercises ---------------------------------------------------------------------------------


def add_exercise(session: Session, blobs: BlobStore, caller: Caller, workshop: Workshop,
                 body: dict) -> Exercise:
    require_host(caller, workshop, "adding an exercise")
    name = body.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidField("name must be 1-64 lowercase letters, digits and '-'", "name")
    title = _text(body, "title", 200)
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict) or len(json.dumps(parameters)) > 10_000:
        raise InvalidField("parameters must be an object (at most 10 kB as JSON)",
                           "parameters")
    if not all(isinstance(k, str) and k.isidentifier() for k in parameters):
        raise InvalidField("parameters' names must be Python identifiers", "parameters")
    outputs = body.get("outputs", ["answer.json"])
    if (not isinstance(outputs, list) or not 1 <= len(outputs) <= 5 or not all(
            isinstance(o, str) and PATH_PART_RE.fullmatch(o) for o in outputs)):
        raise InvalidField("outputs must list 1-5 file names the notebook writes under "
                           "outputs/", "outputs")
    checker = _notebook(body.get("checker"), "checker")
    if session.scalar(select(Exercise.id).where(Exercise.workshop_id == workshop.id,
                                                Exercise.name == name)) is not None:
        raise Conflict(f"the workshop has an exercise {name!r} already", "name")
    exercise = Exercise(workshop_id=workshop.id, name=name, title=title,
                        parameters=json.dumps(parameters), outputs=json.dumps(outputs),
                        checker_sha256=blobs.put(checker))
    session.add(exercise)
    session.flush()
    return exercise


def get_exercise(session: Session, workshop: Workshop, name: str) -> Exercise:
    exercise = session.scalar(select(Exercise).where(Exercise.workshop_id == workshop.id,
                                                     Exercise.name == name))
    if exercise is None:
        raise NotFound(f"workshop {workshop.id} has no exercise {name!r}", "exercise")
    return exercise


def _submission(session: Session, blobs: BlobStore, caller: Caller, workshop: Workshop,
                body: dict, **target) -> Submission:
    if enrolled(session, workshop, caller.name) is None:
        raise Forbidden("only the workshop's enrolled trainees submit (enrol first)",
                        "workshop")
    notebook = _notebook(body.get("notebook"), "notebook")
    unit = _unit(session, caller.unit)
    if unit is None:
        raise Forbidden(f"{caller.name} is not a member of any unit; ask an operator", "unit")
    sub = Submission(workshop_id=workshop.id, user_name=caller.name, unit_id=unit.id,
                     notebook_sha256=blobs.put(notebook), status="grading", **target)
    session.add(sub)
    session.flush()
    return sub


def submit_exercise(session: Session, blobs: BlobStore, caller: Caller, workshop: Workshop,
                    exercise_name: str, body: dict) -> Submission:
    """Queue the caller's notebook for grading; the caller commits, then hands the id to the
    grader."""
    exercise = get_exercise(session, workshop, exercise_name)
    return _submission(session, blobs, caller, workshop, body, exercise_id=exercise.id)


def get_submission(session: Session, caller: Caller, workshop: Workshop,
                   submission_id: object) -> Submission:
    sub = session.get(Submission, parse_id(submission_id, "submission", "submission"))
    if (sub is None or sub.workshop_id != workshop.id
            or not (sub.user_name == caller.name or is_host(caller, workshop)
                    or caller.is_operator)):
        raise NotFound(f"no submission {submission_id!r}", "submission")
    return sub


def list_submissions(session: Session, caller: Caller, workshop: Workshop) -> list[Submission]:
    """The caller's own submissions; the host's and operators' see everyone's."""
    query = select(Submission).where(Submission.workshop_id == workshop.id)
    if not (is_host(caller, workshop) or caller.is_operator):
        query = query.where(Submission.user_name == caller.name)
    return list(session.scalars(query.order_by(Submission.id.desc()).limit(200)))


def submission_json(session: Session, sub: Submission, reveal_private: bool) -> dict:
    exercise = session.get(Exercise, sub.exercise_id) if sub.exercise_id else None
    competition = session.get(Competition, sub.competition_id) if sub.competition_id else None
    return {
        "id": sub.id, "workshop": sub.workshop_id, "user": sub.user_name,
        "exercise": exercise.name if exercise else None,
        "competition": competition.name if competition else None,
        "status": sub.status, "passed": sub.passed, "feedback": sub.feedback,
        "public_score": sub.public_score,
        "private_score": sub.private_score if reveal_private else None,
        "created_at": sub.created_at.isoformat() + "Z",
        "graded_at": sub.graded_at.isoformat() + "Z" if sub.graded_at else None,
    }


# --- views -------------------------------------------------------------------------------------


def workshop_json(session: Session, caller: Caller, workshop: Workshop,
                  detail: bool = False) -> dict:
    unit = session.get(Unit, workshop.host_unit_id) if workshop.host_unit_id else None
    taken = enrolled_count(session, workshop)
    data = {
        "id": workshop.id, "title": workshop.title, "summary": workshop.summary,
        "starts_at": workshop.starts_at.isoformat() + "Z", "capacity": workshop.capacity,
        "enrolled": taken, "places_left": max(0, workshop.capacity - taken),
        "host": workshop.host, "host_unit": unit.slug if unit else None,
        "materials": json.loads(workshop.materials),
        "you_are_enrolled": enrolled(session, workshop, caller.name) is not None,
        "you_host": is_host(caller, workshop),
        "lab_path": lab_path(workshop),
    }
    if detail:
        data["exercises"] = [
            {"name": e.name, "title": e.title, "parameters": json.loads(e.parameters),
             "outputs": json.loads(e.outputs)}
            for e in session.scalars(select(Exercise).where(Exercise.workshop_id == workshop.id)
                                     .order_by(Exercise.id))]
        data["competitions"] = [
            {"name": c.name, "title": c.title, "metric": c.metric,
             "deadline": c.deadline.isoformat() + "Z", "public_percent": c.public_percent}
            for c in session.scalars(select(Competition)
                                     .where(Competition.workshop_id == workshop.id)
                                     .order_by(Competition.id))]
        if is_host(caller, workshop) or caller.is_operator:
            data["trainees"] = list(session.scalars(
                select(Enrolment.user_name).where(Enrolment.workshop_id == workshop.id)
                .order_by(Enrolment.id)))
    return data


# --- reminders ---------------------------------------------------------------------------------


def send_reminders(session: Session, now: datetime | None = None,
                   before: timedelta = REMIND_BEFORE) -> int:
    """Notify every trainee of a workshop starting within ``before`` who has not been reminded
    yet (once each); returns how many were notified. The caller commits."""
    now = now or utcnow()
    due = session.execute(
        select(Enrolment, Workshop).join(Workshop, Workshop.id == Enrolment.workshop_id)
        .where(Enrolment.reminded_at.is_(None), Workshop.starts_at > now,
               Workshop.starts_at <= now + before)
        .order_by(Enrolment.id)).all()
    for enrolment, workshop in due:
        when = workshop.starts_at.strftime("%Y-%m-%d %H:%M UTC")
        inbox.notify(session, [enrolment.user_name], "workshop_reminder",
                     f"Workshop \u201c{workshop.title}\u201d starts {when}",
                     link=f"workshops/{workshop.id}",
                     body=f"The materials are in your JupyterLab home under "
                          f"{lab_path(workshop)}.")
        enrolment.reminded_at = now
    session.flush()
    return len(due)


async def reminder_loop(session_factory, interval: float = 60.0) -> None:
    """Send due workshop reminders every ``interval`` seconds (the service's periodic task)."""
    import asyncio
    import logging

    def once() -> int:
        from ..orm import write_transaction

        with session_factory() as session:
            write_transaction(session)
            sent = send_reminders(session)
            session.commit()
            return sent

    loop = asyncio.get_running_loop()
    while True:
        try:
            await loop.run_in_executor(None, once)
        except Exception:
            logging.getLogger(__name__).exception("workshop reminders failed; retrying")
        await asyncio.sleep(interval)
