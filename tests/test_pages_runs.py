"""The run pages in a real browser on the session's platform: a subscriber whose unit bought a
product runs it through the form generated from the notebook's papermill parameters (a bad
value is refused next to its field and costs nothing), follows its progress and reads the
output in a sandboxed frame, with its artifacts and the run history; a publisher runs its own
unit's product at no charge and cancels it while it runs."""

from __future__ import annotations

import json
import re

import pytest
from browser import assert_accessible, fits_narrow_window, screenshot
from helpers import market_as
from playwright.sync_api import expect
from run_products import publish_form_product

SERVICE = "/services/marketplace/"
RUN_TIMEOUT_MS = 240_000  # a run: a sandboxed kernel starts, four cells, HTML rendering


@pytest.fixture(scope="module")
def product(platform_proc, tmp_path_factory):
    url, logins = platform_proc.url, platform_proc.logins()
    publisher = market_as(url, "publisher-a", logins["publisher-a"])
    operator = market_as(url, "operator", logins["operator"])
    return publish_form_product(publisher, operator, tmp_path_factory.mktemp("run-pages"))


def field(page, name: str):
    return page.locator(f'[name="parameters.{name}"]')


def test_subscriber_runs_a_bought_product_through_the_generated_form(
        product, page_as, hub_url, logins, tmp_path):
    sub = market_as(hub_url, "subscriber-e", logins["subscriber-e"])
    sub.order(product, "per_use")
    runs_before = sub.runs()["total"]
    page = page_as("subscriber-e")
    page.goto(f"{hub_url}{SERVICE}products/{product}/run")

    # one typed input per parameter, the default filled in, the comment as help; the context
    # parameters (unit, output_dir, input_path) are the marketplace's, not in the form
    assert field(page, "label").input_value() == "hello"
    assert field(page, "repeat").get_attribute("type") == "number"
    assert field(page, "repeat").input_value() == "2"
    assert field(page, "shout").get_attribute("type") == "checkbox"
    assert not field(page, "shout").is_checked()
    assert field(page, "tags").input_value() == "[]"
    assert page.get_by_label("repeat").count() == 1  # labelled
    assert "how many times to print it" in page.locator("#help-parameters\\.repeat").inner_text()
    for context in ("unit", "output_dir", "input_path"):
        assert field(page, context).count() == 0
    assert "1 use left" in page.locator("#run-access").inner_text()
    assert_accessible(page)
    screenshot(page, "run-form")

    # a bad value: the API's message next to its field, the typed values kept, nothing run or
    # charged
    field(page, "label").fill("hi there")
    field(page, "tags").fill("not json")
    with page.expect_navigation():
        page.get_by_role("button", name="Run").click()
    error = page.locator("#error-parameters\\.tags")
    expect(error).to_contain_text("must be JSON")
    assert field(page, "tags").get_attribute("aria-invalid") == "true"
    assert field(page, "label").input_value() == "hi there"
    assert sub.runs()["total"] == runs_before
    assert "1 use left" in page.locator("#run-access").inner_text()
    assert_accessible(page)
    screenshot(page, "run-form-error")

    # fixed, with an uploaded CSV file as the data
    field(page, "tags").fill('["x", "y"]')
    field(page, "repeat").fill("3")
    field(page, "shout").check()
    csv = tmp_path / "meters.csv"
    csv.write_text("meter,kwh\n1,2.5\n2,3.0\n3,1.0\n")
    page.locator("#f-data_file").set_input_files(str(csv))
    expect(page.locator("#data-upload")).to_be_checked()  # choosing a file chose the upload
    with page.expect_navigation():
        page.get_by_role("button", name="Run").click()
    assert re.search(r"/runs/\d+$", page.url), page.url
    run_id = int(page.url.rsplit("/", 1)[1])

    # live progress until it ends (runs.js), then the output in a sandboxed frame
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=RUN_TIMEOUT_MS)
    progress = page.locator("#run-progress")
    # the parameters cell, papermill's injected one and the four cells of code
    assert progress.get_attribute("value") == progress.get_attribute("max") == "6"
    assert page.locator("#run-cells").inner_text() == "6 of 6 cells done"
    frame = page.locator("#run-output")
    assert frame.get_attribute("sandbox") == ""  # no scripts, no same origin
    output = page.frame_locator("#run-output")
    expect(output.get_by_text("HI THERE #3").first).to_be_visible()
    expect(output.get_by_text("rows: 3, scaled: 4.5").first).to_be_visible()
    artifact = page.get_by_role("link", name="outputs/result.json")
    with page.expect_download() as download:
        artifact.click()
    result = json.loads(open(download.value.path()).read())
    assert result == {"text": "HI THERE", "repeat": 3, "tags": ["x", "y"], "rows": 3,
                      "unit": "e"}
    assert page.get_by_role("button", name="Cancel the run").count() == 0
    assert_accessible(page)
    screenshot(page, "run")

    # what the API recorded: the parameters typed in the form, only those that differ
    run = sub.get_run(run_id)
    assert run["status"] == "succeeded" and run["user"] == "subscriber-e"
    assert run["parameters"] == {"label": "hi there", "repeat": 3, "shout": True,
                                 "tags": ["x", "y"]}

    # the run history: mine and my unit's, each linking to the run
    page.goto(f"{hub_url}{SERVICE}runs")
    link = page.get_by_role("link", name=f"#{run_id}", exact=True)
    expect(link).to_be_visible()
    page.get_by_role("link", name=re.compile("My unit's")).click()
    expect(page.get_by_role("link", name=re.compile("My unit's"))).to_have_attribute(
        "aria-current", "page")
    expect(page.get_by_role("link", name=f"#{run_id}", exact=True)).to_be_visible()
    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#runs-table a", has_text=f"#{run_id}")).to_have_count(0)
    assert_accessible(page)
    page.goto(f"{hub_url}{SERVICE}runs")
    screenshot(page, "runs")

    narrow = page_as("subscriber-e", narrow=True)
    for path in (f"products/{product}/run", f"runs/{run_id}", "runs"):
        narrow.goto(f"{hub_url}{SERVICE}{path}")
        assert fits_narrow_window(narrow), f"{path} scrolls sideways in a 390 px window"


