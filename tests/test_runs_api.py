"""Remote runs through the real hub, service, runner and Spark Connect: a subscriber buys a
per-use plan, runs the product on its own unit's data and gets HTML and artifacts; no second
run without a new order; a failing run and a timed-out run refund the use, and no kernel is
left behind."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import nbformat
import pytest
import yaml
from helpers import market_as

from marketplace_ext.bundle import BundleInvalid, canonical_archive, new_product
from marketplace_ext.client import Market, MarketAPIError
from marketplace_ext.runner import processes_of

CODE = """\
import json, os, time
from pyspark.sql import SparkSession
if fail:
    raise ValueError("asked to fail")
time.sleep(sleep)
if input_path:
    import pandas as pd
    rows = len(pd.read_csv(input_path))
else:
    spark = SparkSession.builder.getOrCreate()
    rows = spark.table(f"unit_{unit}.{table}").count()
os.makedirs(output_dir, exist_ok=True)
with open(f"{output_dir}/summary.json", "w") as f:
    json.dump({"unit": unit, "rows": rows, "token": os.environ.get("JUPYTERHUB_API_TOKEN")}, f)
print(f"rows in unit_{unit}.{table}: {rows}")
"""


def counter_bundle(name: str, tmp_path: Path, version: str = "0.1.0") -> Path:
    bundle = new_product("application", name, tmp_path / version)
    manifest = yaml.safe_load((bundle / "product.yaml").read_text())
    manifest.update(plans=[{"type": "per_use", "price": 10}], version=version,
                    outputs=[{"path": "outputs/summary.json", "description": "row count"}])
    (bundle / "product.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "grid-python", "display_name": "Python 3 (grid)",
                                 "language": "python"}
    params = nbformat.v4.new_code_cell(
        'table: str = "consumption_daily"\nfail: bool = False\nsleep: int = 0\n'
        'unit: str = ""\noutput_dir: str = "outputs"\ninput_path: str = ""')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(CODE)]
    nbformat.write(nb, bundle / "main.ipynb")
    for stale in (bundle / "files").glob("*"):
        stale.unlink()
    return bundle


def publish_counter(pub: Market, op: Market, tmp_path) -> str:
    name = f"row-counter-{secrets.token_hex(3)}"
    version = pub.publish(counter_bundle(name, tmp_path))["version"]
    op.review(name, version, "approve")
    return name


@pytest.fixture(scope="module")
def shop(platform_proc, tmp_path_factory):
    url, logins = platform_proc.url, platform_proc.logins()
    op = market_as(url, "operator", logins["operator"])
    pub = market_as(url, "publisher-a", logins["publisher-a"])
    sub = market_as(url, "subscriber-c", logins["subscriber-c"])
    name = publish_counter(pub, op, tmp_path_factory.mktemp("runs"))
    return {"name": name, "sub": sub, "op": op, "pub": pub, "logins": logins, "url": url,
            "other": market_as(url, "subscriber-d", logins["subscriber-d"]),
            "var": platform_proc.var_dir}


def balance(m: Market) -> str:
    return m.request("GET", f"units/{m.me()['unit']['slug']}/account")["balance"]


def test_run_on_own_data_then_no_second_run(shop, tmp_path):
    sub, name = shop["sub"], shop["name"]
    with pytest.raises(MarketAPIError) as e:
        sub.run(name)
    assert e.value.status == 403 and e.value.error == "no_entitlement"
    sub.order(name, "per_use")
    run = sub.run(name, progress=False, download_to=tmp_path, poll=0.5)
    assert run["status"] == "succeeded", run["error"]
    # the parameters cell, papermill's injected one and the code
    assert run["progress"]["cells_done"] == run["progress"]["cells_total"] == 3
    summary = json.loads((tmp_path / "outputs" / "summary.json").read_text())
    loaded = json.loads((shop["var"] / "demo_data.json").read_text())
    assert summary["unit"] == "c"
    assert summary["rows"] == loaded["tables"]["c"]["consumption_daily"]  # its own unit's data
    assert summary["token"] is None  # the hub's secrets do not reach product code
    html = sub.http.get(sub.url + f"api/runs/{run['id']}/output.html")
    assert html.status_code == 200 and "rows in unit_c.consumption_daily" in html.text
    assert html.headers["Content-Security-Policy"] == "sandbox"

    # the per-use order is used up
    with pytest.raises(MarketAPIError) as e:
        sub.run(name, wait=False)
    assert e.value.status == 403
    # another unit's subscriber does not see this run
    with pytest.raises(MarketAPIError) as e:
        shop["other"].request("GET", f"runs/{run['id']}")
    assert e.value.status == 404
    # the run is certified with its output digest
    deadline = time.monotonic() + 20
    while sub.request("GET", f"runs/{run['id']}")["log_index"] is None:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    index = sub.request("GET", f"runs/{run['id']}")["log_index"]
    while sub.request("GET", "log/checkpoint")["size"] <= index:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    entry = sub.request("GET", f"log/entries/{index}")["statement"]
    assert entry["type"] == "run" and entry["status"] == "succeeded"
    assert entry["artifacts"]["outputs/summary.json"] == run["artifacts"][
        "outputs/summary.json"]["sha256"]


def test_failed_and_timed_out_runs_refund_and_leave_no_kernel(shop):
    sub, name = shop["sub"], shop["name"]
    before = balance(sub)
    sub.order(name, "per_use")
    failed = sub.run(name, {"fail": True}, progress=False, poll=0.5)
    assert failed["status"] == "failed" and "ValueError: asked to fail" in failed["error"]
    assert balance(sub) == before
    # a refund buys nothing: the partial output is withheld from the caller's unit ...
    html = sub.http.get(sub.url + f"api/runs/{failed['id']}/output.html")
    assert html.status_code == 410 and html.json()["error"] == "withheld", html.text
    shown = sub.request("GET", f"runs/{failed['id']}")
    assert shown["outputs_withheld"] is True and shown["output_html"] is None
    # ... and kept for the product's publishers to debug (the error cell is kept)
    pub = shop["pub"]
    assert pub.request("GET", f"runs/{failed['id']}")["output_html"] is not None
    html = pub.http.get(pub.url + f"api/runs/{failed['id']}/output.html")
    assert html.status_code == 200 and "asked to fail" in html.text
    # nobody else: a subscriber of the product's unit gets nothing either
    same_unit = market_as(shop["url"], "subscriber-a", shop["logins"]["subscriber-a"])
    assert same_unit.http.get(same_unit.url + f"api/runs/{failed['id']}").status_code == 404

    sub.order(name, "per_use")
    slow = sub.run(name, {"sleep": 120}, timeout_seconds=8, progress=False, poll=0.5)
    assert slow["status"] == "failed" and "timed out" in slow["error"]
    assert balance(sub) == before
    assert processes_of(shop["var"] / "runs" / f"run-{slow['id']}") == set()
    orders = [o for o in sub.request("GET", "orders")["orders"] if o["product"] == name]
    assert [o["status"] for o in orders[:2]] == ["refunded", "refunded"]


def test_bad_run_requests_take_no_points(shop):
    sub, name = shop["sub"], shop["name"]
    sub.order(name, "per_use")
    before = balance(sub)
    for body, field in [
        ({"product": name, "parameters": {"nope": 1}}, "parameters.nope"),
        ({"product": name, "parameters": {"sleep": "long"}}, "parameters.sleep"),
        ({"product": name, "parameters": {"unit": "a"}}, "parameters.unit"),
        ({"product": name, "timeout_seconds": 10**9}, "timeout_seconds"),
        ({"product": name, "data": "somewhere"}, "data"),
        ({"parameters": {}}, "product"),
    ]:
        r = sub.http.post(sub.url + "api/runs", json=body)
        assert r.status_code == 400 and r.json()["field"] == field, (body, r.text)
    assert balance(sub) == before
    # the order is still unused: a good run goes through
    assert sub.run(name, progress=False, poll=0.5)["status"] == "succeeded"


def test_run_on_an_uploaded_file(shop, tmp_path):
    sub, name = shop["sub"], shop["name"]
    good = tmp_path / "readings.csv"
    good.write_text("customer_id,day,kwh\n" + "".join(f"c{i},2013-01-0{i},{i}.5\n"
                                                       for i in range(1, 8)))
    broken = tmp_path / "broken.csv"
    broken.write_text("customer_id,day,kwh\nc1,2013-01-01\nc2,2013-01-02,1,9\nc3,x,1\n")
    sub.order(name, "per_use")
    before = balance(sub)
    for path, message in [(broken, "malformed"), (tmp_path / "notes.txt", ".csv or .parquet")]:
        if not path.exists():
            path.write_text("hello")
        with pytest.raises(MarketAPIError) as e:
            sub.run(name, data=path, wait=False)
        assert e.value.status == 400 and e.value.field == "data" and message in e.value.message
    assert balance(sub) == before  # nothing taken for refused uploads
    run = sub.run(name, data=good, progress=False, poll=0.5, download_to=tmp_path / "out")
    assert run["status"] == "succeeded", run["error"]
    summary = json.loads((tmp_path / "out" / "outputs" / "summary.json").read_text())
    assert summary["rows"] == 7


def requirements_bundle(tmp_path, requirements: str) -> tuple[str, Path]:
    """An application whose notebook imports a package the product kernel does not have."""
    name = f"needs-inflection-{secrets.token_hex(3)}"
    bundle = new_product("application", name, tmp_path)
    manifest = yaml.safe_load((bundle / "product.yaml").read_text())
    manifest.update(plans=[{"type": "per_use", "price": 10}], requirements="requirements.txt",
                    outputs=[{"path": "outputs/where.json", "description": "the environment"}])
    (bundle / "product.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    (bundle / "requirements.txt").write_text(requirements)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "grid-python", "display_name": "Python 3 (grid)",
                                 "language": "python"}
    params = nbformat.v4.new_code_cell('word: str = "data product"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(
        "import json, os, sys\nimport inflection\nimport pandas\n"
        "os.makedirs('outputs', exist_ok=True)\n"
        "json.dump({'prefix': sys.prefix, 'plural': inflection.pluralize(word)}, "
        "open('outputs/where.json', 'w'))")]
    nbformat.write(nb, bundle / "main.ipynb")
    for stale in (bundle / "files").glob("*"):
        stale.unlink()
    return name, bundle


def publish_with_requirements(pub: Market, op: Market, tmp_path, requirements: str) -> str:
    name, bundle = requirements_bundle(tmp_path, requirements)
    op.review(name, pub.publish(bundle)["version"], "approve")
    return name


def wait_environment(m: Market, name: str) -> dict:
    deadline = time.monotonic() + 300
    while True:
        envs = m.product(name)["environments"]
        (env,) = envs.values()
        if env["state"] in ("ready", "failed"):
            return env
        assert time.monotonic() < deadline, env
        time.sleep(1)


def test_product_requirements_get_their_own_environment(shop, tmp_path):
    sub, pub, op = shop["sub"], shop["pub"], shop["op"]
    # an option line is refused at publication, naming the file and the line
    _, bad = requirements_bundle(tmp_path / "bad",
                                 "inflection==0.5.1\n--index-url http://evil/\n")
    with pytest.raises(BundleInvalid) as e:  # the client checks before uploading
        pub.publish(bad)
    assert e.value.problems[0].file == "requirements.txt" and "line 2" in str(e.value)
    with pytest.raises(MarketAPIError) as e:  # and so does the service
        pub.request("POST", "products", data={"accept_terms": "true"}, files={
            "bundle": ("bundle.zip", canonical_archive(bad), "application/zip")})
    assert e.value.status == 400 and "line 2" in e.value.message

    name = publish_with_requirements(pub, op, tmp_path / "good", "inflection==0.5.1\n")
    env = wait_environment(sub, name)
    assert env["state"] == "ready" and env["kernel_name"].startswith("grid-env-")
    assert env["log_tail"] is None  # pip's log is the publisher's and the operators' business
    sub.order(name, "per_use")
    run = sub.run(name, {"word": "meter"}, progress=False, poll=0.5, download_to=tmp_path / "o")
    assert run["status"] == "succeeded", run["error"]
    where = json.loads((tmp_path / "o" / "outputs" / "where.json").read_text())
    assert where["plural"] == "meters" and "envs" in where["prefix"]

    # a build that fails shows pip's reason to the publisher, and its runs refund
    broken = publish_with_requirements(pub, op, tmp_path / "broken",
                                       "grid-market-no-such-pkg-xyz==1.0\n")
    env = wait_environment(pub, broken)
    assert env["state"] == "failed" and "grid-market-no-such-pkg-xyz" in env["log_tail"]
    page = pub.http.get(pub.url + f"products/{broken}")
    assert "failed" in page.text and "grid-market-no-such-pkg-xyz" in page.text
    before = balance(sub)
    sub.order(broken, "per_use")
    failed = sub.run(broken, progress=False, poll=0.5)
    assert failed["status"] == "failed" and "environment failed" in failed["error"]
    assert balance(sub) == before



def test_unreviewed_version_runs_only_as_the_owning_units_preview(shop, platform_proc, tmp_path):
    """Only reviewed code runs on other people's data: version 1.0.1, submitted but not yet
    reviewed, is refused (403, field version) to a subscriber of another unit and to one of the
    owning unit; the owning unit's publisher previews it."""
    url, logins = platform_proc.url, platform_proc.logins()
    pub, name = shop["pub"], shop["name"]
    assert pub.publish(counter_bundle(name, tmp_path, "1.0.1"))["state"] == "submitted"
    same_unit_subscriber = market_as(url, "subscriber-a", logins["subscriber-a"])
    # another unit does not learn that an unreviewed version exists (404); a subscriber of
    # the owning unit sees it on the product page but may not run it (403)
    for who, status in ((shop["sub"], 404), (same_unit_subscriber, 403)):
        with pytest.raises(MarketAPIError) as e:
            who.run(name, version="1.0.1", wait=False)
        assert e.value.status == status and e.value.field == "version", e.value
    run = pub.run(name, version="1.0.1", progress=False, poll=0.5)
    assert run["status"] == "succeeded", run["error"]
    assert run["version"] == "1.0.1"


