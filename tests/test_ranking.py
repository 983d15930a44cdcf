"""Promotion and ranking (issue 16 item 2) on SQLite and PostgreSQL: the published formula
(recent usage by distinct units, a Bayesian rating, recency), that one 5-star review does not
top the list, that buying more does not lift a product, Trending and New, the shelf's "rank"
order, and operators' certified features."""

from __future__ import annotations

import json
import math
from datetime import timedelta

import pytest
import test_ratings
from sqlalchemy import func, select
from test_ratings import OPERATOR, buy, make_product, make_unit, ran, sub

from marketplace_ext import catalog
from marketplace_ext.errors import Conflict, Forbidden, InvalidField, NotFound
from marketplace_ext.exchange import ranking, ratings
from marketplace_ext.exchange.ratings_orm import Feature
from marketplace_ext.orm import LogEntry, utcnow

s = test_ratings.s  # the database fixture (SQLite and PostgreSQL)


def test_formula_pieces():
    assert ranking.bayesian(0, 0) == 3.0
    assert ranking.bayesian(5, 1) == pytest.approx(20 / 6)
    assert ranking.bayesian(40, 10) == pytest.approx(55 / 15)
    # one 5-star review is worth less than ten 4-star ones
    assert ranking.bayesian(5, 1) < ranking.bayesian(40, 10)
    assert ranking.score_of(0, 3.0, 0) == pytest.approx(1.0)
    assert ranking.score_of(0, 3.0, 30) == pytest.approx(0.5)
    assert ranking.score_of(3, 3.0, 10_000) == pytest.approx(2 * math.log(4))
    assert ranking.score_of(0, 4.0, 10_000) == pytest.approx(1.0)
    assert "2·ln(1 + U)" in ranking.FORMULA and "Bayesian" in ranking.FORMULA


def test_rank_follows_the_published_formula(s):
    now = utcnow()
    a, b, c, d, e = (make_unit(s, x) for x in "abcde")
    old = now - timedelta(days=300)
    popular = make_product(s, a, "popular", on_shelf_at=old)
    one_star_wonder = make_product(s, a, "one-review", on_shelf_at=old)
    well_rated = make_product(s, a, "well-rated", on_shelf_at=old)
    fresh = make_product(s, a, "fresh", on_shelf_at=now - timedelta(hours=1))
    spammed = make_product(s, a, "spammed", on_shelf_at=old)
    for unit in (b, c, d):
        buy(s, unit, popular)
    ran(s, e, popular)
    # one unit buying five times counts once: usage is distinct units, not orders or points
    for _ in range(5):
        buy(s, b, spammed)
    buy(s, b, one_star_wonder)
    ratings.rate(s, sub(b), "one-review", None, 5, "")
    for unit in (b, c, d, e):
        buy(s, unit, well_rated)
        for member in (f"sub-{unit.slug}", f"x-{unit.slug}"):
            ratings.rate(s, sub(unit, member), "well-rated", None, 4, "")
    # the owner's own runs never count
    ran(s, a, fresh)
    s.commit()

    found = ranking.scores(s, [popular, one_star_wonder, well_rated, fresh, spammed], now)
    assert found[popular.id].units_recent == 4
    assert found[spammed.id].units_recent == 1
    assert found[fresh.id].units_recent == 0
    assert found[one_star_wonder.id].rating == pytest.approx(20 / 6)
    assert found[well_rated.id].rating == pytest.approx((15 + 32) / 13)
    for p in (popular, one_star_wonder, well_rated, spammed):
        expected = (2 * math.log1p(found[p.id].units_recent) + found[p.id].rating - 3
                    + 2 ** (-300 / 30))
        assert found[p.id].score == pytest.approx(expected, abs=1e-3)
    assert found[fresh.id].score == pytest.approx(2 ** (-1 / 24 / 30), abs=1e-3)
    order = [p.name for p in ranking.rank(s, [popular, one_star_wonder, well_rated, fresh,
                                              spammed], now)]
    # as many units as "popular", and rated 4 by eight members: above it; one 5-star review
    # does not lift "one-review" above either
    assert order == ["well-rated", "popular", "one-review", "spammed", "fresh"]
    # usage older than 90 days no longer counts
    later = now + timedelta(days=91)
    assert ranking.scores(s, [popular], later)[popular.id].units_recent == 0
    # the shelf's "rank" order is the same, paged after ranking
    viewer = sub(b)
    shelf, total = catalog.list_products(s, viewer, sort="rank", limit=2, offset=1)
    assert total == 5 and [p.name for p in shelf] == ["popular", "one-review"]


