"""The Table 2 report (issue 16 item 7) on SQLite and PostgreSQL: units using each product,
investment saved = users - 1, paid orders, the points the publishing unit earned (after the
6 % fee), the rating; sorting, the unit-type filter, CSV export; unit types."""

from __future__ import annotations

import csv
import io

import pytest
import test_ratings
from test_ratings import OPERATOR, buy, make_product, make_unit, sub

from marketplace_ext import points, units
from marketplace_ext.errors import InvalidField, NotFound
from marketplace_ext.exchange import ratings, report

s = test_ratings.s  # the database fixture (SQLite and PostgreSQL)


def test_report_counts_units_orders_points_and_rating(s):
    hq = make_unit(s, "hq", "headquarters")
    a, b, c = (make_unit(s, x) for x in "abc")
    lab = make_unit(s, "lab", "research_institute")
    theft = make_product(s, a, "theft", price=20)  # per_use 20, month 60
    layout = make_product(s, lab, "layout", price=10)
    make_product(s, hq, "=cmd|' /C calc'!A0", price=10)  # a title a spreadsheet would run
    buy(s, b, theft)
    buy(s, c, theft)
    buy(s, c, theft, "month")
    refunded = buy(s, hq, theft)
    points.refund(s, refunded, "runner", "run failed")
    buy(s, a, layout)
    ratings.rate(s, sub(b), "theft", None, 5, "")
    ratings.rate(s, sub(c), "theft", None, 4, "")
    s.commit()

    result = report.table(s, sub(b))
    rows = {r["product"]: r for r in result["rows"]}
    t = rows["theft"]
    # units using: the builder a plus buyers b and c (hq's order was refunded)
    assert (t["units_using"], t["investment_saved"], t["orders"]) == (3, 2, 3)
    # 20 + 20 + 60 points, 6 % fee each: 18.80 + 18.80 + 56.40
    assert t["points_earned"] == "94.00" and t["centipoints_earned"] == 9400
    assert (t["rating"], t["reviews"], t["rating_bayesian"]) == (4.5, 2, 3.43)
    assert t["unit_type"] == "provincial_company"
    lay = rows["layout"]
    assert (lay["units_using"], lay["investment_saved"], lay["orders"], lay["rating"]) == \
        (2, 1, 1, None)
    assert lay["unit_type"] == "research_institute"
    assert result["totals"]["investment_saved"] == 3 and result["totals"]["orders"] == 4
    # sorted by units using (default, most first), then by name
    assert [r["product"] for r in result["rows"]] == ["theft", "layout", "=cmd|' /C calc'!A0"]
    by_rating = report.table(s, sub(b), sort="rating", order="asc")["rows"]
    assert [r["product"] for r in by_rating][0] == "theft"  # the only rated; unrated last
    assert by_rating[-1]["rating"] is None
    by_name = report.table(s, sub(b), sort="product", order="desc")["rows"]
    assert [r["product"] for r in by_name] == ["theft", "layout", "=cmd|' /C calc'!A0"]
    by_points = report.table(s, sub(b), sort="points_earned")["rows"]
    assert [r["product"] for r in by_points][0] == "theft"
    # the unit-type filter (the publishing unit's type)
    only = report.table(s, sub(b), unit_type="research_institute")["rows"]
    assert [r["product"] for r in only] == ["layout"]
    assert report.table(s, OPERATOR, unit_type="industry_unit")["rows"] == []
    for kwargs, field in (({"sort": "price"}, "sort"), ({"order": "up"}, "order"),
                          ({"unit_type": "ministry"}, "unit_type")):
        with pytest.raises(InvalidField) as e:
            report.table(s, sub(b), **kwargs)
        assert e.value.field == field
    # CSV: a header, one line per row, formulas defused
    text = report.to_csv(result)
    parsed = list(csv.reader(io.StringIO(text)))
    assert parsed[0] == list(report.COLUMNS)
    assert len(parsed) == 4
    assert parsed[1][:2] == ["theft", "Theft"] and parsed[1][8] == "94.00"
    assert parsed[3][0] == "'=cmd|' /C calc'!A0"


def test_unit_types(s):
    make_unit(s, "a")
    assert units.set_unit_type(s, "a", "industry_unit").type == "industry_unit"
    with pytest.raises(InvalidField) as e:
        units.set_unit_type(s, "a", "ministry")
    assert e.value.field == "type"
    with pytest.raises(NotFound):
        units.set_unit_type(s, "zz", "headquarters")
    with pytest.raises(InvalidField) as e:
        units.create_unit(s, "b", "B", "op", "nope")
    assert e.value.field == "type"
    made = units.create_unit(s, "c", "C", "op", "research_institute")
    s.flush()
    assert made.type == "research_institute"
    assert units.create_unit(s, "d", "D", "op").type == "provincial_company"


def test_demo_history_fills_the_report_backdated_and_once(s, db_url, tmp_path):
    from datetime import timedelta

    from sqlalchemy import func, select

    from marketplace_ext import demo
    from marketplace_ext.exchange.ratings_orm import Review
    from marketplace_ext.orm import Account, Order, utcnow

    made = {slug: make_unit(s, slug) for slug in demo.DEMO_UNITS}
    for name, owner in demo.DEMO_PRODUCTS.items():
        make_product(s, made[owner], name, price=10)
    s.commit()
    now = utcnow()
    record = demo.seed_history(db_url, tmp_path, now=now, log=lambda *a: None)
    assert record["orders"] > 0 and record["ratings"] > 0
    s.expire_all()
    orders = s.scalars(select(Order)).all()
    assert len(orders) == record["orders"]
    ages = [(now - o.created_at).days for o in orders]
    # spread over months, none in the future, every order of another unit
    assert max(ages) > 60 and min(ages) >= 1 and max(ages) <= demo.HISTORY_MONTHS * 30 + 1
    assert all(o.unit_id != o.product.unit_id for o in orders)
    reviews = s.scalars(select(Review)).all()
    assert len(reviews) == record["ratings"]
    assert all(now - timedelta(days=demo.HISTORY_MONTHS * 31) < r.created_at < now
               for r in reviews)
    # every unit keeps most of its points; the ledger still sums to zero
    assert s.scalar(select(func.sum(Account.balance))) == 0
    for unit in made.values():
        assert points.unit_account(s, unit).balance >= (500 - demo.HISTORY_BUDGET) * 100
    table = report.table(s, OPERATOR)
    assert table["totals"]["investment_saved"] > 0 and table["totals"]["orders"] == len(orders)
    assert any(r["rating"] is not None for r in table["rows"])
    # once: the marker answers; without it, orders replay their keys and ratings exist
    assert demo.seed_history(db_url, tmp_path, log=lambda *a: None) == record
    demo.history_marker(tmp_path).unlink()
    again = demo.seed_history(db_url, tmp_path, now=now, log=lambda *a: None)
    assert (again["orders"], again["ratings"]) == (0, 0)
    s.expire_all()
    assert s.scalar(select(func.count()).select_from(Order)) == len(orders)
