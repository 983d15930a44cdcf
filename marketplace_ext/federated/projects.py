"""Federated projects and their rounds: the service's side of the protocol.

The service coordinates and adds; it never decrypts. An initiator (a publisher of a unit) opens
a project with a model bundle, a schedule and the *public* half of a Paillier key its own client
generated. Partner units join with an X25519 public key; a member's client that holds the
Paillier private key wraps it for each member awaiting one (:func:`post_wrapped_key`), so the
service only ever stores wrapped keys.

A round (one *attempt* of it, see below) is ``open`` until

* its **quorum** of updates has arrived, or every active member has sent one (when at least
  ``min_updates`` did): it closes at once; or
* its **deadline** passes: with at least ``min_updates`` updates it closes with what arrived;
  with fewer it is **void** and a new attempt of the same round opens on the same global model
  (the next deadline counted from then). ``min_updates`` is never below 2, so an aggregate is
  never one party's update in disguise.

A closed round is ``aggregating`` until :class:`Coordinator` has multiplied its ciphertexts
(:func:`packing.add_encrypted`, in a worker thread) and ``published`` the result; publishing
opens the next round, or finishes the project after the last one. An update is refused (4xx,
nothing recorded) when it comes from a non-member, for a round that is not open, after the
deadline, a second time from the same unit, with a stale key fingerprint, of the wrong size, or
holding a ciphertext outside ``0 < c < n^2`` (checked before it is stored, so it can never spoil
a sum). Every accepted update and every aggregate is certified in the transparency log in the
transaction that records it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import json
import logging
import math
import re
import threading
import zipfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .. import certlog
from ..auth import SCOPE_PUBLISH, Caller
from ..blobs import BlobStore
from ..errors import Conflict, Forbidden, InvalidField, NotFound
from ..ids import parse_id
from ..orm import Unit, utcnow, write_transaction
from . import keys, packing
from .orm import FLAggregate, FLMember, FLMetric, FLProject, FLRound, FLUpdate

log = logging.getLogger(__name__)

KEY_SIZES: tuple[int, ...] = (2048, 3072)
DEFAULT_KEY_SIZE = 2048
# an aggregate of one update would be that update: never publish fewer than two
MIN_UPDATES_FLOOR = 2
MAX_ROUNDS = 1000
MAX_DEADLINE_SECONDS = 7 * 24 * 3600
MAX_PARTIES = 1000
MAX_MODEL_BYTES = 700_000  # the base64 of it must fit a 1 MiB JSON body
MAX_MODEL_UNPACKED = 8 * 2**20
MAX_WRAPPED_KEY_BYTES = 16_384
MAX_METRICS = 32
MODEL_FILES = ("model.json", "weights.pt")
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{2,63}$")
METRIC_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
FINGERPRINT_RE = re.compile(r"^[0-9a-f]{16,128}$")

ENROLLING, RUNNING, FINISHED = "enrolling", "running", "finished"
OPEN, AGGREGATING, PUBLISHED, VOID = "open", "aggregating", "published", "void"
INITIATOR, PARTNER = "initiator", "partner"
SERVICE_ACTOR = "marketplace"


# --- small parsers --------------------------------------------------------------------------


def _int(body: dict, name: str, low: int, high: int, default: int | None = None,
         field: str | None = None) -> int:
    field = field or name
    value = body.get(name, default)
    if value is None:
        raise InvalidField(f"{name} is required", field)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidField(f"{name} must be an integer", field)
    if not low <= value <= high:
        raise InvalidField(f"{name} must be between {low} and {high}", field)
    return value


def _number(body: dict, name: str, low: float, high: float, default: float | None = None,
            field: str | None = None, low_open: bool = True) -> float:
    field = field or name
    value = body.get(name, default)
    if value is None:
        raise InvalidField(f"{name} is required", field)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidField(f"{name} must be a number", field)
    if (value <= low if low_open else value < low) or value > high:
        bracket = "(" if low_open else "["
        raise InvalidField(f"{name} must be in {bracket}{low}, {high}]", field)
    return float(value)


def _text(body: dict, name: str, max_len: int, default: str | None = None) -> str:
    value = body.get(name, default)
    if not isinstance(value, str) or not value.strip():
        raise InvalidField(f"{name} is required: a non-empty string", name)
    if len(value) > max_len:
        raise InvalidField(f"{name} is longer than {max_len} characters", name)
    return value.strip()


def parse_query_int(raw: str | None, name: str, low: int, high: int) -> int:
    """An integer query argument or path segment, or a 400 naming it."""
    if raw is None:
        raise InvalidField(f"{name} is required", name)
    try:
        value = int(raw)
    except ValueError:
        raise InvalidField(f"{name} must be an integer", name) from None
    if not low <= value <= high:
        raise InvalidField(f"{name} must be between {low} and {high}", name)
    return value


def parse_x25519_key(value: object, field: str = "x25519_public_key") -> str:
    """A member's X25519 public key, as the canonical base64 of its 32 bytes."""
    if not isinstance(value, str):
        raise InvalidField(f"{field} must be the base64 of a 32-byte X25519 public key", field)
    try:
        raw = keys.decode_public(value)
    except (ValueError, TypeError, binascii.Error) as e:
        raise InvalidField(f"{field} is not an X25519 public key: {e}", field) from None
    return keys.encode_public(raw)


