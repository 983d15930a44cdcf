"""Model-to-data and view export through the real hub, service, runner and Spark Connect.

A subscriber of unit e sends a training notebook to unit a's data product; a's publisher reads
the code and approves; the notebook trains on a's private tables (canaries included); only the
declared model comes back, with none of a's canary values in it, while the executed notebook
stays with a. Table-shaped outputs are refused at submission, a rejection refunds the use, and
only the owner's publishers decide.
"""

from __future__ import annotations

import io
import json
import secrets
from urllib.parse import urljoin

import pandas as pd
import pytest
import yaml
from canaries import find_canaries
from helpers import SANDBOX_PROBE, market_as, training_notebook

from marketplace_ext.bundle import new_product
from marketplace_ext.client import Market, MarketAPIError


@pytest.fixture(scope="module")
def data_product(platform_proc, tmp_path_factory):
    url, logins = platform_proc.url, platform_proc.logins()
    pub = market_as(url, "publisher-a", logins["publisher-a"])
    op = market_as(url, "operator", logins["operator"])
    name = f"meter-data-{secrets.token_hex(3)}"
    bundle = new_product("data", name, tmp_path_factory.mktemp("m2d"))
    manifest = yaml.safe_load((bundle / "product.yaml").read_text())
    manifest["plans"] = [{"type": "per_use", "price": 10}]
    manifest["sharing"] = ["download", "interface", "model_to_data"]
    (bundle / "product.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    op.review(name, pub.publish(bundle)["version"], "approve")
    return {"name": name, "pub": pub, "op": op,
            "sub": market_as(url, "subscriber-e", logins["subscriber-e"]),
            "other_pub": market_as(url, "publisher-b", logins["publisher-b"])}


METRICS_SCHEMA = {"type": "object", "properties": {"loss": {"type": "number"},
                                                   "rows": {"type": "integer"}}}

LEAKS = """\
import json, os
import torch
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
spark.catalog.setCurrentDatabase(os.environ["UNIT_DATABASE"])
customers = spark.table("customers").toPandas()
os.makedirs("outputs", exist_ok=True)
torch.save(customers, "outputs/model.pt")  # a pickled DataFrame, not tensors
with open("outputs/metrics.json", "w") as f:  # the table as JSON, schema or not
    json.dump({"loss": 0.5, "rows": len(customers), "table": customers.to_json()}, f)
"""

RAISES = """\
import os
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
spark.catalog.setCurrentDatabase(os.environ["UNIT_DATABASE"])
raise ValueError(spark.table("customers").toPandas().to_csv())
"""


def test_model_to_data_egress_carries_no_rows(data_product, platform_proc):
    """Ways to smuggle the owner's rows out: a pickled DataFrame as model.pt, the table inside
    a declared JSON file, the table in an error message. Each stays with the owner. The
    notebook also runs in the sandbox: no platform secret, no platform port."""
    name, sub, pub = data_product["name"], data_product["sub"], data_product["pub"]
    var, env = platform_proc.var_dir, platform_proc.env
    secrets_ = [str(var / f) for f in ("marketplace_kek", "jupyterhub_cookie_secret",
                                       "marketplace.sqlite", "platform/unit_servers.json")]
    ports = [int(env[k]) for k in ("MARKET_HUB_API_PORT", "MARKET_PROXY_API_PORT",
                                   "MARKET_SERVICE_PORT")]
    # the marker is spelt apart so that the line found below is the output, not the source
    probe = SANDBOX_PROBE + (
        f"\nprint('PRO' + 'BE', ' '.join([f'{{p}}={{read(p)}}' for p in {secrets_!r}]"
        f" + [f'port{{p}}={{connect(\"127.0.0.1\", p)}}' for p in {ports!r}]))\n")
    sub.order(name, "per_use")
    request = sub.send_model(name, training_notebook(LEAKS + probe),
                             ["outputs/model.pt", "outputs/metrics.json"],
                             output_schemas={"outputs/metrics.json": METRICS_SCHEMA})
    pub.decide_model(request["id"], "approve")
    done = sub.wait_model(request["id"], timeout=300, poll=0.5)
    assert done["run"]["status"] == "succeeded", done["run"]["error"]
    assert done["released"] == {}
    assert set(done["withheld"]) == {"outputs/model.pt", "outputs/metrics.json"}
    assert "not only tensors" in done["withheld"]["outputs/model.pt"]
    assert "schema" in done["withheld"]["outputs/metrics.json"]
    assert find_canaries(json.dumps(done)) == []
    # the owner reads the executed notebook: the sandbox saw no secret and reached no port
    run_id = pub.request("GET", f"m2d/{request['id']}")["run"]["id"]
    html = pub.http.get(pub.url + f"api/runs/{run_id}/output.html").text
    line = next(ln for ln in html.splitlines() if "PROBE" in ln and "port" in ln)
    assert "=read" not in line and "=connected" not in line, line
    for secret in secrets_:
        assert f"{secret}=FileNotFoundError" in line or f"{secret}=PermissionError" in line, line
    for port in ports:
        assert f"port{port}=ConnectionRefusedError" in line, line

    sub.order(name, "per_use")
    request = sub.send_model(name, training_notebook(RAISES), ["outputs/model.pt"])
    pub.decide_model(request["id"], "approve")
    done = sub.wait_model(request["id"], timeout=300, poll=0.5)
    assert done["run"]["status"] == "failed"
    assert "data owner can read the error" in done["run"]["error"]
    assert find_canaries(json.dumps(done)) == []
    owner_view = pub.request("GET", f"m2d/{request['id']}")
    assert find_canaries(owner_view["run"]["error"])  # the owner reads the real text


def balance(m: Market) -> str:
    return m.request("GET", f"units/{m.me()['unit']['slug']}/account")["balance"]


def test_model_to_data_returns_only_the_declared_model(data_product, tmp_path):
    name, sub, pub = data_product["name"], data_product["sub"], data_product["pub"]
    with pytest.raises(MarketAPIError) as e:  # no entitlement yet
        sub.send_model(name, training_notebook(), ["outputs/model.pt"])
    assert e.value.status == 403 and e.value.error == "no_entitlement"

    sub.order(name, "per_use")
    request = sub.send_model(name, training_notebook(), ["outputs/model.pt",
                                                         "outputs/metrics.json"],
                             parameters={"epochs": 30}, purpose="theft model on avg kWh",
                             output_schemas={"outputs/metrics.json": METRICS_SCHEMA})
    assert request["status"] == "pending" and request["owner_unit"] == "a"
    # the owner reads the code before deciding
    code = pub.http.get(pub.url + f"api/m2d/{request['id']}/notebook")
    assert code.status_code == 200 and "torch.save" in code.text
    page = pub.http.get(pub.url + "m2d")  # the owner's page shows the code, escaped
    assert page.status_code == 200 and "torch.save" in page.text
    assert "&lt;b&gt;trains&lt;/b&gt;" in page.text and "<b>trains" not in page.text
    assert [r["id"] for r in pub.request("GET", "m2d", params={"status": "pending"})["requests"]
            ].count(request["id"]) == 1
    # only the owner's publishers decide
    for outsider in (sub, data_product["other_pub"]):
        with pytest.raises(MarketAPIError) as e:
            outsider.decide_model(request["id"], "approve")
        assert e.value.status in (403, 404)
    pub.decide_model(request["id"], "approve")
    with pytest.raises(MarketAPIError) as e:
        pub.decide_model(request["id"], "approve")
    assert e.value.status == 409

    done = sub.wait_model(request["id"], download_to=tmp_path, timeout=300, poll=0.5)
    assert done["run"]["status"] == "succeeded", done["run"]["error"]
    assert sorted(done["released"]) == ["outputs/metrics.json", "outputs/model.pt"]
    assert done["withheld"] == {} and done["run"]["id"] is None  # the run is the owner's
    returned = b"".join(open(p, "rb").read() for p in done["files"].values())
    assert find_canaries(returned) == []
    import torch

    state = torch.load(tmp_path / "outputs" / "model.pt", weights_only=True)
    assert set(state) == {"weight", "bias"}

    # what the notebook wrote but did not declare, and the executed notebook, stay with a
    r = sub.http.get(sub.url + f"api/m2d/{request['id']}/files/outputs/extra.json")
    assert r.status_code == 404
    run_id = pub.request("GET", f"m2d/{request['id']}")["run"]["id"]
    assert sub.http.get(sub.url + f"api/runs/{run_id}/output.html").status_code == 404
    assert sub.http.get(sub.url + f"api/runs/{run_id}/artifacts/outputs/extra.json"
                        ).status_code == 404
    html = pub.http.get(pub.url + f"api/runs/{run_id}/output.html")
    assert html.status_code == 200 and find_canaries(html.text)  # the owner sees its own rows


def test_model_to_data_refusals_take_no_points(data_product):
    name, sub, pub = data_product["name"], data_product["sub"], data_product["pub"]
    unpaid = balance(sub)
    sub.order(name, "per_use")
    before = balance(sub)
    cases = [
        ({"outputs": ["outputs/customers.csv"]}, "outputs[0]"),   # rows of the raw table
        ({"outputs": ["outputs/data.parquet"]}, "outputs[0]"),
        ({"outputs": ["../model.pt"]}, "outputs[0]"),
        ({"outputs": ["outputs/model.exe"]}, "outputs[0]"),
        ({"outputs": []}, "outputs"),
        ({"parameters": {"epochs": "many"}}, "parameters.epochs"),
        ({"parameters": {"learning_rate": 1}}, "parameters.learning_rate"),
        ({"notebook": {"cells": "nope"}}, "notebook"),
        ({"product": "no-such-product"}, "product"),
        # a .json output needs a schema of numbers: a string could carry the table
        ({"outputs": ["outputs/metrics.json"]}, "output_schemas"),
        ({"outputs": ["outputs/metrics.json"],
          "output_schemas": {"outputs/metrics.json": {"type": "string"}}},
         "output_schemas[outputs/metrics.json].type"),
        ({"outputs": ["outputs/metrics.json"],
          "output_schemas": {"outputs/metrics.json": {"type": "array",
                                                      "items": {"type": "number"}}}},
         "output_schemas[outputs/metrics.json].maxItems"),
        ({"output_schemas": {"outputs/other.json": {"type": "number"}}}, "output_schemas"),
    ]
    for change, field in cases:
        body = {"product": name, "notebook": training_notebook(), "outputs": ["outputs/model.pt"],
                **change}
        r = sub.http.post(sub.url + "api/m2d", json=body)
        assert 400 <= r.status_code < 500 and r.json()["field"] == field, (change, r.text)
        assert r.json()["message"]
    assert balance(sub) == before
    # the owner's own unit does not send notebooks to itself
    r = pub.http.post(pub.url + "api/m2d", json={"product": name, "notebook": training_notebook(),
                                                "outputs": ["outputs/model.pt"]})
    assert r.status_code == 400 and r.json()["field"] == "product"

    request = sub.send_model(name, training_notebook(), ["outputs/model.pt"])  # the order's use
    with pytest.raises(MarketAPIError) as e:
        pub.decide_model(request["id"], "reject")
    assert e.value.field == "reason"
    rejected = pub.decide_model(request["id"], "reject", "reads the customer register")
    assert rejected["status"] == "rejected" and rejected["run"] is None
    # the inbox: the owner's people were told it waits, the demander how it was decided
    link = f"m2d/{request['id']}"
    assert [n["kind"] for n in pub.inbox(per_page=100)["notifications"]
            if n["link"] == link] == ["m2d_waiting"]
    assert [(n["kind"], n["body"]) for n in sub.inbox(per_page=100)["notifications"]
            if n["link"] == link] == [("m2d_decided", "reads the customer register")]
    assert balance(sub) == unpaid  # refunded
    with pytest.raises(MarketAPIError) as e:  # and used: a new request needs a new order
        sub.send_model(name, training_notebook(), ["outputs/model.pt"])
    assert e.value.status == 403


def test_view_export_is_desensitized_and_certified(data_product):
    name, sub = data_product["name"], data_product["sub"]
    path = f"api/products/{name}/views/customers_public/export"
    r = sub.http.post(sub.url + path)
    assert r.status_code == 403 and r.json()["error"] == "no_entitlement"
    sub.order(name, "per_use")
    before = balance(sub)
    for fmt, field in (("xlsx", "format"),):
        r = sub.http.post(sub.url + path, json={"format": fmt})
        assert r.status_code == 400 and r.json()["field"] == field
    r = sub.http.post(sub.url + f"api/products/{name}/views/customers/export")
    assert r.status_code == 404 and r.json()["field"] == "view"  # a source table, not a view
    # a GET never spends: it is refused, and the use is still there
    r = sub.http.get(sub.url + path, params={"format": "parquet"})
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    assert balance(sub) == before

    link = sub.request("POST", path[len("api/"):], json={"format": "parquet"})
    r = sub.http.get(urljoin(sub.url, link["url"]))
    assert r.status_code == 200, r.text
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Content-Disposition"].startswith("attachment;")
    import hashlib

    assert hashlib.sha256(r.content).hexdigest() == r.headers["X-Content-SHA256"] \
        == link["sha256"]
    # the link is the buyer's alone, and fetching it again spends nothing
    other = data_product["other_pub"]
    assert other.http.get(urljoin(other.url, link["url"])).status_code == 404
    assert sub.http.get(urljoin(sub.url, link["url"])).content == r.content
    frame = pd.read_parquet(io.BytesIO(r.content))
    assert list(frame.columns) == ["customer_id", "district", "tariff_class"]
    assert len(frame) == link["rows"] > 0
    assert find_canaries(frame.to_csv()) == []
    index = int(r.headers["X-Log-Index"])
    assert sub.http.post(sub.url + path).status_code == 403  # the per-use order is spent
    import time

    deadline = time.monotonic() + 20
    while sub.request("GET", "log/checkpoint")["size"] <= index:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    entry = sub.request("GET", f"log/entries/{index}")["statement"]
    assert entry["type"] == "download" and entry["subject"] == r.headers["X-Content-SHA256"]
    assert entry["view"] == "customers_public" and entry["rows"] == len(frame)
