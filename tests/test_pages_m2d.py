"""Model-to-data in the browser (issue 15 item 7): the data owner reads the submitted notebook
rendered by nbconvert - hostile HTML, sanitized and shown in a sandboxed iframe where no script
runs - and approves it; the demander follows the request and downloads the returned model.

The rendering is tested without a platform first.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets

import nbformat
import yaml
from browser import assert_accessible, fits_narrow_window, screenshot
from helpers import market_as, training_notebook, wait_until
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from marketplace_ext import notebook_view
from marketplace_ext.bundle import new_product

SERVICE = "/services/marketplace/"
HOSTILE_MD = ("# Theft model <script>window.parent.document.title = 'pwned'</script>\n"
              "<img src=x onerror=\"window.parent.document.body.dataset.pwned = 1\">")
HOSTILE_HTML = "<script>window.top.document.body.dataset.pwned = 1</script><b>bold output</b>"


def hostile_notebook() -> dict:
    nb = training_notebook()
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(HOSTILE_MD))
    nb.cells[-1].outputs = [
        nbformat.v4.new_output("display_data", data={"text/html": HOSTILE_HTML}),
        nbformat.v4.new_output("display_data", data={
            "application/javascript": "document.body.dataset.pwned = 1"})]
    nb.cells[-1].execution_count = 1
    return nb


def test_rendering_strips_scripts_and_keeps_the_code():
    data = nbformat.writes(hostile_notebook()).encode()
    html = asyncio.run(notebook_view.render(hashlib.sha256(data).hexdigest(), data)).decode()
    # the hostile markup survives only as text: no script of its own, no event handler
    assert not re.search(r"<script[^>]*>[^<]*pwned", html)
    assert not re.search(r"<[a-z]+\s[^>]*\bon[a-z]+\s*=", html)
    assert "&lt;script&gt;window.parent" in html
    assert "torch" in html and "bold output" in html
    assert notebook_view.VIEW_CSP.startswith("sandbox;")  # and no script-src at all
    assert "script-src" not in notebook_view.VIEW_CSP


def data_product(hub_url: str, logins: dict, tmp_path) -> str:
    pub = market_as(hub_url, "publisher-a", logins["publisher-a"])
    op = market_as(hub_url, "operator", logins["operator"])
    name = f"pages-m2d-{secrets.token_hex(3)}"
    bundle = new_product("data", name, tmp_path)
    manifest = yaml.safe_load((bundle / "product.yaml").read_text())
    manifest["plans"] = [{"type": "per_use", "price": 10}]
    manifest["sharing"] = ["download", "interface", "model_to_data"]
    (bundle / "product.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    op.review(name, pub.publish(bundle)["version"], "approve")
    return name


def test_data_owner_approves_and_the_demander_gets_the_model(page_as, hub_url, logins,
                                                             tmp_path):
    name = data_product(hub_url, logins, tmp_path)
    demander = market_as(hub_url, "subscriber-e", logins["subscriber-e"])
    demander.order(name, "per_use")
    request = demander.send_model(name, hostile_notebook(), ["outputs/model.pt"],
                                  parameters={"epochs": 5}, purpose="a theft model on kWh")
    rid = request["id"]

    owner = page_as("publisher-a")
    owner.goto(f"{hub_url}{SERVICE}m2d")
    with owner.expect_navigation():
        owner.get_by_role("link", name=f"#{rid}", exact=True).click()
    assert owner.locator("#m2d-status").inner_text() == "pending"
    frame = owner.locator("#notebook-view")
    assert frame.get_attribute("sandbox") == ""  # no allow-scripts, no allow-same-origin
    body = owner.frame_locator("#notebook-view").locator("body")
    body.get_by_text("bold output").wait_for()
    assert "torch" in body.inner_text()
    # what the iframe loads: sanitized, and the browser is told to sandbox it on its own too
    response = owner.request.get(f"{hub_url}{SERVICE}m2d/{rid}/notebook.html")
    assert response.status == 200
    assert response.headers["content-security-policy"].startswith("sandbox;")
    assert not re.search(r"<script[^>]*>[^<]*pwned", response.text())
    # nothing ran: not in the frame, not in the page around it
    assert owner.evaluate("() => document.body.dataset.pwned") is None
    assert owner.title() != "pwned"
    assert_accessible(owner)
    screenshot(owner, "m2d-owner")

    # a rejection needs a reason: the error next to the field, nothing decided
    with owner.expect_navigation():
        owner.locator("#reject-form button[type=submit]").click()
    assert owner.locator("#error-reason").is_visible()
    assert demander.request("GET", f"m2d/{rid}")["status"] == "pending"

    with owner.expect_navigation():
        owner.get_by_role("button", name="Approve and run").click()
    assert "approved" in owner.locator("#decided-notice").inner_text()
    assert demander.request("GET", f"m2d/{rid}")["status"] == "approved"

    # the demander's page follows the request until the model comes back (its script reloads)
    page = page_as("subscriber-e")
    page.goto(f"{hub_url}{SERVICE}m2d/{rid}")
    assert "follows the request" in page.locator("#m2d-live").inner_text()
    done = wait_until(lambda: (r := demander.request("GET", f"m2d/{rid}"))["run"]["status"]
                      not in ("queued", "running") and r, 900, "the model-to-data run", poll=2)
    assert done["run"]["status"] == "succeeded", done["run"]
    assert "outputs/model.pt" in done["released"], done["withheld"]
    link = page.locator("#released").get_by_role("link", name="outputs/model.pt")
    try:
        link.wait_for(timeout=60_000)  # the page noticed by itself and reloaded
    except PlaywrightTimeout:
        raise AssertionError(f"the page did not follow the request: at {page.url}: "
                             f"{page.locator('main').inner_text()[:1500]}") from None
    assert page.locator("#m2d-run-status").inner_text() == "succeeded"
    shown = page.locator("#released code.digest").inner_text()
    with page.expect_download() as download:
        link.click()
    data = open(download.value.path(), "rb").read()
    assert hashlib.sha256(data).hexdigest() == shown
    assert page.locator("#notebook-view").count() == 1
    assert_accessible(page)
    screenshot(page, "m2d-demander")
    narrow = page_as("subscriber-e", narrow=True)
    narrow.goto(f"{hub_url}{SERVICE}m2d/{rid}")
    assert fits_narrow_window(narrow), "the request page scrolls sideways in a 390 px window"