def _is_json_object(value: object) -> bool:
    return isinstance(value, dict)


# --- creating a project ---------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectRequest:
    """A validated request to open a project (see :func:`parse_project_request`)."""

    name: str
    title: str
    task: str
    rounds: int
    quorum: int
    min_updates: int
    deadline_seconds: int
    key_size: int
    public_key_json: dict
    key_fingerprint: str
    spec: packing.PackSpec
    dp: dict | None
    model_zip: bytes
    model_meta: dict
    x25519_public_key: str | None


def _model_bundle(body: dict) -> tuple[bytes, dict]:
    raw = body.get("model")
    if not isinstance(raw, str):
        raise InvalidField("model is required: the base64 of the model bundle (a zip of "
                           "model.json and weights.pt)", "model")
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidField("model is not valid base64", "model") from None
    if len(data) > MAX_MODEL_BYTES:
        raise InvalidField(f"model is {len(data)} bytes; the limit is {MAX_MODEL_BYTES}", "model")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            names = sorted(i.filename for i in infos)
            if names != sorted(MODEL_FILES):
                raise InvalidField(f"model must hold exactly {', '.join(MODEL_FILES)}; it holds "
                                   f"{', '.join(names) or 'nothing'}", "model")
            if sum(i.file_size for i in infos) > MAX_MODEL_UNPACKED:
                raise InvalidField("model unpacks to more than "
                                   f"{MAX_MODEL_UNPACKED} bytes", "model")
            meta_raw = zf.read("model.json")
            weights = zf.read("weights.pt")
    except (zipfile.BadZipFile, KeyError, EOFError, zipfile.LargeZipFile) as e:
        raise InvalidField(f"model is not a readable zip: {e}", "model") from None
    try:
        meta = json.loads(meta_raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidField("model.json in model is not valid JSON", "model") from None
    if not _is_json_object(meta) or not _is_json_object(meta.get("spec")):
        raise InvalidField("model.json must be an object with a spec", "model")
    params = meta.get("parameters")
    if isinstance(params, bool) or not isinstance(params, int) or params < 1:
        raise InvalidField("model.json must give the parameter count as a positive integer",
                           "model")
    if meta.get("weights_sha256") != hashlib.sha256(weights).hexdigest():
        raise InvalidField("weights.pt does not match the weights_sha256 of model.json",
                           "model")
    return data, meta


def _public_key(body: dict, key_size: int) -> tuple[dict, Any, str]:
    raw = body.get("public_key")
    if not _is_json_object(raw):
        raise InvalidField("public_key is required: the project's Paillier public key as "
                           '{"n": "<decimal>"}', "public_key")
    try:
        pk = keys.public_key_from_json(raw)
    except (ValueError, TypeError, KeyError) as e:
        raise InvalidField(f"public_key is not a Paillier public key: {e}", "public_key") from None
    if int(pk.n).bit_length() != key_size:
        raise InvalidField(f"public_key has a {int(pk.n).bit_length()}-bit modulus; key_size "
                           f"says {key_size}", "public_key")
    return keys.public_key_to_json(pk), pk, keys.key_fingerprint(pk)


def _dp(body: dict) -> dict | None:
    raw = body.get("dp")
    if raw is None:
        return None
    if not _is_json_object(raw):
        raise InvalidField("dp must be an object {clip_norm, noise_multiplier, delta} or null",
                           "dp")
    unknown = sorted(set(raw) - {"clip_norm", "noise_multiplier", "delta"})
    if unknown:
        raise InvalidField(f"dp has unknown field(s) {unknown}", f"dp.{unknown[0]}")
    return {
        "clip_norm": _number(raw, "clip_norm", 0.0, 1e6, field="dp.clip_norm"),
        "noise_multiplier": _number(raw, "noise_multiplier", 0.0, 100.0,
                                    field="dp.noise_multiplier", low_open=False),
        "delta": _number(raw, "delta", 0.0, 0.5, default=1e-5, field="dp.delta"),
    }


def parse_project_request(body: dict) -> ProjectRequest:
    """Check a request to open a project; every problem is a 400 naming its field. CPU-light
    except the zip check of the model, which is bounded by :data:`MAX_MODEL_BYTES`."""
    name = body.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidField("name must be 3-64 characters: lower-case letters, digits and '-', "
                           "starting with a letter", "name")
    title = _text(body, "title", 200, default=name)
    task = _text(body, "task", 2000, default="binary classification")
    rounds = _int(body, "rounds", 1, MAX_ROUNDS)
    key_size = body.get("key_size", DEFAULT_KEY_SIZE)
    if key_size not in KEY_SIZES or isinstance(key_size, bool):
        raise InvalidField(f"key_size must be one of {', '.join(map(str, KEY_SIZES))}",
                           "key_size")
    deadline = _int(body, "deadline_seconds", 1, MAX_DEADLINE_SECONDS)
    pack = body.get("pack", {})
    if not _is_json_object(pack):
        raise InvalidField("pack must be an object {bits, clip, max_parties, max_weight}", "pack")
    unknown = sorted(set(pack) - {"bits", "clip", "max_parties", "max_weight"})
    if unknown:
        raise InvalidField(f"pack has unknown field(s) {unknown}", f"pack.{unknown[0]}")
    max_parties = _int(pack, "max_parties", MIN_UPDATES_FLOOR, MAX_PARTIES, default=10,
                       field="pack.max_parties")
    quorum = _int(body, "quorum", MIN_UPDATES_FLOOR, max_parties)
    min_updates = _int(body, "min_updates", MIN_UPDATES_FLOOR, quorum, default=MIN_UPDATES_FLOOR)
    bits = _int(pack, "bits", 2, 32, default=16, field="pack.bits")
    clip = _number(pack, "clip", 0.0, 1e6, default=1.0, field="pack.clip")
    max_weight = _int(pack, "max_weight", 1, 2**40, default=100_000, field="pack.max_weight")
    public_key_json, pk, fingerprint = _public_key(body, key_size)
    model_zip, model_meta = _model_bundle(body)
    try:
        spec = packing.PackSpec.create(int(pk.n), model_meta["parameters"], bits=bits, clip=clip,
                                       max_parties=max_parties, max_weight=max_weight)
    except packing.PackingError as e:
        raise InvalidField(f"pack: {e}", "pack") from None
    x25519 = body.get("x25519_public_key")
    return ProjectRequest(
        name=name, title=title, task=task, rounds=rounds, quorum=quorum, min_updates=min_updates,
        deadline_seconds=deadline, key_size=key_size, public_key_json=public_key_json,
        key_fingerprint=fingerprint, spec=spec, dp=_dp(body), model_zip=model_zip,
        model_meta=model_meta,
        x25519_public_key=parse_x25519_key(x25519) if x25519 is not None else None,
    )


def _caller_unit(session: Session, caller: Caller, action: str) -> Unit:
    caller.require(SCOPE_PUBLISH, action)
    if caller.unit is None:
        raise Forbidden(f"{action} is done on behalf of a unit; {caller.name} is in none", "unit")
    unit = session.scalar(select(Unit).where(Unit.slug == caller.unit))
    if unit is None:
        raise Forbidden(f"{caller.name}'s unit {caller.unit!r} no longer exists", "unit")
    return unit


def create_project(session: Session, caller: Caller, req: ProjectRequest,
                   blobs: BlobStore) -> FLProject:
    """Open a project for the caller's unit (publishers only); the caller's unit is its first
    member. The caller's session must be a write transaction; the caller commits."""
    unit = _caller_unit(session, caller, "opening a federated project")
    if session.scalar(select(FLProject.id).where(FLProject.name == req.name)) is not None:
        raise Conflict(f"a federated project named {req.name!r} exists already", "name")
    sha = blobs.put(req.model_zip)
    now = utcnow()
    project = FLProject(
        name=req.name, title=req.title, task=req.task, unit_id=unit.id, initiator=caller.name,
        state=ENROLLING, rounds=req.rounds, quorum=req.quorum, min_updates=req.min_updates,
        deadline_seconds=req.deadline_seconds, key_size=req.key_size,
        public_key=json.dumps(req.public_key_json), key_fingerprint=req.key_fingerprint,
        pack_spec=json.dumps(req.spec.to_json()), dp=json.dumps(req.dp) if req.dp else None,
        model_sha256=sha, model_spec=json.dumps(req.model_meta, sort_keys=True),
        current_round=0, created_at=now,
    )
    session.add(project)
    session.flush()
    session.add(FLMember(
        project_id=project.id, unit_id=unit.id, role=INITIATOR, joined_by=caller.name,
        joined_at=now, public_key=req.x25519_public_key,
        key_registered_by=caller.name if req.x25519_public_key else None,
        key_registered_at=now if req.x25519_public_key else None,
    ))
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"a federated project named {req.name!r} exists already",
                       "name") from None
    return project


