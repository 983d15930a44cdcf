"""Federated projects: opening one, and what each caller may read of it.

The service coordinates and adds; it never decrypts. An initiator (a publisher of a unit) opens
a project with a model bundle, a schedule and the *public* half of a Paillier key its own client
generated, and optionally an allow-list of units whose joins are approved at once. Enrolment
(joining, the initiator's approval, members' signed X25519 keys, wrapped keys) is
:mod:`.enrolment`; rounds, updates and aggregation are :mod:`.rounds`.

A project's details are for its approved members, the initiator's unit and operators
(:func:`project_json`); the listing shows everyone else a public summary only, enough to ask to
join (:func:`list_projects`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..auth import SCOPE_PUBLISH, Caller
from ..blobs import BlobStore
from ..errors import Conflict, InvalidField
from ..orm import Unit, utcnow
from . import keys, packing
from .common import (
    APPROVED,
    DEFAULT_KEY_SIZE,
    DEFAULT_MAX_PARAMETERS,
    ENROLLING,
    FINISHED,
    INITIATOR,
    KEY_SIZES,
    MAX_DEADLINE_SECONDS,
    MAX_MODEL_BYTES,
    MAX_MODEL_UNPACKED,
    MAX_PARTIES,
    MAX_ROUNDS,
    MIN_UPDATES_FLOOR,
    MODEL_FILES,
    NAME_RE,
    REFUSED,
    active_members,
    allow_list_of,
    caller_unit,
    int_field,
    is_json_object,
    iso,
    latest_round,
    may_view,
    membership,
    membership_state,
    number_field,
    reject_unknown,
    require_viewer,
    text_field,
)
from .orm import FLAggregate, FLMember, FLProject, FLRound, FLUnitKey, FLUpdate

UNIT_SLUG_MAX = 64
PROJECT_FIELDS = frozenset({"name", "title", "task", "rounds", "quorum", "min_updates",
                            "deadline_seconds", "key_size", "public_key", "pack", "dp", "model",
                            "allow_units"})


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
    allow_units: tuple[str, ...]


def _model_bundle(body: dict, max_parameters: int) -> tuple[bytes, dict]:
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
    if not is_json_object(meta) or not is_json_object(meta.get("spec")):
        raise InvalidField("model.json must be an object with a spec", "model")
    params = meta.get("parameters")
    if isinstance(params, bool) or not isinstance(params, int) or params < 1:
        raise InvalidField("model.json must give the parameter count as a positive integer",
                           "model")
    if params > max_parameters:
        raise InvalidField(f"model has {params} parameters; this marketplace allows at most "
                           f"{max_parameters} per federated model (fl_max_parameters)", "model")
    if meta.get("weights_sha256") != hashlib.sha256(weights).hexdigest():
        raise InvalidField("weights.pt does not match the weights_sha256 of model.json",
                           "model")
    return data, meta


def _public_key(body: dict, key_size: int) -> tuple[dict, Any, str]:
    raw = body.get("public_key")
    if not is_json_object(raw):
        raise InvalidField("public_key is required: the project's Paillier public key as "
                           '{"n": "<decimal>"}', "public_key")
    reject_unknown(raw, {"n"}, "public_key.")
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
    if not is_json_object(raw):
        raise InvalidField("dp must be an object {clip_norm, noise_multiplier, delta} or null",
                           "dp")
    reject_unknown(raw, {"clip_norm", "noise_multiplier", "delta"}, "dp.")
    return {
        "clip_norm": number_field(raw, "clip_norm", 0.0, 1e6, field="dp.clip_norm"),
        "noise_multiplier": number_field(raw, "noise_multiplier", 0.0, 100.0,
                                         field="dp.noise_multiplier", low_open=False),
        "delta": number_field(raw, "delta", 0.0, 0.5, default=1e-5, field="dp.delta"),
    }


def _allow_units(body: dict, max_parties: int) -> tuple[str, ...]:
    raw = body.get("allow_units", [])
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > max_parties:
        raise InvalidField(f"allow_units must be a list of at most {max_parties} unit slugs "
                           "(pack.max_parties)", "allow_units")
    if not all(isinstance(u, str) and 0 < len(u) <= UNIT_SLUG_MAX for u in raw):
        raise InvalidField("allow_units must hold unit slugs (strings)", "allow_units")
    if len(set(raw)) != len(raw):
        raise InvalidField("allow_units names a unit twice", "allow_units")
    return tuple(raw)


def parse_project_request(body: dict,
                          max_parameters: int = DEFAULT_MAX_PARAMETERS) -> ProjectRequest:
    """Check a request to open a project; every problem is a 400 naming its field. CPU-light
    except the zip check of the model, which is bounded by :data:`MAX_MODEL_BYTES`; a model of
    more than ``max_parameters`` parameters (the service's ``fl_max_parameters``) is refused."""
    reject_unknown(body, PROJECT_FIELDS)
    name = body.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidField("name must be 3-64 characters: lower-case letters, digits and '-', "
                           "starting with a letter", "name")
    title = text_field(body, "title", 200, default=name)
    task = text_field(body, "task", 2000, default="binary classification")
    rounds = int_field(body, "rounds", 1, MAX_ROUNDS)
    key_size = body.get("key_size", DEFAULT_KEY_SIZE)
    if key_size not in KEY_SIZES or isinstance(key_size, bool):
        raise InvalidField(f"key_size must be one of {', '.join(map(str, KEY_SIZES))}",
                           "key_size")
    deadline = int_field(body, "deadline_seconds", 1, MAX_DEADLINE_SECONDS)
    pack = body.get("pack", {})
    if not is_json_object(pack):
        raise InvalidField("pack must be an object {bits, clip, max_parties, max_weight}", "pack")
    reject_unknown(pack, {"bits", "clip", "max_parties", "max_weight"}, "pack.")
    max_parties = int_field(pack, "max_parties", MIN_UPDATES_FLOOR, MAX_PARTIES, default=10,
                            field="pack.max_parties")
    quorum = int_field(body, "quorum", MIN_UPDATES_FLOOR, max_parties)
    min_updates = int_field(body, "min_updates", MIN_UPDATES_FLOOR, quorum,
                            default=MIN_UPDATES_FLOOR)
    bits = int_field(pack, "bits", 2, 32, default=16, field="pack.bits")
    clip = number_field(pack, "clip", 0.0, 1e6, default=1.0, field="pack.clip")
    max_weight = int_field(pack, "max_weight", 1, 2**40, default=100_000,
                           field="pack.max_weight")
    public_key_json, pk, fingerprint = _public_key(body, key_size)
    allow_units = _allow_units(body, max_parties)
    model_zip, model_meta = _model_bundle(body, max_parameters)
    try:
        spec = packing.PackSpec.create(int(pk.n), model_meta["parameters"], bits=bits, clip=clip,
                                       max_parties=max_parties, max_weight=max_weight)
    except packing.PackingError as e:
        raise InvalidField(f"pack: {e}", "pack") from None
    return ProjectRequest(
        name=name, title=title, task=task, rounds=rounds, quorum=quorum, min_updates=min_updates,
        deadline_seconds=deadline, key_size=key_size, public_key_json=public_key_json,
        key_fingerprint=fingerprint, spec=spec, dp=_dp(body), model_zip=model_zip,
        model_meta=model_meta, allow_units=allow_units,
    )


def create_project(session: Session, caller: Caller, req: ProjectRequest,
                   blobs: BlobStore) -> FLProject:
    """Open a project for the caller's unit (publishers only); the caller's unit is its first
    member. The caller's session must be a write transaction; the caller commits."""
    unit = caller_unit(session, caller, "opening a federated project")
    if session.scalar(select(FLProject.id).where(FLProject.name == req.name)) is not None:
        raise Conflict(f"a federated project named {req.name!r} exists already", "name")
    if req.allow_units:
        known = set(session.scalars(select(Unit.slug).where(Unit.slug.in_(req.allow_units))))
        missing = [u for u in req.allow_units if u not in known]
        if missing:
            raise InvalidField(f"allow_units names unknown unit(s) {missing}", "allow_units")
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
        allow_list=json.dumps([u for u in req.allow_units if u != unit.slug]),
    )
    session.add(project)
    session.flush()
    session.add(FLMember(
        project_id=project.id, unit_id=unit.id, role=INITIATOR, status=APPROVED,
        joined_by=caller.name, joined_at=now, decided_by=caller.name, decided_at=now,
    ))
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"a federated project named {req.name!r} exists already",
                       "name") from None
    return project


