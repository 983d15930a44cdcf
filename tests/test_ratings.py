"""Ratings and reviews (issue 16 item 1) against the real databases (SQLite and PostgreSQL):
only a unit that used a version rates it, once per user and version, editable for a while;
publishers reply; operators hide with a reason, certified; texts shown sanitized; a new review
lands in the product unit's inbox. The helpers here are shared by test_ranking and
test_report."""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from marketplace_ext import dbutil, points, purchase
from marketplace_ext.auth import SCOPE_APPROVE, SCOPE_PUBLISH, SCOPE_SUBSCRIBE, Caller
from marketplace_ext.errors import Conflict, Forbidden, InvalidField, NotFound
from marketplace_ext.exchange import ratings
from marketplace_ext.exchange.inbox_orm import Notification
from marketplace_ext.exchange.ratings_orm import Review
from marketplace_ext.orm import (
    LogEntry,
    Member,
    Product,
    Run,
    Transition,
    Unit,
    Version,
    make_engine,
    make_session_factory,
    utcnow,
    write_transaction,
)

RULES = points.EconomyRules()
_names = itertools.count()
OPERATOR = Caller("op", frozenset({SCOPE_APPROVE}), None)


# --- shared helpers ----------------------------------------------------------------------------


def make_unit(s, slug: str, unit_type: str = "provincial_company") -> Unit:
    unit = Unit(slug=slug, name=slug.upper(), created_by="test", type=unit_type)
    s.add(unit)
    s.flush()
    points.open_account(s, unit, RULES, "test")
    for who in (f"sub-{slug}", f"pub-{slug}"):
        s.add(Member(user_name=who, unit_id=unit.id, added_by="test"))
    s.flush()
    return unit


def sub(unit: Unit | str, name: str | None = None) -> Caller:
    slug = unit if isinstance(unit, str) else unit.slug
    return Caller(name or f"sub-{slug}", frozenset({SCOPE_SUBSCRIBE}), slug)


def pub(unit: Unit | str) -> Caller:
    slug = unit if isinstance(unit, str) else unit.slug
    return Caller(f"pub-{slug}", frozenset({SCOPE_SUBSCRIBE, SCOPE_PUBLISH}), slug)


def make_product(s, owner: Unit, name: str | None = None, on_shelf_at: datetime | None = None,
                 price: int = 10, version: str = "1.0.0") -> Product:
    """A product with one version on the shelf since ``on_shelf_at`` (default now), as the
    catalogue leaves it after approval (with its transitions)."""
    name = name or f"p{next(_names)}"
    product = Product(name=name, kind="tool", unit_id=owner.id, created_by="test")
    s.add(product)
    s.flush()
    add_version(s, product, version, on_shelf_at, price)
    return product


def add_version(s, product: Product, version: str, on_shelf_at: datetime | None = None,
                price: int = 10) -> Version:
    manifest = {"name": product.name, "plans": [{"type": "per_use", "price": price},
                                                {"type": "month", "price": price * 3}],
                "sharing": ["remote_run", "download"]}
    v = Version(product_id=product.id, version=version, sha256=f"{product.name}{version}"
                .ljust(64, "0")[:64], state="on_shelf", title=product.name.title(),
                summary="", tags="[]", manifest=json.dumps(manifest), parameters="{}",
                files="[]", readme="", size=0, created_by="test")
    s.add(v)
    s.flush()
    at = on_shelf_at or utcnow()
    for frm, to in ((None, "draft"), ("draft", "submitted"), ("submitted", "on_shelf")):
        s.add(Transition(version_id=v.id, from_state=frm, to_state=to, actor="test", at=at))
    if product.current_version is not None:
        product.current_version.state = "superseded"
    product.current_version_id = v.id
    s.flush()
    s.refresh(product)
    return v


_keys = itertools.count()


def buy(s, unit: Unit, product: Product, plan: str = "per_use"):
    order, _ = purchase.place_order(s, sub(unit), RULES, product.name, plan,
                                  f"key-{next(_keys):08d}")
    return order


