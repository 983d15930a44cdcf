"""Enrolment in a federated project: units' signing keys, joining, the initiator's approval,
members' signed X25519 keys and the Paillier private key wrapped for them.

* A unit registers an Ed25519 *signing key* once (a publisher of the unit; the private half
  stays in the unit's FL home). Only an operator replaces it. Both are certified in the log
  (``fl_unit_key``).
* A publisher of a unit asks to join. A unit on the project's allow-list is approved at once;
  any other waits ``pending`` until a publisher of the initiator's unit approves or refuses it.
  A pending unit sees only the public summary of the project, gets no wrapped key, sends no
  update and does not count toward a quorum.
* An approved member registers its X25519 key with its unit key's signature over
  :func:`keys.member_key_statement`; the service checks it, and every client checks it again
  against the unit's registered signing key before it wraps the Paillier private key for it
  (:func:`post_wrapped_key` stores only the wrapped blob).
"""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .. import certlog
from ..auth import SCOPE_PUBLISH, Caller
from ..errors import Conflict, Forbidden, InvalidField, NotFound
from ..orm import Unit, utcnow
from . import economy, keys
from .common import (
    APPROVED,
    ENDED,
    INITIATOR,
    MAX_WRAPPED_KEY_BYTES,
    PARTNER,
    PENDING,
    REFUSED,
    active_members,
    allow_list_of,
    caller_unit,
    is_json_object,
    member_of,
    membership,
    parse_x25519_key,
    reject_unknown,
    require_acting_member,
    require_member,
    spec_of,
)
from .orm import FLMember, FLProject, FLUnitKey

DECISIONS = {"approve": APPROVED, "refuse": REFUSED}


# --- units' signing keys --------------------------------------------------------------------


def parse_signing_key(value: object, field: str = "ed25519_public_key") -> str:
    """An Ed25519 public key, as the canonical URL-safe base64 of its 32 bytes."""
    try:
        raw = keys.decode_signing_public(value)
    except keys.KeyFormatError as e:
        raise InvalidField(
            f"{field} is not an Ed25519 public key (URL-safe base64 of 32 bytes): {e}", field
        ) from None
    return keys.encode_signing_public(raw)


def _unit(session: Session, slug: str) -> Unit:
    unit = session.scalar(select(Unit).where(Unit.slug == slug)) if len(slug) <= 64 else None
    if unit is None:
        raise NotFound(f"no unit {slug[:64]!r}", "unit")
    return unit


def get_unit_key(session: Session, slug: str) -> FLUnitKey:
    key = session.get(FLUnitKey, _unit(session, slug).id)
    if key is None:
        raise NotFound(f"unit {slug!r} has registered no signing key", "unit")
    return key


def register_unit_key(
    session: Session, caller: Caller, slug: str, public_key: str
) -> tuple[FLUnitKey, bool]:
    """Register a unit's signing key: the first time by a publisher of the unit, a replacement
    only by an operator (both certified). The same key again changes nothing. Returns
    ``(key, changed)``; needs a write transaction."""
    unit = _unit(session, slug)
    key = session.get(FLUnitKey, unit.id)
    if not caller.is_operator:
        caller.require(SCOPE_PUBLISH, "registering a unit's signing key")
        if caller.unit != slug:
            raise Forbidden(f"only unit {slug}'s publishers register its signing key", "unit")
    if key is not None and key.public_key == public_key:
        return key, False
    previous = key.public_key if key is not None else None
    if key is None:
        if caller.unit != slug:
            raise Forbidden(
                f"unit {slug} registers its first signing key itself (a publisher "
                "of the unit); operators only replace it",
                "unit",
            )
        key = FLUnitKey(
            unit_id=unit.id,
            public_key=public_key,
            registered_by=caller.name,
            registered_at=utcnow(),
        )
        session.add(key)
    elif not caller.is_operator:
        raise Conflict(
            f"unit {slug} has a registered signing key already; only an operator replaces it",
            "ed25519_public_key",
        )
    else:
        key.public_key, key.registered_by, key.registered_at = (public_key, caller.name, utcnow())
    try:
        session.flush()
    except IntegrityError:  # two first registrations at once
        raise Conflict(f"unit {slug} has just registered a signing key", "unit") from None
    key.log_index = certlog.append(
        session, "fl_unit_key", caller.name, slug, subject=public_key, previous=previous
    )
    session.flush()
    return key, True