# --- reading --------------------------------------------------------------------------------


def get_project(session: Session, ident: str | int) -> FLProject:
    project = session.get(FLProject, parse_id(ident, "federated project", "project"))
    if project is None:
        raise NotFound(f"no federated project {ident!r}", "project")
    return project


def spec_of(project: FLProject) -> packing.PackSpec:
    return packing.PackSpec.from_json(json.loads(project.pack_spec))


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() + "Z" if at else None


def member_of(session: Session, project: FLProject, unit_slug: str | None,
              active: bool = True) -> FLMember | None:
    if unit_slug is None:
        return None
    query = (select(FLMember).join(Unit, Unit.id == FLMember.unit_id)
             .where(FLMember.project_id == project.id, Unit.slug == unit_slug))
    member = session.scalar(query)
    if member is None or (active and member.left_at is not None):
        return None
    return member


def require_member(session: Session, caller: Caller, project: FLProject,
                   action: str) -> FLMember:
    member = member_of(session, project, caller.unit)
    if member is None:
        raise Forbidden(f"{action} is limited to the units taking part in project "
                        f"{project.name!r}", "unit")
    return member


def _require_acting_member(session: Session, caller: Caller, project: FLProject,
                           action: str) -> FLMember:
    caller.require(SCOPE_PUBLISH, action)
    return require_member(session, caller, project, action)


