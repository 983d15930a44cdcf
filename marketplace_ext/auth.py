"""Who is calling: the hub user behind a request, their unit and their marketplace roles.

Roles come from the custom scopes the hub granted to the caller's token (through roles on the
``publishers`` and ``operators`` groups), so a notebook token and a browser session of the same
user have exactly the same rights. The unit comes from the service's own membership table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jupyterhub.services.auth import HubAuth

from .errors import Forbidden

SCOPE_SUBSCRIBE = "custom:marketplace:subscribe"
SCOPE_PUBLISH = "custom:marketplace:publish"
SCOPE_APPROVE = "custom:marketplace:approve"

CUSTOM_SCOPES = {
    SCOPE_SUBSCRIBE: {
        "description": "Browse the shelf, order products for your unit and use what it bought.",
    },
    SCOPE_PUBLISH: {
        "description": "Submit products and new versions on behalf of your unit.",
    },
    SCOPE_APPROVE: {
        "description": "Review listings, take products off the shelf, manage units and members, "
        "see every transaction.",
    },
}

ROLE_OF_SCOPE = {
    SCOPE_SUBSCRIBE: "subscriber",
    SCOPE_PUBLISH: "publisher",
    SCOPE_APPROVE: "operator",
}


@dataclass(frozen=True)
class Caller:
    """An authenticated hub user as the marketplace sees them."""

    name: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    unit: str | None = None

    @property
    def roles(self) -> list[str]:
        return sorted(role for scope, role in ROLE_OF_SCOPE.items() if scope in self.scopes)

    @property
    def is_operator(self) -> bool:
        return SCOPE_APPROVE in self.scopes

    def require(self, scope: str, action: str) -> None:
        """Raise :class:`Forbidden` unless the caller holds ``scope``."""
        if scope not in self.scopes:
            role = ROLE_OF_SCOPE.get(scope, scope)
            raise Forbidden(f"{action} needs the {role} role ({scope}); {self.name} lacks it")

    def require_unit_or_operator(self, unit: str, action: str) -> None:
        if not self.is_operator and self.unit != unit:
            raise Forbidden(
                f"{action} is limited to members of unit {unit!r} and operators", "unit"
            )


def caller_from_model(hub_auth: HubAuth, model: dict, unit: str | None) -> Caller:
    """Build a :class:`Caller` from the hub's user model of the request's token.

    ``check_scopes`` expands filters (``!user=``, ``!service=``) the way the hub does; a
    custom scope is held unfiltered or not at all.
    """
    held = hub_auth.check_scopes(set(ROLE_OF_SCOPE), model)
    return Caller(name=model["name"], scopes=frozenset(held), unit=unit)
