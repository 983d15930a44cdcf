"""What the federated zone's modules share: limits, states, field parsers, and who is a member
of a project and who may see it.

Visibility: a project's details (members, schedule, keys, rounds, per-unit weights, metrics)
are for its *approved* members, the initiator's unit and operators. Everyone else sees only the
public summary in the listing (:func:`marketplace_ext.federated.projects.list_projects`) and
gets 403 for the rest; a pending member learns its state from the listing and its join.
"""

from __future__ import annotations

import binascii
import json
import math
import re
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..auth import SCOPE_PUBLISH, Caller
from ..errors import Forbidden, InvalidField, NotFound
from ..ids import parse_id
from ..orm import Unit
from . import keys, packing
from .orm import FLMember, FLProject, FLRound

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
# a project that never finishes ends cancelled (its initiator, an operator) or failed (stalled
# rounds); its pool goes back to the initiator's unit (federated/ending.py)
CANCELLED, FAILED = "cancelled", "failed"
ENDED = (FINISHED, CANCELLED, FAILED)
OPEN, AGGREGATING, PUBLISHED, VOID = "open", "aggregating", "published", "void"
INITIATOR, PARTNER = "initiator", "partner"
SERVICE_ACTOR = "marketplace"
PENDING, APPROVED, REFUSED = "pending", "approved", "refused"
# the default of the service's fl_max_parameters trait: the theft detector has ~13k
DEFAULT_MAX_PARAMETERS = 200_000


# --- small parsers --------------------------------------------------------------------------


def int_field(
    body: dict, name: str, low: int, high: int, default: int | None = None, field: str | None = None
) -> int:
    field = field or name
    value = body.get(name, default)
    if value is None:
        raise InvalidField(f"{name} is required", field)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidField(f"{name} must be an integer", field)
    if not low <= value <= high:
        raise InvalidField(f"{name} must be between {low} and {high}", field)
    return value


def number_field(
    body: dict,
    name: str,
    low: float,
    high: float,
    default: float | None = None,
    field: str | None = None,
    low_open: bool = True,
) -> float:
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


def text_field(body: dict, name: str, max_len: int, default: str | None = None) -> str:
    value = body.get(name, default)
    if not isinstance(value, str) or not value.strip():
        raise InvalidField(f"{name} is required: a non-empty string", name)
    if len(value) > max_len:
        raise InvalidField(f"{name} is longer than {max_len} characters", name)
    return value.strip()


def reject_unknown(body: dict, allowed: set[str] | frozenset[str], prefix: str = "") -> None:
    """A 400 naming the first field of ``body`` that is not in ``allowed``."""
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise InvalidField(f"unknown field(s) {unknown}", f"{prefix}{unknown[0]}")


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


def is_json_object(value: object) -> bool:
    return isinstance(value, dict)


def caller_unit(session: Session, caller: Caller, action: str) -> Unit:
    caller.require(SCOPE_PUBLISH, action)
    if caller.unit is None:
        raise Forbidden(f"{action} is done on behalf of a unit; {caller.name} is in none", "unit")
    unit = session.scalar(select(Unit).where(Unit.slug == caller.unit))
    if unit is None:
        raise Forbidden(f"{caller.name}'s unit {caller.unit!r} no longer exists", "unit")
    return unit


# --- projects and members -------------------------------------------------------------------


def get_project(session: Session, ident: str | int) -> FLProject:
    project = session.get(FLProject, parse_id(ident, "federated project", "project"))
    if project is None:
        raise NotFound(f"no federated project {ident!r}", "project")
    return project


def spec_of(project: FLProject) -> packing.PackSpec:
    return packing.PackSpec.from_json(json.loads(project.pack_spec))


def iso(at: datetime | None) -> str | None:
    return at.isoformat() + "Z" if at else None


def membership(session: Session, project: FLProject, unit_slug: str | None) -> FLMember | None:
    """The unit's row in the project whatever its state (pending, refused, left...)."""
    if unit_slug is None:
        return None
    return session.scalar(
        select(FLMember)
        .join(Unit, Unit.id == FLMember.unit_id)
        .where(FLMember.project_id == project.id, Unit.slug == unit_slug)
    )


def membership_state(member: FLMember | None) -> str | None:
    """None (never asked), pending, approved, refused or left."""
    if member is None:
        return None
    if member.left_at is not None:
        return "left"
    return member.status


def member_of(
    session: Session, project: FLProject, unit_slug: str | None, active: bool = True
) -> FLMember | None:
    """The unit's membership if it takes part: approved (and, if ``active``, not left)."""
    member = membership(session, project, unit_slug)
    if member is None or member.status != APPROVED or (active and member.left_at is not None):
        return None
    return member


def require_member(session: Session, caller: Caller, project: FLProject, action: str) -> FLMember:
    member = member_of(session, project, caller.unit)
    if member is None:
        raise Forbidden(
            f"{action} is limited to the units taking part in project {project.name!r}", "unit"
        )
    return member


def require_acting_member(
    session: Session, caller: Caller, project: FLProject, action: str
) -> FLMember:
    caller.require(SCOPE_PUBLISH, action)
    return require_member(session, caller, project, action)


def may_view(session: Session, caller: Caller, project: FLProject) -> bool:
    """Whether the caller sees the project's details: operators, the initiator's unit and
    approved members that have not left."""
    return (
        caller.is_operator
        or (caller.unit is not None and caller.unit == project.unit.slug)
        or member_of(session, project, caller.unit) is not None
    )


def require_viewer(session: Session, caller: Caller, project: FLProject, action: str) -> None:
    if not may_view(session, caller, project):
        raise Forbidden(
            f"{action} is limited to the units taking part in project "
            f"{project.name!r} (and operators)",
            "unit",
        )


def active_members(session: Session, project: FLProject) -> list[FLMember]:
    """The members that take part: approved and not left (pending ones never count)."""
    return list(
        session.scalars(
            select(FLMember)
            .where(
                FLMember.project_id == project.id,
                FLMember.left_at.is_(None),
                FLMember.status == APPROVED,
            )
            .order_by(FLMember.id)
        )
    )


def allow_list_of(project: FLProject) -> list[str]:
    return json.loads(project.allow_list) if project.allow_list else []


def latest_round(session: Session, project: FLProject, number: int) -> FLRound | None:
    return session.scalar(
        select(FLRound)
        .where(FLRound.project_id == project.id, FLRound.number == number)
        .order_by(FLRound.attempt.desc())
        .limit(1)
    )


def get_round(session: Session, project: FLProject, number: int) -> FLRound:
    found = latest_round(session, project, number)
    if found is None:
        raise NotFound(f"project {project.name!r} has no round {number} (yet)", "round")
    return found
