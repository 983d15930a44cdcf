"""Topic requests with escrowed bounties (the paper's topic selection and assignment).

A unit posts a need (title, description, the data it can offer, a deadline and a bounty); the
bounty moves at once from the unit's account into an escrow account of its own in the
double-entry ledger (``points.escrow_deposit``), so no point is created or lost. Publishers of
other units volunteer with a proposal; the requesting unit (or an operator) assigns one. The
assignee links a version of one of its unit's products that is on the shelf. The requesting
unit accepts it - the escrow goes to the assignee's unit less the operator's fee
(``EconomyRules.fee``, 6 %) - or rejects it, which reopens the topic. When the deadline passes
before an acceptance, an open or assigned topic is *expired*: reads show it so at once
(:func:`effective_status`), nothing more can be done to it, and the periodic sweep
(:func:`expire_due`) gives the escrow back to the requesting unit. A delivery made in time
waits for the requester's decision past the deadline; rejecting it then expires the topic.

States: ``open -> assigned -> delivered -> accepted``; ``delivered -> open`` (rejected);
``open | assigned -> expired``. Every step is certified (log entry type ``topic``, field
``step``) in the step's own transaction, beside a row of the topic's timeline.

Who: posting spends the unit's points, so any member of a unit may post (the subscribe scope,
like an order); volunteering and delivering take the publish scope in another unit than the
requester's; assigning is for the requesting unit's members and operators; accepting and
rejecting only for the requesting unit's members (never the assignee's, never an operator).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from .. import certlog, points
from ..auth import SCOPE_PUBLISH, SCOPE_SUBSCRIBE, Caller
from ..errors import Conflict, Forbidden, InvalidField, MarketError, NotFound
from ..ids import json_int, parse_id
from ..orm import Account, Product, Unit, Version, utcnow, write_transaction
from . import inbox
from .topics_orm import Topic, TopicEvent, TopicProposal

log = logging.getLogger(__name__)

STATUSES = ("open", "assigned", "delivered", "accepted", "expired")
#: statuses the deadline ends (a delivery waits for the requester's decision)
EXPIRING = ("open", "assigned")
MAX_BOUNTY = 100_000  # points
MAX_DEADLINE = timedelta(days=365)
TITLE_MAX, DESCRIPTION_MAX, DATA_MAX, PROPOSAL_MAX, REASON_MAX = 200, 5000, 2000, 5000, 1000


@dataclass(frozen=True)
class TopicRequest:
    title: str
    description: str
    data_offered: str
    deadline: datetime  # naive UTC
    bounty: int  # centipoints


#: what JSON Schema's (ECMA-262) ``\s`` calls white space: the OpenAPI patterns ``\S`` say a
#: text is not blank, and the check here must agree with them (Python's ``str.strip`` also
#: strips \x1c-\x1f, which the schema counts as text)
BLANK = "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008" \
        "\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"


def _text(body: dict, name: str, limit: int, required: bool = True) -> str:
    value = body.get(name, "" if not required else None)
    if value is None and not required:
        value = ""
    if not isinstance(value, str):
        raise InvalidField(f"{name} must be a string", name)
    value = value.strip(BLANK)
    if required and not value:
        raise InvalidField(f"{name} is required", name)
    if len(value) > limit:
        raise InvalidField(f"{name} is {len(value)} characters; at most {limit}", name)
    return value


def parse_deadline(raw: object, now: datetime | None = None) -> datetime:
    """An RFC 3339 date-time (``Z`` or an offset; UTC when it has none) in the future, at most
    :data:`MAX_DEADLINE` ahead; returned as naive UTC."""
    now = now or utcnow()
    if not isinstance(raw, str) or "T" not in raw.upper():
        raise InvalidField("deadline must be a date-time such as 2027-01-31T18:00:00Z",
                           "deadline")
    try:
        parsed = datetime.fromisoformat(raw.strip().replace("z", "Z"))
    except ValueError:
        raise InvalidField("deadline must be a date-time such as 2027-01-31T18:00:00Z",
                           "deadline") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    if parsed <= now:
        raise InvalidField("deadline must be in the future", "deadline")
    if parsed > now + MAX_DEADLINE:
        raise InvalidField(f"deadline may be at most {MAX_DEADLINE.days} days ahead",
                           "deadline")
    return parsed


def validate_topic_request(body: dict, now: datetime | None = None) -> TopicRequest:
    """The ``POST api/topics`` body checked field by field (400 naming the first bad one)."""
    title = _text(body, "title", TITLE_MAX)
    description = _text(body, "description", DESCRIPTION_MAX)
    data_offered = _text(body, "data_offered", DATA_MAX, required=False)
    bounty = json_int(body.get("bounty"))
    if isinstance(bounty, bool) or not isinstance(bounty, int) or not 1 <= bounty <= MAX_BOUNTY:
        raise InvalidField(f"bounty must be a whole number of points from 1 to {MAX_BOUNTY}",
                           "bounty")
    deadline = parse_deadline(body.get("deadline"), now)
    return TopicRequest(title, description, data_offered, deadline, bounty * points.CENTS)


# --- reading -----------------------------------------------------------------------------------


def effective_status(topic: Topic, now: datetime | None = None) -> str:
    """The status a reader sees: an open or assigned topic past its deadline is expired even
    before the sweep has given the escrow back."""
    if topic.status in EXPIRING and topic.deadline <= (now or utcnow()):
        return "expired"
    return topic.status


def get_topic(session: Session, topic_id: str | int) -> Topic:
    found = session.get(Topic, parse_id(str(topic_id), "topic", "topic"))
    if found is None:
        raise NotFound(f"no topic {topic_id!r}", "topic")
    return found


def _status_filter(status: str, now: datetime):
    due = and_(Topic.status.in_(EXPIRING), Topic.deadline <= now)
    if status == "expired":
        return or_(Topic.status == "expired", due)
    if status in EXPIRING:
        return and_(Topic.status == status, Topic.deadline > now)
    return Topic.status == status


def list_topics(session: Session, *, status: str | None = None, unit: str | None = None,
                limit: int = 50, offset: int = 0,
                now: datetime | None = None) -> tuple[list[Topic], int]:
    """Topics newest first, by effective status and requesting unit."""
    now = now or utcnow()
    query = select(Topic)
    if status is not None:
        if status not in STATUSES:
            raise InvalidField(f"status must be one of {', '.join(STATUSES)}", "status")
        query = query.where(_status_filter(status, now))
    if unit is not None:
        if not 1 <= len(unit) <= 32:
            raise InvalidField("unit must be a unit's slug (1 to 32 characters)", "unit")
        query = query.join(Unit, Unit.id == Topic.unit_id).where(Unit.slug == unit)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    found = session.scalars(query.order_by(Topic.id.desc()).limit(limit).offset(offset)).all()
    return list(found), total


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() + "Z" if at is not None else None


def may_see_proposals(caller: Caller, topic: Topic, proposal: TopicProposal | None = None) -> bool:
    if caller.is_operator or caller.unit == topic.unit.slug:
        return True
    return proposal is not None and caller.unit == proposal.unit.slug


def actions(caller: Caller, topic: Topic, now: datetime | None = None) -> dict[str, bool]:
    """What the caller may do to the topic now (the pages show only these buttons)."""
    status = effective_status(topic, now)
    requester = caller.unit == topic.unit.slug and SCOPE_SUBSCRIBE in caller.scopes
    publisher_elsewhere = (SCOPE_PUBLISH in caller.scopes and caller.unit is not None
                           and caller.unit != topic.unit.slug)
    volunteered = any(p.unit.slug == caller.unit for p in topic.proposals)
    assignee = topic.assignee_unit.slug if topic.assignee_unit else None
    return {
        "volunteer": status == "open" and publisher_elsewhere and not volunteered,
        "assign": status == "open" and (requester or caller.is_operator)
        and any(p.status == "pending" for p in topic.proposals),
        "deliver": status == "assigned" and publisher_elsewhere and caller.unit == assignee,
        "decide": status == "delivered" and requester,
    }


def topic_json(session: Session, topic: Topic, caller: Caller,
               now: datetime | None = None) -> dict:
    """A topic as the API and pages show it; proposals' texts only to the requesting unit,
    operators and each proposal's own unit."""
    now = now or utcnow()
    escrow = session.get(Account, topic.escrow_account_id)
    version = session.get(Version, topic.delivered_version_id) if topic.delivered_version_id \
        else None
    fee = topic.fee
    return {
        "id": topic.id, "title": topic.title, "description": topic.description,
        "data_offered": topic.data_offered, "unit": topic.unit.slug,
        "bounty": points.format_points(topic.bounty), "bounty_centipoints": topic.bounty,
        "deadline": _iso(topic.deadline), "status": effective_status(topic, now),
        "created_by": topic.created_by, "created_at": _iso(topic.created_at),
        "closed_at": _iso(topic.closed_at),
        "assignee": topic.assignee_unit.slug if topic.assignee_unit else None,
        "delivery": None if version is None else {
            "product": version.product.name, "version": version.version,
            "sha256": version.sha256, "by": topic.delivered_by,
            "at": _iso(topic.delivered_at)},
        "fee": None if fee is None else points.format_points(fee),
        "payout": None if fee is None else points.format_points(topic.bounty - fee),
        "escrow": {"account": f"escrow:{escrow.id}",
                   "balance": points.format_points(escrow.balance)},
        "proposal_count": len(topic.proposals),
        "proposals": [
            {"id": p.id, "unit": p.unit.slug, "author": p.author, "text": p.text,
             "status": p.status, "created_at": _iso(p.created_at), "log_index": p.log_index}
            for p in topic.proposals if may_see_proposals(caller, topic, p)],
        "steps": [{"step": e.step, "actor": e.actor, "detail": e.detail, "at": _iso(e.at),
                   "log_index": e.log_index} for e in topic.events],
        "log_index": topic.log_index,
        "may": actions(caller, topic, now),
    }