def ran(s, unit: Unit, product: Product, status: str = "succeeded",
        at: datetime | None = None) -> Run:
    run = Run(product_id=product.id, version_id=product.current_version_id, unit_id=unit.id,
              user=f"sub-{unit.slug}", mode="remote_run", status=status, parameters="{}",
              data_kind="platform", timeout_seconds=60, cells_done=0, cells_total=0,
              artifacts="{}", created_at=at or utcnow())
    s.add(run)
    s.flush()
    return run


@pytest.fixture
def s(db_url):
    dbutil.upgrade(db_url)
    engine = make_engine(db_url)
    with make_session_factory(engine)() as session:
        write_transaction(session)
        yield session
    engine.dispose()


# --- the tests ---------------------------------------------------------------------------------


def test_only_units_that_used_a_version_rate_it_once(s):
    a, b, c, d = (make_unit(s, x) for x in "abcd")
    product = make_product(s, a, "theft")
    buy(s, b, product)  # b ordered: used
    ran(s, c, product, status="failed")  # c's run failed: not a use
    s.commit()
    entries_before = s.scalar(select(func.count()).select_from(LogEntry))

    refusals = [
        (sub(c), Forbidden, "version"),  # no use (a failed run)
        (sub(d), Forbidden, "version"),  # no use at all
        (sub(a), Forbidden, "product"),  # the owner's unit
        (OPERATOR, Forbidden, None),  # no subscribe scope
        (Caller("lost", frozenset({SCOPE_SUBSCRIBE}), None), Forbidden, "unit"),
    ]
    for caller, error, field in refusals:
        with pytest.raises(error) as e:
            ratings.rate(s, caller, "theft", None, 4, "good")
        assert e.value.field == field, caller
        s.rollback()
    for stars, field in ((0, "stars"), (6, "stars"), ("five", "stars"), (True, "stars"),
                         (4.5, "stars")):
        with pytest.raises(InvalidField) as e:
            ratings.rate(s, sub(b), "theft", None, stars, "x")
        assert e.value.field == field
        s.rollback()
    with pytest.raises(InvalidField) as e:
        ratings.rate(s, sub(b), "theft", None, 4, "x" * (ratings.MAX_TEXT + 1))
    assert e.value.field == "text"
    s.rollback()
    with pytest.raises(NotFound) as e:
        ratings.rate(s, sub(b), "theft", "9.9.9", 4, "x")
    assert e.value.field == "version"
    s.rollback()
    assert s.scalar(select(func.count()).select_from(Review)) == 0
    assert s.scalar(select(func.count()).select_from(LogEntry)) == entries_before

    review = ratings.rate(s, sub(b), "theft", None, 4, "Found **real** thieves")
    s.commit()
    assert (review.stars, review.user_name) == (4, "sub-b")
    entry = s.get(LogEntry, review.log_index)
    assert entry.kind == "review" and json.loads(entry.details)["stars"] == 4
    # twice: refused naming the version; another member of b rates on its own
    with pytest.raises(Conflict) as e:
        ratings.rate(s, sub(b), "theft", "1.0.0", 5, "again")
    assert e.value.field == "version"
    s.rollback()
    ratings.rate(s, sub(b, "sub2-b"), "theft", None, 2, "")
    # a succeeded run is a use too
    ran(s, c, product)
    ratings.rate(s, sub(c), "theft", None, 5, "")
    s.commit()
    agg = ratings.aggregate(s, [product.id])[product.id]
    assert (agg["count"], agg["sum"], agg["mean"]) == (3, 11, 3.67)
    assert agg["histogram"] == {1: 0, 2: 1, 3: 0, 4: 1, 5: 1}
    # a new version is rated afresh: b's order was for 1.0.0
    add_version(s, product, "2.0.0")
    assert not ratings.eligibility(s, sub(b), product, product.current_version).allowed
    with pytest.raises(Forbidden) as e:
        ratings.rate(s, sub(b), "theft", None, 5, "")
    assert e.value.field == "version"
    s.rollback()


def test_refunded_order_is_not_a_use(s):
    a, b = make_unit(s, "a"), make_unit(s, "b")
    product = make_product(s, a, "tool")
    order = buy(s, b, product)
    points.refund(s, order, "runner", "run failed")
    s.commit()
    assert not ratings.has_used(s, b.id, product.current_version_id)
    with pytest.raises(Forbidden):
        ratings.rate(s, sub(b), "tool", None, 1, "never ran")


