"""The pages of ratings, promotion and the Table 2 report: a product's reviews (rate, the
publisher's reply, the operator's hiding), the shelf's Featured / Trending / New sections and
published formula, the report (sortable, unit-type filter, CSV).

First the templates, rendered by Jinja as the service renders them (no platform); then one
browser test on the session platform: a unit that used a product rates it, one that did not
cannot, the review's script stays inert, the aggregate, the reply and the report follow."""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime
from pathlib import Path

import pytest
from jinja2 import Environment, FileSystemLoader, select_autoescape

from marketplace_ext.auth import SCOPE_APPROVE, SCOPE_PUBLISH, SCOPE_SUBSCRIBE, Caller
from marketplace_ext.exchange import ranking, ratings
from marketplace_ext.units import UNIT_TYPES

TEMPLATES = Path(__file__).resolve().parent.parent / "marketplace_ext" / "templates"
SERVICE = "/services/marketplace/"
HOSTILE = '<script>alert("x")</script>'


@pytest.fixture(scope="module")
def jinja():
    return Environment(loader=FileSystemLoader(str(TEMPLATES)),
                       autoescape=select_autoescape(default=True, default_for_string=True))


def _ns(caller: Caller, **ns) -> dict:
    return {"prefix": SERVICE, "hub_prefix": "/hub/", "caller": caller, "xsrf": "2|tok",
            "nav": "shelf", "errors": {}, "form": {}, **ns}


def _review(**extra) -> dict:
    review = {"id": 7, "product": "t1", "version": "1.0.0", "unit": "b", "user": "subscriber-b",
              "created_at": "2026-11-01T10:00:00Z", "updated_at": "2026-11-01T10:00:00Z",
              "edited": False, "editable": False, "log_index": 12, "hidden": None, "stars": 4,
              "text": HOSTILE, "html": ratings.render_text(HOSTILE + "\n\n**good**"),
              "reply": None}
    return {**review, **extra}


def _reviews(reviews: list[dict], allowed: bool = True, reason: str = "") -> dict:
    return {"product": "t1", "version": "1.0.0",
            "aggregate": {"count": 1, "mean": 4.0, "bayesian": 3.17,
                          "histogram": {"1": 0, "2": 0, "3": 0, "4": 1, "5": 0}},
            "can_rate": {"allowed": allowed, "reason": reason, "review": None},
            "reviews": reviews, "total": len(reviews), "limit": 200, "offset": 0}


SUB_B = Caller("subscriber-b", frozenset({SCOPE_SUBSCRIBE}), "b")
PUB_A = Caller("publisher-a", frozenset({SCOPE_SUBSCRIBE, SCOPE_PUBLISH}), "a")
OPERATOR = Caller("operator", frozenset({SCOPE_SUBSCRIBE, SCOPE_APPROVE}), None)
PRODUCT = {"name": "t1", "title": "<b>T1</b>", "kind": "tool", "unit": "a"}


def test_reviews_page_renders_forms_by_role_and_text_inert(jinja):
    page = jinja.get_template("review_product.html")
    html = page.render(**_ns(SUB_B, product=PRODUCT, own_product=False, done="", action="rate",
                             reviews=_reviews([_review()]),
                             errors={"stars": "stars must be a whole number from 1 to 5"},
                             form={"text": "kept <i>text</i>"}))
    assert "<script>alert" not in html and "<strong>good</strong>" in html
    assert "&lt;b&gt;T1" in html  # the title is escaped
    assert 'id="rate-form"' in html and 'id="error-stars"' in html
    assert ">kept &lt;i&gt;text&lt;/i&gt;</textarea>" in html
    assert "_xsrf=2%7Ctok" in html
    assert "reply-form" not in html and "hide-form" not in html
    # the product's publisher replies, the operator hides; who did not use it is told why
    html = page.render(**_ns(PUB_A, product=PRODUCT, own_product=True, done="", action="",
                             reviews=_reviews([_review()], False, "your unit publishes it")))
    assert "reply-form" in html and "hide-form" not in html and 'id="rate-form"' not in html
    assert "Your unit publishes it." in html
    html = page.render(**_ns(OPERATOR, product=PRODUCT, own_product=False, done="hide",
                             action="", reviews=_reviews([_review(
                                 hidden={"reason": "spam <b>", "by": "operator",
                                         "at": "2026-11-02T00:00:00Z", "log_index": 13},
                                 reply={"text": "t", "html": "<p>thanks</p>", "by": "publisher-a",
                                        "at": "2026-11-02T00:00:00Z"})], False, "x")))
    assert "Hidden by an operator: spam &lt;b&gt;" in html and "hide-form" not in html
    assert "Reply from publisher-a" in html and 'id="review-done"' in html


