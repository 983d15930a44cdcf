"""The federated-learning pages in a real browser: a publisher opens a project with the form
(a bad name shown next to its field, nothing created), another unit asks to join and the
initiator approves it; a running project's page shows the round timeline, a chart of the
members' metrics, the members and the DP budget, and links to the guided notebook in the
user's own JupyterLab. Plus the form's parsing and the page's numbers, without a platform."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from browser import SERVICE, assert_accessible, fits_narrow_window, screenshot
from helpers import fl_signing_key, market_as, project_name, save_model, wait_until

from marketplace_ext.errors import InvalidField
from marketplace_ext.federated import keys, report
from marketplace_ext.federated.client import FederatedClient, bundle_zip
from marketplace_ext.federated.training import dp_epsilon
from marketplace_ext.handlers.fl_pages import project_request_body

# --- without a platform ------------------------------------------------------------------------


def test_the_form_becomes_the_apis_body():
    body = project_request_body({
        "name": "theft", "title": " Theft ", "rounds": "3", "quorum": "2", "min_updates": "",
        "deadline_seconds": "60", "key_size": "2048", "pack.bits": "12", "pack.clip": "0.5",
        "dp.noise_multiplier": "1.1", "dp.clip_norm": "1", "dp.delta": "1e-5",
        "allow_units": "b, c,", "public_key": '{"n": "77"}'}, b"zip")
    assert body == {"name": "theft", "title": "Theft", "rounds": 3, "quorum": 2,
                    "deadline_seconds": 60, "key_size": 2048, "pack": {"bits": 12, "clip": 0.5},
                    "dp": {"noise_multiplier": 1.1, "clip_norm": 1.0, "delta": 1e-5},
                    "allow_units": ["b", "c"], "public_key": {"n": "77"}, "model": "emlw"}
    # no noise: no DP; a bare modulus is a key too
    body = project_request_body({"dp.noise_multiplier": "0", "dp.clip_norm": "1",
                                 "public_key": "123"}, None)
    assert "dp" not in body and body["public_key"] == {"n": "123"}
    for form, field in (({"rounds": "three"}, "rounds"), ({"pack.clip": "x"}, "pack.clip"),
                        ({"public_key": "{oops"}, "public_key")):
        with pytest.raises(InvalidField) as e:
            project_request_body(form, None)
        assert e.value.field == field


@pytest.mark.parametrize("noise,steps,delta", [(1.0, 1, 1e-5), (1.1, 5, 1e-5), (0.7, 3, 1e-3)])
def test_the_budget_is_opacus_rdp_accountant(noise, steps, delta):
    assert report.gaussian_epsilon(noise, steps, delta) == pytest.approx(
        dp_epsilon(noise, steps, delta), rel=1e-12)
    assert report.gaussian_epsilon(noise, 0, delta) == 0.0
    assert math.isinf(report.gaussian_epsilon(0.0, 2, delta))


def test_the_chart_draws_one_line_per_unit_inside_its_box():
    rows = [{"round": r, "unit": u, "metrics": {"auc": v, "loss": 1 - v}}
            for u, vs in (("a", (0.5, 0.6, 0.7)), ("b", (0.55, 0.65, None))) for r, v in
            enumerate(vs) if v is not None]
    chart = report.metric_chart(rows, "auc")
    assert [s["unit"] for s in chart["series"]] == ["a", "b"]
    assert len(chart["series"][0]["dots"]) == 3 and len(chart["series"][1]["dots"]) == 2
    for s in chart["series"]:
        for d in s["dots"]:
            assert chart["left"] <= d["x"] <= chart["right"]
            assert chart["top"] <= d["y"] <= chart["bottom"]
    highest = min(d["y"] for s in chart["series"] for d in s["dots"])  # SVG y grows downwards
    assert highest == next(d["y"] for d in chart["series"][0]["dots"] if d["value"] == 0.7)
    assert report.metric_names(rows) == ["auc", "loss"]
    assert report.metric_chart(rows, "f1") is None


# --- in the browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("fl-pages-model") / "bundle")


def test_a_publisher_opens_a_project_another_unit_joins_and_is_approved(
        page_as, hub_url, logins, model_dir, tmp_path):
    public_key, _private = keys.generate_paillier_keypair(2048)
    model_zip = tmp_path / "model.zip"
    model_zip.write_bytes(bundle_zip(model_dir))
    name = project_name("page")
    title = f"Theft detector {name}"

    page = page_as("publisher-a")
    page.goto(f"{hub_url}{SERVICE}fl")
    assert_accessible(page)
    screenshot(page, "fl-projects")
    page.click("text=Open a project")
    assert_accessible(page)

    def fill(project: str) -> None:
        page.fill("#f-name", project)
        page.fill("#f-title", title)
        page.fill("#f-rounds", "2")
        page.fill("#f-quorum", "2")
        page.fill("#f-deadline_seconds", "600")
        page.fill("#f-public_key", json.dumps(keys.public_key_to_json(public_key)))
        page.set_input_files("#f-model", str(model_zip))

    fill("Not A Name!")
    page.click("form.fl-new button[type=submit]")
    assert "name must be 3-64 characters" in page.locator("#error-name").inner_text()
    assert page.locator("#f-name").get_attribute("aria-invalid") == "true"
    assert page.locator("#f-title").input_value() == title
    assert_accessible(page)
    screenshot(page, "fl-new-error")
    operator = market_as(hub_url, "operator", logins["operator"])
    titles = [p["title"] for p in operator.request("GET", "fl/projects")["projects"]]
    assert title not in titles  # nothing half-created

    fill(name)
    page.click("form.fl-new button[type=submit]")
    page.wait_for_url("**/fl/*?done=created")
    project_id = int(page.url.split("/fl/")[1].split("?")[0])
    assert page.locator("#membership").inner_text() == "approved"
    assert [r.get_attribute("data-unit") for r in page.locator("#members tbody tr").all()] == ["a"]

    partner = page_as("publisher-b")
    partner.goto(f"{hub_url}{SERVICE}fl/{project_id}")
    assert partner.locator("#members").count() == 0  # details are for members only
    partner.click("text=Ask to join for unit b")
    partner.wait_for_url("**?done=join")
    assert "asked to join" in partner.locator(".notice").inner_text()
    assert partner.locator("#membership").inner_text() == "pending"
    assert_accessible(partner)

    page.goto(f"{hub_url}{SERVICE}fl/{project_id}")
    row = page.locator('#members tr[data-unit="b"]')
    assert "pending" in row.inner_text()
    row.get_by_role("button", name="Approve b").click()
    page.wait_for_url("**?done=approve")
    assert "approved" in page.locator('#members tr[data-unit="b"]').inner_text()
    # starting needs two members holding a part: it is allowed now; a second start is refused
    page.click("text=Start round 1")
    page.wait_for_url("**?done=start")
    assert page.locator("#project-state").inner_text() == "running"
    page.goto(f"{hub_url}{SERVICE}fl/{project_id}")
    assert page.locator("text=Start round 1").count() == 0
    assert "data weight" in page.locator("#contribution-measure").inner_text()  # the default
    # the initiator cancels: the round is void, the (empty) pool's refund is recorded
    page.get_by_role("button", name="Cancel the project: its pool goes back to unit a").click()
    page.wait_for_url("**?done=cancel")
    assert page.locator("#project-state").inner_text() == "cancelled"
    assert "it was empty" in page.locator("#pool-refund").inner_text()
    assert page.locator("text=Cancel the project").count() == 0
    assert_accessible(page)


def test_a_running_projects_page_shows_rounds_metrics_members_and_budget(
        page_as, hub_url, logins, platform_proc, model_dir, tmp_path):
    dp = {"noise_multiplier": 1.2, "clip_norm": 1.0, "delta": 1e-5}
    clients = {u: FederatedClient(market_as(hub_url, f"publisher-{u}", logins[f"publisher-{u}"]),
                                  home=tmp_path / u, progress=False, poll=0.3,
                                  signing_key=fl_signing_key(platform_proc.var_dir, u))
               for u in "ab"}
    first = clients["a"]
    project = first.open_project(project_name("chart"), model_dir, rounds=3, quorum=2,
                                 deadline_seconds=300, max_parties=5, max_weight=1000, clip=1.0,
                                 allow_units=["b"], dp=dp)
    pid = project["id"]
    assert clients["b"].join(pid)["status"] == "approved"
    assert first.wrap_pending(pid) == ["b"]
    first.start(pid)
    info = first.project(pid)
    for seed, (_unit, client) in enumerate(sorted(clients.items())):
        vector = np.random.default_rng(seed).normal(0, 0.1, client.spec(info).length)
        client.upload(info, 1, client.encrypt_update(info, vector, 10 + seed))
    wait_until(lambda: first.round(pid, 1)["state"] == "published", 60, "round 1 aggregated")
    for unit, client in clients.items():
        client.post_metrics(pid, 0, {"auc": 0.5, "loss": 0.7})
        client.post_metrics(pid, 1, {"auc": 0.6 if unit == "a" else 0.65, "loss": 0.6,
                                     "epsilon": dp_epsilon(1.2, 1, 1e-5)})

    page = page_as("publisher-b")
    page.goto(f"{hub_url}{SERVICE}fl/{pid}")
    timeline = page.locator("#timeline li")
    assert timeline.count() == 2  # round 1 published, round 2 open
    assert "published" in timeline.nth(0).inner_text() and "open" in timeline.nth(1).inner_text()
    assert "Aggregate of 2 units" in timeline.nth(0).inner_text()
    assert timeline.nth(0).locator("a").count() == 3  # two contributions and the aggregate
    assert page.locator("#metric-chart g.series").count() == 2
    assert page.locator("#metric-chart circle").count() == 4
    spent = page.locator("#epsilon-spent").inner_text()
    assert f"{report.gaussian_epsilon(1.2, 1, 1e-5):.3g}" in spent and "1 published" in spent
    assert sorted(r.get_attribute("data-unit") for r in
                  page.locator("#members tbody tr").all()) == ["a", "b"]
    href = page.locator("#open-in-lab").get_attribute("href")
    assert href.endswith("/user-redirect/lab/tree/Start%20here/Federated%20learning/"
                         "partner.ipynb")
    assert_accessible(page)
    screenshot(page, "fl-project")

    page.select_option("#metric", "loss")
    page.click("text=Show")
    page.wait_for_url("**metric=loss")
    assert "loss per round" in page.locator("#chart-title").text_content()

    narrow = page_as("publisher-a", narrow=True)
    narrow.goto(f"{hub_url}{SERVICE}fl/{pid}")
    assert fits_narrow_window(narrow)
