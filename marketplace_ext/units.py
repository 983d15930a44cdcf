"""Units and their members: the service's own record of who belongs where.

The service is the source of truth for unit membership; :mod:`marketplace_ext.hubapi` mirrors it
into hub groups ``unit-<slug>``. Functions here take an open session and commit nothing: the
caller owns the transaction, so a failed mirror can still be rolled back.
"""

from __future__ import annotations

import asyncio
import re

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .errors import Conflict, InvalidField, NotFound
from .orm import Member, Unit, write_transaction

SLUG_RE = re.compile(r"^[a-z][a-z0-9]{0,30}$")
# jupyterhub accepts more, but a unit's slug also names a hub group and a Hive database
USER_RE = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,254}$")
#: the paper's unit types (section 2.2), with how pages label them
UNIT_TYPES = {
    "headquarters": "Headquarters",
    "provincial_company": "Provincial company",
    "research_institute": "Research institute",
    "industry_unit": "Industry unit",
}


def validate_slug(slug: object, field: str = "slug") -> str:
    if not isinstance(slug, str) or not slug:
        raise InvalidField(f"{field} is required: a short lowercase name such as 'a'", field)
    if not SLUG_RE.match(slug):
        raise InvalidField(
            f"{field} {slug!r} must start with a letter and contain only a-z and 0-9 "
            "(at most 31 characters)",
            field,
        )
    return slug


def validate_user_name(name: object, field: str = "user") -> str:
    if not isinstance(name, str) or not USER_RE.match(name):
        raise InvalidField(f"{field} {name!r} is not a valid hub user name", field)
    return name


def validate_unit_name(name: object, field: str = "name") -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidField(f"{field} is required: the unit's display name", field)
    if len(name) > 200:
        raise InvalidField(f"{field} is longer than 200 characters", field)
    return name.strip()


def validate_unit_type(value: object, field: str = "type") -> str:
    if not isinstance(value, str) or value not in UNIT_TYPES:  # ({} is not hashable)
        raise InvalidField(f"{field} must be one of {', '.join(UNIT_TYPES)}", field)
    return value


def set_unit_type(session: Session, slug: str, unit_type: object) -> Unit:
    """Change unit ``slug``'s type (an operator's action; the caller checks the scope)."""
    unit_type = validate_unit_type(unit_type)
    unit = get_unit(session, slug)
    unit.type = unit_type
    session.flush()
    return unit


def create_unit(session: Session, slug: str, name: str, actor: str,
                unit_type: str = "provincial_company") -> Unit:
    slug = validate_slug(slug)
    name = validate_unit_name(name)
    unit_type = validate_unit_type(unit_type)
    if session.scalar(select(Unit).where(Unit.slug == slug)) is not None:
        raise Conflict(f"a unit with slug {slug!r} already exists", "slug")
    unit = Unit(slug=slug, name=name, created_by=actor, type=unit_type)
    session.add(unit)
    try:
        session.flush()
    except IntegrityError as e:  # a concurrent create won the race
        raise Conflict(f"a unit with slug {slug!r} already exists", "slug") from e
    return unit


def get_unit(session: Session, slug: str, field: str = "unit") -> Unit:
    unit = session.scalar(select(Unit).where(Unit.slug == slug))
    if unit is None:
        raise NotFound(f"no unit {slug!r}", field)
    return unit


def list_units(session: Session) -> list[tuple[Unit, int]]:
    """All units with their member counts, by slug."""
    counts = (
        select(Member.unit_id, func.count().label("n")).group_by(Member.unit_id).subquery()
    )
    rows = session.execute(
        select(Unit, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.unit_id == Unit.id)
        .order_by(Unit.slug)
    )
    return [(unit, n) for unit, n in rows]


def unit_of(session: Session, user_name: str) -> Unit | None:
    member = session.get(Member, user_name)
    return member.unit if member is not None else None


def add_member(session: Session, slug: str, user_name: str, actor: str) -> tuple[Member, bool]:
    """Put ``user_name`` in unit ``slug``; returns the membership and whether it is new.

    A user belongs to exactly one unit: moving someone is an explicit remove, then add.
    """
    user_name = validate_user_name(user_name)
    unit = get_unit(session, slug)
    member = session.get(Member, user_name)
    if member is not None:
        if member.unit_id == unit.id:
            return member, False
        raise Conflict(
            f"user {user_name!r} already belongs to unit {member.unit.slug!r}; "
            "remove them there first",
            "user",
        )
    member = Member(user_name=user_name, unit=unit, added_by=actor)
    session.add(member)
    try:
        session.flush()
    except IntegrityError as e:
        raise Conflict(f"user {user_name!r} already belongs to a unit", "user") from e
    return member, True