# --- reading --------------------------------------------------------------------------------


def member_json(member: FLMember) -> dict:
    """A membership as its own unit, the project's members and operators see it."""
    return {
        "unit": member.unit.slug, "role": member.role, "status": member.status,
        "state": membership_state(member),
        "joined_by": member.joined_by, "joined_at": iso(member.joined_at),
        "left_at": iso(member.left_at),
        "decided_by": member.decided_by, "decided_at": iso(member.decided_at),
        "x25519_public_key": member.public_key, "x25519_signature": member.key_signature,
        "has_wrapped_key": member.wrapped_key is not None or member.role == INITIATOR,
        "wrapped_by": member.wrapped_by,
    }


def project_json(session: Session, project: FLProject, caller: Caller) -> dict:
    """The project's details: for approved members, the initiator's unit and operators only
    (403 for everyone else)."""
    require_viewer(session, caller, project, "reading a federated project's details")
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
        "allow_units": allow_list_of(project),
        "is_member": membership_state(membership(session, project, caller.unit)) == APPROVED,
        "membership": membership_state(membership(session, project, caller.unit)),
        "created_at": iso(project.created_at), "finished_at": iso(project.finished_at),
    }


def may_join(session: Session, caller: Caller, project: FLProject,
             member: FLMember | None) -> bool:
    """Whether the caller may ask to join: a publisher of a unit that is not in the project
    (or left it, and was not refused), while the project has not finished or filled up."""
    if SCOPE_PUBLISH not in caller.scopes or caller.unit is None or project.state == FINISHED:
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
            "id": project.id, "name": project.name, "title": project.title,
            "unit": project.unit.slug, "state": project.state,
            "may_join": may_join(session, caller, project, member),
            "membership": membership_state(member),
            "is_member": membership_state(member) == APPROVED,
        }
        if may_view(session, caller, project):
            entry.update({
                "task": project.task, "rounds": project.rounds,
                "current_round": project.current_round, "key_size": project.key_size,
                "members": [m.unit.slug for m in active_members(session, project)],
                "pending": [m.unit.slug for m in project.members
                            if m.status == "pending" and m.left_at is None],
                "created_at": iso(project.created_at),
            })
        out.append(entry)
    return out


