"""Topic request pages: the form's values as the API's, the templates rendered as the service
renders them (hostile text inert, the actions a caller may take and no others, errors next to
their fields), and in a browser on the session platform: posting a topic (the bounty leaves the
unit's account into escrow), a bounty above the balance refused next to its field with nothing
written, volunteering from another unit; each page checked with axe-core, photographed for
docs/ and fitting a narrow window."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import test_topics
from jinja2 import Environment, FileSystemLoader, select_autoescape
from test_topics import OPERATOR, T0, member, publisher

from marketplace_ext.errors import InvalidField
from marketplace_ext.exchange import topics
from marketplace_ext.handlers.topics_pages import topic_request_body
from marketplace_ext.orm import write_transaction

TEMPLATES = Path(__file__).resolve().parent.parent / "marketplace_ext" / "templates"
HOSTILE = '<script>alert("x")</script><img src=x onerror="alert(1)">'
SERVICE = "/services/marketplace/"
# test_topics' fixture: real databases with units a, b and c (session_factory: conftest.py)
world = test_topics.world


def test_the_form_becomes_the_api_body():
    body = topic_request_body({"title": "t", "description": "d", "bounty": "40",
                               "deadline": "2027-01-31"})
    assert body == {"title": "t", "description": "d", "data_offered": "", "bounty": 40,
                    "deadline": "2027-01-31T23:59:59Z"}
    assert topic_request_body({"bounty": "1", "deadline": "2027-01-31T10:00:00Z"})[
        "deadline"] == "2027-01-31T10:00:00Z"
    for bad in ("", "4.5", "-3", "forty"):
        with pytest.raises(InvalidField) as e:
            topic_request_body({"bounty": bad, "deadline": "2027-01-31"})
        assert e.value.field == "bounty"
    # a date the form sends is checked by the API's rule, not the form's
    with pytest.raises(InvalidField) as e:
        topics.validate_topic_request(topic_request_body(
            {"title": "t", "description": "d", "bounty": "5", "deadline": "2001-01-01"}))
    assert e.value.field == "deadline"


def test_schema_blank_and_python_blank_agree():
    """The OpenAPI ``\\S`` pattern (ECMA white space) and the check here say the same: a
    title of a file-separator control character is text to both, a no-break space blank."""
    ok = topics.validate_topic_request({"title": "\x1c", "description": "d", "bounty": 1,
                                        "deadline": (T0 + timedelta(days=1)).isoformat() + "Z"},
                                       T0)
    assert ok.title == "\x1c"
    with pytest.raises(InvalidField) as e:
        topics.validate_topic_request({"title": "\u00a0\ufeff", "description": "d"}, T0)
    assert e.value.field == "title"


@pytest.fixture(scope="module")
def jinja():
    return Environment(loader=FileSystemLoader(str(TEMPLATES)),
                       autoescape=select_autoescape(default=True, default_for_string=True))


def _ns(caller, **ns) -> dict:
    return {"prefix": SERVICE, "hub_prefix": "/hub/", "caller": caller, "xsrf": "2|tok",
            "nav": "topics", "errors": {}, "form": {}, "notice": None, "products": [], **ns}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_topic_page_shows_each_caller_its_own_actions_and_nothing_runs(
        session_factory, world, jinja):
    units, tools = world
    a, b, c = units["a"], units["b"], units["c"]
    with session_factory() as s:
        write_transaction(s)
        topic = topics.post_topic(s, member(a), topics.TopicRequest(
            HOSTILE, HOSTILE, HOSTILE, T0 + timedelta(days=2), 40_00), T0)
        proposal = topics.volunteer(s, publisher(b), topic, HOSTILE, T0)
        s.commit()

        def render(caller, **extra):
            view = topics.topic_json(s, topic, caller, T0)
            return jinja.get_template("topic.html").render(**_ns(caller, topic=view, **extra))

        html = render(member(a))
        assert "<script>alert" not in html and "<img src=x" not in html
        assert "&lt;script&gt;" in html
        assert f'name="proposal" value="{proposal.id}"' in html  # the requester may assign
        assert 'value="volunteer"' not in html and 'id="accept"' not in html
        assert f"_xsrf={'2%7Ctok'}" in html
        other = render(publisher(c))
        assert 'value="volunteer"' in other and f'value="{proposal.id}"' not in other
        assert "for the requesting unit and operators to read" in other  # b's text hidden
        # b's own proposal, shown to b; after assignment b delivers one of its products
        topics.assign(s, member(a), topic, proposal.id, T0)
        s.commit()
        assignee = render(publisher(b), products=[{"name": tools["b"], "version": "1.0.0"}])
        assert f'value="{tools["b"]}@1.0.0"' in assignee and 'id="deliver"' in assignee
        assert "&lt;img src=x" in assignee
        topics.deliver(s, publisher(b), topic, tools["b"], "1.0.0", T0)
        s.commit()
        decider = render(member(a), errors={"reason": "reason is too long"},
                         form={"reason": HOSTILE})
        assert 'id="accept"' in decider and 'id="reject"' in decider
        assert 'aria-invalid="true"' in decider and "reason is too long" in decider
        assert "<script>alert" not in decider
        assert 'id="accept"' not in render(publisher(b))  # never the assignee
        steps = re.findall(r'<li class="step-(\w+)"', decider)
        assert steps == ["posted", "volunteered", "assigned", "delivered"]
        board = jinja.get_template("topics.html").render(**_ns(
            member(a), topics=[topics.topic_json(s, topic, member(a), T0)], total=1,
            wanted="open", statuses=topics.STATUSES))
        assert "<script>alert" not in board and 'data-topic="' in board
        assert '<option value="open" selected>' in board
        form = jinja.get_template("topic_new.html").render(**_ns(
            member(a), balance="460.00", errors={"bounty": "unit 'a' has 460.00 points"},
            form={"title": HOSTILE, "bounty": "999"}))
        assert 'id="error-bounty"' in form and 'value="999"' in form
        assert "<script>alert" not in form
        assert "ask an operator" in jinja.get_template("topic_new.html").render(
            **_ns(OPERATOR, balance=None))


# --- in a browser, on the session platform ------------------------------------------------------


def _balance(market, unit: str) -> float:
    return float(market.request("GET", f"units/{unit}/account?limit=1")["balance"])


def test_a_unit_posts_a_topic_and_another_volunteers(page_as, hub_url, logins):
    from browser import assert_accessible, fits_narrow_window, screenshot
    from helpers import market_as

    sub = market_as(hub_url, "subscriber-c", logins["subscriber-c"])
    before = _balance(sub, "c")
    page = page_as("subscriber-c")
    page.goto(f"{hub_url}{SERVICE}topics")
    assert_accessible(page)
    page.click("#post-topic")
    page.wait_for_url("**/topics/new")
    assert page.inner_text("#balance") == f"{before:.2f}"
    title = f"Transformer overload forecast {secrets.token_hex(3)}"
    deadline = (datetime.now(UTC) + timedelta(days=3)).date().isoformat()
    page.fill("#f-title", title)
    page.fill("#f-description", "Forecast next week's overloads per transformer.\n<b>not bold</b>")
    page.fill("#f-data_offered", "hourly transformer loads")
    page.fill("#f-deadline", deadline)
    # a bounty above the balance: refused next to its field, nothing written
    page.fill("#f-bounty", str(int(before) + 1))
    with page.expect_navigation():
        page.click("#post")
    assert "points" in page.inner_text("#error-bounty")
    assert page.get_attribute("#f-bounty", "aria-invalid") == "true"
    assert page.input_value("#f-title") == title  # nothing typed is lost
    assert_accessible(page)
    screenshot(page, "topics-new-refused")
    assert _balance(sub, "c") == before
    assert not [t for t in sub.topics(unit="c") if t["title"] == title]
    # a bounty the unit can pay: posted, the points in escrow
    page.fill("#f-bounty", "5")
    with page.expect_navigation():
        page.click("#post")
    page.wait_for_url(re.compile(r".*/topics/\d+\?done=posted$"))
    topic = int(page.url.split("/topics/")[1].split("?")[0])
    assert page.inner_text("#topic-status") == "open"
    assert page.inner_text("#escrow-balance") == "5.00"
    assert "<b>not bold</b>" in page.inner_text(".topic-facts")  # shown as text, inert
    assert _balance(sub, "c") == pytest.approx(before - 5)
    statement = sub.request("GET", "units/c/account?limit=5")["transfers"]
    into_escrow = next(t for t in statement if t["memo"] == f"topic {topic}: bounty into escrow")
    assert into_escrow["kind"] == "escrow_in" and into_escrow["amount"] == "-5.00"
    assert into_escrow["counterparties"][0]["account"].startswith("escrow:")
    posted = sub.topic(topic)
    assert posted["deadline"] == f"{deadline}T23:59:59Z"
    assert posted["steps"][0]["step"] == "posted" and posted["steps"][0]["log_index"] >= 0
    assert_accessible(page)
    screenshot(page, "topics-posted")
    # on the board; another unit's publisher volunteers from the topic's page
    page.goto(f"{hub_url}{SERVICE}topics?status=open")
    assert page.locator(f"#topics tr[data-topic='{topic}']").count() == 1
    screenshot(page, "topics-board")
    pub = page_as("publisher-d")
    pub.goto(f"{hub_url}{SERVICE}topics/{topic}")
    pub.fill("#f-text", "We forecast loads for our own feeders already.")
    with pub.expect_navigation():
        pub.click("#volunteer")
    pub.wait_for_url(re.compile(r".*\?done=volunteer$"))
    assert "unit d" in pub.inner_text("#proposals")
    assert pub.locator("#volunteer").count() == 0  # once per unit
    assert_accessible(pub)
    # the requester sees the proposal and may assign it
    page.goto(f"{hub_url}{SERVICE}topics/{topic}")
    assert page.locator("#proposals button", has_text="Assign to unit d").count() == 1
    screenshot(page, "topics-topic")
    narrow = page_as("subscriber-c", narrow=True)
    for path in ("topics", "topics/new", f"topics/{topic}"):
        narrow.goto(f"{hub_url}{SERVICE}{path}")
        assert fits_narrow_window(narrow), f"{path} scrolls sideways in a narrow window"
