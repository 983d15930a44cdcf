"""The authorization matrix's rows for the exchange's topics routes (API and pages), merged into
test_authz_matrix's EXPECTED and BUILDERS. Same unit is ``a``, another unit ``b``.

The topics the rows act on are unit a's (posted by subscriber-a, one point each, deadline an
hour ahead): one made lazily for the reads and the refusals, a fresh one for each row that
succeeds and changes it. Unit b volunteers and delivers its demo tool
``tariff-risk-prediction``; the decision rows *reject* (the topic reopens, no point moves). A
post with a bounty above any unit's balance reaches the ledger's check (409 naming
``bounty``) and writes nothing. At most eight points of unit a sit in escrow until the
topics expire and go back."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from authz_objects import Builder, Call, Cell, Ctx, R

LOGIN, RELOGIN = 302, 303
T = "/api/topics/{topic}"
VOLUNTEER_PRODUCT = "tariff-risk-prediction"  # unit b's demo tool, on the shelf

EXPECTED: dict[tuple[str, str], dict[str, Cell]] = {
    ("/api/topics", "GET"): R(401, 200, 200, 200, 200, 200),
    # every unit member may post (it spends the unit's points); the operator is in no unit
    ("/api/topics", "POST"): R(401, "409 field=bounty", "409 field=bounty", "409 field=bounty",
                               "409 field=bounty", "403 field=unit"),
    (T, "GET"): R(401, 200, 200, 200, 200, 200),
    # publishers of another unit volunteer; the requesting unit never does
    (T + "/proposals", "POST"): R(401, 403, 403, "403 field=unit", 201, 403),
    # the requesting unit or an operator assigns
    (T + "/assignment", "POST"): R(401, 200, "403 field=unit", 200, "403 field=unit", 200),
    # the assignee's (unit b's) publishers deliver
    (T + "/delivery", "POST"): R(401, 403, 403, "403 field=unit", 200, 403),
    # the requesting unit decides; the assignee may not accept its own delivery
    (T + "/decision", "POST"): R(401, 200, "403 field=decision", 200, "403 field=decision",
                                 "403 field=unit"),
    # pages: a form with no bounty (400, the page shows it next to the field) and no action
    ("/topics", "GET"): R(LOGIN, 200, 200, 200, 200, 200),
    ("/topics/new", "GET"): R(LOGIN, 200, 200, 200, 200, 200),
    ("/topics/new", "POST"): R(RELOGIN, 400, 400, 400, 400, 403),
    ("/topics/{topic}", "GET"): R(LOGIN, 200, 200, 200, 200, 200),
    ("/topics/{topic}", "POST"): R(RELOGIN, 400, 400, 400, 400, 400),
}


def _new_topic(ctx: Ctx, stage: str = "open") -> int:
    """A fresh topic of unit a, moved on to ``stage`` (open, proposed, assigned, delivered)."""
    requester, volunteer = ctx.users["subscriber-a"], ctx.users["publisher-b"]
    deadline = datetime.now(UTC) + timedelta(hours=1)
    topic = requester.post_topic(f"authz {secrets.token_hex(3)}", "authorization matrix", 1,
                                 deadline)["id"]
    if stage == "open":
        return topic
    proposal = volunteer.volunteer(topic, "authorization matrix")["proposals"][0]["id"]
    if stage == "proposed":
        return topic
    requester.assign_topic(topic, proposal)
    if stage == "assigned":
        return topic
    version = volunteer.product(VOLUNTEER_PRODUCT)["current_version"]
    volunteer.deliver_topic(topic, VOLUNTEER_PRODUCT, version)
    return topic


def _topic(ctx: Ctx, stage: str, fresh: bool) -> int:
    if fresh:
        return _new_topic(ctx, stage)
    key = f"topic-{stage}"
    if key not in ctx.objects:
        ctx.objects[key] = _new_topic(ctx, stage)
    return ctx.objects[key]


def _get(path: str) -> Builder:
    return lambda ctx, role, fresh: Call("GET", path.format(topic=_topic(ctx, "open", False)))


def _post_topic(ctx, role, fresh):
    deadline = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    return Call("POST", "api/topics", {"json": {
        "title": "authorization matrix", "description": "never posted", "bounty": 100_000,
        "deadline": deadline}})


def _step(suffix: str, stage: str, body) -> Builder:
    def build(ctx, role, fresh):
        topic = _topic(ctx, stage, fresh)
        return Call("POST", f"api/topics/{topic}/{suffix}",
                    {"json": body(ctx, topic) if callable(body) else body})
    return build


def _proposal_of(ctx, topic):
    found = ctx.users["subscriber-a"].topic(topic)["proposals"]
    return {"proposal": found[0]["id"]}


def _delivery(ctx, topic):
    version = ctx.users["publisher-b"].product(VOLUNTEER_PRODUCT)["current_version"]
    return {"product": VOLUNTEER_PRODUCT, "version": version}


def _page_post(path_stage: str | None, data: dict) -> Builder:
    def build(ctx, role, fresh):
        path = "topics/new" if path_stage is None else f"topics/{_topic(ctx, 'open', False)}"
        return Call("POST", path, {"data": data})
    return build


BUILDERS: dict[tuple[str, str], Builder] = {
    ("/api/topics", "GET"): _get("api/topics?limit=5"),
    ("/api/topics", "POST"): _post_topic,
    (T, "GET"): _get("api/topics/{topic}"),
    (T + "/proposals", "POST"): _step("proposals", "open", {"text": "authorization matrix"}),
    (T + "/assignment", "POST"): _step("assignment", "proposed", _proposal_of),
    (T + "/delivery", "POST"): _step("delivery", "assigned", _delivery),
    (T + "/decision", "POST"): _step("decision", "delivered",
                                     {"decision": "reject", "reason": "authorization matrix"}),
    ("/topics", "GET"): _get("topics"),
    ("/topics/new", "GET"): _get("topics/new"),
    ("/topics/new", "POST"): _page_post(None, {"title": "t", "description": "d", "bounty": "",
                                               "deadline": ""}),
    ("/topics/{topic}", "GET"): _get("topics/{topic}"),
    ("/topics/{topic}", "POST"): _page_post("open", {"action": ""}),
}