def _verify_member_key(
    session: Session, project: FLProject, member: FLMember, x25519: str, signature: object
) -> str:
    if not isinstance(signature, str):
        raise InvalidField(
            "x25519_signature is required: the unit signing key's signature on the X25519 key",
            "x25519_signature",
        )
    unit_key = session.get(FLUnitKey, member.unit_id)
    if unit_key is None:
        raise Conflict(
            f"unit {member.unit.slug} has registered no signing key: register one "
            f"first (PUT api/fl/units/{member.unit.slug}/signing-key)",
            "unit",
        )
    try:
        keys.verify_member_key(unit_key.public_key, signature, project.id, member.unit.slug, x25519)
    except keys.KeySignatureError as e:
        raise InvalidField(str(e), "x25519_signature") from None
    return signature


# --- joining and the initiator's decision ---------------------------------------------------


def _check_room(session: Session, project: FLProject) -> None:
    limit = spec_of(project).max_parties
    if len(active_members(session, project)) >= limit:
        raise Conflict(
            f"project {project.name!r} has its {limit} parties already (max_parties)", "project"
        )


def join(
    session: Session,
    caller: Caller,
    project: FLProject,
    x25519_public_key: str | None,
    signature: object = None,
) -> tuple[FLMember, bool]:
    """Ask to join for the caller's unit (publishers only): approved at once when the unit is
    on the project's allow-list, else pending until the initiator's unit decides. A unit that
    left may ask again; a refused one may not. Asking again changes nothing. An optional
    X25519 key must come with its signature. Returns ``(member, created)``."""
    unit = caller_unit(session, caller, "joining a federated project")
    member = membership(session, project, unit.slug)
    now = utcnow()
    if member is not None and member.status == REFUSED:
        raise Conflict(
            f"the initiator's unit refused unit {unit.slug} in project {project.name!r}", "unit"
        )
    if member is not None and member.left_at is None:
        if x25519_public_key is not None and member.public_key != x25519_public_key:
            if member.public_key is not None:
                raise Conflict(
                    f"unit {unit.slug} is a member with another key; PUT "
                    "members/{unit} to replace it",
                    "x25519_public_key",
                )
            _set_key(
                member,
                x25519_public_key,
                _verify_member_key(session, project, member, x25519_public_key, signature),
                caller.name,
                now,
            )
            session.flush()
        return member, False
    if project.state in ENDED:
        raise Conflict(f"project {project.name!r} is {project.state}", "project")
    economy.require_data_access(session, project, unit)
    approved = unit.slug in allow_list_of(project)
    if approved:
        _check_room(session, project)
    if member is None:
        member = FLMember(
            project_id=project.id,
            unit_id=unit.id,
            role=PARTNER,
            joined_by=caller.name,
            joined_at=now,
        )
        session.add(member)
    else:  # coming back after leaving: a fresh start, its old keys are gone
        member.left_at, member.joined_by, member.joined_at = None, caller.name, now
        member.public_key = member.key_signature = None
        member.wrapped_key = member.wrapped_by = member.wrapped_at = None
    member.status = APPROVED if approved else PENDING
    member.decided_by = "allow_list" if approved else None
    member.decided_at = now if approved else None
    try:
        session.flush()
    except IntegrityError:  # the same unit joining twice at once
        raise Conflict(
            f"unit {unit.slug} has just joined project {project.name!r}", "unit"
        ) from None
    if x25519_public_key is not None:
        _set_key(
            member,
            x25519_public_key,
            _verify_member_key(session, project, member, x25519_public_key, signature),
            caller.name,
            now,
        )
        session.flush()
    return member, True


