"""JSON API of topic requests with escrowed bounties (issue 16 item 3); the contract is
``openapi_topics.yaml``. Thin: parse, call :mod:`marketplace_ext.exchange.topics` (which checks
who may act), commit, answer the topic as it now stands. A refusal raises before the commit,
so nothing of it is written."""

from __future__ import annotations

from tornado import web

from ..exchange import topics
from ..orm import utcnow
from .base import APIHandler


def topic_summary(session, topic, caller, now) -> dict:
    """A topic in a listing: the full view without the proposals' texts and the timeline."""
    data = topics.topic_json(session, topic, caller, now)
    data.pop("proposals")
    data.pop("steps")
    return data


def topics_listing(session, caller, status: str | None, unit: str | None, limit: int,
                   offset: int) -> tuple[list[dict], int]:
    """One page of topics as listed (:func:`topic_summary`) and the total."""
    now = utcnow()
    found, total = topics.list_topics(session, status=status, unit=unit, limit=limit,
                                      offset=offset, now=now)
    return [topic_summary(session, t, caller, now) for t in found], total


def topic_reading(session, caller, topic: str) -> dict:
    """The topic ``topic`` as the API shows it to the caller (404 if there is none)."""
    return topics.topic_json(session, topics.get_topic(session, topic), caller)


class TopicsHandler(APIHandler):
    @web.authenticated
    async def get(self):
        limit = self.int_argument("limit", 50, 1, 200)
        offset = self.int_argument("offset", 0, 0, 10**9)
        status = self.get_query_argument("status", None)
        unit = self.get_query_argument("unit", None)
        listed, total = await self.in_db(topics_listing, self.caller, status, unit, limit,
                                         offset)
        self.write_json({"topics": listed, "total": total, "limit": limit, "offset": offset})

    @web.authenticated
    async def post(self):
        topics.check_may_post(self.caller)
        now = utcnow()
        req = topics.validate_topic_request(self.json_body(), now)
        answer = await self.in_write(_post_topic, self.caller, req, now)
        self.set_header("Location", f"{self.market.service_prefix}api/topics/{answer['id']}")
        self.write_json(answer, status=201)


class TopicHandler(APIHandler):
    @web.authenticated
    async def get(self, topic):
        self.write_json(await self.in_db(topic_reading, self.caller, topic))


def _post_topic(session, caller, req, now) -> dict:
    topic = topics.post_topic(session, caller, req, now)
    session.flush()
    return topics.topic_json(session, topic, caller)


def _act(session, caller, topic: str, action, *args) -> dict:
    """Blocking (the db executor, one write transaction): ``action(session, caller, topic,
    *args)`` on the topic (404 first), then the topic as it now stands."""
    found = topics.get_topic(session, topic)
    action(session, caller, found, *args)
    session.flush()
    return topics.topic_json(session, found, caller)


class ProposalsHandler(APIHandler):
    @web.authenticated
    async def post(self, topic):
        body = self.json_body()
        self.write_json(await self.in_write(_act, self.caller, topic, topics.volunteer,
                                            body.get("text")), status=201)


class AssignmentHandler(APIHandler):
    @web.authenticated
    async def post(self, topic):
        body = self.json_body()
        self.write_json(await self.in_write(_act, self.caller, topic, topics.assign,
                                            body.get("proposal")))


class DeliveryHandler(APIHandler):
    @web.authenticated
    async def post(self, topic):
        body = self.json_body()
        self.write_json(await self.in_write(_act, self.caller, topic, topics.deliver,
                                            body.get("product"), body.get("version")))


class DecisionHandler(APIHandler):
    @web.authenticated
    async def post(self, topic):
        body = self.json_body()
        self.write_json(await self.in_write(_act, self.caller, topic, topics.decide,
                                            body.get("decision"), body.get("reason"),
                                            self.market.economy))


T = r"/api/topics/(?P<topic>[^/]+)"
default_handlers = [
    (r"/api/topics", TopicsHandler),
    (T, TopicHandler),
    (T + "/proposals", ProposalsHandler),
    (T + "/assignment", AssignmentHandler),
    (T + "/delivery", DeliveryHandler),
    (T + "/decision", DecisionHandler),
]
