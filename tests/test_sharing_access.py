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
