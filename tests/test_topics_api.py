"""Issue 16's acceptance for topic requests, end to end on the session platform through the
Python client: a topic posted with a 40-point bounty, a volunteer assigned, a version
delivered, the requester's acceptance - the balances move exactly (the requester 40.00 into
escrow, the assignee 37.60, the operator's fee 2.40) and every step is certified; a topic past
its deadline reads as expired at once and the service's sweep gives the bounty back exactly;
bad input gets a 4xx naming the field with the ledger untouched.

Units: e requests (it buys nothing else in the suite's exchange tests), b volunteers with its
demo tool ``tariff-risk-prediction``. The operator's balance is read from the fee's own
transfer, not from totals other tests also move."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from helpers import market_as, wait_until

from marketplace_ext.client import MarketAPIError

TOOL = "tariff-risk-prediction"


@pytest.fixture(scope="module")
def users(hub_url, logins):
    return {name: market_as(hub_url, name, logins[name])
            for name in ("subscriber-e", "publisher-b", "operator", "publisher-c")}


def balance(market, unit: str) -> str:
    return market.request("GET", f"units/{unit}/account?limit=1")["balance"]


def transfer(market, unit: str, memo: str) -> dict:
    rows = market.request("GET", f"units/{unit}/account?limit=20")["transfers"]
    return next(t for t in rows if t["memo"] == memo)


def refused(call, status: int, field: str) -> MarketAPIError:
    with pytest.raises(MarketAPIError) as e:
        call()
    assert (e.value.status, e.value.field) == (status, field), e.value
    return e.value


def in_days(days: float) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


def test_bounty_escrowed_assigned_delivered_accepted_and_paid_exactly(users):
    requester, volunteer, operator = (users["subscriber-e"], users["publisher-b"],
                                      users["operator"])
    e0, b0 = balance(requester, "e"), balance(volunteer, "b")
    count = len(requester.topics(unit="e", limit=200))

    # bad input first: each a 4xx naming the field, the ledger untouched
    refused(lambda: requester.post_topic("Too rich", "d", 10**5, in_days(3)), 409, "bounty")
    refused(lambda: requester.post_topic("Past", "d", 5, "2020-01-01T00:00:00Z"), 400,
            "deadline")
    refused(lambda: requester.post_topic(" ", "d", 5, in_days(3)), 400, "title")
    refused(lambda: requester.post_topic("No bounty", "d", 0, in_days(3)), 400, "bounty")
    refused(lambda: operator.post_topic("Operator", "d", 5, in_days(3)), 403, "unit")
    assert balance(requester, "e") == e0
    assert len(requester.topics(unit="e", limit=200)) == count

    topic = requester.post_topic("Tariff misclassification audit",
                                 "Find customers billed on the wrong tariff class.", 40,
                                 in_days(7), data_offered="billing records, 1 year")
    tid = topic["id"]
    assert (topic["status"], topic["bounty"], topic["escrow"]["balance"]) == (
        "open", "40.00", "40.00")
    assert float(balance(requester, "e")) == pytest.approx(float(e0) - 40)
    into = transfer(requester, "e", f"topic {tid}: bounty into escrow")
    assert (into["kind"], into["amount"]) == ("escrow_in", "-40.00")
    assert into["counterparties"] == [{"account": topic["escrow"]["account"],
                                       "amount": "40.00"}]

    # a volunteer of another unit; the requester's own unit may not
    refused(lambda: users["subscriber-e"].volunteer(tid, "me"), 403, None)
    proposal = volunteer.volunteer(tid, "Our tariff risk tool does this.")["proposals"][0]
    assert proposal["unit"] == "b" and proposal["status"] == "pending"
    refused(lambda: volunteer.volunteer(tid, "again"), 409, "unit")
    # a third unit sees that there is a proposal, not what it says
    seen = users["publisher-c"].topic(tid)
    assert seen["proposal_count"] == 1 and seen["proposals"] == []
    refused(lambda: volunteer.assign_topic(tid, proposal["id"]), 403, "unit")
    assigned = requester.assign_topic(tid, proposal["id"])
    assert (assigned["status"], assigned["assignee"]) == ("assigned", "b")

    version = volunteer.product(TOOL)["current_version"]
    refused(lambda: volunteer.deliver_topic(tid, TOOL, "99.0.0"), 404, "version")
    refused(lambda: users["publisher-c"].deliver_topic(tid, "ev-charger-layout", "1.0.0"), 403,
            "unit")
    delivered = volunteer.deliver_topic(tid, TOOL, version)
    assert delivered["status"] == "delivered"
    assert delivered["delivery"]["product"] == TOOL and delivered["may"]["decide"] is False
    assert requester.topic(tid)["may"]["decide"] is True
    # the assignee may not accept its own delivery; nothing moves
    refused(lambda: volunteer.decide_topic(tid, "accept"), 403, "decision")
    refused(lambda: requester.decide_topic(tid, "perhaps"), 400, "decision")
    assert balance(volunteer, "b") == b0

    b_before = float(balance(volunteer, "b"))
    accepted = requester.decide_topic(tid, "accept")
    assert (accepted["status"], accepted["payout"], accepted["fee"]) == ("accepted", "37.60",
                                                                        "2.40")
    assert accepted["escrow"]["balance"] == "0.00"
    assert float(balance(volunteer, "b")) == pytest.approx(b_before + 37.60)
    assert float(balance(requester, "e")) == pytest.approx(float(e0) - 40)
    paid = transfer(volunteer, "b", f"topic {tid}: bounty paid")
    assert (paid["kind"], paid["amount"]) == ("bounty", "37.60")
    assert sorted((c["account"], c["amount"]) for c in paid["counterparties"]) == [
        (topic["escrow"]["account"], "-40.00"), ("operator", "2.40")]
    refused(lambda: requester.decide_topic(tid, "accept"), 409, "topic")  # paid once only

    # every step certified: the requester (a party) reads each entry's details
    steps = accepted["steps"]
    assert [s["step"] for s in steps] == ["posted", "volunteered", "assigned", "delivered",
                                          "accepted"]
    for step in steps:
        entry = requester.log_entry(step["log_index"])
        assert entry["statement"]["step"] == step["step"], entry
        assert entry["statement"]["topic"] == tid
    last = requester.log_entry(steps[-1]["log_index"])["statement"]
    assert (last["paid"], last["fee"], last["assignee"]) == ("37.60", "2.40", "b")
    # the assignee's people hear of it
    inbox = volunteer.request("GET", "inbox?per_page=100")["notifications"]
    kinds = {n["kind"] for n in inbox if n["link"] == f"topics/{tid}"}
    assert {"topic_assigned", "bounty_paid"} <= kinds


def test_expiry_gives_the_bounty_back_exactly(users):
    requester, volunteer = users["subscriber-e"], users["publisher-b"]
    e0 = float(balance(requester, "e"))
    # a deadline a few seconds ahead (the service must still find it ahead when it checks)
    deadline = datetime.now(UTC) + timedelta(seconds=8)
    topic = requester.post_topic("Short-lived need", "Expires at once.", 15, deadline)
    tid = topic["id"]
    assert topic["status"] == "open"
    assert float(balance(requester, "e")) == pytest.approx(e0 - 15)
    # reads say expired as soon as the deadline passes; nothing more happens to it; the
    # sweep then gives the escrow back
    wait_until(lambda: requester.topic(tid)["status"] == "expired", 60, "the deadline to pass")
    refused(lambda: volunteer.volunteer(tid, "too late"), 409, "deadline")
    wait_until(lambda: requester.topic(tid)["escrow"]["balance"] == "0.00", 120,
               "the sweep to give the bounty back")
    assert float(balance(requester, "e")) == pytest.approx(e0)
    back = transfer(requester, "e", f"topic {tid}: deadline passed, bounty back")
    assert (back["kind"], back["amount"]) == ("escrow_refund", "15.00")
    done = requester.topic(tid)
    assert done["steps"][-1]["step"] == "expired" and done["closed_at"] is not None
    assert requester.log_entry(done["steps"][-1]["log_index"])["statement"]["refunded"] == \
        "15.00"
    assert done["fee"] is None