# --- the steps ---------------------------------------------------------------------------------


def _lock_topic(session: Session, topic: Topic) -> Topic:
    """Lock the topic's row (PostgreSQL; SQLite's write transaction already holds the database)
    and read it afresh: two concurrent steps on one topic are serialised."""
    session.execute(select(Topic.id).where(Topic.id == topic.id).with_for_update())
    session.refresh(topic)
    return topic


def _step(session: Session, topic: Topic, step: str, actor: str, detail: str,
          party_units: tuple[str, ...] = (), **fields) -> int:
    index = certlog.append(session, "topic", actor, topic.unit.slug, f"topic:{topic.id}",
                           party_units=[u for u in party_units if u], step=step,
                           topic=topic.id, **fields)
    session.add(TopicEvent(topic_id=topic.id, step=step, actor=actor, detail=detail,
                           log_index=index))
    session.flush()
    return index


def _require_live(topic: Topic, wanted: str, now: datetime, action: str) -> None:
    status = effective_status(topic, now)
    if status == "expired":
        raise Conflict(f"topic {topic.id} expired at {_iso(topic.deadline)}; its bounty goes "
                       f"back to unit {topic.unit.slug!r}", "deadline")
    if status != wanted:
        raise Conflict(f"topic {topic.id} is {status}; {action} needs it {wanted}", "topic")


