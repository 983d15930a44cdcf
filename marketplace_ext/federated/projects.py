"""Federated projects: opening one.

The service coordinates and adds; it never decrypts. An initiator (a publisher of a unit) opens
a project with a model bundle, a schedule and the *public* half of a Paillier key its own client
generated, and optionally an allow-list of units whose joins are approved at once. Enrolment
(joining, the initiator's approval, members' signed X25519 keys, wrapped keys) is
:mod:`.enrolment`; rounds, updates and aggregation are :mod:`.rounds`.

What a caller may read of a project (its details for approved members, the initiator's unit
and operators, :func:`project_json`; a public summary in the listing for everyone else,
:func:`list_projects`) is :mod:`.views`, re-exported here. The data products, the reward pool
and the split are :mod:`.economy`.
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

from ..auth import Caller
from ..blobs import BlobStore
from ..errors import Conflict, InvalidField
from ..orm import Unit, utcnow
from . import economy, keys, packing
from .common import (
    APPROVED,
    DEFAULT_KEY_SIZE,
    DEFAULT_MAX_PARAMETERS,
    ENROLLING,
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
    caller_unit,
    int_field,
    is_json_object,
    number_field,
    reject_unknown,
    text_field,
)
from .orm import FLMember, FLProject
from .views import (  # the reading side, re-exported for the handlers and clients
    aggregate_json,
    list_projects,
    may_join,
    member_json,
    project_json,
    round_json,
    round_summary,
    unit_key_json,
)

UNIT_SLUG_MAX = 64
PROJECT_FIELDS = frozenset(
    {
        "name",
        "title",
        "task",
        "rounds",
        "quorum",
        "min_updates",
        "deadline_seconds",
        "key_size",
        "public_key",
        "pack",
        "dp",
        "model",
        "allow_units",
        "products",
        "pool",
        "contribution_measure",
    }
)


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
    products: tuple[str, ...] = ()
    pool: int = 0  # centipoints the initiator's unit escrows at opening
    contribution_measure: str = "weight"  # economy.MEASURES; "loo_weight" is opt-in


def _model_bundle(body: dict, max_parameters: int) -> tuple[bytes, dict]:
    raw = body.get("model")
    if not isinstance(raw, str):
        raise InvalidField(
            "model is required: the base64 of the model bundle (a zip of "
            "model.json and weights.pt)",
            "model",
        )
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
                raise InvalidField(
                    f"model must hold exactly {', '.join(MODEL_FILES)}; it holds "
                    f"{', '.join(names) or 'nothing'}",
                    "model",
                )
            if sum(i.file_size for i in infos) > MAX_MODEL_UNPACKED:
                raise InvalidField(
                    f"model unpacks to more than {MAX_MODEL_UNPACKED} bytes", "model"
                )
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
        raise InvalidField(
            "model.json must give the parameter count as a positive integer", "model"
        )
    if params > max_parameters:
        raise InvalidField(
            f"model has {params} parameters; this marketplace allows at most "
            f"{max_parameters} per federated model (fl_max_parameters)",
            "model",
        )
    if meta.get("weights_sha256") != hashlib.sha256(weights).hexdigest():
        raise InvalidField("weights.pt does not match the weights_sha256 of model.json", "model")
    return data, meta


def _public_key(body: dict, key_size: int) -> tuple[dict, Any, str]:
    raw = body.get("public_key")
    if not is_json_object(raw):
        raise InvalidField(
            'public_key is required: the project\'s Paillier public key as {"n": "<decimal>"}',
            "public_key",
        )
    reject_unknown(raw, {"n"}, "public_key.")
    try:
        pk = keys.public_key_from_json(raw)
    except (ValueError, TypeError, KeyError) as e:
        raise InvalidField(f"public_key is not a Paillier public key: {e}", "public_key") from None
    if int(pk.n).bit_length() != key_size:
        raise InvalidField(
            f"public_key has a {int(pk.n).bit_length()}-bit modulus; key_size says {key_size}",
            "public_key",
        )
    return keys.public_key_to_json(pk), pk, keys.key_fingerprint(pk)


def _dp(body: dict) -> dict | None:
    raw = body.get("dp")
    if raw is None:
        return None
    if not is_json_object(raw):
        raise InvalidField(
            "dp must be an object {clip_norm, noise_multiplier, delta} or null", "dp"
        )
    reject_unknown(raw, {"clip_norm", "noise_multiplier", "delta"}, "dp.")
    return {
        "clip_norm": number_field(raw, "clip_norm", 0.0, 1e6, field="dp.clip_norm"),
        "noise_multiplier": number_field(
            raw, "noise_multiplier", 0.0, 100.0, field="dp.noise_multiplier", low_open=False
        ),
        "delta": number_field(raw, "delta", 0.0, 0.5, default=1e-5, field="dp.delta"),
    }


def _allow_units(body: dict, max_parties: int) -> tuple[str, ...]:
    raw = body.get("allow_units", [])
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > max_parties:
        raise InvalidField(
            f"allow_units must be a list of at most {max_parties} unit slugs (pack.max_parties)",
            "allow_units",
        )
    if not all(isinstance(u, str) and 0 < len(u) <= UNIT_SLUG_MAX for u in raw):
        raise InvalidField("allow_units must hold unit slugs (strings)", "allow_units")
    if len(set(raw)) != len(raw):
        raise InvalidField("allow_units names a unit twice", "allow_units")
    return tuple(raw)


def parse_project_request(
    body: dict, max_parameters: int = DEFAULT_MAX_PARAMETERS
) -> ProjectRequest:
    """Check a request to open a project; every problem is a 400 naming its field. CPU-light
    except the zip check of the model, which is bounded by :data:`MAX_MODEL_BYTES`; a model of
    more than ``max_parameters`` parameters (the service's ``fl_max_parameters``) is refused."""
    reject_unknown(body, PROJECT_FIELDS)
    name = body.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidField(
            "name must be 3-64 characters: lower-case letters, digits and '-', "
            "starting with a letter",
            "name",
        )
    title = text_field(body, "title", 200, default=name)
    task = text_field(body, "task", 2000, default="binary classification")
    rounds = int_field(body, "rounds", 1, MAX_ROUNDS)
    key_size = body.get("key_size", DEFAULT_KEY_SIZE)
    if key_size not in KEY_SIZES or isinstance(key_size, bool):
        raise InvalidField(f"key_size must be one of {', '.join(map(str, KEY_SIZES))}", "key_size")
    deadline = int_field(body, "deadline_seconds", 1, MAX_DEADLINE_SECONDS)
    pack = body.get("pack", {})
    if not is_json_object(pack):
        raise InvalidField("pack must be an object {bits, clip, max_parties, max_weight}", "pack")
    reject_unknown(pack, {"bits", "clip", "max_parties", "max_weight"}, "pack.")
    max_parties = int_field(
        pack, "max_parties", MIN_UPDATES_FLOOR, MAX_PARTIES, default=10, field="pack.max_parties"
    )
    quorum = int_field(body, "quorum", MIN_UPDATES_FLOOR, max_parties)
    min_updates = int_field(
        body, "min_updates", MIN_UPDATES_FLOOR, quorum, default=MIN_UPDATES_FLOOR
    )
    bits = int_field(pack, "bits", 2, 32, default=16, field="pack.bits")
    clip = number_field(pack, "clip", 0.0, 1e6, default=1.0, field="pack.clip")
    max_weight = int_field(pack, "max_weight", 1, 2**40, default=100_000, field="pack.max_weight")
    public_key_json, pk, fingerprint = _public_key(body, key_size)
    allow_units = _allow_units(body, max_parties)
    model_zip, model_meta = _model_bundle(body, max_parameters)
    try:
        spec = packing.PackSpec.create(
            int(pk.n),
            model_meta["parameters"],
            bits=bits,
            clip=clip,
            max_parties=max_parties,
            max_weight=max_weight,
        )
    except packing.PackingError as e:
        raise InvalidField(f"pack: {e}", "pack") from None
    return ProjectRequest(
        name=name,
        title=title,
        task=task,
        rounds=rounds,
        quorum=quorum,
        min_updates=min_updates,
        deadline_seconds=deadline,
        key_size=key_size,
        public_key_json=public_key_json,
        key_fingerprint=fingerprint,
        spec=spec,
        dp=_dp(body),
        model_zip=model_zip,
        model_meta=model_meta,
        allow_units=allow_units,
        products=economy.parse_products(body),
        pool=economy.parse_pool(body),
        contribution_measure=economy.parse_measure(body),
    )


def create_project(
    session: Session, caller: Caller, req: ProjectRequest, blobs: BlobStore
) -> FLProject:
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
        name=req.name,
        title=req.title,
        task=req.task,
        unit_id=unit.id,
        initiator=caller.name,
        state=ENROLLING,
        rounds=req.rounds,
        quorum=req.quorum,
        min_updates=req.min_updates,
        deadline_seconds=req.deadline_seconds,
        key_size=req.key_size,
        public_key=json.dumps(req.public_key_json),
        key_fingerprint=req.key_fingerprint,
        pack_spec=json.dumps(req.spec.to_json()),
        dp=json.dumps(req.dp) if req.dp else None,
        model_sha256=sha,
        model_spec=json.dumps(req.model_meta, sort_keys=True),
        current_round=0,
        created_at=now,
        contribution_measure=req.contribution_measure,
        allow_list=json.dumps([u for u in req.allow_units if u != unit.slug]),
    )
    session.add(project)
    session.flush()
    session.add(
        FLMember(
            project_id=project.id,
            unit_id=unit.id,
            role=INITIATOR,
            status=APPROVED,
            joined_by=caller.name,
            joined_at=now,
            decided_by=caller.name,
            decided_at=now,
        )
    )
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"a federated project named {req.name!r} exists already", "name") from None
    economy.link_products(session, project, req.products, unit)
    if req.pool:
        economy.fund_pool(session, caller, project, req.pool, initiator_unit=unit)
    return project


__all__ = [
    "ProjectRequest",
    "aggregate_json",
    "create_project",
    "list_projects",
    "may_join",
    "member_json",
    "parse_project_request",
    "project_json",
    "round_json",
    "round_summary",
    "unit_key_json",
]