def test_publisher_runs_its_own_product_free_and_cancels_it(product, page_as, hub_url, logins):
    pub = market_as(hub_url, "publisher-a", logins["publisher-a"])
    earlier = pub.run(product, progress=False, poll=0.5)  # an older run of the unit (paging)
    assert earlier["status"] == "succeeded", earlier["error"]
    balance = pub.statement()["balance"]
    page = page_as("publisher-a")
    page.goto(f"{hub_url}{SERVICE}products/{product}/run")
    assert "costs nothing" in page.locator("#run-access").inner_text()
    field(page, "sleep").fill("120")
    assert page.locator("#data-platform").is_checked()  # the unit's own tables by default
    with page.expect_navigation():
        page.get_by_role("button", name="Run").click()
    run_id = int(page.url.rsplit("/", 1)[1])
    # the page follows the run: four cells done while the notebook sleeps in the fifth
    expect(page.locator("#run-cells")).to_have_text(re.compile(r"^4 of 6 cells done$"),
                                                    timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#run-status")).to_have_text("running")
    screenshot(page, "run-progress")
    with page.expect_navigation():
        page.get_by_role("button", name="Cancel the run").click()
    expect(page.locator("#run-status")).to_have_text("cancelled", timeout=60_000)
    assert pub.get_run(run_id)["status"] == "cancelled"
    assert pub.get_run(run_id)["parameters"] == {"sleep": 120.0}
    assert pub.statement()["balance"] == balance  # its own product: nothing charged

    # the unit's history, paged one run a page: newest first, older and newer links
    page.goto(f"{hub_url}{SERVICE}runs?scope=unit&limit=1")
    assert "1 to 1 shown" in page.locator("#runs-total").inner_text()
    expect(page.locator("#runs-table tbody a").first).to_have_text(f"#{run_id}")
    assert page.get_by_role("link", name=re.compile("Newer")).count() == 0
    page.get_by_role("link", name=re.compile("Older")).click()
    expect(page.locator("#runs-total")).to_contain_text("2 to 2 shown")
    older = page.locator("#runs-table tbody a").first.inner_text()
    assert older.startswith("#") and earlier["id"] <= int(older[1:]) < run_id
    expect(page.get_by_role("link", name=re.compile("Newer"))).to_be_visible()
    # an ended run offers no cancel
    page.goto(f"{hub_url}{SERVICE}runs/{run_id}")
    assert page.get_by_role("button", name="Cancel the run").count() == 0
    assert_accessible(page)
