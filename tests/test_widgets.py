"""The notebook front ends in a real kernel of a user's JupyterLab server on the session's
platform: ``Shop`` buys (a double click buys once), ``RunForm`` refuses a bad value next to its
field without running anything, then runs the product with the typed parameters, follows its
progress and shows the output; the orders and runs they made are checked through the API."""

from __future__ import annotations

import json

import pytest
from helpers import market_as
from notebook_client import execute, spawn_server, stop_server
from run_products import publish_form_product

from marketplace_ext.hubsession import HubSession

USER = "subscriber-d"  # unit d


@pytest.fixture(scope="module")
def product(platform_proc, tmp_path_factory):
    url, logins = platform_proc.url, platform_proc.logins()
    publisher = market_as(url, "publisher-a", logins["publisher-a"])
    operator = market_as(url, "operator", logins["operator"])
    return publish_form_product(publisher, operator, tmp_path_factory.mktemp("widgets"))


@pytest.fixture(scope="module")
def server(platform_proc):
    url, logins = platform_proc.url, platform_proc.logins()
    session = HubSession(url)
    session.login(USER, logins[USER])
    token = session.create_token("widgets test")
    prefix = spawn_server(url, USER, token)
    yield prefix, token
    stop_server(url, USER, token)


def kernel_result(out: str) -> dict:
    return json.loads(out.split("@@RESULT")[1].split("RESULT@@")[0])


def test_shop_buys_once_and_run_form_runs_in_the_notebook(product, server, hub_url, logins):
    prefix, token = server
    sub = market_as(hub_url, USER, logins[USER])
    orders_before = sub.orders()["total"]
    runs_before = sub.runs()["total"]
    out = execute(prefix, token, f"""
import json
from marketplace_ext.widgets import Shop, RunForm
shop = Shop(q={product!r})
names = [name for _, name in shop.choice.options]
shop.select({product!r})
shop.plan.value = "per_use"
summary = shop.summary.value
first = shop.buy()
shop.buy_button.click()  # a double click: the same idempotency key, the same order
form = shop.open_run_form()
labels = {{key: w.description for key, w in form.inputs.items()}}
form.inputs["parameters.label"].value = "from a widget"
form.inputs["parameters.repeat"].value = 2
form.inputs["parameters.tags"].value = "oops"
refused = form.submit()
tags_error = form.errors["parameters.tags"].value
form.inputs["parameters.tags"].value = '["w"]'
form.run_button.click()
run = form.wait(300)
print("@@RESULT" + json.dumps({{
    "names": names, "summary": summary, "first": first, "orders": shop.orders,
    "message": shop.message.value, "labels": labels, "refused": refused,
    "tags_error": tags_error, "run": run, "progress": [form.progress.value, form.progress.max],
    "status": form.status.value, "output": form.output.value,
    "artifacts": form.artifacts.value, "repr": run._repr_html_()}}) + "RESULT@@")
""", timeout=420)
    result = kernel_result(out)
    assert result["names"] == [product]  # the search found it
    assert "price <b>10</b> points" in result["summary"] and "after buying" in result["summary"]
    first = result["first"]
    assert first["product"] == product and first["plan"] == "per_use"
    assert [o["id"] for o in result["orders"]] == [first["id"]]
    assert "1 use left" in result["message"]
    # the generated form: a typed input per parameter the caller sets
    assert result["labels"] == {"parameters.label": "label (str)",
                                "parameters.repeat": "repeat (int)",
                                "parameters.scale": "scale (float)",
                                "parameters.shout": "shout (bool)",
                                "parameters.tags": "tags (list[str])",
                                "parameters.sleep": "sleep (float)"}
    assert result["refused"] is None and "must be JSON" in result["tags_error"]
    run = result["run"]
    assert run["status"] == "succeeded", run["error"]
    assert result["progress"] == [6, 6]
    assert "succeeded" in result["status"]
    # the output in the notebook: the run's HTML in a sandboxed frame
    assert result["output"].startswith("<iframe sandbox")
    assert "from a widget #2" in result["output"]
    assert "outputs/result.json" in result["artifacts"]
    assert f"Run #{run['id']}" in result["repr"]

    # what the API recorded: one order (the double click replayed it), one run
    orders = sub.orders()
    assert orders["total"] == orders_before + 1
    assert orders["orders"][0]["id"] == first["id"]
    assert orders["orders"][0]["entitlement"]["uses_left"] == 0  # the run used it
    assert sub.runs()["total"] == runs_before + 1  # the refused submit sent nothing
    recorded = sub.get_run(run["id"])
    assert recorded["user"] == USER and recorded["product"] == product
    assert recorded["parameters"] == {"label": "from a widget", "tags": ["w"]}


def test_run_form_shows_the_apis_refusal_next_to_the_field(product, server, hub_url, logins):
    """No use left: the API's no_entitlement refusal is shown, and no run is made."""
    prefix, token = server
    sub = market_as(hub_url, USER, logins[USER])
    runs_before = sub.runs()["total"]
    out = execute(prefix, token, f"""
import json
from marketplace_ext.widgets import RunForm
form = RunForm({product!r})
run = form.submit()
print("@@RESULT" + json.dumps({{"run": run, "message": form.message.value,
                               "disabled": form.run_button.disabled}}) + "RESULT@@")
""", timeout=120)
    result = kernel_result(out)
    assert result["run"] is None and result["disabled"] is False
    assert "no active plan" in result["message"] and 'role="alert"' in result["message"]
    assert sub.runs()["total"] == runs_before