def unit_key_json(key: FLUnitKey) -> dict:
    return {"unit": key.unit.slug, "ed25519_public_key": key.public_key,
            "registered_at": iso(key.registered_at), "log_index": key.log_index}


def round_summary(session: Session, project: FLProject, rnd: FLRound) -> dict:
    updates = list(session.scalars(select(FLUpdate).where(FLUpdate.round_id == rnd.id)
                                   .order_by(FLUpdate.id)))
    aggregate = session.get(FLAggregate, rnd.id)
    return {
        "number": rnd.number, "attempt": rnd.attempt, "state": rnd.state,
        "base_round": rnd.base_round, "base_sha256": rnd.base_sha256,
        "opened_at": iso(rnd.opened_at), "deadline": iso(rnd.deadline),
        "closed_at": iso(rnd.closed_at), "close_reason": rnd.close_reason,
        "quorum": project.quorum, "min_updates": project.min_updates,
        "active_members": len(active_members(session, project)),
        "updates": [{
            "unit": u.member.unit.slug, "submitter": u.submitter, "sha256": u.sha256,
            "size": u.size, "weight": u.weight, "clipped": u.clipped,
            "log_index": u.log_index, "created_at": iso(u.created_at),
        } for u in updates],
        "aggregate": aggregate_json(aggregate) if aggregate else None,
    }


def aggregate_json(aggregate: FLAggregate) -> dict:
    return {"sha256": aggregate.sha256, "size": aggregate.size, "parties": aggregate.parties,
            "total_weight": aggregate.total_weight,
            "contributors": json.loads(aggregate.contributors),
            "log_index": aggregate.log_index, "created_at": iso(aggregate.created_at)}


def round_json(session: Session, project: FLProject, rnd: FLRound) -> dict:
    attempts = session.scalars(select(FLRound).where(
        FLRound.project_id == project.id, FLRound.number == rnd.number)
        .order_by(FLRound.attempt))
    return {**round_summary(session, project, rnd), "project": project.id,
            "attempts": [{"attempt": a.attempt, "state": a.state, "deadline": iso(a.deadline),
                          "closed_at": iso(a.closed_at), "close_reason": a.close_reason}
                         for a in attempts]}