def test_edit_window_reply_and_hide(s):
    a, b = make_unit(s, "a"), make_unit(s, "b")
    product = make_product(s, a, "meter")
    buy(s, b, product)
    made = datetime(2026, 10, 1, 12, 0)
    review = ratings.rate(s, sub(b), "meter", None, 2, "slow", now=made)
    s.commit()
    # the author edits within the window; nobody else does; after the window nobody does
    ratings.edit(s, sub(b), review.id, 3, "faster now", now=made + timedelta(days=13))
    assert (review.stars, review.text) == (3, "faster now")
    s.commit()
    with pytest.raises(Forbidden) as e:
        ratings.edit(s, sub(b, "sub2-b"), review.id, 5, "", now=made)
    assert e.value.field == "review"
    with pytest.raises(Conflict) as e:
        ratings.edit(s, sub(b), review.id, 5, "", now=made + ratings.EDIT_WINDOW
                     + timedelta(seconds=1))
    assert e.value.field == "review"
    s.rollback()
    # replies: the owning unit's publishers only
    for caller in (sub(a), pub(b), OPERATOR):
        with pytest.raises(Forbidden):
            ratings.reply(s, caller, review.id, "thanks")
        s.rollback()
    with pytest.raises(InvalidField) as e:
        ratings.reply(s, pub(a), review.id, "  ")
    assert e.value.field == "reply"
    ratings.reply(s, pub(a), review.id, "Fixed in 1.1")
    s.commit()
    # hiding: operators, with a reason, certified, once
    for caller in (sub(b), pub(a)):
        with pytest.raises(Forbidden):
            ratings.hide(s, caller, review.id, "spam")
        s.rollback()
    with pytest.raises(InvalidField) as e:
        ratings.hide(s, OPERATOR, review.id, "")
    assert e.value.field == "reason"
    s.rollback()
    ratings.hide(s, OPERATOR, review.id, "personal data in the text")
    s.commit()
    entry = s.get(LogEntry, review.hidden_log_index)
    assert entry.kind == "review_hidden"
    assert json.loads(entry.details)["reason"] == "personal data in the text"
    with pytest.raises(Conflict):
        ratings.hide(s, OPERATOR, review.id, "again")
    s.rollback()
    with pytest.raises(Conflict):  # hidden: no more edits
        ratings.edit(s, sub(b), review.id, 5, "", now=made)
    s.rollback()
    assert ratings.aggregate(s, [product.id])[product.id]["count"] == 0
    # what each viewer sees of a hidden review
    seen = {who: ratings.review_json(s, review, caller) for who, caller in
            (("author", sub(b)), ("operator", OPERATOR), ("other", sub(a)))}
    assert seen["other"]["stars"] is None and seen["other"]["text"] is None
    assert seen["other"]["hidden"]["reason"] == "personal data in the text"
    assert seen["author"]["text"] == "faster now" and seen["operator"]["stars"] == 3
    with pytest.raises(NotFound) as e:
        ratings.hide(s, OPERATOR, "999999", "x")
    assert e.value.field == "review"


def test_review_text_is_shown_inert_and_the_owner_is_notified(s):
    a, b = make_unit(s, "a"), make_unit(s, "b")
    product = make_product(s, a, "layout")
    buy(s, b, product)
    evil = '<script>alert("x")</script>\n\n**ok** <img src=x onerror="alert(1)">'
    review = ratings.rate(s, sub(b), "layout", None, 5, evil)
    s.commit()
    assert review.text == evil.strip()  # stored as typed
    shown = ratings.review_json(s, review, sub(a))
    assert "<script" not in shown["html"] and "onerror" not in shown["html"]
    assert "<strong>ok</strong>" in shown["html"]
    notes = s.scalars(select(Notification).where(Notification.kind == "review_new")).all()
    # every member of the product's unit, nobody of the reviewer's
    assert sorted(n.user_name for n in notes) == ["pub-a", "sub-a"]
    assert notes[0].link == "products/layout#reviews" and "★★★★★" in notes[0].subject
