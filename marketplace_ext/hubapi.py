"""The hub's REST API as the marketplace service uses it, with the service's own token.

Only groups and users: units are mirrored as ``unit-<slug>`` groups and roles live in the
``publishers`` and ``operators`` groups, so the hub's scopes follow what the service decides.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .errors import UpstreamUnavailable

ROLE_GROUPS = {"publisher": "publishers", "operator": "operators"}


class HubAPI:
    """Thin async wrapper over ``/hub/api`` (groups and users)."""

    def __init__(self, api_url: str, token: str, timeout: float = 10.0):
        self.api_url = api_url.rstrip("/")
        self._token = token
        self.timeout = timeout

    async def _request(self, method: str, path: str, body: object = None, ok404: bool = False):
        req = HTTPRequest(
            f"{self.api_url}/{path}",
            method=method,
            headers={"Authorization": f"token {self._token}", "Content-Type": "application/json"},
            body=None if body is None else json.dumps(body),
            allow_nonstandard_methods=True,
            request_timeout=self.timeout,
        )
        try:
            resp = await AsyncHTTPClient().fetch(req)
        except HTTPClientError as e:
            if ok404 and e.code == 404:
                return None
            detail = ""
            if e.response is not None and e.response.body:
                detail = e.response.body.decode("utf8", "replace")[:200]
            raise UpstreamUnavailable(
                f"hub API {method} {path} answered {e.code} {detail}".strip()
            ) from e
        except OSError as e:
            raise UpstreamUnavailable(f"hub API unreachable at {self.api_url}: {e}") from e
        return json.loads(resp.body) if resp.body else None

    async def get_user(self, name: str) -> dict | None:
        return await self._request("GET", f"users/{quote(name)}", ok404=True)

    async def ensure_user(self, name: str) -> dict:
        """The hub user ``name``, created if the hub does not know it yet.

        NativeAuthenticator records sign-ups in its own table; the hub user row only appears at
        first login, so a freshly authorized user may not exist in the hub yet.
        """
        user = await self.get_user(name)
        if user is None:
            user = await self._request("POST", f"users/{quote(name)}", {})
        return user

    async def get_group(self, name: str) -> dict | None:
        return await self._request("GET", f"groups/{quote(name)}", ok404=True)

    async def ensure_group(self, name: str) -> dict:
        group = await self.get_group(name)
        if group is None:
            group = await self._request("POST", f"groups/{quote(name)}", {})
        return group

    async def delete_group(self, name: str) -> None:
        await self._request("DELETE", f"groups/{quote(name)}", ok404=True)

    async def add_to_group(self, group: str, users: list[str]) -> None:
        if users:
            await self._request("POST", f"groups/{quote(group)}/users", {"users": users})

    async def remove_from_group(self, group: str, users: list[str]) -> None:
        if users:
            await self._request("DELETE", f"groups/{quote(group)}/users", {"users": users})

    async def group_members(self, group: str) -> set[str]:
        model = await self.get_group(group)
        return set(model["users"]) if model else set()

    async def roles_of(self, user: str) -> list[str]:
        """Role names (``publisher``, ``operator``) a user holds through the role groups."""
        model = await self.get_user(user)
        groups = set(model.get("groups", [])) if model else set()
        return sorted(role for role, group in ROLE_GROUPS.items() if group in groups)

    async def set_roles(self, user: str, roles: set[str]) -> None:
        model = await self.ensure_user(user)
        groups = set(model.get("groups", []))
        for role, group in ROLE_GROUPS.items():
            if role in roles and group not in groups:
                await self.ensure_group(group)
                await self.add_to_group(group, [user])
            elif role not in roles and group in groups:
                await self.remove_from_group(group, [user])
