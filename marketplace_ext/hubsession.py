"""A browser-like session against the hub: NativeAuthenticator sign-up, login, authorization,
hub OAuth into the marketplace, and cookie-authenticated API calls with the xsrf header.

Used by ``market demo seed`` (which sets the demo up through the same pages a person uses) and
by the integration tests.
"""

from __future__ import annotations

import re

import requests


class HubPageError(RuntimeError):
    """A hub page answered something other than what the flow expects."""


def _alert(html: str) -> tuple[str, str]:
    """The (level, text) of the page's alert box, e.g. ("alert-danger", "...")."""
    match = re.search(r'<div class="alert (alert-\w+)"[^>]*>(.*?)</div>', html, re.S)
    if not match:
        return "", ""
    text = re.sub(r"<[^>]+>", " ", match.group(2))
    return match.group(1), re.sub(r"\s+", " ", text).strip()


class HubSession:
    """One person's browser: a cookie jar on ``base_url`` (e.g. http://127.0.0.1:8000)."""

    def __init__(self, base_url: str, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.http = requests.Session()
        self.timeout = timeout
        self.name: str | None = None

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def _xsrf_for(self, path: str) -> str:
        """GET a form page so the hub sets its ``_xsrf`` cookie, and return the token."""
        r = self.http.get(self.url(path), timeout=self.timeout)
        r.raise_for_status()
        match = re.search(r'name="_xsrf" value="([^"]+)"', r.text)
        if match:
            return match.group(1)
        return self.http.cookies.get("_xsrf", path="/hub/") or self.http.cookies.get("_xsrf", "")

    def signup(self, username: str, password: str, email: str = "") -> str:
        """Fill in the sign-up form; returns the page's message. Raises if it was refused."""
        xsrf = self._xsrf_for("hub/signup")
        r = self.http.post(
            self.url("hub/signup"),
            data={
                "_xsrf": xsrf,
                "username": username,
                "email": email or f"{username}@example.invalid",
                "signup_password": password,
                "signup_password_confirmation": password,
            },
            timeout=self.timeout,
        )
        r.raise_for_status()
        level, message = _alert(r.text)
        if level == "alert-danger":
            raise HubPageError(f"sign-up of {username!r} refused: {message}")
        return message

    def login(self, username: str, password: str) -> None:
        xsrf = self._xsrf_for("hub/login")
        r = self.http.post(
            self.url("hub/login"),
            data={"_xsrf": xsrf, "username": username, "password": password},
            allow_redirects=False,
            timeout=self.timeout,
        )
        if r.status_code != 302:
            raise HubPageError(
                f"login of {username!r} failed ({r.status_code}): {_alert(r.text)[1] or r.reason}"
            )
        self.name = username

    def toggle_authorization(self, username: str) -> None:
        """As an operator: flip a sign-up's authorization on NativeAuthenticator's page."""
        r = self.http.get(self.url(f"hub/authorize/{username}"), timeout=self.timeout)
        if r.status_code != 200 or "/hub/login" in r.url:
            raise HubPageError(f"authorizing {username!r} failed ({r.status_code})")

    def sign_ups(self) -> dict[str, bool]:
        """As an operator: every sign-up and whether it is authorized (the authorization page)."""
        r = self.http.get(self.url("hub/authorize"), timeout=self.timeout)
        r.raise_for_status()
        rows = re.findall(r'<tr( class="success")? id=([^ >]+)>', r.text)
        return {name: bool(ok) for ok, name in rows}

    def authorize(self, username: str) -> None:
        """As an operator: authorize a sign-up unless it already is (the page only toggles)."""
        if not self.sign_ups().get(username, False):
            self.toggle_authorization(username)

    def hub_api(self, method: str, path: str, **kwargs) -> requests.Response:
        """The hub REST API with the login cookie (writes send the xsrf header)."""
        headers = kwargs.pop("headers", {})
        xsrf = self.http.cookies.get("_xsrf", path="/hub/")
        if xsrf:
            headers["X-XSRFToken"] = xsrf
        return self.http.request(method, self.url(f"hub/api/{path.lstrip('/')}"),
                                 headers=headers, timeout=self.timeout, **kwargs)

    def create_token(self, note: str = "market", scopes: list[str] | None = None,
                     expires_in: int | None = None) -> str:
        body: dict = {"note": note}
        if expires_in is not None:
            body["expires_in"] = expires_in
        if scopes is not None:
            body["scopes"] = scopes
        r = self.hub_api("POST", f"users/{self.name}/tokens", json=body)
        r.raise_for_status()
        return r.json()["token"]

    # --- the marketplace service through hub OAuth -------------------------------------------

    def open_marketplace(self) -> requests.Response:
        """Visit the marketplace page: the hub OAuth dance sets the service's cookie."""
        r = self.http.get(self.url("services/marketplace/"), timeout=self.timeout)
        r.raise_for_status()
        return r

    def market(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = kwargs.pop("headers", {})
        xsrf = self.http.cookies.get("_xsrf", path="/services/marketplace/")
        if xsrf:
            headers["X-XSRFToken"] = xsrf
        return self.http.request(
            method, self.url(f"services/marketplace/api/{path.lstrip('/')}"),
            headers=headers, allow_redirects=False, timeout=self.timeout, **kwargs
        )
