"""The forum's domain rules against the real databases (SQLite and PostgreSQL): threads on a
product, a category or a topic; sanitized Markdown (a script stored and shown inert); mentions
that notify exactly the known users mentioned; moderation; paging and search; bad input named
by field with nothing written."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from marketplace_ext import dbutil, points, units
from marketplace_ext.auth import SCOPE_APPROVE, SCOPE_PUBLISH, SCOPE_SUBSCRIBE, Caller
from marketplace_ext.errors import Conflict, Forbidden, InvalidField, NotFound
from marketplace_ext.exchange import forum, inbox
from marketplace_ext.exchange.forum_orm import ForumPost, ForumThread
from marketplace_ext.exchange.inbox_orm import Notification
from marketplace_ext.orm import (
    Product,
    Version,
    make_engine,
    make_session_factory,
    utcnow,
    write_transaction,
)

RULES = points.EconomyRules()
SCRIPT = ("Look <script>alert('x')</script> **bold** [x](javascript:alert(1)) "
          "<img src=x onerror=alert(2)>")


def member(unit: str, name: str, publish: bool = False) -> Caller:
    scopes = {SCOPE_SUBSCRIBE} | ({SCOPE_PUBLISH} if publish else set())
    return Caller(name=name, scopes=frozenset(scopes), unit=unit)


OPERATOR = Caller(name="operator", scopes=frozenset({SCOPE_APPROVE, SCOPE_SUBSCRIBE}))
ALICE = member("a", "alice")
BOB = member("b", "bob")
CAROL = member("a", "carol")


def _product(session, unit, name: str, on_shelf: bool) -> Product:
    product = Product(name=name, kind="tool", unit_id=unit.id, created_by="test")
    session.add(product)
    session.flush()
    version = Version(product_id=product.id, version="1.0.0", sha256=name.ljust(64, "0"),
                      state="on_shelf" if on_shelf else "submitted", title=name, summary="",
                      tags="[]", manifest=json.dumps({"name": name, "plans": []}),
                      parameters="{}", files="[]", readme="", size=0, created_by="test")
    session.add(version)
    session.flush()
    if on_shelf:
        product.current_version_id = version.id
    session.flush()
    return product


@pytest.fixture
def session(db_url):
    dbutil.upgrade(db_url)
    engine = make_engine(db_url)
    with make_session_factory(engine)() as s:
        write_transaction(s)
        for slug in ("a", "b"):
            unit = units.create_unit(s, slug, slug.upper(), "test")
            points.open_account(s, unit, RULES, "test")
        for slug, name in (("a", "alice"), ("a", "carol"), ("b", "bob")):
            units.add_member(s, slug, name, "test")
        _product(s, units.get_unit(s, "a"), "theft", on_shelf=True)
        _product(s, units.get_unit(s, "a"), "draft-tool", on_shelf=False)
        s.commit()
        yield s
    engine.dispose()


def count(session, model) -> int:
    return session.scalar(select(func.count()).select_from(model))


def test_a_script_is_stored_and_shown_inert_and_markdown_renders(session):
    thread = forum.create_thread(session, ALICE, {"title": "  Theft   scores ", "body": SCRIPT,
                                                  "product": "theft"})
    session.commit()
    post = thread.posts[0]
    assert thread.title == "Theft scores" and thread.target_kind == "product"
    assert post.body == SCRIPT  # as typed: plain text, never executed
    assert "<script" not in post.html and "onerror" not in post.html
    assert "javascript:" not in post.html
    assert "<strong>bold</strong>" in post.html
    # what the API returns is what is stored: the sanitized HTML
    assert forum.post_json(post, BOB)["html"] == post.html


def test_mentions_notify_known_users_once_and_never_the_author(session):
    text = ("@bob and @carol, see this. @bob again; not @nobody, not alice@example.org, "
            "not `@carol` in code, and not @alice herself.")
    thread = forum.create_thread(session, ALICE, {"title": "Help", "body": text,
                                                  "category": "general"})
    session.commit()
    assert forum.mentioned_names(text) == ["bob", "carol", "nobody", "alice"]
    rows = session.scalars(select(Notification).order_by(Notification.user_name)).all()
    assert [(n.user_name, n.kind) for n in rows] == [("bob", "mention"), ("carol", "mention")]
    assert rows[0].link == f"forum/{thread.id}#post-{thread.posts[0].id}"
    assert json.loads(thread.posts[0].mentions) == ["bob", "carol"]
    # a forum author who is in no unit (an operator) can be mentioned once known
    forum.add_post(session, OPERATOR, thread, {"body": "Operators read along."})
    forum.add_post(session, BOB, thread, {"body": "thanks @operator"})
    session.commit()
    assert inbox.unread_count(session, "operator") == 1


def test_bad_input_names_the_field_and_writes_nothing(session):
    cases = [
        ({"body": "x", "category": "general"}, "title", InvalidField),
        ({"title": "  ", "body": "x", "category": "general"}, "title", InvalidField),
        ({"title": "ab", "body": "x", "category": "general"}, "title", InvalidField),
        ({"title": "Fine", "body": "", "category": "general"}, "body", InvalidField),
        ({"title": "Fine", "body": "x" * (forum.MAX_BODY + 1), "category": "general"}, "body",
         InvalidField),
        ({"title": "Fine", "body": "x"}, "category", InvalidField),
        ({"title": "Fine", "body": "x", "category": "general", "product": "theft"}, "category",
         InvalidField),
        ({"title": "Fine", "body": "x", "category": "gossip"}, "category", NotFound),
        ({"title": "Fine", "body": "x", "product": "nope"}, "product", NotFound),
        # another unit's product that is not on the shelf does not exist for bob
        ({"title": "Fine", "body": "x", "product": "draft-tool"}, "product", NotFound),
        ({"title": "Fine", "body": "x", "topic": "x1"}, "topic", NotFound),
        ({"title": "Fine", "body": "x", "category": "general", "color": "red"}, "color",
         InvalidField),
    ]
    for body, field, error in cases:
        with pytest.raises(error) as e:
            forum.create_thread(session, BOB, body)
        assert e.value.field == field, body
        session.rollback()
    assert count(session, ForumThread) == 0 and count(session, ForumPost) == 0
    # the owner's unit sees its own draft product and may discuss it
    forum.create_thread(session, ALICE, {"title": "Draft notes", "body": "x",
                                         "product": "draft-tool"})
    nobody = Caller(name="guest", scopes=frozenset(), unit=None)
    with pytest.raises(Forbidden):
        forum.create_thread(session, nobody, {"title": "Hi", "body": "x", "category": "general"})


def test_moderation_hides_with_a_reason_for_everyone_but_operators(session):
    thread = forum.create_thread(session, ALICE, {"title": "Spam here", "body": "buy now",
                                                  "category": "general"})
    reply = forum.add_post(session, BOB, thread, {"body": "rude words"})
    session.commit()
    with pytest.raises(Forbidden):
        forum.moderate(session, ALICE, reply, True, "no")
    with pytest.raises(InvalidField) as e:
        forum.parse_moderation({"hidden": True})
    assert e.value.field == "reason"
    with pytest.raises(InvalidField) as e:
        forum.parse_moderation({"hidden": "yes", "reason": "spam"})
    assert e.value.field == "hidden"
    hidden, reason = forum.parse_moderation({"hidden": True, "reason": "insults"})
    forum.moderate(session, OPERATOR, reply, hidden, reason)
    session.commit()
    seen = forum.post_json(reply, CAROL)
    assert seen["hidden"] and seen["hidden_reason"] == "insults"
    assert seen["body"] == "" and seen["html"] == "" and "hidden_by" not in seen
    assert forum.post_json(reply, OPERATOR)["body"] == "rude words"
    assert forum.post_json(reply, OPERATOR)["hidden_by"] == "operator"
    # a hidden post is not found by search, except by operators
    assert forum.list_threads(session, CAROL, q="rude")[1] == 0
    assert forum.list_threads(session, OPERATOR, q="rude")[1] == 1
    # a hidden thread leaves the list, takes no replies, and shows no posts
    forum.moderate(session, OPERATOR, thread, True, "advertising")
    session.commit()
    assert forum.list_threads(session, CAROL)[1] == 0
    assert forum.list_threads(session, OPERATOR)[1] == 1
    shown = forum.thread_page(session, CAROL, thread)
    assert shown["posts"] == [] and shown["thread"]["title"] == "(hidden by an operator)"
    with pytest.raises(Conflict) as e:
        forum.add_post(session, ALICE, thread, {"body": "hello?"})
    assert e.value.field == "thread"
    session.rollback()
    forum.moderate(session, OPERATOR, thread, False, None)
    session.commit()
    assert forum.list_threads(session, CAROL)[1] == 1
    assert thread.hidden_reason is None


def test_paging_and_search(session):
    start = utcnow() - timedelta(hours=1)
    for i in range(25):
        forum.create_thread(session, ALICE, {"title": f"Thread {i:02d}", "body": f"body {i}",
                                             "category": "data"},
                            now=start + timedelta(minutes=i))
    thread = forum.create_thread(session, BOB, {"title": "On theft", "product": "theft",
                                                "body": "Does 100% of it work_ok?"}, now=start)
    for i in range(45):
        forum.add_post(session, ALICE, thread, {"body": f"reply {i}"},
                       now=start + timedelta(minutes=30, seconds=i))
    session.commit()
    page1, total = forum.list_threads(session, BOB, page=1, per_page=10)
    assert total == 26 and len(page1) == 10
    # latest activity first: the product thread got the newest reply
    assert page1[0].id == thread.id and page1[1].title == "Thread 24"
    page3, _ = forum.list_threads(session, BOB, page=3, per_page=10)
    assert [t.title for t in page3] == [f"Thread {i:02d}" for i in range(5, -1, -1)]
    assert forum.list_threads(session, BOB, target=("category", "data"))[1] == 25
    assert forum.list_threads(session, BOB, target=("product", "theft"))[1] == 1
    # search: titles and post text, case-insensitive, LIKE wildcards taken literally
    assert [t.id for t in forum.list_threads(session, BOB, q="THEFT")[0]] == [thread.id]
    assert [t.id for t in forum.list_threads(session, BOB, q="reply 44")[0]] == [thread.id]
    assert [t.id for t in forum.list_threads(session, BOB, q="100%")[0]] == [thread.id]
    assert forum.list_threads(session, BOB, q="work_ok")[1] == 1
    # a one-character query is refused
    with pytest.raises(InvalidField) as e:
        forum.parse_query("%")
    assert e.value.field == "q"
    posts, total = forum.list_posts(session, thread, page=3, per_page=20)
    assert total == 46 and [p.body for p in posts] == [f"reply {i}" for i in range(39, 45)]
    assert forum.page_of_post(session, posts[-1]) == 3
    assert thread.post_count == 46
    for bad in ({"page": 0}, {"per_page": 0}, {"per_page": 101}):
        with pytest.raises(InvalidField) as e:
            forum.list_threads(session, BOB, **bad)
        assert e.value.field == next(iter(bad))


def test_product_threads_follow_the_products_visibility(session):
    draft = forum.create_thread(session, ALICE, {"title": "Draft notes", "body": "x",
                                                 "product": "draft-tool"})
    session.commit()
    assert forum.get_thread(session, CAROL, draft.id) is draft
    with pytest.raises(NotFound) as e:
        forum.get_thread(session, BOB, draft.id)
    assert e.value.field == "thread"
    assert forum.list_threads(session, BOB)[1] == 0
    assert forum.list_threads(session, CAROL)[1] == 1
    with pytest.raises(NotFound):
        forum.get_thread(session, BOB, "12x")


def test_a_thread_on_a_topic_request(session):
    from marketplace_ext.exchange import topics

    req = topics.validate_topic_request({
        "title": "Feeder loss estimates", "description": "We need them", "bounty": 5,
        "deadline": (utcnow() + timedelta(days=3)).isoformat() + "Z"})
    topic = topics.post_topic(session, ALICE, req)
    thread = forum.create_thread(session, BOB, {"title": "Questions on the data",
                                                "body": "Which feeders?", "topic": topic.id})
    session.commit()
    assert (thread.target_kind, thread.target) == ("topic", str(topic.id))
    assert forum.thread_json(thread, BOB)["target"]["link"] == f"topics/{topic.id}"
    assert forum.list_threads(session, ALICE, target=("topic", str(topic.id)))[1] == 1
    with pytest.raises(NotFound) as e:
        forum.create_thread(session, BOB, {"title": "Nope", "body": "x",
                                           "topic": str(topic.id + 1)})
    assert e.value.field == "topic"
