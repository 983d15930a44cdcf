"""Topic requests with escrowed bounties against the real databases (SQLite and PostgreSQL):
the worked example (a 40-point bounty, 6 % fee), expiry, rejection, bad input with the ledger
untouched, every step certified, and a Hypothesis state machine checking conservation across
posts, proposals, assignments, deliveries, acceptances, rejections, expiries and concurrent
actions."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from helpers import run_state_machine
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlalchemy import func, select
from test_points import check_ledger, make_product, make_unit

from marketplace_ext import dbutil, ledger_views, points
from marketplace_ext.auth import SCOPE_APPROVE, SCOPE_PUBLISH, SCOPE_SUBSCRIBE, Caller
from marketplace_ext.errors import Conflict, Forbidden, InvalidField, MarketError, NotFound
from marketplace_ext.exchange import topics
from marketplace_ext.exchange.inbox_orm import Notification
from marketplace_ext.exchange.topics_orm import Topic, TopicEvent
from marketplace_ext.orm import (
    Account,
    LedgerTransfer,
    LogEntry,
    Member,
    Unit,
    make_engine,
    make_session_factory,
    utcnow,
    write_transaction,
)

RULES = points.EconomyRules()
T0 = utcnow().replace(microsecond=0)


def member(unit: Unit | str, name: str | None = None) -> Caller:
    slug = unit if isinstance(unit, str) else unit.slug
    return Caller(name=name or f"sub-{slug}", scopes=frozenset({SCOPE_SUBSCRIBE}), unit=slug)


def publisher(unit: Unit | str, name: str | None = None) -> Caller:
    slug = unit if isinstance(unit, str) else unit.slug
    return Caller(name=name or f"pub-{slug}", scopes=frozenset({SCOPE_SUBSCRIBE, SCOPE_PUBLISH}),
                  unit=slug)


OPERATOR = Caller(name="op", scopes=frozenset({SCOPE_SUBSCRIBE, SCOPE_APPROVE}), unit=None)


def request(bounty: int = 40, hours: int = 48, now=T0, title: str = "Feeder loss model"):
    return topics.validate_topic_request({
        "title": title, "description": "Find the feeders losing the most energy.",
        "data_offered": "daily consumption, 2 years", "bounty": bounty,
        "deadline": (now + timedelta(hours=hours)).isoformat() + "Z"}, now)


def balance(s, unit: Unit) -> int:
    return points.unit_account(s, s.get(Unit, unit.id)).balance


@pytest.fixture
def world(session_factory):
    """Units a (requester), b and c (volunteers, each with a tool on the shelf), with members
    so notifications have someone to reach."""
    with session_factory() as s:
        write_transaction(s)
        units = {slug: make_unit(s, slug) for slug in "abc"}
        tools = {slug: make_product(s, units[slug], {"per_use": 10}).name for slug in "bc"}
        for slug in "abc":
            for role in ("sub", "pub"):
                s.add(Member(user_name=f"{role}-{slug}", unit_id=units[slug].id, added_by="t"))
        s.commit()
    return units, tools


def run_to_delivery(s, units, tools, bounty=40, hours=48, volunteer_unit="b"):
    a, v = units["a"], units[volunteer_unit]
    topic = topics.post_topic(s, member(a), request(bounty, hours), T0)
    proposal = topics.volunteer(s, publisher(v), topic, "We can do it in a week.", T0)
    topics.assign(s, member(a), topic, proposal.id, T0)
    topics.deliver(s, publisher(v), topic, tools[volunteer_unit], "1.0.0", T0)
    return topic


def test_worked_example_40_point_bounty_pays_37_60_and_a_2_40_fee(session_factory, world):
    units, tools = world
    a, b = units["a"], units["b"]
    with session_factory() as s:
        write_transaction(s)
        topic = topics.post_topic(s, member(a), request(40), T0)
        s.commit()
        assert balance(s, a) == 460_00
        escrow = s.get(Account, topic.escrow_account_id)
        assert (escrow.kind, escrow.balance, escrow.unit_id) == ("escrow", 40_00, None)
        assert topics.effective_status(topic, T0) == "open"
        proposal = topics.volunteer(s, publisher(b), topic, "We have a loss model.", T0)
        topics.assign(s, member(a), topic, proposal.id, T0)
        topics.deliver(s, publisher(b), topic, tools["b"], "1.0.0", T0)
        s.commit()
        assert topic.status == "delivered" and balance(s, b) == 500_00
        topics.decide(s, member(a), topic, "accept", None, RULES, T0)
        s.commit()
        assert (balance(s, a), balance(s, b)) == (460_00, 537_60)
        assert points.operator_account(s).balance == 2_40
        assert s.get(Account, topic.escrow_account_id).balance == 0
        assert (topic.status, topic.fee) == ("accepted", 2_40)
        check_ledger(s)
        # every step certified, each with its own log entry and timeline row
        steps = [e.step for e in topic.events]
        assert steps == ["posted", "volunteered", "assigned", "delivered", "accepted"]
        entries = {e.log_index: json.loads(s.get(LogEntry, e.log_index).details)
                   for e in topic.events}
        assert [d["step"] for d in entries.values()] == steps
        accepted = entries[topic.events[-1].log_index]
        assert (accepted["paid"], accepted["fee"], accepted["topic"]) == ("37.60", "2.40",
                                                                          topic.id)
        assert set(json.loads(s.get(LogEntry, topic.events[-1].log_index).parties)) == {"a",
                                                                                       "b"}
        # the statement labels the escrow and the transfer kinds
        rows = ledger_views.statement(s, points.unit_account(s, a), 10, 0)["transfers"]
        assert rows[0]["kind"] == "escrow_in"
        assert rows[0]["counterparties"] == [{"account": f"escrow:{escrow.id}",
                                              "amount": "40.00"}]
        paid = ledger_views.statement(s, points.unit_account(s, b), 10, 0)["transfers"][0]
        assert (paid["kind"], paid["amount"]) == ("bounty", "37.60")
        assert "topic" in paid["memo"]
        # the inbox: b's people hear of the assignment and the bounty, a's of the delivery
        kinds = {(n.user_name, n.kind) for n in s.scalars(select(Notification))}
        assert {("pub-b", "topic_assigned"), ("sub-b", "bounty_paid"),
                ("pub-a", "topic_delivered"), ("pub-a", "topic_accepted")} <= kinds
        assert ("sub-a", "topic_accepted") not in kinds  # the one who accepted knows
        view = topics.topic_json(s, topic, member(a), T0)
        assert (view["status"], view["payout"], view["delivery"]["product"]) == (
            "accepted", "37.60", tools["b"])


def test_expiry_refunds_exactly_and_reads_show_it_before_the_sweep(session_factory, world):
    units, tools = world
    a, b = units["a"], units["b"]
    with session_factory() as s:
        write_transaction(s)
        topic = topics.post_topic(s, member(a), request(40, hours=1), T0)
        proposal = topics.volunteer(s, publisher(b), topic, "Yes.", T0)
        topics.assign(s, member(a), topic, proposal.id, T0)
        s.commit()
        later = T0 + timedelta(hours=1)
        assert topics.effective_status(topic, later - timedelta(seconds=1)) == "assigned"
        assert topics.effective_status(topic, later) == "expired"
        assert topics.topic_json(s, topic, member(a), later)["may"]["deliver"] is False
        listed, _ = topics.list_topics(s, status="expired", now=later)
        assert [t.id for t in listed] == [topic.id]
        assert topics.list_topics(s, status="assigned", now=later)[1] == 0
        # past the deadline nothing more happens to it, and nothing is written
        with pytest.raises(Conflict) as e:
            topics.deliver(s, publisher(b), topic, tools["b"], "1.0.0", later)
        assert e.value.field == "deadline"
        s.rollback()
        assert topics.expire_due(s, later - timedelta(seconds=1)) == 0
        assert topics.expire_due(s, later) == 1
        s.commit()
        assert topics.expire_due(s, later) == 0  # once only
        assert balance(s, a) == 500_00 and balance(s, b) == 500_00
        assert s.get(Account, topic.escrow_account_id).balance == 0
        assert points.operator_account(s).balance == 0  # no fee on a refund
        assert topic.status == "expired" and topic.events[-1].step == "expired"
        refund = s.scalar(select(LedgerTransfer).where(LedgerTransfer.kind == "escrow_refund"))
        assert sorted(p.amount for p in refund.postings) == [-40_00, 40_00]
        check_ledger(s)


def test_the_services_sweep_expires_what_is_due_and_only_that(session_factory, world):
    units, _ = world
    with session_factory() as s:
        write_transaction(s)
        soon = topics.post_topic(s, member(units["a"]), request(10, hours=1), T0).id
        later = topics.post_topic(s, member(units["b"]), request(20, hours=5), T0).id
        s.commit()
    assert topics.sweep(session_factory, T0) == 0
    assert topics.sweep(session_factory, T0 + timedelta(hours=2)) == 1
    assert topics.sweep(session_factory, T0 + timedelta(hours=2)) == 0
    with session_factory() as s:
        assert (s.get(Topic, soon).status, s.get(Topic, later).status) == ("expired", "open")
        assert (balance(s, units["a"]), balance(s, units["b"])) == (500_00, 480_00)
        check_ledger(s)


def test_rejection_reopens_and_a_late_rejection_expires(session_factory, world):
    units, tools = world
    a, b, c = units["a"], units["b"], units["c"]
    with session_factory() as s:
        write_transaction(s)
        topic = run_to_delivery(s, units, tools, bounty=25, hours=2)
        s.commit()
        with pytest.raises(InvalidField) as e:
            topics.decide(s, member(a), topic, "reject", "x" * 1001, RULES, T0)
        assert e.value.field == "reason"
        s.rollback()
        topic = s.get(Topic, topic.id)
        topics.decide(s, member(a), topic, "reject", "It misses the rural feeders.", RULES, T0)
        s.commit()
        assert (topic.status, topic.assignee_unit_id, topic.delivered_version_id) == (
            "open", None, None)
        assert s.get(Account, topic.escrow_account_id).balance == 25_00
        # another volunteer; the same proposal may be assigned again
        second = topics.volunteer(s, publisher(c), topic, "Try ours.", T0)
        topics.assign(s, OPERATOR, topic, second.id, T0)  # an operator may assign
        topics.deliver(s, publisher(c), topic, tools["c"], "1.0.0", T0)
        s.commit()
        # a delivery made in time waits past the deadline; rejecting it then expires the topic
        late = T0 + timedelta(hours=3)
        assert topics.effective_status(topic, late) == "delivered"
        assert topics.expire_due(s, late) == 0
        topics.decide(s, member(a), topic, "reject", "Still not it.", RULES, late)
        s.commit()
        assert topic.status == "expired"
        assert [e.step for e in topic.events][-3:] == ["delivered", "rejected", "expired"]
        assert (balance(s, a), balance(s, b), balance(s, c)) == (500_00, 500_00, 500_00)
        check_ledger(s)


def test_bad_input_names_the_field_and_leaves_the_ledger_untouched(session_factory, world):
    units, tools = world
    a, b, c = units["a"], units["b"], units["c"]
    with session_factory() as s:
        write_transaction(s)
        topic = run_to_delivery(s, units, tools)
        s.commit()
        topic_id = topic.id
        before = check_ledger(s)
        logged = s.scalar(select(func.count()).select_from(LogEntry))
        events = s.scalar(select(func.count()).select_from(TopicEvent))

        def refused(action, error, field_):
            with pytest.raises(error) as e:
                action(s.get(Topic, topic_id))
            assert e.value.field == field_, e.value.message
            s.rollback()

        # a bounty above the balance: 409 naming bounty, no topic, no escrow account
        refused(lambda t: topics.post_topic(s, member(a), request(461), T0),
                points.InsufficientPoints, "bounty")
        # accepting your own topic's delivery as the assignee
        refused(lambda t: topics.decide(s, publisher(b), t, "accept", None, RULES, T0),
                Forbidden, "decision")
        refused(lambda t: topics.decide(s, publisher(c), t, "accept", None, RULES, T0),
                Forbidden, "unit")
        refused(lambda t: topics.decide(s, OPERATOR, t, "accept", None, RULES, T0),
                Forbidden, "unit")
        refused(lambda t: topics.decide(s, member(a), t, "maybe", None, RULES, T0),
                InvalidField, "decision")
        # volunteering for your own unit's topic, twice, or once it is taken
        refused(lambda t: topics.volunteer(s, publisher(a), t, "me", T0), Forbidden, "unit")
        refused(lambda t: topics.volunteer(s, publisher(b), t, "again", T0), Conflict, "unit")
        refused(lambda t: topics.volunteer(s, member(c), t, "no scope", T0), Forbidden, None)
        refused(lambda t: topics.volunteer(s, publisher(c), t, "late", T0), Conflict, "topic")
        # delivering: not the assignee, not its product, not on the shelf
        refused(lambda t: topics.deliver(s, publisher(c), t, tools["c"], "1.0.0", T0),
                Forbidden, "unit")
        refused(lambda t: topics.assign(s, member(b), t, 1, T0), Forbidden, "unit")
        refused(lambda t: topics.assign(s, member(a), t, "1", T0), InvalidField, "proposal")
        refused(lambda t: topics.assign(s, member(a), t, 999, T0), NotFound, "proposal")
        with pytest.raises(NotFound) as e:
            topics.get_topic(s, "nope")
        assert e.value.field == "topic"
        for body, field_ in [({}, "title"), ({"title": " "}, "title"),
                             ({"title": "t"}, "description"),
                             ({"title": "t", "description": "d", "bounty": 0}, "bounty"),
                             ({"title": "t", "description": "d", "bounty": True}, "bounty"),
                             ({"title": "t", "description": "d", "bounty": "40"}, "bounty"),
                             ({"title": "t", "description": "d", "bounty": 40}, "deadline"),
                             ({"title": "t", "description": "d", "bounty": 40,
                               "deadline": "2020-01-01T00:00:00Z"}, "deadline"),
                             ({"title": "t", "description": "d", "bounty": 40,
                               "deadline": (T0 + timedelta(days=1)).date().isoformat()},
                              "deadline"),
                             ({"title": "t", "description": "d", "bounty": 40,
                               "deadline": (T0 + timedelta(days=400)).isoformat()},
                              "deadline"),
                             ({"title": "x" * 201, "description": "d"}, "title"),
                             ({"title": "t", "description": "d", "data_offered": 5},
                              "data_offered")]:
            with pytest.raises(InvalidField) as e:
                topics.validate_topic_request(body, T0)
            assert e.value.field == field_, body
        assert check_ledger(s) == before
        assert s.scalar(select(func.count()).select_from(LogEntry)) == logged
        assert s.scalar(select(func.count()).select_from(TopicEvent)) == events
        assert s.scalar(select(func.count()).select_from(Topic)) == 1
        assert s.scalar(select(func.count()).select_from(Account)
                        .where(Account.kind == "escrow")) == 1


def test_delivery_needs_the_assignees_own_product_on_the_shelf(session_factory, world):
    units, tools = world
    a, b = units["a"], units["b"]
    with session_factory() as s:
        write_transaction(s)
        off = make_product(s, b, {"per_use": 10}, on_shelf=False).name
        topic = topics.post_topic(s, member(a), request(10), T0)
        proposal = topics.volunteer(s, publisher(b), topic, "ok", T0)
        topics.assign(s, member(a), topic, proposal.id, T0)
        s.commit()
        for product, version, error, field_ in [(tools["c"], "1.0.0", NotFound, "product"),
                                                (tools["b"], "9.9.9", NotFound, "version"),
                                                (off, "1.0.0", Conflict, "version"),
                                                ("", "1.0.0", InvalidField, "product")]:
            with pytest.raises(error) as e:
                topics.deliver(s, publisher(b), s.get(Topic, topic.id), product, version, T0)
            assert e.value.field == field_
            s.rollback()
        assert s.get(Topic, topic.id).status == "assigned"


def test_demo_topic_is_a_finished_topic(session_factory, world):
    units, tools = world
    assert topics.seed_demo_topic(session_factory, RULES, log=lambda _: None) is None
    with session_factory() as s:
        write_transaction(s)
        assert s.scalar(select(func.count()).select_from(Topic)) == 0  # skipped whole
        make_product(s, s.get(Unit, units["a"].id), {"per_use": 10}).name = \
            "electricity-theft-detection"
        s.commit()
    seeded = topics.seed_demo_topic(session_factory, RULES, log=lambda _: None)
    assert topics.seed_demo_topic(session_factory, RULES, log=lambda _: None) == seeded
    with session_factory() as s:
        topic = s.get(Topic, seeded)
        assert (topic.status, topic.unit.slug, topic.assignee_unit.slug) == ("accepted", "c",
                                                                             "a")
        assert [e.step for e in topic.events][-1] == "accepted"
        assert (balance(s, units["a"]), balance(s, units["c"])) == (537_60, 460_00)
        check_ledger(s)


# --- the state machine -------------------------------------------------------------------------


class TopicMachine(RuleBasedStateMachine):
    """Random topics moved through every step, the clock moved on and swept, and pairs of
    actions raced on two connections; the ledger must match a simple model throughout."""

    db_url: str = ""
    SLUGS = ("a", "b", "c")

    def __init__(self):
        super().__init__()
        dbutil.upgrade(self.db_url)
        self.engine = make_engine(self.db_url)
        self.factory = make_session_factory(self.engine)
        self.now = T0
        self.model = {slug: RULES.initial_grant for slug in self.SLUGS}
        self.model["operator"] = 0
        self.topics: dict[int, dict] = {}
        with self.factory() as s:
            write_transaction(s)
            units = [make_unit(s, slug) for slug in self.SLUGS]
            self.tools = {u.slug: make_product(s, u, {"per_use": 10}).name for u in units}
            s.commit()

    def teardown(self):
        self.engine.dispose()

    # -- helpers --

    def _do(self, action):
        """Run ``action(session)`` in a write transaction; commit, or roll back on a refusal
        (returned). SQLite's busy lock between racing threads is retried like a client."""
        for _ in range(50):
            with self.factory() as s:
                try:
                    write_transaction(s)
                    result = action(s)
                    s.commit()
                    return result
                except MarketError as e:
                    s.rollback()
                    return e
                except Exception as e:  # noqa: BLE001
                    if "locked" not in str(e) and "could not serialize" not in str(e):
                        raise
        raise AssertionError("still locked after 50 tries")

    def _live(self, *statuses):
        return [t for t, m in self.topics.items() if m["status"] in statuses
                and (m["status"] not in topics.EXPIRING or m["deadline"] > self.now)]

    def _topic(self, s, topic_id):
        return s.get(Topic, topic_id)

    # -- rules --

    @rule(unit=st.sampled_from(SLUGS), bounty=st.integers(1, 300), hours=st.integers(1, 72))
    def post(self, unit, bounty, hours):
        deadline = self.now + timedelta(hours=hours)
        result = self._do(lambda s: topics.post_topic(s, member(unit), topics.TopicRequest(
            "t", "d", "", deadline, bounty * points.CENTS), self.now).id)
        if isinstance(result, points.InsufficientPoints):
            assert self.model[unit] < bounty * points.CENTS
            return
        assert not isinstance(result, MarketError), result
        self.model[unit] -= bounty * points.CENTS
        self.topics[result] = {"unit": unit, "bounty": bounty * points.CENTS, "status": "open",
                               "deadline": deadline, "proposals": {}, "assignee": None}

    @precondition(lambda self: self._live("open"))
    @rule(data=st.data(), unit=st.sampled_from(SLUGS))
    def volunteer(self, data, unit):
        tid = data.draw(st.sampled_from(self._live("open")))
        m = self.topics[tid]
        result = self._do(lambda s: topics.volunteer(s, publisher(unit), self._topic(s, tid),
                                                     "offer", self.now).id)
        if unit == m["unit"]:
            assert isinstance(result, Forbidden)
        elif unit in m["proposals"]:
            assert isinstance(result, Conflict)
        else:
            assert isinstance(result, int), result
            m["proposals"][unit] = result

    @precondition(lambda self: any(self.topics[t]["proposals"] for t in self._live("open")))
    @rule(data=st.data(), by_operator=st.booleans())
    def assign(self, data, by_operator):
        tid = data.draw(st.sampled_from([t for t in self._live("open")
                                         if self.topics[t]["proposals"]]))
        m = self.topics[tid]
        unit = data.draw(st.sampled_from(sorted(m["proposals"])))
        caller = OPERATOR if by_operator else member(m["unit"])
        result = self._do(lambda s: topics.assign(s, caller, self._topic(s, tid),
                                                  m["proposals"][unit], self.now))
        assert not isinstance(result, MarketError), result
        m["status"], m["assignee"] = "assigned", unit

    @precondition(lambda self: self._live("assigned"))
    @rule(data=st.data())
    def deliver(self, data):
        tid = data.draw(st.sampled_from(self._live("assigned")))
        m = self.topics[tid]
        unit = m["assignee"]
        result = self._do(lambda s: topics.deliver(s, publisher(unit), self._topic(s, tid),
                                                   self.tools[unit], "1.0.0", self.now))
        assert not isinstance(result, MarketError), result
        m["status"] = "delivered"

    def _apply_decision(self, tid, decision, result):
        m = self.topics[tid]
        if isinstance(result, MarketError):
            return False
        if decision == "accept":
            fee = RULES.fee(m["bounty"])
            self.model[m["assignee"]] += m["bounty"] - fee
            self.model["operator"] += fee
            m["status"] = "accepted"
        elif m["deadline"] <= self.now:
            self.model[m["unit"]] += m["bounty"]
            m["status"], m["assignee"] = "expired", None
        else:
            m["status"], m["assignee"] = "open", None
        return True

    @precondition(lambda self: self._live("delivered"))
    @rule(data=st.data(), decision=st.sampled_from(["accept", "reject"]),
          by_assignee=st.booleans())
    def decide(self, data, decision, by_assignee):
        tid = data.draw(st.sampled_from(self._live("delivered")))
        m = self.topics[tid]
        caller = publisher(m["assignee"]) if by_assignee else member(m["unit"])
        result = self._do(lambda s: topics.decide(s, caller, self._topic(s, tid), decision,
                                                  "no", RULES, self.now))
        if by_assignee:
            assert isinstance(result, Forbidden) and result.field == "decision"
            return
        assert self._apply_decision(tid, decision, result), result

    @rule(hours=st.integers(1, 48))
    def advance_and_sweep(self, hours):
        self.now += timedelta(hours=hours)
        expired = self._do(lambda s: topics.expire_due(s, self.now))
        due = [t for t, m in self.topics.items()
               if m["status"] in topics.EXPIRING and m["deadline"] <= self.now]
        assert expired == len(due)
        for t in due:
            m = self.topics[t]
            self.model[m["unit"]] += m["bounty"]
            m["status"], m["assignee"] = "expired", None

    @precondition(lambda self: self._live("delivered"))
    @rule(data=st.data(), decisions=st.sampled_from([("accept", "accept"), ("accept", "reject"),
                                                     ("reject", "reject")]))
    def race_decisions(self, data, decisions):
        """Two members of the requesting unit decide at once: exactly one decision happens."""
        tid = data.draw(st.sampled_from(self._live("delivered")))
        m = self.topics[tid]
        results = self._race([
            lambda s, d=d, i=i: topics.decide(s, member(m["unit"], f"racer-{i}"),
                                              self._topic(s, tid), d, "no", RULES, self.now)
            for i, d in enumerate(decisions)])
        applied = [d for d, r in zip(decisions, results, strict=True)
                   if not isinstance(r, MarketError)]
        assert len(applied) == 1, results
        assert all(isinstance(r, Conflict) for r in results if isinstance(r, MarketError))
        self._apply_decision(tid, applied[0], None)

    @rule(unit=st.sampled_from(SLUGS), bounties=st.tuples(st.integers(100, 400),
                                                          st.integers(100, 400)))
    def race_posts(self, unit, bounties):
        """Two posts of one unit at once: never more than its balance leaves its account."""
        deadline = self.now + timedelta(hours=24)
        results = self._race([
            lambda s, b=b: topics.post_topic(s, member(unit), topics.TopicRequest(
                "t", "d", "", deadline, b * points.CENTS), self.now).id for b in bounties])
        posted = [(b, r) for b, r in zip(bounties, results, strict=True)
                  if not isinstance(r, MarketError)]
        refused = [b for b, r in zip(bounties, results, strict=True)
                   if isinstance(r, MarketError)]
        assert all(isinstance(r, points.InsufficientPoints) for r in results
                   if isinstance(r, MarketError))
        assert sum(b for b, _ in posted) * points.CENTS <= self.model[unit]
        for b, tid in posted:
            self.model[unit] -= b * points.CENTS
            self.topics[tid] = {"unit": unit, "bounty": b * points.CENTS, "status": "open",
                                "deadline": deadline, "proposals": {}, "assignee": None}
        for b in refused:  # refused only because the other one took the points
            assert self.model[unit] < b * points.CENTS

    def _race(self, actions):
        results = [None] * len(actions)
        barrier = threading.Barrier(len(actions))

        def go(i):
            barrier.wait()
            try:
                results[i] = self._do(actions[i])
            except BaseException as e:  # noqa: BLE001  (reported below)
                results[i] = e

        threads = [threading.Thread(target=go, args=(i,)) for i in range(len(actions))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, MarketError):
                raise r
        return results

    @invariant()
    def conservation(self):
        with self.factory() as s:
            check_ledger(s)
            for slug in self.SLUGS:
                unit = s.scalar(select(Unit).where(Unit.slug == slug))
                assert points.unit_account(s, unit).balance == self.model[slug], slug
            assert points.operator_account(s).balance == self.model["operator"]
            for tid, m in self.topics.items():
                topic = s.get(Topic, tid)
                assert topic.status == m["status"], (tid, topic.status, m)
                held = s.get(Account, topic.escrow_account_id).balance
                assert held == (m["bounty"] if m["status"] in ("open", "assigned", "delivered")
                                else 0), (tid, m)
            # the minted points are all somewhere: units, operator and escrows
            escrowed = sum(m["bounty"] for m in self.topics.values()
                           if m["status"] in ("open", "assigned", "delivered"))
            total = sum(self.model[u] for u in self.SLUGS) + self.model["operator"] + escrowed
            assert total == len(self.SLUGS) * RULES.initial_grant


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_topic_state_machine(kind, tmp_path, request):
    run_state_machine(TopicMachine, kind, tmp_path, request,
                      max_examples=12 if kind == "sqlite" else 6)
