"""Fuzzing the HTTP API (issue 14, items 1 and 10): schemathesis runs against the real running
service - hub, configurable-http-proxy and the marketplace service, started by `market run` -
with a hub API token of each role, stateful testing along the document's OpenAPI links on.

It needs zero server errors (5xx) and answers that match the OpenAPI document: documented
status codes, content types, headers and bodies. Fuzzing as an operator changes state (units,
memberships, reviews, refunds), so it runs on a platform of its own that shares the session's
one Spark Connect server (``spark_server``) and loads no demo tables; ``platform_proc`` and
its demo state are left alone.

Below the fuzzing, regression tests of the server errors it found, as plain requests.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
from conftest import RunningPlatform
from helpers import market_as
from spark_fixtures import passable_tmpdir

from marketplace_ext.demo import DEMO_PRODUCTS, DEMO_UNITS
from marketplace_ext.errors import InvalidField
from marketplace_ext.m2d_outputs import check_output_schemas
from marketplace_ext.openapi import openapi_document

ROOT = Path(__file__).resolve().parent.parent
SCHEMATHESIS = ROOT / ".venv" / "bin" / "schemathesis"

#: who fuzzes, in this order: the operator last, as it moves users and takes products off
ROLES = {"subscriber": "subscriber-b", "publisher": "publisher-a", "operator": "operator"}
MIN_CASES = 1000
#: examples per operation and phase; with the coverage phase's boundary cases and the
#: stateful phase's link-following sequences this gives well over MIN_CASES per role
MAX_EXAMPLES = int(os.environ.get("MARKET_FUZZ_EXAMPLES", "4"))

#: operations whose answer to schema-valid data may still be a 400: what they check depends
#: on state or content a schema cannot describe (the tree's size, a note's signature, the plans
#: a product offers, the sharing modes of its kind, the parameters its notebook declares, a
#: bundle zip's contents, a rejection's reason) - each reached its handler, which named the
#: field
STATEFUL_400 = [
    ("GET", "/api/log/proof/inclusion"),
    ("GET", "/api/log/proof/consistency"),
    ("POST", "/api/log/cosignatures"),
    ("POST", "/api/orders"),
    ("POST", "/api/products"),
    ("POST", "/api/bundles/validate"),
    ("POST", "/api/m2d/{request}/decision"),
    ("POST", "/api/runs"),
    ("POST", "/api/products/{product}/retrain"),  # only a tool that offers further training
    ("POST", "/api/m2d"),
    ("POST", "/api/products/{product}/query"),
    ("POST", "/api/products/{product}/predict"),
    ("POST", "/api/products/{product}/views/{view}/export"),
    ("POST", "/api/products/{product}/versions/{version}/review"),
    ("POST", "/api/products/{product}/shelf"),
    ("PUT", "/api/units/{unit}/members/{user}"),
    ("POST", "/api/topics"),  # a deadline must lie ahead: a date-time the schema cannot bound
    ("POST", "/api/features"),  # a start plus its days must be a time Python holds (not 9999)
    # workshops: dates ahead, base64 materials, notebooks and label CSVs checked by content,
    # an award's winner must have a scored submission
    ("POST", "/api/workshops"),
    ("POST", "/api/workshops/{workshop}/exercises"),
    ("POST", "/api/workshops/{workshop}/exercises/{exercise}/submissions"),
    # forum and inbox: texts must hold something besides spaces (a title 3 characters, a query
    # 2, a hiding reason 3, once trimmed), an e-mail address must look like one
    ("GET", "/api/forum/threads"),
    ("POST", "/api/forum/threads"),
    ("POST", "/api/forum/threads/{thread}/posts"),
    ("POST", "/api/forum/threads/{thread}/moderation"),
    ("POST", "/api/forum/posts/{post}/moderation"),
    ("PUT", "/api/inbox/settings"),
    ("POST", "/api/workshops/{workshop}/competitions"),
    ("POST", "/api/workshops/{workshop}/competitions/{competition}/submissions"),
    ("POST", "/api/workshops/{workshop}/competitions/{competition}/awards"),
]
#: the federated-learning part (openapi_fl.yaml, kept by its own concern) describes keys,
#: ciphertexts and round numbers more loosely than its handlers check them
FL_PATHS = r"^/api/fl/.*"


def _toml_list(values) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def fuzz_config() -> str:
    """schemathesis.toml for one role; the token comes from the environment, never argv."""
    accepted = ["2xx", "3xx", "401", "403", "404", "409", "410", "429"]
    lines = [
        'headers = { Authorization = "token ${MARKET_FUZZ_TOKEN}" }',
        "request-timeout = 600",
        "[generation]",
        # the database would replay earlier sessions' cases: each run starts fresh
        'database = "none"',
        "[phases.stateful]",
        "max-steps = 8",
        # demo names, so that generated requests also reach existing products and units
        "[dictionaries.products]",
        f"values = {_toml_list(DEMO_PRODUCTS)}",
        "[dictionaries.versions]",
        'values = ["1.0.0"]',
        "[dictionaries.units]",
        f"values = {_toml_list(DEMO_UNITS)}",
        "[dictionaries.files]",
        'values = ["main.ipynb", "README.md", "product.yaml"]',
        # a run that is queued anyway ends in a second, instead of holding a core
        "[dictionaries.timeouts]",
        "values = [1, 2]",
        "[parameters]",
        '"path.product" = { dictionary = "products", probability = 0.5 }',
        '"body.product" = { dictionary = "products", probability = 0.5 }',
        '"path.version" = { dictionary = "versions", probability = 0.5 }',
        '"path.unit" = { dictionary = "units", probability = 0.5 }',
        '"path.path" = { dictionary = "files", probability = 0.3 }',
        '"body.timeout_seconds" = { dictionary = "timeouts", probability = 1.0 }',
        "[checks.positive_data_acceptance]",
        f"expected-statuses = {_toml_list(accepted)}",
        # schemathesis' list, plus a body over the route's limit (413 too_large)
        "[checks.negative_data_rejection]",
        "expected-statuses = " + _toml_list(["400", "401", "403", "404", "405", "406", "409",
                                             "413", "415", "422", "428", "429"]),
    ]
    for method, path in STATEFUL_400:
        # a tool's own notebook may refuse rows it cannot use (422 predict_failed, on rows)
        also = ["400", "422"] if path.endswith("/predict") else ["400"]
        lines += ["[[operations]]", f"include-name = {json.dumps(f'{method} {path}')}",
                  "checks.positive_data_acceptance.expected-statuses = "
                  f"{_toml_list([*accepted, *also])}"]
    lines += ["[[operations]]", f"include-path-regex = {json.dumps(FL_PATHS)}",
              "checks.positive_data_acceptance.expected-statuses = "
              f"{_toml_list([*accepted, '400'])}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def fuzz_platform(spark_server):
    """A second, lighter platform: every unit on the session's one Spark server, no tables."""
    base = passable_tmpdir("market-fuzz-")
    running = RunningPlatform(base / "var", spark_remote=spark_server.remote)
    running.env["MARKET_DEMO_DATA"] = "0"  # the shared server's databases are other tests'
    try:
        running.start()
        yield running
    finally:
        if running.proc is not None and running.proc.poll() is None:
            running.stop()
        shutil.rmtree(base, ignore_errors=True)