def _unit(session: Session, caller: Caller, action: str) -> Unit:
    if caller.unit is None:
        raise Forbidden(f"{caller.name} is not a member of any unit; {action} is for units' "
                        "members", "unit")
    return session.scalar(select(Unit).where(Unit.slug == caller.unit))


def check_may_post(caller: Caller) -> None:
    """Refuse (403) a caller who may not post a topic at all: checked before the request's
    fields, so an operator in no unit is told that rather than a field's problem."""
    caller.require(SCOPE_SUBSCRIBE, "posting a topic")
    if caller.unit is None:
        raise Forbidden(f"{caller.name} is not a member of any unit; topics are posted by "
                        "units' members", "unit")


def post_topic(session: Session, caller: Caller, req: TopicRequest,
               now: datetime | None = None) -> Topic:
    """Post a topic for the caller's unit and move the bounty into a new escrow account.
    409 naming ``bounty`` when the unit has fewer points; nothing is written then."""
    check_may_post(caller)
    unit = _unit(session, caller, "posting a topic")
    now = now or utcnow()
    if req.deadline <= now:
        raise InvalidField("deadline must be in the future", "deadline")
    escrow = points.open_escrow_account(session)
    topic = Topic(unit_id=unit.id, title=req.title, description=req.description,
                  data_offered=req.data_offered, bounty=req.bounty, deadline=req.deadline,
                  status="open", escrow_account_id=escrow.id, created_by=caller.name,
                  created_at=now)
    session.add(topic)
    session.flush()
    transfer = points.escrow_deposit(session, unit, escrow, req.bounty, caller.name,
                                     f"topic {topic.id}: bounty into escrow")
    topic.log_index = _step(session, topic, "posted", caller.name,
                            f"bounty of {points.format_points(req.bounty)} points into escrow",
                            bounty=points.format_points(req.bounty), transfer=transfer.id,
                            deadline=_iso(req.deadline))
    return topic


