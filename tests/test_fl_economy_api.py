"""Acceptance of the federated economy on the real platform (hub, proxy, service): three units
open a project over their data products with a 60-point pool, one partner sends noise, every
member evaluates the leave-one-out models on its own validation data, the certified split
favours the two honest units, the model is published as a co-owned tool, reviewed, bought by
a fourth unit, and the revenue splits exactly by the certified shares in one transfer. Bad
input gets a 4xx naming the field with the ledger untouched; the pages show pool, estimate,
split and the project on the products and the shelf.

The units are the demo units with the most points (the full suite leaves some short of 60);
the rounds are one round of a 49-parameter model, so the module takes well under a minute."""

from __future__ import annotations

import secrets
import threading

import numpy as np
import pytest
import yaml
from helpers import TINY_MODEL, fl_signing_key, market_as, project_name, save_model
from sklearn.metrics import roc_auc_score

from marketplace_ext import points
from marketplace_ext.bundle import new_product
from marketplace_ext.client import MarketAPIError
from marketplace_ext.federated.client import FederatedClient

FEATURES = 8
PRICE = 12


def _data(rng, truth, rows):
    x = rng.normal(size=(rows, FEATURES))
    p = 1 / (1 + np.exp(-(x @ truth[:-1] + truth[-1])))
    return x, (rng.random(rows) < p).astype(float)


def _auc(vector, x, y) -> float:
    return float(roc_auc_score(y, x @ vector[:FEATURES] + vector[FEATURES]))


def _train(base, x, y, steps=40, lr=0.3):
    v = base[:FEATURES + 1].copy()
    xb = np.hstack([x, np.ones((len(x), 1))])
    for _ in range(steps):
        v -= lr * xb.T @ (1 / (1 + np.exp(-(xb @ v))) - y) / len(y)
    update = np.zeros_like(base)
    update[:FEATURES + 1] = np.clip(v - base[:FEATURES + 1], -1, 1)
    return update