def _operation_of(method: str, url: str, templates: list[tuple[str, str, re.Pattern]]) -> str:
    path = "/" + url.split("/services/marketplace/", 1)[-1].split("?", 1)[0]
    for m, template, rx in templates:
        if m == method and rx.fullmatch(path):
            return f"{m} {template}"
    return f"{method} (undocumented)"


def _templates() -> list[tuple[str, str, re.Pattern]]:
    out = []
    for template, item in openapi_document()["paths"].items():
        rx = re.compile(re.sub(r"\\\{(\w+)\\\}", lambda m: ".+" if m.group(1) in ("path", "name")
                               else "[^/]+", re.escape(template)))
        out += [(m.upper(), template, rx) for m in item if m in ("get", "put", "post", "delete")]
    return out


def reach(har: dict) -> dict[str, collections.Counter]:
    """Per documented operation: requests sent, and how many got a 2xx, 4xx and 5xx."""
    templates = _templates()
    stats: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for entry in har["log"]["entries"]:
        op = _operation_of(entry["request"]["method"], entry["request"]["url"], templates)
        status = entry["response"]["status"]
        stats[op]["sent"] += 1
        stats[op][f"{status // 100}xx"] += 1
    return stats


@pytest.mark.parametrize("role", list(ROLES))
def test_fuzzing_finds_no_server_error_and_no_schema_violation(fuzz_platform, role, tmp_path):
    user = ROLES[role]
    market = market_as(fuzz_platform.url, user, fuzz_platform.logins()[user])
    token = market.http.headers["Authorization"].split(" ", 1)[1]
    config = tmp_path / "schemathesis.toml"
    config.write_text(fuzz_config())
    reports = tmp_path / "reports"
    service = f"{fuzz_platform.url}/services/marketplace"
    seed = os.environ.get("MARKET_FUZZ_SEED")
    cmd = [str(SCHEMATHESIS), "--config-file", str(config), "run", f"{service}/api/openapi.json",
           "--url", service, "--max-examples", str(MAX_EXAMPLES), "--checks", "all",
           "--report", "json,har", "--report-dir", str(reports), "--no-color",
           *(["--seed", seed] if seed else [])]
    env = dict(os.environ, MARKET_FUZZ_TOKEN=token)
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1500)
    # the failures and the summary, each line cut short (a generated body can be megabytes)
    lines = done.stdout.split("=== FAILURES ===", 1)[-1].splitlines() + done.stderr.splitlines()
    output = "\n".join(line[:300] for line in lines[-400:])
    report = json.loads(next(reports.glob("json-*.json")).read_text())
    har = json.loads(next(reports.glob("har-*.json")).read_text())

    stats = reach(har)
    print(f"\n{role} ({user}): {report['test_cases']['generated']} cases, "
          f"{report['running_time']:.0f} s; per operation: sent, 2xx, 4xx")
    for op in sorted(stats):
        print(f"  {op:68} {stats[op]['sent']:5} {stats[op]['2xx']:5} {stats[op]['4xx']:5}")

    server_errors = {op: c["5xx"] for op, c in stats.items() if c["5xx"]}
    assert server_errors == {}, output
    assert report["failures"] == [], output
    assert report["errors"] == [], output
    assert done.returncode == 0, output
    assert report["complete"] and report["stop_reason"] == "completed", output
    assert report["test_cases"]["generated"] >= MIN_CASES, output
    assert report["phases"]["stateful"]["status"] == "success", report["phases"]
    # the links lead somewhere: a request made along one reached an existing object
    assert sum(c["2xx"] for op, c in stats.items()
               if re.search(r"\{(product|unit|order|run|request)\}", op)) > 0, stats