def decide(
    session: Session, caller: Caller, project: FLProject, unit_slug: str, body: dict
) -> FLMember:
    """The initiator's unit approves or refuses a unit that asked to join (a pending one; a
    refused one may still be approved later; refusing an approved member who has sent nothing
    is allowed, removing it from the rounds to come)."""
    decider = require_acting_member(session, caller, project, "deciding on a join request")
    if decider.role != INITIATOR:
        raise Forbidden(
            f"only the initiator's unit ({project.unit.slug}) decides who joins "
            f"project {project.name!r}",
            "unit",
        )
    reject_unknown(body, {"decision"})
    decision = body.get("decision")
    if not isinstance(decision, str) or decision not in DECISIONS:
        raise InvalidField('decision must be "approve" or "refuse"', "decision")
    member = membership(session, project, unit_slug)
    if member is None or member.left_at is not None:
        raise NotFound(
            f"unit {unit_slug[:64]!r} has not asked to join project {project.name!r}", "unit"
        )
    if member.role == INITIATOR:
        raise Conflict("the initiator's unit is a member of its own project", "unit")
    if project.state in ENDED:
        raise Conflict(f"project {project.name!r} is {project.state}", "project")
    status = DECISIONS[decision]
    if member.status == status:
        return member
    if status == APPROVED:
        _check_room(session, project)
    else:  # a refused unit holds nothing of the project's any more
        member.wrapped_key = member.wrapped_by = member.wrapped_at = None
    member.status, member.decided_by, member.decided_at = status, caller.name, utcnow()
    session.flush()
    return member


# --- members' keys --------------------------------------------------------------------------


def _set_key(member: FLMember, key: str, signature: str, actor: str, now: datetime) -> None:
    member.public_key, member.key_signature = key, signature
    member.key_registered_by, member.key_registered_at = actor, now
    # a wrapped key opens only with the key it was wrapped for
    member.wrapped_key = member.wrapped_by = member.wrapped_at = None


def register_key(
    session: Session, caller: Caller, project: FLProject, unit_slug: str, body: dict
) -> FLMember:
    """Register or replace the X25519 key of the caller's own (approved) unit, signed with the
    unit's signing key; a replaced key drops the unit's wrapped key, and the unit waits for a
    member to wrap the Paillier key again."""
    member = require_acting_member(session, caller, project, "registering a member key")
    if unit_slug != caller.unit:
        raise Forbidden(f"only members of unit {unit_slug[:64]!r} register its key", "unit")
    reject_unknown(body, {"x25519_public_key", "x25519_signature"})
    key = parse_x25519_key(body.get("x25519_public_key"))
    signature = _verify_member_key(session, project, member, key, body.get("x25519_signature"))
    if member.public_key != key or member.key_signature != signature:
        if member.public_key == key:  # re-signed (e.g. after the unit key was replaced)
            member.key_signature = signature
        else:
            _set_key(member, key, signature, caller.name, utcnow())
    session.flush()
    return member


def leave(session: Session, caller: Caller, project: FLProject, unit_slug: str) -> FLMember:
    """The caller's unit leaves (or withdraws its request to join): it can no longer send
    updates or read aggregates; rounds go on without it. The initiator's unit stays."""
    caller.require(SCOPE_PUBLISH, "leaving a federated project")
    if unit_slug != caller.unit:
        raise Forbidden(f"only members of unit {unit_slug[:64]!r} take it out of a project", "unit")
    member = membership(session, project, caller.unit)
    if member is None or member.left_at is not None or member.status == REFUSED:
        raise Forbidden(f"unit {caller.unit} is not in project {project.name!r}", "unit")
    if member.role == INITIATOR:
        raise Conflict("the initiator's unit cannot leave its own project", "unit")
    member.left_at = utcnow()
    session.flush()
    return member


