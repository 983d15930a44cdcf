"""Operators' administration: units and their members (with roles), every points account, and a
unit's orders with refunds.

Each form does what its API call does, through the same domain functions: a new unit is
``POST api/units`` (:meth:`~marketplace_ext.units.UnitDirectory.create_unit`), a member
``PUT``/``DELETE api/units/{u}/members/{user}`` (``add_member``/``remove_member``, kept in step
with the hub's groups), a refund ``POST api/orders/{o}/refund``
(:func:`~marketplace_ext.points.refund`).
"""

from __future__ import annotations

from urllib.parse import quote

from tornado import web

from .. import ledger_views, points
from ..auth import SCOPE_APPROVE
from ..errors import InvalidField, MarketError
from ..hubapi import ROLE_GROUPS
from ..units import get_unit, list_units, validate_slug
from .base import PageHandler


def errors_for(error: MarketError, shown: tuple[str, ...]) -> dict:
    """The error next to its field when the form shows that field, else above the form."""
    return {error.field if error.field in shown else "_form": error.message}


class _AdminPage(PageHandler):
    nav = "admin"

    def check_before_body(self) -> None:
        self.caller.require(SCOPE_APPROVE, "administering units")

    def posted_form(self) -> dict:
        return {k: self.get_body_argument(k, "") for k in self.request.body_arguments}


class AdminPage(_AdminPage):
    """Units (with members and balance), a form for a new unit, and every account."""

    async def _render(self, status: int = 200, **ns) -> None:
        self.render_template("admin.html", status=status, **await self.in_db(_admin_namespace),
                             created=self.get_query_argument("created", ""), **ns)

    @web.authenticated
    async def get(self):
        self.caller.require(SCOPE_APPROVE, "administering units")
        await self._render()

    @web.authenticated
    async def post(self):
        self.caller.require(SCOPE_APPROVE, "creating a unit")
        try:
            slug = validate_slug(self.get_body_argument("slug", ""))
            unit = await self.market.units.create_unit(slug, self.get_body_argument("name", ""),
                                                       self.caller.name)
        except MarketError as e:
            await self._render(status=e.status, form=self.posted_form(),
                               errors=errors_for(e, ("slug", "name")))
            return
        self.redirect_after_post(f"admin?created={quote(unit.slug)}")


def _admin_namespace(session) -> dict:
    """Blocking (the db executor): every unit with its members and balance, every account."""
    units = [{"slug": u.slug, "name": u.name, "members": n,
              "balance": points.format_points(points.unit_account(session, u).balance)}
             for u, n in list_units(session)]
    return {"units": units, "accounts": ledger_views.all_accounts(session)}


def _unit_namespace(session, slug: str) -> dict:
    """Blocking (the db executor): a unit (404 if there is none), its members (without their
    roles: the hub's), its latest orders and its statement."""
    unit = get_unit(session, slug)
    members = [{"user": m.user_name, "added_at": m.added_at.isoformat() + "Z",
                "added_by": m.added_by} for m in unit.members]
    orders, total = ledger_views.list_orders(session, unit, 100, 0)
    return {"unit": {"slug": unit.slug, "name": unit.name}, "members": members,
            "orders": [ledger_views.order_json(o) for o in orders], "order_total": total,
            "statement": ledger_views.statement(session, points.unit_account(session, unit),
                                                20, 0)}


def _refund(session, unit: str, order_id: str, operator: str, reason: str) -> str:
    """Blocking (the db executor, one write transaction): refund an order of ``unit``."""
    order = points.get_order(session, order_id)
    if order.unit.slug != unit:
        raise InvalidField(f"order {order.id} is not an order of unit {unit}", "order")
    points.refund(session, order, operator, reason)
    return f"order {order.id} refunded"


async def with_roles(market, members: list[dict]) -> list[dict]:
    """``members`` (``{user, ...}``) with their marketplace roles, from the hub's groups."""
    role_members = {role: await market.hub.group_members(group)
                    for role, group in ROLE_GROUPS.items()}
    return [{**m, "roles": sorted(r for r, users in role_members.items() if m["user"] in users)}
            for m in members]


class AdminUnitPage(_AdminPage):
    """One unit: members (add with roles, remove), its orders (refund) and its statement."""

    async def _render(self, slug: str, status: int = 200, **ns) -> None:
        found = await self.in_db(_unit_namespace, slug)
        found["members"] = await with_roles(self.market, found["members"])  # the hub's groups
        self.render_template("admin_unit.html", status=status, **found,
                             roles=sorted(ROLE_GROUPS), done=self.get_query_argument("done", ""),
                             **ns)

    @web.authenticated
    async def get(self, unit):
        self.caller.require(SCOPE_APPROVE, "administering units")
        await self._render(unit)

    @web.authenticated
    async def post(self, unit):
        self.caller.require(SCOPE_APPROVE, "administering units")
        action = self.get_body_argument("action", "")
        try:
            done = await self._act(unit, action)
        except MarketError as e:
            await self._render(unit, status=e.status, form=self.posted_form(), failed=action,
                               errors=errors_for(e, ("user", "roles", "reason", "order")))
            return
        self.redirect_after_post(f"admin/units/{quote(unit)}?done={quote(done)}")

    async def _act(self, unit: str, action: str) -> str:
        caller = self.caller
        if action == "add":
            roles = set(self.get_body_arguments("roles"))
            if not roles <= set(ROLE_GROUPS):
                raise InvalidField(f"roles must be drawn from {sorted(ROLE_GROUPS)}", "roles")
            member, created = await self.market.units.add_member(
                unit, self.get_body_argument("user", ""), caller.name, roles)
            return f"{member.user_name} {'added' if created else 'updated'}"
        if action == "remove":
            user = self.get_body_argument("user", "")
            await self.market.units.remove_member(unit, user)
            return f"{user} removed"
        if action == "refund":
            reason = self.get_body_argument("reason", "").strip()
            if not reason:
                raise InvalidField("reason is required: why the order is refunded", "reason")
            return await self.in_write(_refund, unit, self.get_body_argument("order", ""),
                                       caller.name, reason)
        raise InvalidField("action must be add, remove or refund", "action")


default_handlers = [
    (r"/admin", AdminPage),
    (r"/admin/units/(?P<unit>[^/]+)", AdminUnitPage),
]