def active_members(session: Session, project: FLProject) -> list[FLMember]:
    return list(session.scalars(select(FLMember).where(
        FLMember.project_id == project.id, FLMember.left_at.is_(None)).order_by(FLMember.id)))


def member_json(member: FLMember) -> dict:
    return {
        "unit": member.unit.slug, "role": member.role, "joined_by": member.joined_by,
        "joined_at": _iso(member.joined_at), "left_at": _iso(member.left_at),
        "x25519_public_key": member.public_key,
        "has_wrapped_key": member.wrapped_key is not None or member.role == INITIATOR,
        "wrapped_by": member.wrapped_by,
    }


def latest_round(session: Session, project: FLProject, number: int) -> FLRound | None:
    return session.scalar(select(FLRound).where(
        FLRound.project_id == project.id, FLRound.number == number)
        .order_by(FLRound.attempt.desc()).limit(1))


def get_round(session: Session, project: FLProject, number: int) -> FLRound:
    found = latest_round(session, project, number)
    if found is None:
        raise NotFound(f"project {project.name!r} has no round {number} (yet)", "round")
    return found


def project_json(session: Session, project: FLProject, caller: Caller) -> dict:
    current = (latest_round(session, project, project.current_round)
               if project.current_round else None)
    return {
        "id": project.id, "name": project.name, "title": project.title, "task": project.task,
        "unit": project.unit.slug, "initiator": project.initiator, "state": project.state,
        "rounds": project.rounds, "quorum": project.quorum, "min_updates": project.min_updates,
        "deadline_seconds": project.deadline_seconds, "key_size": project.key_size,
        "public_key": json.loads(project.public_key),
        "key_fingerprint": project.key_fingerprint,
        "pack": json.loads(project.pack_spec),
        "dp": json.loads(project.dp) if project.dp else None,
        "model": {"sha256": project.model_sha256, **json.loads(project.model_spec)},
        "current_round": project.current_round,
        "round": round_summary(session, project, current) if current else None,
        "members": [member_json(m) for m in project.members],
        "is_member": member_of(session, project, caller.unit) is not None,
        "created_at": _iso(project.created_at), "finished_at": _iso(project.finished_at),
    }


def list_projects(session: Session, caller: Caller) -> list[dict]:
    """Every project, newest first: a unit needs to see a project to decide to join it."""
    out = []
    for project in session.scalars(select(FLProject).order_by(FLProject.id.desc())):
        active = [m for m in project.members if m.left_at is None]
        out.append({
            "id": project.id, "name": project.name, "title": project.title,
            "task": project.task, "unit": project.unit.slug, "state": project.state,
            "rounds": project.rounds, "current_round": project.current_round,
            "key_size": project.key_size, "members": [m.unit.slug for m in active],
            "is_member": any(m.unit.slug == caller.unit for m in active),
            "created_at": _iso(project.created_at),
        })
    return out


def round_summary(session: Session, project: FLProject, rnd: FLRound) -> dict:
    updates = list(session.scalars(select(FLUpdate).where(FLUpdate.round_id == rnd.id)
                                   .order_by(FLUpdate.id)))
    aggregate = session.get(FLAggregate, rnd.id)
    return {
        "number": rnd.number, "attempt": rnd.attempt, "state": rnd.state,
        "base_round": rnd.base_round, "base_sha256": rnd.base_sha256,
        "opened_at": _iso(rnd.opened_at), "deadline": _iso(rnd.deadline),
        "closed_at": _iso(rnd.closed_at), "close_reason": rnd.close_reason,
        "quorum": project.quorum, "min_updates": project.min_updates,
        "active_members": len(active_members(session, project)),
        "updates": [{
            "unit": u.member.unit.slug, "submitter": u.submitter, "sha256": u.sha256,
            "size": u.size, "weight": u.weight, "clipped": u.clipped,
            "log_index": u.log_index, "created_at": _iso(u.created_at),
        } for u in updates],
        "aggregate": aggregate_json(aggregate) if aggregate else None,
    }


def aggregate_json(aggregate: FLAggregate) -> dict:
    return {"sha256": aggregate.sha256, "size": aggregate.size, "parties": aggregate.parties,
            "total_weight": aggregate.total_weight,
            "contributors": json.loads(aggregate.contributors),
            "log_index": aggregate.log_index, "created_at": _iso(aggregate.created_at)}


