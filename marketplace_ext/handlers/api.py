"""JSON REST handlers under ``api/``; the contract is ``openapi.yaml``."""

from __future__ import annotations

from sqlalchemy import text
from tornado import web

from .. import __version__
from ..auth import SCOPE_APPROVE
from ..errors import InvalidField
from ..hubapi import ROLE_GROUPS
from ..openapi import openapi_document
from ..units import get_unit, list_units, validate_slug
from .base import APIHandler


def unit_json(unit, member_count: int | None = None) -> dict:
    data = {"slug": unit.slug, "name": unit.name, "hub_group": unit.hub_group,
            "created_at": unit.created_at.isoformat() + "Z"}
    if member_count is not None:
        data["member_count"] = member_count
    return data


class HealthHandler(APIHandler):
    """Liveness for the launcher and probes; needs no login and reveals nothing private."""

    def get_current_user(self):
        return None

    def get(self):
        self.db.execute(text("SELECT 1"))
        self.write_json({"status": "ok", "version": __version__})


class OpenAPIHandler(APIHandler):
    def get_current_user(self):
        return None

    def get(self):
        self.write_json(openapi_document())


class MeHandler(APIHandler):
    @web.authenticated
    def get(self):
        caller = self.caller
        unit = get_unit(self.db, caller.unit) if caller.unit else None
        self.write_json({
            "name": caller.name,
            "unit": unit_json(unit) if unit else None,
            "roles": caller.roles,
            "scopes": sorted(caller.scopes),
        })


class UnitsHandler(APIHandler):
    @web.authenticated
    def get(self):
        self.write_json({"units": [unit_json(u, n) for u, n in list_units(self.db)]})

    @web.authenticated
    async def post(self):
        self.caller.require(SCOPE_APPROVE, "creating a unit")
        body = self.json_body()
        slug = validate_slug(body.get("slug"))
        if "name" not in body:
            raise InvalidField("name is required: the unit's display name", "name")
        unit = await self.market.units.create_unit(slug, body["name"], self.caller.name)
        self.set_header("Location", f"{self.market.service_prefix}api/units/{unit.slug}")
        self.write_json(unit_json(unit, 0), status=201)


class UnitHandler(APIHandler):
    @web.authenticated
    async def get(self, unit):
        unit = get_unit(self.db, unit)
        self.caller.require_unit_or_operator(unit.slug, "listing a unit's members")
        hub = self.market.hub
        role_members = {role: await hub.group_members(group) for role, group in ROLE_GROUPS.items()}
        members = [
            {
                "user": m.user_name,
                "roles": sorted(r for r, users in role_members.items() if m.user_name in users),
                "added_at": m.added_at.isoformat() + "Z",
                "added_by": m.added_by,
            }
            for m in unit.members
        ]
        self.write_json({**unit_json(unit, len(members)), "members": members})


class UnitMemberHandler(APIHandler):
    @web.authenticated
    async def put(self, unit, user):
        self.caller.require(SCOPE_APPROVE, "managing unit members")
        body = self.json_body() if self.request.body else {}
        roles = body.get("roles")
        if roles is not None:
            if not isinstance(roles, list) or not set(roles) <= set(ROLE_GROUPS):
                raise InvalidField(
                    f"roles must be a list drawn from {sorted(ROLE_GROUPS)}", "roles"
                )
            roles = set(roles)
        member, created = await self.market.units.add_member(
            unit, user, self.caller.name, roles
        )
        self.write_json(
            {"user": member.user_name, "unit": unit,
             "roles": await self.market.hub.roles_of(member.user_name)},
            status=201 if created else 200,
        )

    @web.authenticated
    async def delete(self, unit, user):
        self.caller.require(SCOPE_APPROVE, "managing unit members")
        await self.market.units.remove_member(unit, user)
        self.set_status(204)
        self.finish()


default_handlers = [
    (r"/api/health", HealthHandler),
    (r"/api/openapi.json", OpenAPIHandler),
    (r"/api/me", MeHandler),
    (r"/api/units", UnitsHandler),
    (r"/api/units/(?P<unit>[^/]+)", UnitHandler),
    (r"/api/units/(?P<unit>[^/]+)/members/(?P<user>[^/]+)", UnitMemberHandler),
]