def holds_key(member: FLMember) -> bool:
    # the initiator's client generated the key pair; others hold it once it was wrapped for them
    return member.role == INITIATOR or member.wrapped_key is not None


def keys_json(session: Session, caller: Caller, project: FLProject) -> dict:
    """The caller unit's wrapped key (if any) and the approved members awaiting one, each with
    its key's signature and its unit's registered signing key for the client to check."""
    member = require_member(session, caller, project, "reading wrapped keys")
    awaiting = []
    for m in active_members(session, project):
        if m.public_key is None or m.key_signature is None or holds_key(m):
            continue
        unit_key = session.get(FLUnitKey, m.unit_id)
        awaiting.append(
            {
                "unit": m.unit.slug,
                "x25519_public_key": m.public_key,
                "x25519_signature": m.key_signature,
                "ed25519_public_key": unit_key.public_key if unit_key else None,
            }
        )
    return {
        "key_fingerprint": project.key_fingerprint,
        "unit": member.unit.slug,
        "x25519_public_key": member.public_key,
        "wrapped_key": json.loads(member.wrapped_key) if member.wrapped_key else None,
        "wrapped_by": member.wrapped_by,
        "holds_key": holds_key(member),
        "awaiting": awaiting,
    }


def post_wrapped_key(session: Session, caller: Caller, project: FLProject, body: dict) -> FLMember:
    """A key-holding member's client posts the Paillier private key wrapped for an approved
    member awaiting it, whose X25519 key is signed by its unit. The first wrapped key for the
    member's current X25519 key wins."""
    poster = require_acting_member(session, caller, project, "posting a wrapped key")
    if not holds_key(poster):
        raise Forbidden(
            f"unit {poster.unit.slug} holds no key for project {project.name!r} "
            "yet, so it cannot wrap one",
            "unit",
        )
    reject_unknown(body, {"unit", "x25519_public_key", "key_fingerprint", "wrapped_key"})
    target_slug = body.get("unit")
    if not isinstance(target_slug, str):
        raise InvalidField("unit is required: the member the key is wrapped for", "unit")
    target = member_of(session, project, target_slug)
    if target is None:
        raise NotFound(
            f"unit {target_slug[:64]!r} is not an approved member of project {project.name!r}",
            "unit",
        )
    fingerprint = body.get("key_fingerprint")
    if fingerprint != project.key_fingerprint:
        raise Conflict(
            "key_fingerprint is not the project's key: the wrapped key is of a stale "
            "or foreign key",
            "key_fingerprint",
        )
    recipient = parse_x25519_key(body.get("x25519_public_key"))
    if target.public_key is None or recipient != target.public_key:
        raise Conflict(
            f"unit {target_slug} has registered another X25519 key since; wrap for its current key",
            "x25519_public_key",
        )
    unit_key = session.get(FLUnitKey, target.unit_id)
    try:
        if unit_key is None:
            raise keys.KeySignatureError(f"unit {target_slug} has registered no signing key")
        keys.verify_member_key(
            unit_key.public_key, target.key_signature, project.id, target_slug, target.public_key
        )
    except keys.KeySignatureError as e:
        raise Conflict(
            f"unit {target_slug}'s X25519 key is not signed by its registered "
            f"signing key ({e}); it must register its key again",
            "x25519_public_key",
        ) from None
    if holds_key(target):
        raise Conflict(f"unit {target_slug} holds the key already", "unit")
    wrapped = body.get("wrapped_key")
    if not is_json_object(wrapped):
        raise InvalidField(
            "wrapped_key must be the JSON object the client's wrapping made", "wrapped_key"
        )
    text = json.dumps(wrapped, sort_keys=True)
    if len(text) > MAX_WRAPPED_KEY_BYTES:
        raise InvalidField(
            f"wrapped_key is larger than {MAX_WRAPPED_KEY_BYTES} bytes", "wrapped_key"
        )
    target.wrapped_key, target.wrapped_by, target.wrapped_at = text, caller.name, utcnow()
    session.flush()
    return target
