"""Orders, entitlements and statements through the real hub and service."""

from __future__ import annotations

import secrets

import pytest
from helpers import market_as, publish_on_shelf

from marketplace_ext.client import Market, MarketAPIError
from marketplace_ext.hubsession import HubSession


@pytest.fixture(scope="module")
def users(hub_url, logins):
    cache: dict[str, Market] = {}

    def get(user: str) -> Market:
        if user not in cache:
            cache[user] = market_as(hub_url, user, logins[user])
        return cache[user]

    return get


def order(m: Market, product: str, plan: str, key: str | None = None) -> dict:
    return m.request("POST", "orders", json={"product": product, "plan": plan,
                                             "idempotency_key": key or secrets.token_hex(8)})


def balance(m: Market, unit: str) -> str:
    return m.request("GET", f"units/{unit}/account")["balance"]


def test_order_statement_and_stats(users, tmp_path):
    pub_e, sub_b, op = users("publisher-e"), users("subscriber-b"), users("operator")
    name = publish_on_shelf(pub_e, op, tmp_path, [{"type": "month", "price": 30},
                                                   {"type": "per_use", "price": 10}])
    b_before, e_before = balance(sub_b, "b"), balance(pub_e, "e")
    fee_before = next(a for a in op.request("GET", "accounts")["accounts"]
                      if a["account"] == "operator")["centipoints"]

    first = order(sub_b, name, "month", "month-order-0001")
    assert (first["price"], first["fee"], first["supplier_share"]) == ("30.00", "1.80", "28.20")
    assert first["entitlement"]["plan"] == "month" and first["entitlement"]["uses_left"] is None
    replay = sub_b.http.post(sub_b.url + "api/orders", json={
        "product": name, "plan": "month", "idempotency_key": "month-order-0001"})
    assert replay.status_code == 200 and replay.json()["id"] == first["id"]

    assert float(balance(sub_b, "b")) == pytest.approx(float(b_before) - 30)
    assert float(balance(pub_e, "e")) == pytest.approx(float(e_before) + 28.20)
    accounts = op.request("GET", "accounts")["accounts"]
    assert sum(a["centipoints"] for a in accounts) == 0
    fee_now = next(a for a in accounts if a["account"] == "operator")["centipoints"]
    assert fee_now - fee_before == 180

    statement = pub_e.request("GET", "units/e/account", params={"limit": 5})
    sale = statement["transfers"][0]
    assert sale["amount"] == "28.20" and sale["product"] == name and sale["plan"] == "month"
    assert {c["account"] for c in sale["counterparties"]} == {"unit:b", "operator"}
    assert first["id"] in {o["id"] for o in sub_b.request("GET", "orders")["orders"]}
    assert first["id"] not in {o["id"] for o in pub_e.request("GET", "orders")["orders"]}

    stats = sub_b.product(name)["stats"]
    assert stats == {"units_using": 2, "investment_saved": 1, "orders": 1}

    with pytest.raises(MarketAPIError) as e:
        sub_b.request("GET", "units/e/account")
    assert e.value.status == 403
    with pytest.raises(MarketAPIError) as e:
        sub_b.request("GET", "accounts")
    assert e.value.status == 403


@pytest.mark.parametrize(
    "body,status,field",
    [
        ({"plan": "month", "idempotency_key": "k-000000001"}, 400, "product"),
        ({"product": "PRODUCT", "plan": "decade", "idempotency_key": "k-000000002"}, 400, "plan"),
        ({"product": "PRODUCT", "plan": "year", "idempotency_key": "k-000000003"}, 400, "plan"),
        ({"product": "PRODUCT", "plan": "month", "idempotency_key": "short"}, 400,
         "idempotency_key"),
        ({"product": "PRODUCT", "plan": "month"}, 400, "idempotency_key"),
        ({"product": "no-such-product", "plan": "month", "idempotency_key": "k-000000004"}, 404,
         "product"),
    ],
)
def test_bad_orders_are_refused_without_a_transfer(users, tmp_path, body, status, field):
    sub_c, op = users("subscriber-c"), users("operator")
    name = _shared_product(users, tmp_path)
    body = {k: (name if v == "PRODUCT" else v) for k, v in body.items()}
    before = balance(sub_c, "c")
    r = sub_c.http.post(sub_c.url + "api/orders", json=body)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field
    assert balance(sub_c, "c") == before
    assert sum(a["centipoints"] for a in op.request("GET", "accounts")["accounts"]) == 0


_shared: dict[str, str] = {}


def _shared_product(users, tmp_path) -> str:
    if "name" not in _shared:
        _shared["name"] = publish_on_shelf(users("publisher-d"), users("operator"), tmp_path,
                                           [{"type": "month", "price": 20}])
    return _shared["name"]


def test_conflicts_refunds_shelf_and_unitless_members(users, tmp_path, hub_url, logins):
    pub_d, sub_c, op = users("publisher-d"), users("subscriber-c"), users("operator")
    name = publish_on_shelf(pub_d, op, tmp_path, [{"type": "per_use", "price": 50},
                                                   {"type": "week", "price": 10}])
    key = secrets.token_hex(8)
    before = balance(sub_c, "c")
    bought = order(sub_c, name, "per_use", key)
    with pytest.raises(MarketAPIError) as e:
        order(sub_c, name, "week", key)
    assert e.value.status == 409 and e.value.field == "idempotency_key"

    with pytest.raises(MarketAPIError) as e:
        sub_c.request("POST", f"orders/{bought['id']}/refund", json={"reason": "mine"})
    assert e.value.status == 403
    with pytest.raises(MarketAPIError) as e:
        op.request("POST", f"orders/{bought['id']}/refund", json={})
    assert e.value.field == "reason"
    refunded = op.request("POST", f"orders/{bought['id']}/refund", json={"reason": "run failed"})
    assert refunded["status"] == "refunded" and refunded["entitlement"]["status"] == "refunded"
    assert balance(sub_c, "c") == before
    with pytest.raises(MarketAPIError) as e:
        op.request("POST", f"orders/{bought['id']}/refund", json={"reason": "twice"})
    assert e.value.status == 409

    # the owner cannot buy its own product; an off-shelf product cannot be bought
    with pytest.raises(MarketAPIError) as e:
        order(pub_d, name, "week")
    assert e.value.status == 403 and e.value.field == "product"
    pub_d.shelf(name, "off")
    with pytest.raises(MarketAPIError) as e:
        order(sub_c, name, "week")
    assert e.value.status == 404
    pub_d.shelf(name, "on")

    # a member of no unit
    loner = f"loner-{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(12)
    HubSession(hub_url).signup(loner, password)
    ops = HubSession(hub_url)
    ops.login("operator", logins["operator"])
    ops.authorize(loner)
    with pytest.raises(MarketAPIError) as e:
        order(market_as(hub_url, loner, password), name, "week")
    assert e.value.status == 403 and e.value.field == "unit"