def remove_member(session: Session, slug: str, user_name: str) -> None:
    unit = get_unit(session, slug)
    member = session.get(Member, user_name)
    if member is None or member.unit_id != unit.id:
        raise NotFound(f"user {user_name!r} is not a member of unit {slug!r}", "user")
    session.delete(member)
    session.flush()


class UnitDirectory:
    """Units and memberships kept in step with the hub's groups.

    The database commits first, then the hub is told; if the hub cannot be told, the database
    change is undone and :class:`UpstreamUnavailable` propagates, so neither side keeps a
    half-made unit or membership. :meth:`reconcile` repairs any drift (a crash between the two
    steps, an admin editing groups by hand) at start-up and periodically.
    """

    def __init__(self, session_factory, hub, on_created=None, executor=None):
        self.session_factory = session_factory
        self.hub = hub
        # called with (session, unit, actor) in a transaction of its own once the hub knows the
        # unit (the points economy opens its account); a crash before it is repaired at start-up
        self.on_created = on_created
        #: where the database steps run, never on the event loop (None: the loop's default
        #: executor)
        self.executor = executor

    async def _db(self, work, *args):
        """``work(session, *args)`` with a session of its own, off the event loop."""
        def run():
            with self.session_factory() as session:
                return work(session, *args)

        return await asyncio.get_running_loop().run_in_executor(self.executor, run)

    async def create_unit(self, slug: str, name: str, actor: str,
                          unit_type: str = "provincial_company") -> Unit:
        unit = await self._db(_create_unit, slug, name, actor, unit_type)
        try:
            await self.hub.ensure_group(unit.hub_group)
        except Exception:
            await self._db(_delete, Unit, unit.id)
            raise
        if self.on_created is not None:
            await self._db(self._created, unit.id, actor)
        return unit

    def _created(self, session: Session, unit_id: int, actor: str) -> None:
        write_transaction(session)
        self.on_created(session, session.get(Unit, unit_id), actor)
        session.commit()

    async def add_member(
        self, slug: str, user_name: str, actor: str, roles: set[str] | None = None
    ) -> tuple[Member, bool]:
        user_name = validate_user_name(user_name)
        await self._db(get_unit, slug)  # fail on an unknown unit before touching the hub
        await self.hub.ensure_user(user_name)
        member, created = await self._db(_add_member, slug, user_name, actor)
        try:
            await self.hub.add_to_group(f"unit-{slug}", [user_name])
            if roles is not None:
                await self.hub.set_roles(user_name, roles)
        except Exception:
            if created:
                await self._db(_delete, Member, user_name)
            raise
        return member, created

    async def remove_member(self, slug: str, user_name: str) -> None:
        # hub first: if it fails the membership stays whole on both sides
        await self._db(_remove_member, slug, user_name, False)  # the dry run
        await self.hub.remove_from_group(f"unit-{slug}", [user_name])
        await self._db(_remove_member, slug, user_name, True)

    async def reconcile(self) -> dict[str, int]:
        """Make every ``unit-<slug>`` hub group hold exactly the unit's members."""
        desired = await self._db(_desired_groups)
        added = removed = 0
        for group, members in desired.items():
            await self.hub.ensure_group(group)
            actual = await self.hub.group_members(group)
            for user in sorted(members - actual):
                await self.hub.ensure_user(user)
            await self.hub.add_to_group(group, sorted(members - actual))
            await self.hub.remove_from_group(group, sorted(actual - members))
            added += len(members - actual)
            removed += len(actual - members)
        return {"units": len(desired), "added": added, "removed": removed}


# the directory's database steps (each in its own session, off the event loop)


def _create_unit(session: Session, slug: str, name: str, actor: str, unit_type: str) -> Unit:
    write_transaction(session)
    unit = create_unit(session, slug, name, actor, unit_type)
    session.commit()
    return unit


def _add_member(session: Session, slug: str, user_name: str,
                actor: str) -> tuple[Member, bool]:
    write_transaction(session)
    member, created = add_member(session, slug, user_name, actor)
    session.commit()
    return member, created


def _remove_member(session: Session, slug: str, user_name: str, commit: bool) -> None:
    write_transaction(session)  # the dry run flushes a DELETE: "database is locked"
    remove_member(session, slug, user_name)  # on SQLite without the write lock
    if commit:
        session.commit()
    else:
        session.rollback()


def _delete(session: Session, model: type, key: object) -> None:
    session.delete(session.get(model, key))
    session.commit()


def _desired_groups(session: Session) -> dict[str, set[str]]:
    return {unit.hub_group: {m.user_name for m in unit.members}
            for unit in session.scalars(select(Unit))}
