"""Publishing in the browser (issue 15 item 5): a bundle zip dropped on the form is checked at
once and its problems listed by file and field, with nothing submitted; the publisher fixes it,
accepts the sharing agreement and submits; the version history shows it.

The first tests need no platform: the check itself (``publishing.check_upload``) on a real
database, and the page's template with hostile text in a problem.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from browser import assert_accessible, fits_narrow_window, screenshot
from helpers import market_as
from jinja2 import Environment, FileSystemLoader, select_autoescape

from marketplace_ext import publishing, units
from marketplace_ext.auth import SCOPE_PUBLISH, SCOPE_SUBSCRIBE, Caller
from marketplace_ext.bundle import BundleLimits, canonical_archive, new_product
from marketplace_ext.client import MarketAPIError
from marketplace_ext.executors import NamedExecutors
from marketplace_ext.orm import write_transaction

SERVICE = "/services/marketplace/"
TEMPLATES = Path(__file__).resolve().parent.parent / "marketplace_ext" / "templates"


def broken_and_fixed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """Two zips of one tool bundle: one with a price below the minimum and an unknown kernel,
    and the same bundle fixed."""
    bundle = new_product("tool", name, tmp_path / "src")
    manifest_path = bundle / "product.yaml"
    manifest = yaml.safe_load(manifest_path.read_text())
    fixed = tmp_path / f"{name}.zip"
    fixed.write_bytes(canonical_archive(bundle))
    manifest["plans"] = [{"type": "per_use", "price": 5}]
    manifest["kernel"] = "no-such-kernel"
    manifest_path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    broken = tmp_path / f"{name}-broken.zip"
    broken.write_bytes(canonical_archive(bundle))
    return broken, fixed


@pytest.fixture
def market_stub(tmp_path, sqlite_session_factory):
    factory = sqlite_session_factory
    with factory() as session:
        write_transaction(session)
        units.create_unit(session, "a", "Unit A", "operator")
        session.commit()
    (tmp_path / "tmp").mkdir()
    pools = NamedExecutors({"db": 1, "io": 1, "spark": 1, "log": 1}, factory)
    yield SimpleNamespace(session_factory=factory, tmp_dir=tmp_path / "tmp",
                          bundle_limits=BundleLimits(), in_db=pools.in_db,
                          in_io=lambda work, *args: pools.run("io", work, *args))
    pools.shutdown()


def test_check_lists_every_problem_by_file_and_field_and_stores_nothing(market_stub, tmp_path):
    broken, fixed = broken_and_fixed(tmp_path, "check-me")
    publisher = Caller("pub", frozenset({SCOPE_PUBLISH, SCOPE_SUBSCRIBE}), "a")
    result = asyncio.run(publishing.check_upload(market_stub, publisher, broken.read_bytes()))
    assert result["valid"] is False
    found = {(p["file"], p["field"]) for p in result["problems"]}
    assert {("product.yaml", "plans[0].price"), ("product.yaml", "kernel")} <= found
    result = asyncio.run(publishing.check_upload(market_stub, publisher, fixed.read_bytes()))
    assert result["valid"] and result["problems"] == []
    assert result["product"] == "check-me" and result["new_product"] is True
    assert len(result["sha256"]) == 64
    assert list(market_stub.tmp_dir.iterdir()) == []  # nothing left behind, nothing stored
    # the catalogue's rules too: a publisher of no unit cannot submit it
    homeless = Caller("drifter", frozenset({SCOPE_PUBLISH}), None)
    result = asyncio.run(publishing.check_upload(market_stub, homeless, fixed.read_bytes()))
    assert not result["valid"] and [p["field"] for p in result["problems"]] == ["unit"]
    not_a_zip = asyncio.run(publishing.check_upload(market_stub, publisher, b"PK no zip"))
    assert not not_a_zip["valid"] and not_a_zip["problems"][0]["file"] == ""


def test_publish_template_escapes_problems_and_keeps_the_agreement_checkbox():
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    check = {"valid": False, "filename": "<x>.zip", "problems": [
        {"file": "README.md", "field": None, "message": "<script>alert(1)</script>"}]}
    html = env.get_template("publish.html").render(
        prefix="/s/", hub_prefix="/hub/", caller=None, xsrf="t0k", nav="publish",
        errors={"accept_terms": "accept it"}, form={}, terms="Terms <b>", products=[],
        can_publish=True, check=check)
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
    assert "&lt;x&gt;.zip" in html and "Terms &lt;b&gt;" in html
    assert 'id="error-accept_terms"' in html and 'aria-invalid="true"' in html
    assert 'action="/s/publish?_xsrf=t0k"' in html


# --- in the browser ------------------------------------------------------------------------------

DROP = """([selector, b64, name]) => {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, {type: "application/zip"}));
  const zone = document.querySelector(selector);
  const init = {dataTransfer: transfer, bubbles: true, cancelable: true};
  zone.dispatchEvent(new DragEvent("dragover", init));
  zone.dispatchEvent(new DragEvent("drop", init));
}"""


def drop_file(page, selector: str, path: Path) -> None:
    """Drag and drop ``path`` on ``selector`` as a person would (a DataTransfer with a File)."""
    page.evaluate(DROP, [selector, base64.b64encode(path.read_bytes()).decode(), path.name])


def test_publisher_fixes_a_broken_bundle_and_submits(page_as, hub_url, logins, tmp_path):
    name = f"pages-publish-{secrets.token_hex(3)}"
    broken, fixed = broken_and_fixed(tmp_path, name)
    api = market_as(hub_url, "publisher-a", logins["publisher-a"])
    page = page_as("publisher-a")
    page.goto(f"{hub_url}{SERVICE}publish")
    nav = page.get_by_role("navigation", name="Marketplace")
    assert nav.get_by_role("link", name="Publish").get_attribute("aria-current") == "page"

    # dropped: checked at once, problems by file and field, nothing submitted
    drop_file(page, "#dropzone", broken)
    problems = page.locator("#check-problems")
    problems.wait_for()
    rows = problems.locator("tbody tr")
    pairs = [rows.nth(i).locator("td").all_inner_texts()[:2] for i in range(rows.count())]
    assert ["product.yaml", "plans[0].price"] in pairs and ["product.yaml", "kernel"] in pairs
    assert "Nothing was submitted" in problems.inner_text()
    assert_accessible(page)
    screenshot(page, "publish-problems")
    with pytest.raises(MarketAPIError) as e:
        api.product(name)
    assert e.value.status == 404

    # submitted anyway (the agreement accepted): the server checks again and stores nothing
    page.check("#f-accept_terms")
    with page.expect_navigation():
        page.click("#submit-button")
    assert page.locator("#check-problems").is_visible()
    assert page.locator("#error-bundle").is_visible()
    with pytest.raises(MarketAPIError) as e:
        api.product(name)
    assert e.value.status == 404

    # fixed, chosen with the plain file input: valid, still nothing submitted
    page.set_input_files("#f-bundle", str(fixed))
    valid = page.locator("#check-valid")
    valid.wait_for()
    assert name in valid.inner_text() and "a new product" in valid.inner_text()

    # the agreement is not accepted: its error next to the checkbox, nothing submitted
    page.uncheck("#f-accept_terms")
    with page.expect_navigation():
        page.click("#submit-button")
    error = page.locator("#error-accept_terms")
    assert error.is_visible() and "agreement" in error.inner_text()
    assert page.get_attribute("#f-accept_terms", "aria-invalid") == "true"
    with pytest.raises(MarketAPIError) as e:
        api.product(name)
    assert e.value.status == 404

    # accepted and submitted: the version history shows it waiting for review
    page.set_input_files("#f-bundle", str(fixed))
    page.locator("#check-valid").wait_for()
    page.check("#f-accept_terms")
    with page.expect_navigation():
        page.click("#submit-button")
    assert page.url.split("?")[0].endswith(f"{SERVICE}publish/{name}")
    assert page.locator("#submitted-notice").is_visible()
    assert "submitted" in page.locator("section.version").first.inner_text()
    product = api.product(name)
    assert [v["state"] for v in product["versions"]] == ["submitted"]
    assert product["certification"][0]["terms"]  # the agreement was signed
    assert_accessible(page)
    screenshot(page, "publish-history")
    page.goto(f"{hub_url}{SERVICE}publish")
    assert page.locator("#unit-products").get_by_text(name).count() == 1

    narrow = page_as("publisher-a", narrow=True)
    narrow.goto(f"{hub_url}{SERVICE}publish")
    assert fits_narrow_window(narrow), "the publish page scrolls sideways in a 390 px window"
    # the queue stays clean for the other tests
    op = market_as(hub_url, "operator", logins["operator"])
    op.review(name, product["versions"][0]["version"], "reject", "browser test done")


def test_bundle_check_api_needs_the_publisher_role(hub_url, logins, tmp_path):
    _, fixed = broken_and_fixed(tmp_path, f"pages-api-{secrets.token_hex(3)}")
    subscriber = market_as(hub_url, "subscriber-b", logins["subscriber-b"])
    with pytest.raises(MarketAPIError) as e:
        subscriber.request("POST", "bundles/validate",
                           files={"bundle": ("b.zip", fixed.read_bytes(), "application/zip")})
    assert e.value.status == 403
    publisher = market_as(hub_url, "publisher-b", logins["publisher-b"])
    result = publisher.request("POST", "bundles/validate",
                               files={"bundle": ("b.zip", fixed.read_bytes(), "application/zip")})
    assert result["valid"] is True and result["new_product"] is True
