"""Operators in the browser (issue 15 item 6): the review queue, a version's readable diff
against the previous version (manifest, notebook sources and metadata, files), approve or reject
with a reason, the shelf, and the administration pages (units, members, accounts, refunds).

The diff itself is tested without a platform first.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import nbformat
import pytest
import yaml
from browser import assert_accessible, fits_narrow_window, screenshot
from helpers import market_as
from jinja2 import Environment, FileSystemLoader, select_autoescape

from marketplace_ext.bundle import new_product
from marketplace_ext.review_diff import line_diff, notebook_diff

SERVICE = "/services/marketplace/"
TEMPLATES = Path(__file__).resolve().parent.parent / "marketplace_ext" / "templates"


def nb(*cells: tuple[str, str, dict], **metadata) -> dict:
    return {"cells": [{"cell_type": t, "source": s, "metadata": m} for t, s, m in cells],
            "metadata": metadata}


def test_notebook_diff_pairs_edited_cells_and_reports_metadata():
    old = nb(("code", "a = 1\nb = 2", {"tags": ["parameters"]}), ("markdown", "# Title", {}),
             ("code", "print(a)", {}), kernelspec={"name": "grid-python"})
    new = nb(("code", "a = 1\nb = 3", {"tags": ["parameters"]}), ("markdown", "# Title", {}),
             ("code", "print(a)", {"tags": ["slow"]}), ("code", "print(b)", {}),
             kernelspec={"name": "other"})
    diff = notebook_diff(old, new)
    statuses = [(c["status"], c["old_index"], c["new_index"]) for c in diff["cells"]]
    # the edited first cell is one change, not a removal plus an addition
    assert statuses == [("changed", 0, 0), ("changed", 2, 2), ("added", None, 3)]
    assert diff["unchanged"] == 1
    first = diff["cells"][0]["source"]
    assert {"op": "-", "text": "b = 2"} in first and {"op": "+", "text": "b = 3"} in first
    assert diff["cells"][1]["source"] == []  # same source, new tags: a metadata change
    assert {"op": "+", "text": '  "slow"'} in diff["cells"][1]["metadata"]
    assert [line["text"] for line in diff["cells"][2]["source"] if line["op"] == "+"] == \
        ["print(b)"]
    assert {"op": "+", "text": '  "name": "other"'} in diff["metadata"]
    assert notebook_diff(old, old)["cells"] == [] and line_diff("x", "x") == []
    # a first version: everything is added
    assert [c["status"] for c in notebook_diff(None, new)["cells"]] == ["added"] * 4


def test_diff_template_escapes_the_publishers_text():
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    macros = env.get_template("review_diff.html").module
    html = str(macros.lines(line_diff("x = 1", "x = '<script>alert(1)</script>'"), "diff"))
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert 'class="op-add">+x = ' in html and 'class="op-del">-x = 1' in html


# --- in the browser ------------------------------------------------------------------------------


def edit_bundle(bundle: Path, version: str, summary: str) -> None:
    manifest_path = bundle / "product.yaml"
    manifest = yaml.safe_load(manifest_path.read_text())
    manifest.update(version=version, summary=summary)
    manifest_path.write_text(yaml.safe_dump(manifest, sort_keys=False))


def test_operator_reviews_with_the_diff_and_approves(page_as, hub_url, logins, tmp_path):
    name = f"pages-review-{secrets.token_hex(3)}"
    pub = market_as(hub_url, "publisher-a", logins["publisher-a"])
    op = market_as(hub_url, "operator", logins["operator"])
    bundle = new_product("tool", name, tmp_path)
    edit_bundle(bundle, "1.0.0", "Scores meters, first cut.")
    pub.publish(bundle)
    op.review(name, "1.0.0", "approve")
    # version 1.1.0: a new summary, an edited parameter, a tagged cell, a new file
    edit_bundle(bundle, "1.1.0", "Scores meters with a <b>threshold</b>.")
    notebook = nbformat.read(bundle / "main.ipynb", as_version=4)
    params = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    params.source += "\nthreshold: float = 0.9  # flag customers above it"
    notebook.cells[-1].metadata["tags"] = ["report"]
    nbformat.write(notebook, bundle / "main.ipynb")
    (bundle / "files" / "thresholds.json").write_text(json.dumps({"default": 0.9}))
    pub.publish(bundle)

    page = page_as("operator")
    page.goto(f"{hub_url}{SERVICE}review")
    queue = page.locator("#review-queue")
    row = queue.locator("tr", has_text=name)
    assert "1.1.0" in row.inner_text()
    assert_accessible(page)
    screenshot(page, "review-queue")
    with page.expect_navigation():
        row.get_by_role("link", name="Review").click()

    assert "since version 1.0.0" in page.locator("#diff-heading").inner_text()
    manifest = page.locator("#manifest-diff .op-del").all_inner_texts()
    added = page.locator("#manifest-diff .op-add").all_inner_texts()
    assert any("first cut" in line for line in manifest)
    assert any("<b>threshold</b>" in line for line in added)  # shown as text, not markup
    assert "+version: 1.1.0" in added
    notebook_added = page.locator("#notebook-diff .op-add").all_inner_texts()
    assert "+threshold: float = 0.9  # flag customers above it" in notebook_added
    assert any('"report"' in line for line in notebook_added)  # the cell's new tag
    files = page.locator("#file-changes").inner_text()
    assert "files/thresholds.json" in files and "added" in files
    assert_accessible(page)
    screenshot(page, "review-diff")

    # a rejection needs a reason: the error next to the field, nothing decided
    with page.expect_navigation():
        page.locator("#reject-form button[type=submit]").click()
    assert page.locator("#error-reason").is_visible()
    assert page.get_attribute("#f-reason", "aria-invalid") == "true"
    assert pub.product(name)["current_version"] == "1.0.0"

    with page.expect_navigation():
        page.locator("#approve-form button[type=submit]").click()
    assert f"{name} 1.1.0 approved" in page.locator("#decided-notice").inner_text()
    product = pub.product(name)
    assert product["current_version"] == "1.1.0" and product["state"] == "on_shelf"
    assert {v["version"]: v["state"] for v in product["versions"]} == {
        "1.0.0": "superseded", "1.1.0": "on_shelf"}

    # off the shelf and back, from the review page's shelf
    shelf_row = page.locator("#shelf tr", has_text=name)
    shelf_row.get_by_label("Reason").fill("checking the thresholds")
    with page.expect_navigation():
        shelf_row.get_by_role("button", name="Take off").click()
    assert name in page.locator("#shelved-notice").inner_text()
    assert pub.product(name)["state"] == "off_shelf"
    with page.expect_navigation():
        page.locator("#shelf tr", has_text=name).get_by_role("button", name="Put back").click()
    assert pub.product(name)["state"] == "on_shelf"

    narrow = page_as("operator", narrow=True)
    narrow.goto(page.url)
    assert fits_narrow_window(narrow), "the review page scrolls sideways in a 390 px window"


def status_of(market, order: int) -> str:
    return next(o["status"] for o in market.request("GET", "orders", params={"limit": 200})[
        "orders"] if o["id"] == order)


def test_operator_administers_units_accounts_and_refunds(page_as, hub_url, logins):
    buyer = market_as(hub_url, "subscriber-b", logins["subscriber-b"])
    order = buyer.order("ev-charger-layout", "per_use")
    page = page_as("operator")
    page.goto(f"{hub_url}{SERVICE}admin")
    assert set("abcde") <= set(page.locator("#units a").all_inner_texts())
    accounts = page.locator("#accounts").inner_text()
    assert "unit:a" in accounts and "operator" in accounts
    assert_accessible(page)
    screenshot(page, "admin")

    with page.expect_navigation():
        page.get_by_role("link", name="b", exact=True).click()
    members = page.locator("#members").inner_text()
    assert "subscriber-b" in members and "publisher-b" in members
    # a bad user name: the error next to the field, nobody added
    page.fill("#f-user", "Not A User!")
    with page.expect_navigation():
        page.get_by_role("button", name="Save member").click()
    assert page.locator("#error-user").is_visible()
    assert "Not A User!" not in page.locator("#members").inner_text()

    row = page.locator("#orders tr", has_text=f"#{order['id']}")
    with page.expect_navigation():  # no reason: refused, next to the field
        row.get_by_role("button", name="Refund").click()
    row = page.locator("#orders tr", has_text=f"#{order['id']}")
    assert row.locator("#error-reason").is_visible()
    assert status_of(buyer, order["id"]) == "paid"
    row.get_by_label("Reason").fill("bought by mistake")
    with page.expect_navigation():
        row.get_by_role("button", name="Refund").click()
    assert f"order {order['id']} refunded" in page.locator("#done-notice").inner_text()
    assert status_of(buyer, order["id"]) == "refunded"
    assert_accessible(page)
    screenshot(page, "admin-unit")

    # operators only
    other = page_as("subscriber-b")
    response = other.goto(f"{hub_url}{SERVICE}review")
    assert response.status == 403
    assert other.get_by_role("navigation", name="Marketplace").get_by_role(
        "link", name="Admin").count() == 0


@pytest.mark.parametrize("path", ["admin", "review"])
def test_operator_pages_refuse_a_publisher(page_as, hub_url, path):
    page = page_as("publisher-c")
    assert page.goto(f"{hub_url}{SERVICE}{path}").status == 403
