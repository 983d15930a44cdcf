"""Topic request pages: the board (filter by status), posting a topic with its bounty, and a
topic's page with its escrow, proposals, delivery, certified timeline and the actions the
caller may take (volunteer, assign, deliver, accept, reject).

Handlers only turn the form into the API's values, call :mod:`marketplace_ext.exchange.topics`
(the same functions as ``api/topics``) and render; a refused action shows the API's error next
to its field, with nothing written."""

from __future__ import annotations

import re

from sqlalchemy import select
from tornado import web

from .. import points
from ..errors import InvalidField, MarketError
from ..exchange import topics
from ..orm import Product, Unit, utcnow
from .base import PageHandler

NOTICES = {
    "posted": "Topic posted. Its bounty is held in escrow until you accept a delivery or the "
              "deadline passes.",
    "volunteer": "Your unit volunteered. The requesting unit decides whom to assign.",
    "assign": "The topic is assigned; the assignee's unit was notified.",
    "deliver": "Delivered. The requesting unit accepts or rejects it.",
    "accept": "Accepted: the bounty was paid to the assignee's unit, less the fee.",
    "reject": "Rejected: the topic is open again.",
}
ACTIONS = ("volunteer", "assign", "deliver", "accept", "reject")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
#: the new-topic form's fields: an error naming another field goes above the form
FORM_FIELDS = frozenset(("title", "description", "data_offered", "bounty", "deadline"))


def topic_request_body(form: dict[str, str]) -> dict:
    """The ``POST api/topics`` body a filled-in form stands for: the bounty as a whole number,
    a date deadline as the end of that day (UTC)."""
    body: dict = {k: form.get(k, "") for k in ("title", "description", "data_offered")}
    raw = form.get("bounty", "").strip()
    if not raw.isdigit():
        raise InvalidField("bounty must be a whole number of points", "bounty")
    body["bounty"] = int(raw)
    deadline = form.get("deadline", "").strip()
    body["deadline"] = f"{deadline}T23:59:59Z" if DATE_RE.match(deadline) else deadline
    return body


def _own_products(session, caller) -> list[dict]:
    """The caller's unit's products with a version on the shelf (what a delivery may link)."""
    if caller.unit is None:
        return []
    found = session.scalars(select(Product).join(Unit, Unit.id == Product.unit_id)
                            .where(Unit.slug == caller.unit).order_by(Product.name)).all()
    return [{"name": p.name, "version": p.current_version.version} for p in found
            if p.current_version is not None and p.current_version.state == "on_shelf"]


class TopicsPage(PageHandler):
    """Every topic, newest first; filter by status."""

    nav = "topics"

    @web.authenticated
    def get(self):
        status = self.get_query_argument("status", "")
        now = utcnow()
        found, total = topics.list_topics(self.db, status=status or None, limit=200, now=now)
        items = [topics.topic_json(self.db, t, self.caller, now) for t in found]
        # (not ``status=``: render_template's own argument is the HTTP status)
        self.render_template("topics.html", topics=items, total=total, wanted=status,
                             statuses=topics.STATUSES)


class TopicNewPage(PageHandler):
    """Post a topic: title, description, the data offered, a deadline and a bounty."""

    nav = "topics"

    def _balance(self) -> str | None:
        if self.caller.unit is None:
            return None
        unit = self.db.scalar(select(Unit).where(Unit.slug == self.caller.unit))
        return points.format_points(points.unit_account(self.db, unit).balance)

    @web.authenticated
    def get(self):
        self.render_template("topic_new.html", balance=self._balance())

    @web.authenticated
    def post(self):
        form = {k: self.get_body_argument(k, "") for k in self.request.body_arguments}
        try:
            topics.check_may_post(self.caller)
            now = utcnow()
            req = topics.validate_topic_request(topic_request_body(form), now)
            topic = topics.post_topic(self.db, self.caller, req, now)
            self.db.commit()
        except MarketError as e:
            self.db.rollback()
            if e.field not in FORM_FIELDS:
                e.field = None
            self.render_form_error("topic_new.html", e, balance=self._balance())
            return
        self.redirect_after_post(f"topics/{topic.id}?done=posted")


class TopicPage(PageHandler):
    """One topic; its forms POST here with an ``action``."""

    nav = "topics"

    def page_namespace(self, topic_id: str) -> dict:
        topic = topics.get_topic(self.db, topic_id)
        return {"topic": topics.topic_json(self.db, topic, self.caller),
                "products": _own_products(self.db, self.caller),
                "notice": NOTICES.get(self.get_query_argument("done", ""))}

    @web.authenticated
    def get(self, topic):
        self.render_template("topic.html", **self.page_namespace(topic))

    @web.authenticated
    def post(self, topic):
        action = self.get_body_argument("action", "")
        arg = self.get_body_argument
        try:
            if action not in ACTIONS:
                raise InvalidField(f"action must be one of {', '.join(ACTIONS)}", "action")
            found = topics.get_topic(self.db, topic)
            if action == "volunteer":
                topics.volunteer(self.db, self.caller, found, arg("text", ""))
            elif action == "assign":
                raw = arg("proposal", "")
                if not raw.isdigit():
                    raise InvalidField("proposal must be the id of a proposal", "proposal")
                topics.assign(self.db, self.caller, found, int(raw))
            elif action == "deliver":
                product, _, version = arg("product", "").partition("@")
                topics.deliver(self.db, self.caller, found, product, version)
            else:
                topics.decide(self.db, self.caller, found, action, arg("reason", ""),
                              self.market.economy)
            self.db.commit()
        except MarketError as e:
            self.db.rollback()
            form = {k: self.get_body_argument(k, "") for k in self.request.body_arguments}
            # the text boxes show their own error; the buttons' errors go above them, with
            # the field the API names
            key = e.field if e.field in ("text", "reason") else "_form"
            message = f"{e.field}: {e.message}" if key == "_form" and e.field else e.message
            self.render_template("topic.html", status=e.status, errors={key: message},
                                 form=form, **self.page_namespace(topic))
            return
        self.redirect_after_post(f"topics/{found.id}?done={action}")


default_handlers = [
    (r"/topics", TopicsPage),
    (r"/topics/new", TopicNewPage),
    (r"/topics/(?P<topic>[0-9]+)", TopicPage),
]