def test_hidden_reviews_leave_the_rating(s):
    a, b = make_unit(s, "a"), make_unit(s, "b")
    p = make_product(s, a, "tool")
    buy(s, b, p)
    review = ratings.rate(s, sub(b), "tool", None, 1, "spite")
    s.commit()
    assert ranking.scores(s, [p])[p.id].reviews == 1
    ratings.hide(s, OPERATOR, review.id, "not about the product")
    s.commit()
    assert ranking.scores(s, [p])[p.id].rating == 3.0


def test_trending_and_new(s):
    now = utcnow()
    a, b, c = make_unit(s, "a"), make_unit(s, "b"), make_unit(s, "c")
    hot = make_product(s, a, "hot", on_shelf_at=now - timedelta(days=100))
    warm = make_product(s, a, "warm", on_shelf_at=now - timedelta(days=100))
    cold = make_product(s, a, "cold", on_shelf_at=now - timedelta(days=100))
    new1 = make_product(s, a, "new-1", on_shelf_at=now - timedelta(days=20))
    new2 = make_product(s, a, "new-2", on_shelf_at=now - timedelta(days=2))
    for unit in (b, c):
        buy(s, unit, hot)
    buy(s, b, warm)
    ran(s, b, cold, at=now - timedelta(days=20))  # outside the 14 days
    s.commit()
    viewer = sub(b)
    assert [(p.name, n) for p, n in ranking.trending(s, viewer, now)] == [("hot", 2), ("warm", 1)]
    assert [p.name for p, _ in ranking.new_products(s, viewer, now)] == ["new-2", "new-1"]
    assert [p.name for p, _ in ranking.new_products(s, viewer, now + timedelta(days=25))] \
        == ["new-2"]
    assert new1.id and new2.id


def test_features_are_operators_certified_and_timed(s):
    now = utcnow()
    a = make_unit(s, "a")
    p = make_product(s, a, "featured")
    s.commit()
    for caller, body, error, field in [
        (sub(a), ("featured", None, 7, "good"), Forbidden, "product"),
        (OPERATOR, ("featured", None, 7, ""), InvalidField, "reason"),
        (OPERATOR, ("featured", None, 0, "r"), InvalidField, "days"),
        (OPERATOR, ("featured", None, 91, "r"), InvalidField, "days"),
        (OPERATOR, ("featured", None, True, "r"), InvalidField, "days"),
        (OPERATOR, ("featured", "2026-13-01T00:00:00", 7, "r"), InvalidField, "starts_at"),
        (OPERATOR, ("featured", "9999-12-30T00:00:00Z", 7, "r"), InvalidField, "starts_at"),
        (OPERATOR, ("featured", (now - timedelta(days=8)).isoformat(), 7, "r"), Conflict,
         "starts_at"),
        (OPERATOR, ("nope", None, 7, "r"), NotFound, "product"),
        (OPERATOR, ("", None, 7, "r"), InvalidField, "product"),
    ]:
        with pytest.raises(error) as e:
            ranking.feature(s, caller, *body, now=now)
        assert e.value.field == field, body
        s.rollback()
    assert s.scalar(select(func.count()).select_from(Feature)) == 0
    item = ranking.feature(s, OPERATOR, "featured", None, "7", "winter tariff season", now=now)
    s.commit()
    end = (now + timedelta(days=7)).isoformat()
    entry = s.get(LogEntry, item.log_index)
    assert entry.kind == "feature" and json.loads(entry.details)["reason"] == \
        "winter tariff season"
    viewer = sub(a)
    assert [pr.name for _, pr in ranking.features(s, viewer, now)] == ["featured"]
    assert ranking.features(s, viewer, now + timedelta(days=8)) == []
    # a feature never changes the score
    before = ranking.scores(s, [p], now)[p.id].score
    assert ranking.scores(s, [p], now)[p.id].score == before
    shown = ranking.feature_json(item, p, now)
    assert shown["running"] and shown["ends_at"].startswith(end[:16])
    # a product taken off the shelf is not shown as featured
    p.current_version.state = "off_shelf"
    s.flush()
    assert ranking.features(s, viewer, now) == []