def test_report_page_sorts_filters_and_links_the_csv(jinja):
    row = {"product": "theft", "title": "Theft <i>", "kind": "application", "unit": "a",
           "unit_type": "research_institute", "units_using": 3, "investment_saved": 2,
           "orders": 4, "points_earned": "94.00", "centipoints_earned": 9400, "rating": 4.5,
           "reviews": 2, "rating_bayesian": 3.43}
    report = {"rows": [row], "totals": {"products": 1, "units_using": 3,
                                        "investment_saved": 2, "orders": 4,
                                        "points_earned": "94.00"},
              "sort": "units_using", "order": "desc", "unit_type": "research_institute",
              "unit_types": UNIT_TYPES}
    html = jinja.get_template("report.html").render(**_ns(SUB_B, nav="report", report=report,
                                                          unit_types=UNIT_TYPES))
    assert 'aria-sort="descending"' in html and "Units using it ▼" in html
    # the active column's link flips the order; the others start with the highest
    assert "report?sort=units_using&amp;order=asc&amp;unit_type=research_institute" in html
    assert "report?sort=rating&amp;order=desc" in html
    assert "api/report?format=csv&amp;sort=units_using&amp;order=desc&amp;unit_type=" \
           "research_institute" in html
    assert "Theft &lt;i&gt;" in html and ">Research institute<" in html
    assert re.search(r'<option value="research_institute" selected>', html)
    assert 'id="total-saved">2<' in html


def test_shelf_shows_sections_the_formula_and_ratings(jinja):
    class F:
        reason = "winter <b>season</b>"
        ends_at = datetime(2026, 12, 24)

    class P:
        name = "t1"

    summary = {"name": "t1", "title": "T1", "summary": "", "kind": "tool", "unit": "a",
               "tags": [], "plans": [], "state": "on_shelf", "units_using": 2}
    html = jinja.get_template("home.html").render(**_ns(
        SUB_B, unit=None, balance=None, filters={"q": "", "kind": "", "tag": "", "unit": "",
                                                 "sort": "rank"},
        facets={"tags": [], "units": []}, kinds=("tool",), checkpoint=None,
        products=[summary], total=1, review_queue=[], featured=[(F, P, summary)],
        trending=[(summary, 2)], new=[(summary, datetime(2026, 11, 30))],
        formula=ranking.FORMULA, ratings={"t1": {"count": 2, "mean": 4.5}}))
    assert 'id="featured"' in html and "winter &lt;b&gt;season" in html
    assert "not part of the ranking" in html and "until 2026-12-24" in html
    assert 'id="trending"' in html and "2 units in 14 days" in html
    assert 'id="new"' in html and "since 2026-11-30" in html
    assert "2·ln(1 + U)" in html and 'value="rank" selected' in html
    assert "4.5 (2)" in html


# --- in the browser -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def users(hub_url, logins):
    from helpers import market_as

    cache = {}

    def get(user: str):
        if user not in cache:
            cache[user] = market_as(hub_url, user, logins[user])
        return cache[user]

    return get