def volunteer(session: Session, caller: Caller, topic: Topic, text: object,
              now: datetime | None = None) -> TopicProposal:
    """A publisher of another unit offers to do the topic (once per unit)."""
    caller.require(SCOPE_PUBLISH, "volunteering for a topic")
    unit = _unit(session, caller, "volunteering")
    body = _text({"text": text}, "text", PROPOSAL_MAX)
    _lock_topic(session, topic)
    if unit.id == topic.unit_id:
        raise Forbidden(f"unit {unit.slug!r} posted topic {topic.id}; another unit volunteers",
                        "unit")
    if session.scalar(select(TopicProposal.id).where(TopicProposal.topic_id == topic.id,
                                                     TopicProposal.unit_id == unit.id)):
        raise Conflict(f"unit {unit.slug!r} has volunteered for topic {topic.id} already", "unit")
    _require_live(topic, "open", now or utcnow(), "volunteering")
    proposal = TopicProposal(topic_id=topic.id, unit_id=unit.id, author=caller.name,
                             text=body, status="pending")
    session.add(proposal)
    session.flush()
    proposal.log_index = _step(session, topic, "volunteered", caller.name,
                               f"unit {unit.slug} volunteered", party_units=(unit.slug,),
                               proposal=proposal.id, volunteer=unit.slug)
    session.refresh(topic)
    return proposal


def assign(session: Session, caller: Caller, topic: Topic, proposal_id: object,
           now: datetime | None = None) -> TopicProposal:
    """The requesting unit (or an operator) assigns the topic to one pending proposal."""
    if not caller.is_operator:
        caller.require(SCOPE_SUBSCRIBE, "assigning a topic")
        if caller.unit != topic.unit.slug:
            raise Forbidden(f"topic {topic.id} is unit {topic.unit.slug!r}'s: its members or an "
                            "operator assign it", "unit")
    proposal_id = json_int(proposal_id)
    if isinstance(proposal_id, bool) or not isinstance(proposal_id, int) \
            or not 1 <= proposal_id < 2**63:
        raise InvalidField("proposal must be the id of a proposal of this topic", "proposal")
    _lock_topic(session, topic)
    proposal = session.get(TopicProposal, proposal_id)
    if proposal is None or proposal.topic_id != topic.id:
        raise NotFound(f"topic {topic.id} has no proposal {proposal_id}", "proposal")
    _require_live(topic, "open", now or utcnow(), "assigning")
    if proposal.status != "pending":
        raise Conflict(f"proposal {proposal.id} is {proposal.status}", "proposal")
    proposal.status = "assigned"
    topic.status = "assigned"
    topic.assignee_unit_id = proposal.unit_id
    session.flush()
    session.refresh(topic)
    slug = proposal.unit.slug
    _step(session, topic, "assigned", caller.name, f"assigned to unit {slug}",
          party_units=(slug,), proposal=proposal.id, assignee=slug)
    inbox.notify_unit(session, proposal.unit_id, "topic_assigned",
                      f"Topic assigned to your unit: {topic.title}", f"topics/{topic.id}",
                      exclude=(caller.name,))
    return proposal


def deliver(session: Session, caller: Caller, topic: Topic, product_name: object,
            version_name: object, now: datetime | None = None) -> Version:
    """The assignee's publisher links a version of one of its unit's products on the shelf."""
    caller.require(SCOPE_PUBLISH, "delivering a topic")
    unit = _unit(session, caller, "delivering")
    if not isinstance(product_name, str) or not product_name:
        raise InvalidField("product is required: the name of your unit's product", "product")
    if not isinstance(version_name, str) or not version_name:
        raise InvalidField("version is required: the version to deliver", "version")
    _lock_topic(session, topic)
    if topic.assignee_unit_id != unit.id:
        raise Forbidden(f"topic {topic.id} is not assigned to unit {unit.slug!r}", "unit")
    _require_live(topic, "assigned", now or utcnow(), "delivering")
    product = session.scalar(select(Product).where(Product.name == product_name))
    if product is None or product.unit_id != unit.id:
        raise NotFound(f"unit {unit.slug!r} has no product {product_name!r}", "product")
    version = session.scalar(select(Version).where(Version.product_id == product.id,
                                                   Version.version == version_name))
    if version is None:
        raise NotFound(f"{product_name!r} has no version {version_name!r}", "version")
    if version.state != "on_shelf":
        raise Conflict(f"version {version_name} of {product_name!r} is {version.state}; only a "
                       "version on the shelf is delivered (the requester must be able to use "
                       "it)", "version")
    topic.status = "delivered"
    topic.delivered_version_id = version.id
    topic.delivered_by = caller.name
    topic.delivered_at = now or utcnow()
    session.flush()
    _step(session, topic, "delivered", caller.name,
          f"{product.name} {version.version} delivered", party_units=(unit.slug,),
          product=product.name, version=version.version, bundle_sha256=version.sha256)
    inbox.notify_unit(session, topic.unit_id, "topic_delivered",
                      f"Delivery for your topic: {topic.title}", f"topics/{topic.id}")
    return version