def round_json(session: Session, project: FLProject, rnd: FLRound) -> dict:
    attempts = session.scalars(select(FLRound).where(
        FLRound.project_id == project.id, FLRound.number == rnd.number)
        .order_by(FLRound.attempt))
    return {**round_summary(session, project, rnd), "project": project.id,
            "attempts": [{"attempt": a.attempt, "state": a.state, "deadline": _iso(a.deadline),
                          "closed_at": _iso(a.closed_at), "close_reason": a.close_reason}
                         for a in attempts]}


# --- membership and keys --------------------------------------------------------------------


def _check_joinable(session: Session, project: FLProject) -> None:
    if project.state == FINISHED:
        raise Conflict(f"project {project.name!r} has finished", "project")
    limit = spec_of(project).max_parties
    if len(active_members(session, project)) >= limit:
        raise Conflict(f"project {project.name!r} has its {limit} parties already (max_parties)",
                       "project")


def join(session: Session, caller: Caller, project: FLProject,
         x25519_public_key: str | None) -> tuple[FLMember, bool]:
    """Join for the caller's unit (publishers only); a unit that left may come back. Joining
    again with the same key (or none) changes nothing; another key goes through
    :func:`register_key`. Returns ``(member, created)``."""
    unit = _caller_unit(session, caller, "joining a federated project")
    member = session.scalar(select(FLMember).where(FLMember.project_id == project.id,
                                                   FLMember.unit_id == unit.id))
    now = utcnow()
    if member is not None and member.left_at is None:
        if x25519_public_key is not None and member.public_key not in (None, x25519_public_key):
            raise Conflict(f"unit {unit.slug} is a member with another key; PUT "
                           "members/{unit} to replace it", "x25519_public_key")
        if x25519_public_key is not None and member.public_key is None:
            _set_key(member, x25519_public_key, caller.name, now)
        return member, False
    _check_joinable(session, project)
    if member is None:
        member = FLMember(project_id=project.id, unit_id=unit.id, role=PARTNER,
                          joined_by=caller.name, joined_at=now)
        session.add(member)
    else:  # coming back after leaving: a fresh start, its old wrapped key is gone
        member.left_at, member.joined_by, member.joined_at = None, caller.name, now
        member.public_key = member.wrapped_key = member.wrapped_by = member.wrapped_at = None
    if x25519_public_key is not None:
        _set_key(member, x25519_public_key, caller.name, now)
    try:
        session.flush()
    except IntegrityError:  # the same unit joining twice at once
        raise Conflict(f"unit {unit.slug} has just joined project {project.name!r}",
                       "unit") from None
    return member, True


def _set_key(member: FLMember, key: str, actor: str, now: datetime) -> None:
    member.public_key, member.key_registered_by, member.key_registered_at = key, actor, now
    # a wrapped key opens only with the key it was wrapped for
    member.wrapped_key = member.wrapped_by = member.wrapped_at = None


def register_key(session: Session, caller: Caller, project: FLProject, unit_slug: str,
                 x25519_public_key: str) -> FLMember:
    """Register or replace the X25519 key of the caller's own unit; a replaced key drops the
    unit's wrapped key, and the unit waits for a member to wrap the Paillier key again."""
    member = _require_acting_member(session, caller, project, "registering a member key")
    if unit_slug != caller.unit:
        raise Forbidden(f"only members of unit {unit_slug!r} register its key", "unit")
    if member.public_key != x25519_public_key:
        _set_key(member, x25519_public_key, caller.name, utcnow())
    session.flush()
    return member


def leave(session: Session, caller: Caller, project: FLProject, unit_slug: str) -> FLMember:
    """The caller's unit leaves: it can no longer send updates or read aggregates; rounds go on
    without it. The initiator's unit stays to the end."""
    member = _require_acting_member(session, caller, project, "leaving a federated project")
    if unit_slug != caller.unit:
        raise Forbidden(f"only members of unit {unit_slug!r} take it out of a project", "unit")
    if member.role == INITIATOR:
        raise Conflict("the initiator's unit cannot leave its own project", "unit")
    member.left_at = utcnow()
    session.flush()
    return member


def _holds_key(member: FLMember) -> bool:
    # the initiator's client generated the key pair; others hold it once it was wrapped for them
    return member.role == INITIATOR or member.wrapped_key is not None


def keys_json(session: Session, caller: Caller, project: FLProject) -> dict:
    """The caller unit's wrapped key (if any) and the members awaiting one."""
    member = require_member(session, caller, project, "reading wrapped keys")
    awaiting = [{"unit": m.unit.slug, "x25519_public_key": m.public_key}
                for m in active_members(session, project)
                if m.public_key is not None and not _holds_key(m)]
    return {
        "key_fingerprint": project.key_fingerprint,
        "unit": member.unit.slug,
        "x25519_public_key": member.public_key,
        "wrapped_key": json.loads(member.wrapped_key) if member.wrapped_key else None,
        "wrapped_by": member.wrapped_by,
        "holds_key": _holds_key(member),
        "awaiting": awaiting,
    }