def _publish(market, operator, tmp_path, kind, sharing, price) -> str:
    name = f"fle-{kind}-{secrets.token_hex(3)}"
    bundle = new_product(kind, name, tmp_path / name)
    manifest = yaml.safe_load((bundle / "product.yaml").read_text())
    manifest["plans"] = [{"type": "per_use", "price": price}]
    manifest["sharing"] = sharing
    (bundle / "product.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    version = market.publish(bundle)["version"]
    operator.review(name, version, "approve")
    return name


def _balance(market) -> int:
    return market.statement(limit=1)["centipoints"]


def test_three_units_a_pool_a_noisy_partner_and_a_co_owned_model(platform_proc, tmp_path):
    url, logins = platform_proc.url, platform_proc.logins()
    operator = market_as(url, "operator", logins["operator"])
    balances = {a["account"][5:]: a["centipoints"]
                for a in operator.request("GET", "accounts")["accounts"]
                if a["account"].startswith("unit:") and a["account"][5:] in "abcde"}
    ranked = sorted(balances, key=lambda u: -balances[u])
    initiator, honest, noisy, buyer, outsider = ranked[0], ranked[1], ranked[2], ranked[3], \
        ranked[4]
    assert balances[initiator] >= 60 * 100 and balances[buyer] >= PRICE * 100, balances
    trio = (initiator, honest, noisy)
    markets = {u: market_as(url, f"publisher-{u}", logins[f"publisher-{u}"]) for u in
               (*trio, outsider)}
    homes = {u: tmp_path / f"home-{u}" for u in trio}
    clients = {u: FederatedClient(markets[u], home=homes[u], progress=False, poll=0.3,
                                  signing_key=fl_signing_key(platform_proc.var_dir, u, homes[u]))
               for u in trio}
    products = [_publish(markets[u], operator, tmp_path, "data", ["federated"], 10) for u in trio]
    init = clients[initiator]
    before = _balance(markets[initiator])

    # bad input, the ledger untouched: a pool larger than the balance
    with pytest.raises(MarketAPIError) as e:
        init.open_project(project_name("pool"), save_model(tmp_path / "m0", TINY_MODEL),
                          rounds=1, quorum=3, deadline_seconds=600, max_parties=3,
                          max_weight=1000, products=products, pool=before // 100 + 1)
    assert (e.value.status, e.value.field) == (409, "pool")
    assert _balance(markets[initiator]) == before

    project = init.open_project(project_name("economy"), save_model(tmp_path / "m", TINY_MODEL),
                                rounds=1, quorum=3, deadline_seconds=600, max_parties=3,
                                max_weight=1000, products=products, pool=60,
                                allow_units=[honest, noisy, outsider],
                                contribution_measure="loo_weight")
    pid = project["id"]
    assert project["pool"] == "60.00" and project["products"] == products
    assert project["contribution_measure"] == "loo_weight"
    assert _balance(markets[initiator]) == before - 60_00

    # joining without the federated entitlement (the outsider owns none of the products)
    outsider_before = _balance(markets[outsider])
    with pytest.raises(MarketAPIError) as e:
        markets[outsider].request("POST", f"fl/projects/{pid}/join")
    assert (e.value.status, e.value.field) == (403, "product")
    assert _balance(markets[outsider]) == outsider_before
    # publishing a model that did not come from a finished project
    tool_dir = new_product("tool", f"fle-model-{secrets.token_hex(3)}", tmp_path / "model")
    tool_manifest = yaml.safe_load((tool_dir / "product.yaml").read_text())
    tool_manifest["plans"] = [{"type": "per_use", "price": PRICE}]
    (tool_dir / "product.yaml").write_text(yaml.safe_dump(tool_manifest, sort_keys=False))
    with pytest.raises(MarketAPIError) as e:
        markets[initiator].fl_publish_model(pid, tool_dir)
    assert (e.value.status, e.value.field) == (409, "project")

    for u in (honest, noisy):
        assert clients[u].join(pid)["status"] == "approved"
    assert sorted(init.wrap_pending(pid)) == sorted([honest, noisy])
    for u in (honest, noisy):
        clients[u].private_key(pid, wait=60)
    init.start(pid)

    rng = np.random.default_rng(11)
    truth = rng.normal(size=FEATURES + 1)
    train = {u: _data(rng, truth, 400) for u in trio}
    valid = {u: _data(rng, truth, 1500) for u in trio}

    def one(unit: str, results: dict) -> None:
        def work(base):
            if unit == noisy:
                return np.clip(rng_noise.normal(scale=0.8, size=base.shape), -1, 1), 400
            return _train(base, *train[unit]), 400
        rng_noise = np.random.default_rng(99)
        results[unit] = clients[unit].run_round(pid, work, timeout=300)

    results: dict = {}
    threads = [threading.Thread(target=one, args=(u, results)) for u in trio]
    for t in threads:
        t.start()
    for t in threads:
        t.join(360)
    assert all(results.get(u) is not None for u in trio), results
    assert markets[initiator].request("GET", f"fl/projects/{pid}")["state"] == "finished"

    # every member evaluates the full and the leave-one-out models on its own data
    for u in trio:
        posted = clients[u].evaluate_contributions(pid, 1, lambda v, u=u: _auc(v, *valid[u]))
        assert set(posted) == {"auc", *(f"loo.{o}" for o in trio if o != u)}
    estimate = markets[honest].fl_contributions(pid)
    assert estimate["pool"]["held"] == "60.00"
    assert estimate["estimate"]["units"][noisy]["evaluations"] == 2

    # a split that does not sum to the whole: 400 naming shares, nothing paid
    with pytest.raises(MarketAPIError) as e:
        markets[initiator].fl_settle(pid, {initiator: 5000, honest: 4000, noisy: 999})
    assert (e.value.status, e.value.field) == (400, "shares")
    assert markets[honest].fl_contributions(pid)["pool"]["held"] == "60.00"

    settled = markets[honest].fl_settle(pid)
    shares = settled["shares"]
    assert sum(shares.values()) == 10_000
    assert shares[noisy] < min(shares[initiator], shares[honest]), settled
    assert settled["fee"] == "3.60"
    paid = {u: round(float(v) * 100) for u, v in settled["paid"].items()}
    assert sum(paid.values()) == 56_40
    assert paid == points.split_amount(56_40, shares)
    row = markets[honest].statement(limit=1)["transfers"][0]
    assert row["kind"] == "fl_pool_split" and row["centipoints"] == paid[honest]
    assert markets[noisy].fl_settlement(pid)["log_index"] == settled["log_index"]

    # the model, published co-owned, reviewed, bought by a fourth unit
    published = markets[initiator].fl_publish_model(pid, tool_dir)
    assert published["shares"] == {u: bp for u, bp in shares.items() if bp > 0}
    operator.review(published["product"], published["version"], "approve")
    owners_before = {u: _balance(markets[u]) for u in trio}
    order = market_as(url, f"subscriber-{buyer}", logins[f"subscriber-{buyer}"]).order(
        published["product"], "per_use")
    revenue = PRICE * 100 - PRICE * 100 * 600 // 10_000
    expected = points.split_amount(revenue, published["shares"])
    for u in trio:
        got = _balance(markets[u]) - owners_before[u]
        assert got == expected.get(u, 0), (u, got, expected)
        if expected.get(u):
            top = markets[u].statement(limit=1)["transfers"][0]
            assert top["kind"] == "order" and top["order"] == order["id"]
            assert top["centipoints"] == expected[u]  # each member's statement shows its share
    assert sum(expected.values()) == revenue
    # a co-owner does not buy the model it co-owns: 403 naming product, nothing moves
    co_owner = next(u for u in (honest, initiator) if published["shares"].get(u))
    held = _balance(markets[co_owner])
    with pytest.raises(MarketAPIError) as e:
        market_as(url, f"subscriber-{co_owner}", logins[f"subscriber-{co_owner}"]).order(
            published["product"], "per_use")
    assert (e.value.status, e.value.field) == (403, "product")
    assert _balance(markets[co_owner]) == held

    # a project that never finishes: its initiator cancels it, the pool comes back once
    held = _balance(markets[initiator])
    other = init.open_project(project_name("cancel"), save_model(tmp_path / "m2", TINY_MODEL),
                              rounds=1, quorum=2, deadline_seconds=600, max_parties=3,
                              max_weight=1000, pool=7, allow_units=[honest])
    assert other["contribution_measure"] == "weight"  # the default: no leave-one-out sums
    clients[honest].join(other["id"])
    with pytest.raises(MarketAPIError) as e:  # a partner does not cancel
        markets[honest].fl_cancel(other["id"])
    assert (e.value.status, e.value.field) == (403, "unit")
    assert _balance(markets[initiator]) == held - 7_00
    ended = markets[initiator].fl_cancel(other["id"], "changed our minds")
    again = operator.fl_cancel(other["id"])
    assert ended == again and ended["state"] == "cancelled"
    assert ended["refund"]["paid"] == {initiator: "7.00"} and ended["refund"]["measure"] == \
        "refund"
    assert _balance(markets[initiator]) == held
    assert markets[initiator].statement(limit=1)["transfers"][0]["kind"] == "fl_pool_refund"

    # the pages: the project's pool, estimate and split; the product and the shelf list it
    page = markets[initiator].http.get(markets[initiator].url + f"fl/{pid}").text
    assert "Reward pool and contributions" in page and "The certified split" in page
    product_page = markets[initiator].http.get(
        markets[initiator].url + f"products/{products[0]}").text
    assert f"fl/{pid}" in product_page
    model_page = markets[initiator].http.get(
        markets[initiator].url + f"products/{published['product']}").text
    assert 'id="co-owners"' in model_page
    home = markets[initiator].http.get(markets[initiator].url).text
    assert 'id="federated"' in home and f"fl/{pid}" in home