# --- the server errors fuzzing found, as plain requests ----------------------------------------


@pytest.fixture(scope="module")
def subscriber(fuzz_platform):
    m = market_as(fuzz_platform.url, "subscriber-c", fuzz_platform.logins()["subscriber-c"])
    return m


def test_unsupported_method_keeps_the_connection_and_says_allow(fuzz_platform, subscriber):
    """A 405 answered before the body was read used to close the connection without saying
    so; the proxy reused it and the next request on it got the proxy's 503."""
    url = subscriber.url + "api/me"
    with requests.Session() as http:
        http.headers.update(subscriber.http.headers)
        for _ in range(5):
            for method in ("TRACE", "QUERY"):
                r = http.request(method, url, headers={"Content-Length": "0"}, timeout=30)
                assert r.status_code == 405, r.text
                assert r.headers["Allow"] == "GET"
                assert r.json()["error"] == "http_error"
            assert http.get(url, timeout=30).status_code == 200


def test_download_get_405_does_not_offer_get(subscriber):
    r = subscriber.http.get(subscriber.url + "api/products/ev-charger-layout/versions/1.0.0/"
                            "files/main.ipynb", timeout=30)
    assert r.status_code == 405
    assert r.headers["Allow"] == "POST"


@pytest.mark.parametrize("token", ["%C2%84", "%F1%9C%9A%BE%C2%AC.B", "e30.%C3%A9"])
def test_bad_download_token_is_a_json_404(subscriber, token):
    """A token outside the route's characters got Tornado's HTML 404; a non-ASCII one made
    the MAC's ASCII encoding fail (500)."""
    r = subscriber.http.get(subscriber.url + "api/downloads/" + token, timeout=30)
    assert r.status_code == 404
    assert r.json()["field"] == "token"


@pytest.mark.parametrize("minor", [{}, -1, "4"])
def test_m2d_notebook_with_a_bad_minor_version_is_a_400(subscriber, minor):
    """nbformat raises an AssertionError with no message for a non-integer minor version;
    taking the first line of an empty message was an IndexError (500)."""
    notebook = {"nbformat": 4, "nbformat_minor": minor, "metadata": {}, "cells": []}
    r = subscriber.http.post(subscriber.url + "api/m2d", timeout=30, json={
        "product": "electricity-theft-detection", "notebook": notebook,
        "outputs": ["outputs/model.pt"]})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "notebook"


@pytest.mark.parametrize("schema", [{"type": [{}]}, {"type": [["number"]]}, {"type": {}}])
def test_output_schema_type_that_is_not_a_name_is_invalid(schema):
    """``{"type": [{}]}`` tested a dict's membership in a set: unhashable type 'dict' (500)."""
    with pytest.raises(InvalidField) as e:
        check_output_schemas({"outputs/metrics.json": schema}, ["outputs/metrics.json"])
    assert e.value.field.startswith("output_schemas")


def test_every_error_response_is_documented_with_the_error_schema():
    spec = openapi_document()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in ("get", "put", "post", "delete"):
                continue
            codes = set(op["responses"])
            if op.get("security", spec["security"]):
                assert "401" in codes, (method, path)
            if "{" in path:
                assert "404" in codes, (method, path)
            if "requestBody" in op:
                assert {"400", "413"} <= codes, (method, path)