def decide(session: Session, caller: Caller, topic: Topic, decision: object, reason: object,
           rules: points.EconomyRules, now: datetime | None = None) -> Topic:
    """The requesting unit accepts the delivery (the bounty goes to the assignee's unit less the
    fee) or rejects it, with an optional reason (the topic reopens; past the deadline it
    expires)."""
    caller.require(SCOPE_SUBSCRIBE, "deciding on a delivery")
    if decision not in ("accept", "reject"):
        raise InvalidField("decision must be accept or reject", "decision")
    now = now or utcnow()
    _lock_topic(session, topic)
    assignee = topic.assignee_unit.slug if topic.assignee_unit else None
    if caller.unit is not None and caller.unit == assignee:
        raise Forbidden(f"unit {assignee!r} delivered topic {topic.id}: the requesting unit "
                        f"{topic.unit.slug!r} accepts or rejects it, not the assignee",
                        "decision")
    if caller.unit != topic.unit.slug:
        raise Forbidden(f"only members of unit {topic.unit.slug!r}, which posted topic "
                        f"{topic.id}, accept or reject its delivery", "unit")
    if topic.status != "delivered":
        _require_live(topic, "delivered", now, "a decision")
    proposal = session.scalar(select(TopicProposal).where(
        TopicProposal.topic_id == topic.id, TopicProposal.unit_id == topic.assignee_unit_id))
    if decision == "accept":
        escrow = session.get(Account, topic.escrow_account_id)
        transfer, fee = points.escrow_release(session, escrow, topic.assignee_unit, rules,
                                              caller.name, f"topic {topic.id}: bounty paid")
        topic.status, topic.fee, topic.closed_at = "accepted", fee, now
        proposal.status = "accepted"
        session.flush()
        paid = points.format_points(topic.bounty - fee)
        _step(session, topic, "accepted", caller.name,
              f"{paid} points paid to unit {assignee}, fee {points.format_points(fee)}",
              party_units=(assignee,), assignee=assignee, transfer=transfer.id,
              bounty=points.format_points(topic.bounty), fee=points.format_points(fee),
              paid=paid)
        inbox.notify_unit(session, topic.assignee_unit_id, "bounty_paid",
                          f"Bounty paid: {paid} points for {topic.title}", f"topics/{topic.id}")
        inbox.notify_unit(session, topic.unit_id, "topic_accepted",
                          f"Delivery accepted: {topic.title}", f"topics/{topic.id}",
                          exclude=(caller.name,))
        return topic
    why = _text({"reason": reason}, "reason", REASON_MAX, required=False) or "no reason given"
    assignee_id = topic.assignee_unit_id
    proposal.status = "pending"
    topic.status, topic.assignee_unit_id = "open", None
    topic.delivered_version_id = topic.delivered_by = topic.delivered_at = None
    session.flush()
    session.refresh(topic)
    _step(session, topic, "rejected", caller.name, f"delivery of unit {assignee} rejected: {why}",
          party_units=(assignee,), assignee=assignee, reason=why)
    inbox.notify_unit(session, assignee_id, "topic_rejected",
                      f"Delivery rejected: {topic.title}", f"topics/{topic.id}", body=why)
    if topic.deadline <= now:
        _expire(session, topic, "system", now)
    return topic


def _expire(session: Session, topic: Topic, actor: str, now: datetime) -> None:
    escrow = session.get(Account, topic.escrow_account_id)
    held = escrow.balance
    transfer = points.escrow_refund(session, escrow, topic.unit, actor,
                                    f"topic {topic.id}: deadline passed, bounty back")
    topic.status, topic.closed_at = "expired", now
    for proposal in topic.proposals:
        if proposal.status == "assigned":
            proposal.status = "pending"
    session.flush()
    _step(session, topic, "expired", actor,
          f"deadline passed: {points.format_points(held)} points back to unit "
          f"{topic.unit.slug}", transfer=transfer.id, refunded=points.format_points(held))