def test_a_unit_that_used_a_product_rates_it(page_as, users, hub_url, tmp_path):
    from browser import assert_accessible, fits_narrow_window, screenshot
    from helpers import publish_on_shelf

    from marketplace_ext.client import MarketAPIError

    name = publish_on_shelf(users("publisher-c"), users("operator"), tmp_path,
                            [{"type": "per_use", "price": 10}])
    # only users of a version rate it: unit e never used it
    with pytest.raises(MarketAPIError) as e:
        users("subscriber-e").rate(name, 5, "never used it")
    assert (e.value.status, e.value.field) == (403, "version")
    users("subscriber-b").order(name, "per_use")
    spam = users("publisher-b").rate(name, 1, "spam")
    users("operator").hide_review(spam["id"], "not about the product")

    page = page_as("subscriber-b")
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{hub_url}{SERVICE}products/{name}")
    assert "none yet" in page.inner_text("#product-rating")  # the hidden one does not count
    page.click("#reviews-link")
    page.wait_for_url(f"**/products/{name}/reviews")
    page.fill("#f-text", f"Caught two meters. {HOSTILE}")
    page.check("input[name=stars][value='4']")
    assert_accessible(page)
    page.click("#rate-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/reviews\?done=rate#review-\d+$"))
    assert "certified" in page.inner_text("#review-done")
    assert "4.0 of 5" in page.inner_text("#rating-aggregate")
    assert page.inner_text("#rating-count") == "1"
    mine = page.locator(".review", has=page.locator("text=Caught two meters"))
    assert mine.locator("script").count() == 0 and dialogs == []
    # stored as typed, shown sanitized: the script element is gone, its text never runs
    stored = users("subscriber-b").reviews(name)["reviews"]
    typed = next(r for r in stored if r["user"] == "subscriber-b")
    assert HOSTILE in typed["text"] and "<script" not in typed["html"]
    assert "Hidden by an operator: not about the product" in page.inner_text("body")
    assert "rated version" in page.inner_text("#cannot-rate")  # once per user and version
    assert_accessible(page)
    screenshot(page, "ratings-reviews")
    with pytest.raises(MarketAPIError) as e:
        users("subscriber-b").rate(name, 5, "again")
    assert (e.value.status, e.value.field) == (409, "version")

    # the publisher replies; the product page shows the aggregate and the reply
    review = users("subscriber-b").reviews(name)["can_rate"]["review"]
    users("publisher-c").reply_review(review, "Thanks, **fixed** in the next version")
    page.goto(f"{hub_url}{SERVICE}products/{name}")
    assert "4.0 of 5" in page.inner_text("#product-rating")
    assert "Reply from publisher-c" in page.inner_text(".product-reviews")
    assert_accessible(page)
    screenshot(page, "ratings-product")

    # the report: units using it (c and b), saved 1, one order, 9.40 points earned, 4 stars
    row = next(r for r in users("subscriber-b").report()["rows"] if r["product"] == name)
    assert (row["units_using"], row["investment_saved"], row["orders"], row["points_earned"],
            row["rating"]) == (2, 1, 1, "9.40", 4.0)
    text = users("subscriber-b").report(sort="rating", csv=True)
    lines = list(csv.DictReader(io.StringIO(text)))
    assert next(r for r in lines if r["product"] == name)["investment_saved"] == "1"
    page.goto(f"{hub_url}{SERVICE}report?sort=orders&order=desc")
    assert page.locator(f"#report-table tr[data-product='{name}'] .investment-saved") \
        .inner_text() == "1"
    assert page.get_attribute("#report-table th[aria-sort]", "aria-sort") == "descending"
    assert_accessible(page)
    screenshot(page, "ratings-report")
    page.select_option("#f-unit-type", "headquarters")
    with page.expect_navigation():
        page.click("text=Filter")
    assert page.locator(f"#report-table tr[data-product='{name}']").count() == 0

    # an operator features it; the shelf shows it, and the published formula
    users("operator").feature(name, 1, "browser test")
    page.goto(f"{hub_url}{SERVICE}")
    assert name in page.inner_html("#featured")
    assert "2·ln(1 + U)" in page.text_content("#ranking-formula")  # (folded: not inner_text)
    assert page.input_value("#f-sort") == "rank"
    assert_accessible(page)
    screenshot(page, "ratings-shelf")
    narrow = page_as("subscriber-b", narrow=True)
    for path in (f"products/{name}/reviews", "report", ""):
        narrow.goto(f"{hub_url}{SERVICE}{path}")
        assert fits_narrow_window(narrow), f"{path} scrolls sideways in a narrow window"