def post_wrapped_key(session: Session, caller: Caller, project: FLProject, body: dict) -> FLMember:
    """A key-holding member's client posts the Paillier private key wrapped for a member awaiting
    it. The first wrapped key for the member's current X25519 key wins."""
    poster = _require_acting_member(session, caller, project, "posting a wrapped key")
    if not _holds_key(poster):
        raise Forbidden(f"unit {poster.unit.slug} holds no key for project {project.name!r} "
                        "yet, so it cannot wrap one", "unit")
    target_slug = body.get("unit")
    if not isinstance(target_slug, str):
        raise InvalidField("unit is required: the member the key is wrapped for", "unit")
    target = member_of(session, project, target_slug)
    if target is None:
        raise NotFound(f"unit {target_slug!r} is not a member of project {project.name!r}",
                       "unit")
    fingerprint = body.get("key_fingerprint")
    if fingerprint != project.key_fingerprint:
        raise Conflict("key_fingerprint is not the project's key: the wrapped key is of a stale "
                       "or foreign key", "key_fingerprint")
    recipient = parse_x25519_key(body.get("x25519_public_key"))
    if target.public_key is None or recipient != target.public_key:
        raise Conflict(f"unit {target_slug} has registered another X25519 key since; wrap for "
                       "its current key", "x25519_public_key")
    if _holds_key(target):
        raise Conflict(f"unit {target_slug} holds the key already", "unit")
    wrapped = body.get("wrapped_key")
    if not _is_json_object(wrapped):
        raise InvalidField("wrapped_key must be the JSON object the client's wrapping made",
                           "wrapped_key")
    text = json.dumps(wrapped, sort_keys=True)
    if len(text) > MAX_WRAPPED_KEY_BYTES:
        raise InvalidField(f"wrapped_key is larger than {MAX_WRAPPED_KEY_BYTES} bytes",
                           "wrapped_key")
    target.wrapped_key, target.wrapped_by, target.wrapped_at = text, caller.name, utcnow()
    session.flush()
    return target


# --- rounds ---------------------------------------------------------------------------------


def _open_round(session: Session, project: FLProject, number: int, attempt: int,
                base_round: int, base_sha256: str, now: datetime) -> FLRound:
    rnd = FLRound(project_id=project.id, number=number, attempt=attempt, state=OPEN,
                  base_round=base_round, base_sha256=base_sha256, opened_at=now,
                  deadline=now + timedelta(seconds=project.deadline_seconds))
    session.add(rnd)
    project.current_round = number
    session.flush()
    return rnd


def start(session: Session, caller: Caller, project: FLProject) -> FLRound:
    """The initiator's unit opens round 1 once enough units have joined."""
    member = _require_acting_member(session, caller, project, "starting a federated project")
    if member.role != INITIATOR:
        raise Forbidden(f"only the initiator's unit ({project.unit.slug}) starts project "
                        f"{project.name!r}", "unit")
    if project.state != ENROLLING:
        raise Conflict(f"project {project.name!r} is {project.state}, not enrolling", "project")
    joined = len(active_members(session, project))
    if joined < project.min_updates:
        raise Conflict(f"{joined} unit(s) have joined; at least {project.min_updates} "
                       "(min_updates) are needed to start", "members")
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


def check_update(session: Session, caller: Caller, project: FLProject, number: int,
                 weight_raw: str | None, clipped_raw: str | None, fingerprint: str | None,
                 now: datetime | None = None) -> UpdateRequest:
    """Everything about an update that can be checked before its bytes arrive (and again, in
    the write transaction, before it is recorded)."""
    member = _require_acting_member(session, caller, project, "sending an update")
    now = now or utcnow()
    rnd = latest_round(session, project, number)
    if rnd is None:
        raise NotFound(f"project {project.name!r} has no round {number} (yet)", "round")
    if rnd.state != OPEN or number != project.current_round:
        raise Conflict(f"round {number} of project {project.name!r} is closed ({rnd.state})",
                       "round")
    if now >= rnd.deadline:
        raise Conflict(f"round {number} of project {project.name!r} passed its deadline "
                       f"({_iso(rnd.deadline)})", "round")
    if fingerprint is None:
        raise InvalidField("key_fingerprint is required: the fingerprint of the Paillier key "
                           "the update is encrypted with", "key_fingerprint")
    if fingerprint != project.key_fingerprint:
        raise Conflict("key_fingerprint is not the project's: the update is encrypted with a "
                       "stale or foreign key", "key_fingerprint")
    spec = spec_of(project)
    weight = parse_query_int(weight_raw, "weight", 1, spec.max_weight)
    clipped = parse_query_int(clipped_raw, "clipped", 0, spec.length)
    done = session.scalar(select(FLUpdate.id).where(FLUpdate.round_id == rnd.id,
                                                    FLUpdate.member_id == member.id))
    if done is not None:
        raise Conflict(f"unit {member.unit.slug} has sent its update for round {number} "
                       "already", "round")
    return UpdateRequest(project_id=project.id, round_id=rnd.id, number=number,
                         attempt=rnd.attempt, member_id=member.id, unit=member.unit.slug,
                         weight=weight, clipped=clipped, key_fingerprint=fingerprint, spec=spec)


