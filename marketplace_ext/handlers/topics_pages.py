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


def _board(session, caller, status: str) -> dict:
    """Blocking (the db executor): every topic (or those of one status), newest first."""
    now = utcnow()
    found, total = topics.list_topics(session, status=status or None, limit=200, now=now)
    return {"topics": [topics.topic_json(session, t, caller, now) for t in found],
            "total": total}


def _balance(session, caller) -> str | None:
    """The caller's unit's balance as shown (None outside any unit)."""
    if caller.unit is None:
        return None
    unit = session.scalar(select(Unit).where(Unit.slug == caller.unit))
    return points.format_points(points.unit_account(session, unit).balance)


def _topic_namespace(session, caller, topic_id: str, done: str) -> dict:
    """Blocking (the db executor): a topic's page, with the products a delivery may link."""
    topic = topics.get_topic(session, topic_id)
    return {"topic": topics.topic_json(session, topic, caller),
            "products": _own_products(session, caller), "notice": NOTICES.get(done)}


class TopicsPage(PageHandler):
    """Every topic, newest first; filter by status."""

    nav = "topics"

    @web.authenticated
    async def get(self):
        status = self.get_query_argument("status", "")
        # (not ``status=``: render_template's own argument is the HTTP status)
        await self.render_from_db("topics.html", _board, self.caller, status, wanted=status,
                                  statuses=topics.STATUSES)


class TopicNewPage(PageHandler):
    """Post a topic: title, description, the data offered, a deadline and a bounty."""

    nav = "topics"

    @web.authenticated
    async def get(self):
        self.render_template("topic_new.html", balance=await self.in_db(_balance, self.caller))

    @web.authenticated
    async def post(self):
        form = {k: self.get_body_argument(k, "") for k in self.request.body_arguments}
        try:
            topics.check_may_post(self.caller)
            now = utcnow()
            req = topics.validate_topic_request(topic_request_body(form), now)
            topic_id = await self.in_write(_post_topic, self.caller, req, now)
        except MarketError as e:  # rolled back: nothing written
            if e.field not in FORM_FIELDS:
                e.field = None
            self.render_form_error("topic_new.html", e,
                                   balance=await self.in_db(_balance, self.caller))
            return
        self.redirect_after_post(f"topics/{topic_id}?done=posted")


class TopicPage(PageHandler):
    """One topic; its forms POST here with an ``action``."""

    nav = "topics"

    @web.authenticated
    async def get(self, topic):
        await self.render_from_db("topic.html", _topic_namespace, self.caller, topic,
                                  self.get_query_argument("done", ""))

    @web.authenticated
    async def post(self, topic):
        action = self.get_body_argument("action", "")
        arg = self.get_body_argument
        fields = {k: arg(k, "") for k in ("text", "proposal", "product", "reason")}
        try:
            if action not in ACTIONS:
                raise InvalidField(f"action must be one of {', '.join(ACTIONS)}", "action")
            topic_id = await self.in_write(_topic_action, self.caller, topic, action, fields,
                                           self.market.economy)
        except MarketError as e:  # rolled back: nothing written
            form = {k: self.get_body_argument(k, "") for k in self.request.body_arguments}
            # the text boxes show their own error; the buttons' errors go above them, with
            # the field the API names
            key = e.field if e.field in ("text", "reason") else "_form"
            message = f"{e.field}: {e.message}" if key == "_form" and e.field else e.message
            await self.render_from_db("topic.html", _topic_namespace, self.caller, topic,
                                      self.get_query_argument("done", ""), status=e.status,
                                      errors={key: message}, form=form)
            return
        self.redirect_after_post(f"topics/{topic_id}?done={action}")


def _post_topic(session, caller, req, now) -> int:
    """Blocking (the db executor, one write transaction): the topic posted; its id."""
    topic = topics.post_topic(session, caller, req, now)
    session.flush()
    return topic.id


def _topic_action(session, caller, topic: str, action: str, form: dict, economy) -> int:
    """Blocking (the db executor, one write transaction): one of :data:`ACTIONS` on the
    topic (404 first); its id."""
    found = topics.get_topic(session, topic)
    if action == "volunteer":
        topics.volunteer(session, caller, found, form["text"])
    elif action == "assign":
        raw = form["proposal"]
        if not raw.isdigit():
            raise InvalidField("proposal must be the id of a proposal", "proposal")
        topics.assign(session, caller, found, int(raw))
    elif action == "deliver":
        product, _, version = form["product"].partition("@")
        topics.deliver(session, caller, found, product, version)
    else:
        topics.decide(session, caller, found, action, form["reason"], economy)
    session.flush()
    return found.id


default_handlers = [
    (r"/topics", TopicsPage),
    (r"/topics/new", TopicNewPage),
    (r"/topics/(?P<topic>[0-9]+)", TopicPage),
]
