"""HTML pages of the service; browsers log in through hub OAuth (redirect)."""

from __future__ import annotations

from jupyterhub.services.auth import HubOAuthCallbackHandler
from tornado import web

from ..units import get_unit
from .base import BaseHandler


class PageHandler(BaseHandler):
    def render_template(self, name: str, **ns) -> None:
        template = self.settings["jinja_env"].get_template(name)
        ns.setdefault("prefix", self.market.service_prefix)
        ns.setdefault("hub_prefix", self.market.hub_prefix)
        self.finish(template.render(**ns))

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "message", None) or self._reason
        self.render_template("error.html", status_code=status_code, message=message)


class HomeHandler(PageHandler):
    @web.authenticated
    def get(self):
        caller = self.caller
        unit = get_unit(self.db, caller.unit) if caller.unit else None
        self.render_template("home.html", caller=caller, unit=unit)


default_handlers = [
    (r"/?", HomeHandler),
    (r"/oauth_callback", HubOAuthCallbackHandler),
]