def check_update_bytes(spec: packing.PackSpec, data: bytes) -> None:
    """Refuse bytes that are not exactly the spec's ciphertexts, each a unit in ``Z*_{n^2}``.
    CPU-bound (a gcd per ciphertext): run it in a worker thread."""
    try:
        packing.ciphertexts_from_bytes(spec, data)
    except packing.ShapeMismatch as e:
        raise InvalidField(f"the update is not of this project's shape: {e}", "body") from None
    except packing.PackingError as e:
        raise InvalidField(f"the update holds an invalid ciphertext: {e}", "body") from None


def record_update(session: Session, caller: Caller, project: FLProject, req: UpdateRequest,
                  sha256: str, size: int) -> tuple[FLUpdate, FLRound]:
    """Record and certify a checked update (its bytes already in the blob store under
    ``sha256``) in the caller's write transaction; closes the round when it completes the
    quorum. The state is checked again here: it may have moved while the body arrived."""
    again = check_update(session, caller, project, req.number, str(req.weight),
                         str(req.clipped), req.key_fingerprint)
    if again.round_id != req.round_id:
        raise Conflict(f"round {req.number} was reopened while the update arrived; send it "
                       "again", "round")
    # the round's row lock serialises concurrent updates' quorum counts (PostgreSQL; SQLite
    # writers are serialised by write_transaction already)
    rnd = session.get(FLRound, req.round_id, with_for_update=True)
    update = FLUpdate(round_id=rnd.id, member_id=req.member_id, submitter=caller.name,
                      sha256=sha256, size=size, weight=req.weight, clipped=req.clipped,
                      key_fingerprint=req.key_fingerprint, created_at=utcnow())
    session.add(update)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"unit {req.unit} has sent its update for round {req.number} already",
                       "round") from None
    update.log_index = certlog.append(
        session, "fl_contribution", caller.name, caller.unit, subject=sha256,
        project=project.name, project_id=project.id, round=req.number, attempt=req.attempt,
        weight=req.weight, clipped=req.clipped, size=size, key_fingerprint=req.key_fingerprint)
    count = session.scalar(select(func.count()).select_from(FLUpdate)
                           .where(FLUpdate.round_id == rnd.id))
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
    due = session.scalars(select(FLRound).where(FLRound.state == OPEN,
                                                FLRound.deadline <= now))
    for rnd in list(due):
        project = session.get(FLProject, rnd.project_id)
        count = session.scalar(select(func.count()).select_from(FLUpdate)
                               .where(FLUpdate.round_id == rnd.id))
        if count >= project.min_updates:
            _close(rnd, "deadline", now)
            closed.append(rnd.id)
            log.info("round %s/%s of project %s closed at its deadline with %s updates",
                     rnd.number, rnd.attempt, project.name, count)
        else:
            rnd.state, rnd.close_reason, rnd.closed_at = VOID, "too_few", now
            session.flush()
            _open_round(session, project, rnd.number, rnd.attempt + 1, rnd.base_round,
                        rnd.base_sha256, now)
            log.info("round %s of project %s void at its deadline (%s of %s updates); "
                     "attempt %s opened", rnd.number, project.name, count, project.min_updates,
                     rnd.attempt + 1)
    session.flush()
    return closed


def due_work(session: Session, now: datetime | None = None) -> tuple[bool, list[int]]:
    """(whether some open round is past its deadline, ids of rounds awaiting aggregation):
    a cheap read, so the periodic tick takes the write lock only when there is work."""
    now = now or utcnow()
    expired = session.scalar(select(FLRound.id).where(
        FLRound.state == OPEN, FLRound.deadline <= now).limit(1)) is not None
    aggregating = list(session.scalars(select(FLRound.id).where(FLRound.state == AGGREGATING)
                                       .order_by(FLRound.id)))
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
    updates = list(session.scalars(select(FLUpdate).where(FLUpdate.round_id == rnd.id)
                                   .order_by(FLUpdate.id)))
    return AggregationJob(round_id, spec_of(project), tuple(u.sha256 for u in updates),
                          tuple(u.weight for u in updates),
                          tuple(u.member.unit.slug for u in updates))


def add_updates(job: AggregationJob, blobs: BlobStore) -> bytes:
    """The encrypted sum of a round's updates (CPU-bound: a worker thread's job)."""
    cts = [packing.ciphertexts_from_bytes(job.spec, blobs.get(sha)) for sha in job.shas]
    return packing.ciphertexts_to_bytes(job.spec, packing.add_encrypted(job.spec, cts))