def expire_due(session: Session, now: datetime | None = None, limit: int = 100) -> int:
    """The sweep: expire every open or assigned topic past its deadline and give its escrow back
    to the requesting unit; returns how many. The caller commits."""
    now = now or utcnow()
    due = session.scalars(select(Topic).where(Topic.status.in_(EXPIRING), Topic.deadline <= now)
                          .order_by(Topic.id).limit(limit)).all()
    done = 0
    for topic in due:
        _lock_topic(session, topic)
        if topic.status in EXPIRING and topic.deadline <= now:  # not decided meanwhile
            _expire(session, topic, "system", now)
            done += 1
    return done


DEMO_TITLE = "Detect meter tampering in rural feeders"


def demo_topic(session: Session, requester: Caller, volunteer_caller: Caller,
               product: str, version: str | None, rules: points.EconomyRules, bounty: int = 40,
               now: datetime | None = None) -> Topic:
    """A finished topic for the demo's history: posted by ``requester``'s unit, done by
    ``volunteer_caller``'s unit with ``product`` ``version`` (on the shelf; None: the version
    on sale), accepted. Every step goes through the functions above, so it moves points and
    is certified as usual."""
    now = now or utcnow()
    if version is None:
        found = session.scalar(select(Product).where(Product.name == product))
        if found is None or found.current_version is None:
            raise NotFound(f"no product {product!r} on the shelf", "product")
        version = found.current_version.version
    req = TopicRequest(
        title=DEMO_TITLE,
        description="We need a model that flags likely meter tampering on rural low-voltage "
                    "feeders from daily consumption, for field inspections.",
        data_offered="Two years of daily consumption of 40k rural customers (desensitized).",
        deadline=now + timedelta(days=30), bounty=bounty * points.CENTS)
    topic = post_topic(session, requester, req, now)
    proposal = volunteer(session, volunteer_caller, topic,
                         "Our theft detector already covers feeder-level patterns; we will "
                         "tune it for rural feeders.", now)
    assign(session, requester, topic, proposal.id, now)
    deliver(session, volunteer_caller, topic, product, version, now)
    return decide(session, requester, topic, "accept", None, rules, now)


def seed_demo_topic(session_factory, rules: points.EconomyRules, log=print) -> int | None:
    """The demo's finished topic (``demo.seed_history`` calls this once): unit c asked for
    a rural tampering detector with a 40-point bounty, unit a delivered its theft detector,
    unit c accepted. Once: an existing one is kept. Returns the topic's id, or None when the
    demo's products are missing."""
    requester = Caller("subscriber-c", frozenset({SCOPE_SUBSCRIBE}), "c")
    doer = Caller("publisher-a", frozenset({SCOPE_SUBSCRIBE, SCOPE_PUBLISH}), "a")
    with session_factory() as session:
        write_transaction(session)
        done = session.scalar(select(Topic.id).where(Topic.title == DEMO_TITLE))
        if done is not None:  # seeded before (the history's marker was removed)
            return done
        try:
            topic = demo_topic(session, requester, doer, "electricity-theft-detection", None,
                               rules)
            session.commit()
        except MarketError as e:
            session.rollback()
            log(f"  history: the demo topic was skipped: {e.message}")
            return None
        log(f"  history: topic {topic.id} posted by unit c, delivered by unit a, accepted")
        return topic.id


# --- the sweep (started by app.py) -------------------------------------------------------------


def sweep(session_factory, now: datetime | None = None) -> int:
    """Blocking (a worker thread): expire the due topics in one write transaction. A read looks
    first, so an idle market never takes SQLite's write lock for nothing."""
    now = now or utcnow()
    with session_factory() as session:
        due = session.scalar(select(Topic.id).where(Topic.status.in_(EXPIRING),
                                                    Topic.deadline <= now).limit(1))
    if due is None:
        return 0
    with session_factory() as session:
        write_transaction(session)
        done = expire_due(session, now)
        session.commit()
        return done


async def sweep_loop(session_factory, interval: float) -> None:
    """Give expired topics' escrow back every ``interval`` seconds (0: never)."""
    loop = asyncio.get_running_loop()
    while interval > 0:
        try:
            done = await loop.run_in_executor(None, sweep, session_factory)
            if done:
                log.info("expired %i topic(s) and gave their bounties back", done)
        except Exception:
            log.exception("topic expiry sweep failed; retrying next interval")
        await asyncio.sleep(interval)
