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


class TopicsHandler(APIHandler):
    @web.authenticated
    def get(self):
        limit = self.int_argument("limit", 50, 1, 200)
        offset = self.int_argument("offset", 0, 0, 10**9)
        status = self.get_query_argument("status", None)
        unit = self.get_query_argument("unit", None)
        now = utcnow()
        found, total = topics.list_topics(self.db, status=status, unit=unit, limit=limit,
                                          offset=offset, now=now)
        self.write_json({"topics": [topic_summary(self.db, t, self.caller, now) for t in found],
                         "total": total, "limit": limit, "offset": offset})

    @web.authenticated
    def post(self):
        topics.check_may_post(self.caller)
        now = utcnow()
        req = topics.validate_topic_request(self.json_body(), now)
        topic = topics.post_topic(self.db, self.caller, req, now)
        self.db.commit()
        self.set_header("Location", f"{self.market.service_prefix}api/topics/{topic.id}")
        self.write_json(topics.topic_json(self.db, topic, self.caller), status=201)


class TopicHandler(APIHandler):
    @web.authenticated
    def get(self, topic):
        found = topics.get_topic(self.db, topic)
        self.write_json(topics.topic_json(self.db, found, self.caller))


class ProposalsHandler(APIHandler):
    @web.authenticated
    def post(self, topic):
        body = self.json_body()
        found = topics.get_topic(self.db, topic)
        topics.volunteer(self.db, self.caller, found, body.get("text"))
        self.db.commit()
        self.write_json(topics.topic_json(self.db, found, self.caller), status=201)


class AssignmentHandler(APIHandler):
    @web.authenticated
    def post(self, topic):
        body = self.json_body()
        found = topics.get_topic(self.db, topic)
        topics.assign(self.db, self.caller, found, body.get("proposal"))
        self.db.commit()
        self.write_json(topics.topic_json(self.db, found, self.caller))


class DeliveryHandler(APIHandler):
    @web.authenticated
    def post(self, topic):
        body = self.json_body()
        found = topics.get_topic(self.db, topic)
        topics.deliver(self.db, self.caller, found, body.get("product"), body.get("version"))
        self.db.commit()
        self.write_json(topics.topic_json(self.db, found, self.caller))


class DecisionHandler(APIHandler):
    @web.authenticated
    def post(self, topic):
        body = self.json_body()
        found = topics.get_topic(self.db, topic)
        topics.decide(self.db, self.caller, found, body.get("decision"), body.get("reason"),
                      self.market.economy)
        self.db.commit()
        self.write_json(topics.topic_json(self.db, found, self.caller))


T = r"/api/topics/(?P<topic>[^/]+)"
default_handlers = [
    (r"/api/topics", TopicsHandler),
    (T, TopicHandler),
    (T + "/proposals", ProposalsHandler),
    (T + "/assignment", AssignmentHandler),
    (T + "/delivery", DeliveryHandler),
    (T + "/decision", DecisionHandler),
]