def publish_aggregate(session: Session, job: AggregationJob, sha256: str, size: int,
                      now: datetime | None = None) -> FLAggregate | None:
    """Record and certify the aggregate of an ``aggregating`` round, then open the next round
    (or finish the project). Needs a write transaction; a round already published is left."""
    now = now or utcnow()
    rnd = session.get(FLRound, job.round_id)
    if rnd is None or rnd.state != AGGREGATING:
        return None
    project = session.get(FLProject, rnd.project_id)
    aggregate = FLAggregate(round_id=rnd.id, sha256=sha256, size=size, parties=len(job.shas),
                            total_weight=sum(job.weights), contributors=json.dumps(job.units),
                            created_at=now)
    session.add(aggregate)
    session.flush()
    aggregate.log_index = certlog.append(
        session, "fl_aggregate", SERVICE_ACTOR, project.unit.slug, subject=sha256,
        project=project.name, project_id=project.id, round=rnd.number, attempt=rnd.attempt,
        parties=aggregate.parties, total_weight=aggregate.total_weight,
        contributions=list(job.shas))
    rnd.state = PUBLISHED
    if rnd.number < project.rounds:
        _open_round(session, project, rnd.number + 1, 1, rnd.number, sha256, now)
    else:
        project.state, project.finished_at = FINISHED, now
    session.flush()
    return aggregate


def aggregate_of(session: Session, caller: Caller, project: FLProject,
                 number: int) -> tuple[FLRound, FLAggregate]:
    require_member(session, caller, project, "reading an aggregate")
    rnd = session.scalar(select(FLRound).where(
        FLRound.project_id == project.id, FLRound.number == number,
        FLRound.state == PUBLISHED).limit(1))
    if rnd is None:
        get_round(session, project, number)  # 404 for a round that does not exist
        raise NotFound(f"round {number} of project {project.name!r} has no aggregate yet",
                       "round")
    return rnd, session.get(FLAggregate, rnd.id)


# --- metrics --------------------------------------------------------------------------------


def post_metrics(session: Session, caller: Caller, project: FLProject, body: dict) -> FLMetric:
    """A member's plaintext validation metrics for a round (0 = the initial model); posting
    again for the same round replaces them."""
    member = _require_acting_member(session, caller, project, "posting metrics")
    number = _int(body, "round", 0, project.rounds)
    metrics = body.get("metrics")
    if not _is_json_object(metrics) or not metrics:
        raise InvalidField("metrics must be a non-empty object of name: number", "metrics")
    if len(metrics) > MAX_METRICS:
        raise InvalidField(f"at most {MAX_METRICS} metrics", "metrics")
    clean = {}
    for name, value in metrics.items():
        if not METRIC_NAME_RE.match(name):
            raise InvalidField(f"metric name {name[:80]!r} is not a short identifier",
                               "metrics")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            clean[name] = None
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value):
            raise InvalidField(f"metric {name!r} must be a number", f"metrics.{name}")
        clean[name] = value
    row = session.scalar(select(FLMetric).where(FLMetric.project_id == project.id,
                                                FLMetric.round == number,
                                                FLMetric.member_id == member.id))
    if row is None:
        row = FLMetric(project_id=project.id, round=number, member_id=member.id)
        session.add(row)
    row.submitter, row.metrics, row.created_at = caller.name, json.dumps(clean), utcnow()
    session.flush()
    return row


def metrics_json(session: Session, caller: Caller, project: FLProject) -> list[dict]:
    require_member(session, caller, project, "reading a project's metrics")
    rows = session.scalars(select(FLMetric).where(FLMetric.project_id == project.id)
                           .order_by(FLMetric.round, FLMetric.id))
    return [{"round": r.round, "unit": r.member.unit.slug, "submitter": r.submitter,
             "metrics": json.loads(r.metrics), "created_at": _iso(r.created_at)} for r in rows]


# --- the coordinator: deadlines and aggregation ---------------------------------------------


class Coordinator:
    """Closes rounds at their deadline and aggregates closed rounds, off the event loop.

    :meth:`tick` is synchronous (run it in a worker thread); :meth:`loop` runs it every
    ``interval`` seconds or as soon as :meth:`kick` is called (an update completed a quorum).
    Rounds left ``aggregating`` by a crash are picked up again on the next tick.
    """

    def __init__(self, session_factory, blobs: BlobStore, interval: float = 1.0):
        self.session_factory = session_factory
        self.blobs = blobs
        self.interval = interval
        self._wake: asyncio.Event | None = None
        self._lock = threading.Lock()

    def kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def tick(self, now: datetime | None = None) -> int:
        """One pass; returns the number of aggregates published."""
        with self._lock:
            with self.session_factory() as session:
                expired, _ = due_work(session, now)
            if expired:
                with self.session_factory() as session:
                    write_transaction(session)
                    close_expired(session, now)
                    session.commit()
            with self.session_factory() as session:
                _, pending = due_work(session, now)
            published = 0
            for round_id in pending:
                with self.session_factory() as session:
                    job = aggregation_job(session, round_id)
                if job is None:
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
                log.info("round %s aggregated: %s updates -> %s", round_id, len(job.shas),
                         sha[:12])
            return published

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
