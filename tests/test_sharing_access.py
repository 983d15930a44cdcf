"""Every sharing mode behind the same gate, through the real hub and service: a caller without
an entitlement gets 403 from each, nothing is taken from its unit, and another unit's members
cannot perform the owner's actions (or see the owner's runs and requests at all)."""

from __future__ import annotations

import secrets

import pytest
import yaml
from helpers import market_as, training_notebook

from marketplace_ext.bundle import new_product
from marketplace_ext.client import Market


def publish(pub: Market, op: Market, kind: str, tmp_path, sharing: list[str]) -> str:
    name = f"gate-{kind}-{secrets.token_hex(3)}"
    bundle = new_product(kind, name, tmp_path / name)
    manifest = yaml.safe_load((bundle / "product.yaml").read_text())
    manifest.update(plans=[{"type": "per_use", "price": 10}], sharing=sharing)
    (bundle / "product.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    op.review(name, pub.publish(bundle)["version"], "approve")
    return name


@pytest.fixture(scope="module")
def gate(platform_proc, tmp_path_factory):
    url, logins = platform_proc.url, platform_proc.logins()
    tmp = tmp_path_factory.mktemp("gate")
    pub = market_as(url, "publisher-a", logins["publisher-a"])
    op = market_as(url, "operator", logins["operator"])
    return {
        "data": publish(pub, op, "data", tmp, ["download", "interface", "model_to_data"]),
        "tool": publish(pub, op, "tool", tmp, ["download", "remote_run", "remote_call"]),
        "pub": pub, "op": op, "url": url, "logins": logins,
        "stranger": market_as(url, "subscriber-d", logins["subscriber-d"]),
        "other_pub": market_as(url, "publisher-d", logins["publisher-d"]),
    }


def balance(m: Market) -> str:
    return m.request("GET", f"units/{m.me()['unit']['slug']}/account")["balance"]


def test_every_sharing_mode_needs_an_entitlement(gate):
    data, tool, m = gate["data"], gate["tool"], gate["stranger"]
    version = m.product(tool)["current_version"]
    attempts = {
        "download": ("POST", f"products/{tool}/versions/{version}/files/README.md", None),
        "export": ("POST", f"products/{data}/views/customers_public/export", None),
        "interface": ("POST", f"products/{data}/query",
                      {"sql": "SELECT count(*) FROM customers_public"}),
        "remote_run": ("POST", "runs", {"product": tool}),
        "remote_call": ("POST", f"products/{tool}/predict",
                        {"rows": [{"mean_kwh": 1.0, "cv": 0.2, "zero_share": 0.0,
                                   "drop": 0.0}]}),
        "model_to_data": ("POST", "m2d", {"product": data, "notebook": training_notebook(),
                                          "outputs": ["outputs/model.pt"]}),
    }
    before = balance(m)
    for mode, (method, path, body) in attempts.items():
        r = m.http.request(method, m.url + "api/" + path, json=body)
        assert r.status_code == 403, (mode, r.status_code, r.text)
        assert r.json()["error"] == "no_entitlement" and r.json()["field"] == "product", mode
    assert balance(m) == before


def test_modes_a_product_does_not_offer_are_refused(gate):
    data, tool, m = gate["data"], gate["tool"], gate["stranger"]
    m.order(tool, "per_use")
    r = m.http.post(m.url + f"api/products/{tool}/query", json={"sql": "SELECT 1"})
    assert r.status_code == 400 and r.json()["field"] == "product"  # a tool has no views
    assert r.json()["message"].endswith("only data products answer queries"), r.text
    r = m.http.post(m.url + f"api/products/{tool}/views/customers_public/export")
    assert r.status_code == 400 and r.json()["message"].endswith(
        "only data products export views"), r.text
    r = m.http.post(m.url + "api/runs", json={"product": data})
    assert r.status_code == 400 and r.json()["field"] == "product"  # data does not run


def test_owner_actions_are_the_owners(gate):
    data, tool, pub, other = gate["data"], gate["tool"], gate["pub"], gate["other_pub"]
    version = pub.product(tool)["current_version"]
    refused = [
        ("POST", f"products/{tool}/shelf", {"state": "off", "reason": "mine now"}),
        ("POST", f"products/{tool}/versions/{version}/review", {"decision": "reject",
                                                              "reason": "no"}),
    ]
    for method, path, body in refused:
        r = other.http.request(method, other.url + "api/" + path, json=body)
        assert r.status_code == 403, (path, r.text)
    order = gate["stranger"].order(data, "per_use")
    r = other.http.post(other.url + f"api/orders/{order['id']}/refund", json={"reason": "x"})
    assert r.status_code == 403
    # a model-to-data request to unit a: only a's publishers decide; d's cannot even see it
    request = gate["stranger"].send_model(data, training_notebook(), ["outputs/model.pt"])
    r = other.http.post(other.url + f"api/m2d/{request['id']}/decision",
                        json={"decision": "approve"})
    assert r.status_code == 403, r.text  # d's publisher: d sent it, but a owns the data
    outsider = market_as(gate["url"], "publisher-b", gate["logins"]["publisher-b"])
    for path in (f"m2d/{request['id']}", f"m2d/{request['id']}/notebook"):
        assert outsider.http.get(outsider.url + "api/" + path).status_code == 404
    assert pub.decide_model(request["id"], "reject", "not today")["status"] == "rejected"


def test_every_mode_answers_the_same_codes_for_the_same_reasons(gate):
    """One gate (marketplace_ext/sharing.py) for every mode: a caller in no unit gets 403
    naming ``unit`` from each (an operator inspects downloads for free, nothing else); one
    per-use order is one use, whichever mode spends it."""
    data, tool, op = gate["data"], gate["tool"], gate["op"]
    version = op.product(tool)["current_version"]
    row = {"mean_kwh": 1.0, "cv": 0.2, "zero_share": 0.0, "drop": 0.0}
    needs_a_unit = {
        "export": ("POST", f"products/{data}/views/customers_public/export", None),
        "interface": ("POST", f"products/{data}/query", {"sql": "SELECT 1"}),
        "remote_run": ("POST", "runs", {"product": tool}),
        "remote_call": ("POST", f"products/{tool}/predict", {"rows": [row]}),
        "model_to_data": ("POST", "m2d", {"product": data, "notebook": training_notebook(),
                                          "outputs": ["outputs/model.pt"]}),
    }
    for mode, (method, path, body) in needs_a_unit.items():
        r = op.http.request(method, op.url + "api/" + path, json=body)
        assert (r.status_code, r.json()["field"]) == (403, "unit"), (mode, r.text)
    r = op.http.post(op.url + f"api/products/{tool}/versions/{version}/files/README.md")
    assert r.status_code == 200, r.text  # the operator's inspection

    buyer = market_as(gate["url"], "subscriber-e", gate["logins"]["subscriber-e"])
    before = balance(buyer)
    buyer.order(tool, "per_use")
    r = buyer.http.post(buyer.url + f"api/products/{tool}/versions/{version}/files/README.md")
    assert r.status_code == 200, r.text
    for method, path, body in (("POST", f"products/{tool}/predict", {"rows": [row]}),
                               ("POST", "runs", {"product": tool}),
                               ("POST", f"products/{tool}/versions/{version}/files/README.md",
                                None)):
        r = buyer.http.request(method, buyer.url + "api/" + path, json=body)
        assert (r.status_code, r.json()["error"]) == (403, "no_entitlement"), (path, r.text)
    assert balance(buyer) != before  # the one use was paid for, once
    orders = [o for o in buyer.request("GET", "orders")["orders"] if o["product"] == tool]
    assert len(orders) == 1 and orders[0]["entitlement"]["uses_left"] == 0, orders


def test_a_version_not_on_sale_does_not_exist_for_other_units(gate, tmp_path):
    """Every mode answers 404 (field ``version``) to another unit asking for a version that
    is not the reviewed one on the shelf, so the version's existence does not leak."""
    tool, pub, stranger = gate["tool"], gate["pub"], gate["stranger"]
    bundle = new_product("tool", tool, tmp_path / "next")
    manifest = yaml.safe_load((bundle / "product.yaml").read_text())
    manifest.update(version="9.9.9", plans=[{"type": "per_use", "price": 10}],
                    sharing=["download", "remote_run", "remote_call"])
    (bundle / "product.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    assert pub.publish(bundle)["state"] == "submitted"
    stranger.order(tool, "per_use")
    for method, path, body in (
            ("POST", f"products/{tool}/versions/9.9.9/files/README.md", None),
            ("POST", "runs", {"product": tool, "version": "9.9.9"})):
        r = stranger.http.request(method, stranger.url + "api/" + path, json=body)
        assert (r.status_code, r.json()["field"]) == (404, "version"), (path, r.text)
    # the owning unit's publisher previews it
    r = pub.http.post(pub.url + f"api/products/{tool}/versions/9.9.9/files/README.md")
    assert r.status_code == 200, r.text
