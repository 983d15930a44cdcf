"""The shop's pages: the shelf (search, filters, sort, units using), buying (plan, price,
balance after, confirm, one order per form however often it is sent, the entitlement after,
not enough points), "Try it" (remote call), the SQL box (interface), file downloads and view
exports (POST, then a page with the sha256 and a link), and the account (balance, statement
with its chart, orders, entitlements).

The first tests need no platform: the domain helpers the pages use, against real databases,
and the templates rendered by Jinja. The browser tests drive Debian's chromium through the
session platform's hub login; each page is checked with axe-core and photographed for docs/.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from pathlib import Path
from urllib.parse import urljoin

import pytest
import yaml
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.orm import Session

from marketplace_ext import catalog, dbutil, ledger_views, points, purchase
from marketplace_ext.auth import SCOPE_SUBSCRIBE, Caller
from marketplace_ext.errors import InvalidField
from marketplace_ext.handlers.account_pages import balance_chart
from marketplace_ext.interface import view_schemas
from marketplace_ext.orm import Product, Unit, Version, make_engine, make_session_factory
from marketplace_ext.remote_call import parse_rows

TEMPLATES = Path(__file__).resolve().parent.parent / "marketplace_ext" / "templates"
RULES = points.EconomyRules()


# --- the domain helpers the pages use -----------------------------------------------------------


def test_pasted_rows_parse_as_csv_or_json_and_bad_ones_name_the_field():
    assert parse_rows("id,kwh,note\nc1,3,x\nc2,2.5,\n", "csv") == [
        {"id": "c1", "kwh": 3, "note": "x"}, {"id": "c2", "kwh": 2.5, "note": None}]
    assert parse_rows('[{"a": 1}, {"a": 2}]', "json") == [{"a": 1}, {"a": 2}]
    assert parse_rows('{"a": 1}', "json") == [{"a": 1}]
    for text, fmt, field in [("", "csv", "rows"), ("a,b\n1,2,3", "csv", "rows"),
                             ("{not json", "json", "rows"), ("a\n1", "xml", "format"),
                             (",b\n1,2", "csv", "rows")]:
        with pytest.raises(InvalidField) as e:
            parse_rows(text, fmt)
        assert e.value.field == field, (text, fmt)


def test_balance_chart_walks_the_statement_back_in_time():
    transfers = [  # newest first, as a statement lists them
        {"at": "2026-01-03T00:00:00Z", "centipoints": -1000},
        {"at": "2026-01-02T00:00:00Z", "centipoints": -3000},
        {"at": "2026-01-01T00:00:00Z", "centipoints": 50000},
    ]
    chart = balance_chart(transfers, 46000, width=240, height=140, pad=20)
    assert [d["balance"] for d in chart["dots"]] == ["500.00", "470.00", "460.00"]
    xs = [d["x"] for d in chart["dots"]]
    assert xs == [20, 120, 220]  # evenly spread days, left to right
    ys = [d["y"] for d in chart["dots"]]
    assert ys[0] == 20 and ys[0] < ys[1] < ys[2] < 120  # the highest balance at the top
    assert chart["low"] == "0.00" and chart["high"] == "500.00"
    assert len(chart["points"].split()) == 5  # a step line: hold, then change
    assert balance_chart([], 500) is None
    same_instant = balance_chart(transfers[:2] and [
        {"at": "2026-01-01T00:00:00Z", "centipoints": -1000},
        {"at": "2026-01-01T00:00:00Z", "centipoints": 50000}], 49000, width=240, pad=20)
    assert [d["x"] for d in same_instant["dots"]] == [20, 220]


def test_view_schemas_list_only_what_a_subscriber_can_read():
    manifest = {"views": [{"view": "v", "source": "t", "row_filter": "n = 48", "columns": {
        "id": {"rule": "hash"}, "day": {"rule": "keep"}, "name": {"rule": "drop"},
        "kwh": "keep"}}]}

    class Current:
        pass

    class P:
        current_version = Current()

    P.current_version.manifest = json.dumps(manifest)
    assert view_schemas(P) == [{"view": "v", "row_filter": "n = 48", "columns": [
        {"name": "id", "rule": "hash"}, {"name": "day", "rule": "keep"},
        {"name": "kwh", "rule": "keep"}]}]


@pytest.fixture
def session(db_url):
    dbutil.upgrade(db_url)
    engine = make_engine(db_url)
    with make_session_factory(engine)() as s:
        yield s
    engine.dispose()


def _unit(session: Session, slug: str) -> Unit:
    unit = Unit(slug=slug, name=slug.upper(), created_by="test")
    session.add(unit)
    session.flush()
    points.open_account(session, unit, RULES, "test")
    return unit


def _product(session: Session, owner: Unit, name: str, tags: list[str]) -> Product:
    product = Product(name=name, kind="tool", unit_id=owner.id, created_by="test")
    session.add(product)
    session.flush()
    manifest = {"name": name, "plans": [{"type": "per_use", "price": 10},
                                        {"type": "week", "price": 20}],
                "sharing": ["remote_call", "download"], "tags": tags}
    version = Version(product_id=product.id, version="1.0.0", sha256=name.ljust(64, "0"),
                      state="on_shelf", title=name.title(), summary="", tags=json.dumps(tags),
                      manifest=json.dumps(manifest), parameters="{}", files="[]", readme="",
                      size=0, created_by="test",
                      file_digests=json.dumps({"files/b.json": "b" * 64, "files/a.csv": "a" * 64}))
    session.add(version)
    session.flush()
    product.current_version_id = version.id
    session.flush()
    session.refresh(product)
    return product


def test_shelf_sorts_by_use_and_age_and_counts_units_using(session):
    from marketplace_ext.orm import Tag

    a, b, c = (_unit(session, s) for s in "abc")
    old = _product(session, a, "old-tool", ["Meter"])
    new = _product(session, a, "new-tool", ["billing"])
    for p in (old, new):
        for t in json.loads(p.current_version.tags):
            session.add(Tag(version_id=p.current_version_id, tag=t.lower()))
    for unit in (b, c):
        purchase.place_order(session, Caller(name=f"s-{unit.slug}", unit=unit.slug,
                                           scopes=frozenset({SCOPE_SUBSCRIBE})),
                           RULES, "old-tool", "per_use", f"key-{unit.slug}-000")
    viewer = Caller(name="v", unit="b", scopes=frozenset({SCOPE_SUBSCRIBE}))
    by = {s: [p.name for p in catalog.list_products(session, viewer, sort=s)[0]]
          for s in catalog.SORTS}
    assert by == {"name": ["new-tool", "old-tool"], "new": ["new-tool", "old-tool"],
                  "used": ["old-tool", "new-tool"], "rank": ["old-tool", "new-tool"]}
    with pytest.raises(InvalidField) as e:
        catalog.list_products(session, viewer, sort="rating")
    assert e.value.field == "sort"
    assert ledger_views.units_using_counts(session, [old, new]) == {old.id: 3, new.id: 1}
    assert catalog.shelf_facets(session, viewer) == {"tags": ["billing", "meter"],
                                                     "units": ["a"]}
    assert [f["path"] for f in catalog.version_files(old.current_version)] == [
        "files/a.csv", "files/b.json"]
    ents = ledger_views.list_entitlements(session, b, old)
    assert [(e["product"], e["plan"], e["uses_left"], e["usable"]) for e in ents] == [
        ("old-tool", "per_use", 1, True)]
    grant = points.check(session, b, old, "download")
    points.consume(session, grant)
    assert ledger_views.list_entitlements(session, b)[0]["usable"] is False


# --- the templates, rendered as the service renders them ----------------------------------------


@pytest.fixture(scope="module")
def jinja():
    return Environment(loader=FileSystemLoader(str(TEMPLATES)),
                       autoescape=select_autoescape(default=True, default_for_string=True))


HOSTILE = '<img src=x onerror="alert(1)">'


def _base_ns(**ns) -> dict:
    caller = Caller(name="subscriber-a", unit="a", scopes=frozenset({SCOPE_SUBSCRIBE}))
    return {"prefix": "/services/marketplace/", "hub_prefix": "/hub/", "caller": caller,
            "xsrf": "2|tok", "nav": "shelf", "errors": {}, "form": {}, **ns}


def _product_ns(**extra) -> dict:
    product = {"name": "t1", "title": HOSTILE, "summary": HOSTILE, "kind": "tool",
               "unit": "b", "state": "on_shelf", "current_version": "1.0.0",
               "plans": [{"type": "per_use", "price": 10}], "card_html": "<p>card</p>",
               "manifest": {"sharing": ["download", "remote_call"]}, "parameters": {},
               "versions": [], "certification": [], "tags": []}
    ns = dict(product=product, stats={"units_using": 1, "investment_saved": 0, "orders": 0},
              envs={}, entitlements=[], own_product=False,
              files=[{"path": "files/model.json", "sha256": "f" * 64}], views=[],
              sharing=["download", "remote_call"])
    return _base_ns(**{**ns, **extra})


def test_buy_page_shows_plans_and_keeps_the_key_and_the_error(jinja):
    ns = _product_ns(plans=[
        {"type": "per_use", "price": "10.00", "after": "490.00", "affordable": True},
        {"type": "year", "price": "50.00", "after": "-10.00", "affordable": False}],
        unit=Unit(slug="a", name="A"), balance="40.00", idempotency_key="page-new",
        insufficient=True, errors={"plan": "unit 'a' has 40.00 points; year costs 50.00"},
        form={"plan": "year", "idempotency_key": "page-first"})
    html = jinja.get_template("buy.html").render(**ns)
    assert HOSTILE not in html and "&lt;img" in html  # a product's title is escaped
    assert 'value="page-first"' in html and "page-new" not in html  # the form's own key
    assert re.search(r'id="plan-year"[^>]*\n?[^>]*checked', html)
    assert 'id="error-plan"' in html and 'aria-describedby="error-plan"' in html
    assert 'id="not-enough"' in html and "(not enough points)" in html
    assert "_xsrf=2%7Ctok" in html  # the token rides in the action's query


def test_product_try_and_sql_pages_render_their_forms_and_results(jinja):
    html = jinja.get_template("product.html").render(**_product_ns())
    assert "files/model.json" in html and "f" * 64 in html
    assert 'method="post"' in html and "/download?_xsrf=" in html  # downloads are POSTs
    assert "/try" in html and "/buy" in html and "/sql" not in html
    html = jinja.get_template("try.html").render(**_product_ns(
        example="a,b\n1,2", form={"rows": "a\n1", "format": "json"},
        errors={"rows": "rows are not valid JSON"}, predictions=[{"customer_id": "c1",
                                                                  "score": 0.5}],
        columns=["customer_id", "score"], log_index=7, version="1.0.0"))
    assert 'id="error-rows"' in html and ">a\n1</textarea>" in html
    assert "<td>c1</td><td>0.5</td>" in html
    views = [{"view": "customers_public", "row_filter": None,
              "columns": [{"name": "district", "rule": "keep"}]}]
    html = jinja.get_template("sql.html").render(**_product_ns(
        views=views, sharing=["interface"], form={"sql": "SELECT 1", "limit": ""},
        result={"columns": [{"name": "n", "type": "bigint"}], "rows": [[3]],
                "truncated": False}, log_index=9))
    assert "customers_public" in html and "<td>3</td>" in html and 'id="f-limit"' in html


def test_account_page_draws_the_chart_from_the_statement(jinja):
    statement = {"balance": "460.00", "centipoints": 46000, "total": 2, "transfers": [
        {"at": "2026-01-02T00:00:00Z", "centipoints": -4000, "amount": "-40.00",
         "kind": "order", "memo": "month of t1", "order": 1, "counterparties": []},
        {"at": "2026-01-01T00:00:00Z", "centipoints": 50000, "amount": "500.00",
         "kind": "grant", "memo": "initial grant", "order": None, "counterparties": []}]}
    html = jinja.get_template("account.html").render(**_base_ns(
        unit=Unit(slug="a", name="A"), statement=statement, accounts=None, orders=[],
        order_total=0, entitlements=[],
        chart=balance_chart(statement["transfers"], 46000)))
    assert 'role="img"' in html and "<polyline" in html and "from 500.00 to 460.00" in html


# --- in the browser -----------------------------------------------------------------------------

SERVICE = "/services/marketplace/"


@pytest.fixture(scope="module")
def users(hub_url, logins):
    from helpers import market_as

    cache = {}

    def get(user: str):
        if user not in cache:
            cache[user] = market_as(hub_url, user, logins[user])
        return cache[user]

    return get


def _publish(users, publisher: str, kind: str, prefix: str, plans: list[dict],
             directory: Path) -> str:
    from marketplace_ext.bundle import new_product

    name = f"{prefix}-{secrets.token_hex(3)}"
    bundle = new_product(kind, name, directory)
    manifest = yaml.safe_load((bundle / "product.yaml").read_text())
    manifest["plans"] = plans
    (bundle / "product.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    version = users(publisher).publish(bundle)["version"]
    users("operator").review(name, version, "approve")
    return name


@pytest.fixture(scope="module")
def shop_tool(users, tmp_path_factory) -> str:
    """A tool of unit e on the shelf (remote call, download), with a unique name."""
    return _publish(users, "publisher-e", "tool", "shop-tool",
                    [{"type": "per_use", "price": 10}, {"type": "month", "price": 30}],
                    tmp_path_factory.mktemp("shop-tool"))


@pytest.fixture(scope="module")
def shop_data(users, tmp_path_factory) -> str:
    """A data product of unit a on the shelf (interface, download of its views)."""
    return _publish(users, "publisher-a", "data", "shop-data",
                    [{"type": "per_use", "price": 10}, {"type": "month", "price": 40}],
                    tmp_path_factory.mktemp("shop-data"))


def _balance(m, unit: str) -> float:
    return float(m.request("GET", f"units/{unit}/account")["balance"])


def _orders_of(m, product: str) -> list[dict]:
    return [o for o in m.request("GET", "orders", params={"limit": 200})["orders"]
            if o["product"] == product]


def _save(page, link) -> bytes:
    with page.expect_download() as info:
        link.click()
    return Path(info.value.path()).read_bytes()


def test_subscriber_finds_buys_and_uses_a_tool(page_as, users, shop_tool, hub_url):
    from browser import assert_accessible, fits_narrow_window, screenshot

    sub = users("subscriber-d")
    before = _balance(sub, "d")
    page = page_as("subscriber-d")

    # find it: search and kind filter; the newest product first; most used first
    page.fill("#f-q", shop_tool)
    page.select_option("#f-kind", "tool")
    with page.expect_navigation():
        page.click("text=Filter")
    rows = page.locator("#shelf-table tbody tr")
    assert rows.count() == 1 and rows.first.get_attribute("data-product") == shop_tool
    page.goto(f"{hub_url}{SERVICE}?sort=new")
    assert page.locator("#shelf-table tbody tr").first.get_attribute(
        "data-product") == shop_tool
    page.goto(f"{hub_url}{SERVICE}?sort=used&unit=e")
    units = page.locator("#shelf-table tbody tr td:nth-child(3)").all_inner_texts()
    using = [int(n) for n in page.locator("#shelf-table td.num").all_inner_texts()]
    assert units and set(units) == {"e"} and using == sorted(using, reverse=True)
    page.goto(f"{hub_url}{SERVICE}?q={shop_tool}")
    assert_accessible(page)
    screenshot(page, "shop-shelf-search")

    page.click(f"#shelf-table a[href$='products/{shop_tool}']")
    page.wait_for_url(f"**/products/{shop_tool}")
    assert page.locator("#my-entitlements").inner_text().startswith("No plan yet")
    assert_accessible(page)
    screenshot(page, "shop-product")

    # buy: the plans with price and balance after, then confirm with a double click
    page.click("#buy-link")
    page.wait_for_url(f"**/products/{shop_tool}/buy")
    label = page.locator("label[for=plan-per_use]").inner_text()
    assert "10.00 points" in label and f"balance after: {before - 10:.2f}" in label
    page.check("#plan-per_use")
    assert f"from {before:.2f} to {before - 10:.2f}" in page.inner_text("#buy-summary")
    assert_accessible(page)
    screenshot(page, "shop-buy")
    key = page.input_value("input[name=idempotency_key]")
    action = urljoin(page.url, page.get_attribute("#buy-form", "action"))
    page.dblclick("#confirm-buy")
    page.wait_for_url(re.compile(r".*/buy\?order=\d+$"))
    order_id = int(page.url.rsplit("=", 1)[1])
    assert page.inner_text("#uses-left") == "1"
    assert page.inner_text("#balance-now") == f"{before - 10:.2f}"
    assert_accessible(page)
    screenshot(page, "shop-bought")
    # the same form sent again (a retry, a second click that got through) buys nothing more
    again = page.request.post(action, form={"plan": "per_use", "idempotency_key": key},
                              max_redirects=0)
    assert again.status == 303 and again.headers["location"].endswith(f"order={order_id}")
    assert [o["id"] for o in _orders_of(sub, shop_tool)] == [order_id]
    assert _balance(sub, "d") == pytest.approx(before - 10)

    # try it: pasted CSV rows, predictions, the use spent
    page.goto(f"{hub_url}{SERVICE}products/{shop_tool}/try")
    page.click("#try-form button[type=submit]")
    page.wait_for_selector("#predictions-table")
    assert page.locator("#predictions-table tbody tr").count() == 2
    assert "c1" in page.inner_text("#predictions-table")
    assert "0 uses left" in page.inner_text("#my-entitlements")
    assert_accessible(page)
    screenshot(page, "shop-try")
    # bad rows: the error next to the field, the text kept, nothing spent or called
    page.check("input[name=format][value=json]")
    page.click("#try-form button[type=submit]")
    page.wait_for_selector("#error-rows")
    assert "JSON" in page.inner_text("#error-rows")
    assert page.input_value("#f-rows").startswith("customer_id,")
    assert page.get_attribute("#f-rows", "aria-invalid") == "true"
    # no use left: the gate's message, nothing charged
    page.check("input[name=format][value=csv]")
    page.click("#try-form button[type=submit]")
    page.wait_for_selector("#form-error")
    assert "order one first" in page.inner_text("#form-error")

    # a month, then a file: POST, the page with its sha256, the file itself
    page.goto(f"{hub_url}{SERVICE}products/{shop_tool}/buy?plan=month")
    assert page.is_checked("#plan-month")
    page.click("#confirm-buy")
    page.wait_for_url(re.compile(r".*/buy\?order=\d+$"))
    assert "valid until" in page.inner_text("#entitlement")
    page.goto(f"{hub_url}{SERVICE}products/{shop_tool}")
    row = page.locator("#files-table tr", has=page.locator("text=files/model.json"))
    listed = row.locator("code.digest").inner_text()
    row.locator("button").click()
    page.wait_for_url(re.compile(r".*/download\?link=.*"))
    assert page.inner_text("#download-sha256") == listed
    data = _save(page, page.locator("#save-file"))
    assert hashlib.sha256(data).hexdigest() == listed
    assert_accessible(page)
    screenshot(page, "shop-download")

    # the account: balance, the chart, both orders, the entitlements
    page.goto(f"{hub_url}{SERVICE}account")
    assert page.inner_text("#account-balance") == f"{before - 40:.2f}"
    assert page.locator("#balance-chart polyline").count() == 1
    assert page.locator("#balance-chart circle").count() >= 3
    orders = page.locator("#orders-table tbody tr", has=page.locator(f"text={shop_tool}"))
    assert orders.count() == 2
    ents = page.locator("#entitlements-table tbody tr", has=page.locator(f"text={shop_tool}"))
    assert ents.count() == 2 and "month" in ents.first.inner_text()  # usable first
    assert_accessible(page)
    screenshot(page, "shop-account")
    narrow = page_as("subscriber-d", narrow=True)
    for path in ("account", f"products/{shop_tool}/buy", f"products/{shop_tool}/try"):
        narrow.goto(f"{hub_url}{SERVICE}{path}")
        assert fits_narrow_window(narrow), f"{path} scrolls sideways in a narrow window"


def test_sql_box_and_view_export(page_as, users, shop_data, hub_url):
    from browser import assert_accessible, screenshot

    sub = users("subscriber-b")
    sub.order(shop_data, "month")
    page = page_as("subscriber-b")
    page.goto(f"{hub_url}{SERVICE}products/{shop_data}/sql")
    schema = page.locator("details.schema", has=page.locator("text=customers_public"))
    assert "district" in schema.inner_text() and "phone" not in schema.inner_text()
    assert_accessible(page)

    # beyond the grant: the guard's message next to the SQL, the query kept
    page.fill("#f-sql", "SELECT * FROM customers")
    page.click("#sql-form button[type=submit]")
    page.wait_for_selector("#error-sql")
    assert page.input_value("#f-sql") == "SELECT * FROM customers"
    page.fill("#f-limit", "0")
    page.fill("#f-sql", "SELECT district, count(*) AS n FROM customers_public "
                        "GROUP BY district ORDER BY n DESC")
    page.click("#sql-form button[type=submit]")
    page.wait_for_selector("#error-limit")
    page.fill("#f-limit", "3")
    page.click("#sql-form button[type=submit]")
    page.wait_for_selector("#result-table")
    headers = page.locator("#result-table thead th").all_inner_texts()
    assert [h.split()[0] for h in headers] == ["district", "n"]
    assert 1 <= page.locator("#result-table tbody tr").count() <= 3
    assert_accessible(page)
    screenshot(page, "shop-sql")

    # export a view: a POST, then its sha256 and the file
    page.goto(f"{hub_url}{SERVICE}products/{shop_data}")
    form = page.locator("form.inline-form", has=page.locator("text=customers_public"))
    form.locator("button").click()
    page.wait_for_url(re.compile(r".*/download\?link=.*"))
    digest = page.inner_text("#download-sha256")
    data = _save(page, page.locator("#save-file"))
    assert hashlib.sha256(data).hexdigest() == digest
    header = data.decode().splitlines()[0]
    assert "customer_id" in header and "phone" not in header
    assert int(page.inner_text("#download-rows").split()[0]) == len(data.decode().splitlines()) - 1
    # a GET of a spending URL exports nothing: it shows the product page and its forms
    page.goto(f"{hub_url}{SERVICE}products/{shop_data}/export")
    assert page.url.endswith(f"/products/{shop_data}") and "/download" not in page.url


def test_not_enough_points_is_a_clear_message_and_buys_nothing(page_as, users, shop_tool,
                                                               hub_url, logins):
    from browser import assert_accessible, screenshot
    from helpers import market_as

    from marketplace_ext.hubsession import HubSession

    # a unit of its own (the demo units keep their points for the other tests), spent down
    slug = f"poor{secrets.token_hex(3)}"
    user, password = f"buyer-{slug}", secrets.token_urlsafe(12)
    op = users("operator")
    op.request("POST", "units", json={"slug": slug, "name": "Shop test unit"})
    HubSession(hub_url).signup(user, password)
    hub_op = HubSession(hub_url)
    hub_op.login("operator", logins["operator"])
    hub_op.authorize(user)
    op.request("PUT", f"units/{slug}/members/{user}", json={"roles": []})
    buyer = market_as(hub_url, user, password)
    for _ in range(10):  # 10 x 50 = the whole initial grant
        buyer.order("ev-charger-layout", "year")
    assert _balance(buyer, slug) == 0

    page = page_as(user, password=password)
    page.goto(f"{hub_url}{SERVICE}products/{shop_tool}/buy")
    assert "(not enough points)" in page.inner_text("label[for=plan-per_use]")
    page.check("#plan-per_use")
    page.click("#confirm-buy")
    page.wait_for_selector("#not-enough")
    assert "Not enough points" in page.inner_text("#not-enough")
    assert "costs 10.00" in page.inner_text("#error-plan")
    assert page.is_checked("#plan-per_use")  # the choice is kept
    assert _orders_of(buyer, shop_tool) == [] and _balance(buyer, slug) == 0
    assert_accessible(page)
    screenshot(page, "shop-buy-not-enough")

    # operators see every account, and that the balances sum to zero
    ops = page_as("operator")
    ops.goto(f"{hub_url}{SERVICE}account")
    table = ops.inner_text("#accounts-table")
    assert f"unit:{slug}" in table and "mint" in table
    assert_accessible(ops)