def test_run_history_lists_the_callers_and_the_units_runs(shop):
    """GET api/runs: the caller's own runs by default, its unit's with scope=unit, paged and
    newest first; never another unit's; bad arguments name their field."""
    sub, other = shop["sub"], shop["other"]
    mine = sub.runs(limit=2)
    assert mine["total"] >= 3 and len(mine["runs"]) == 2  # the earlier tests' runs
    assert [r["id"] for r in mine["runs"]] == sorted((r["id"] for r in mine["runs"]),
                                                     reverse=True)
    assert {r["user"] for r in mine["runs"]} == {"subscriber-c"}
    page2 = sub.runs(limit=2, offset=2)
    assert not {r["id"] for r in page2["runs"]} & {r["id"] for r in mine["runs"]}
    failed = sub.runs(status="failed")["runs"]
    assert failed and all(r["status"] == "failed" and r["outputs_withheld"] for r in failed)
    unit_runs = sub.runs(scope="unit", limit=100)
    assert {r["id"] for r in sub.runs(limit=100)["runs"]} <= {r["id"] for r in unit_runs["runs"]}
    # subscriber-d (unit d) sees none of unit c's runs
    theirs = {r["id"] for r in other.runs(scope="unit", limit=100)["runs"]}
    assert not theirs & {r["id"] for r in unit_runs["runs"]}
    for params, field in (({"scope": "everyone"}, "scope"), ({"status": "lost"}, "status"),
                          ({"limit": 0}, "limit")):
        r = sub.http.get(sub.url + "api/runs", params=params)
        assert r.status_code == 400 and r.json()["field"] == field, r.text
