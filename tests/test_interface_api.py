"""The interface sharing mode through the real hub, service and Spark Connect: a data
product's views are created on approval; a subscriber with an entitlement queries them; no
canary of the publisher's sensitive columns comes back; anything beyond the grant is refused."""

from __future__ import annotations

import secrets

import pytest
import yaml
from canaries import find_canaries
from helpers import market_as

from marketplace_ext.bundle import new_product
from marketplace_ext.client import Market, MarketAPIError


@pytest.fixture(scope="module")
def data_product(platform_proc, tmp_path_factory):
    url, logins = platform_proc.url, platform_proc.logins()
    pub = market_as(url, "publisher-a", logins["publisher-a"])
    op = market_as(url, "operator", logins["operator"])
    name = f"open-data-{secrets.token_hex(3)}"
    bundle = new_product("data", name, tmp_path_factory.mktemp("data"))
    manifest = yaml.safe_load((bundle / "product.yaml").read_text())
    manifest["plans"] = [{"type": "per_use", "price": 10}, {"type": "month", "price": 40}]
    (bundle / "product.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    version = pub.publish(bundle)["version"]
    op.review(name, version, "approve")
    sub = market_as(url, "subscriber-e", logins["subscriber-e"])
    return {"name": name, "sub": sub, "pub": pub}


def query(m: Market, product: str, sql: str, **extra):
    return m.request("POST", f"products/{product}/query", json={"sql": sql, **extra})


def test_query_views_with_an_entitlement_and_no_leak(data_product):
    sub, name = data_product["sub"], data_product["name"]
    with pytest.raises(MarketAPIError) as e:
        query(sub, name, "SELECT count(*) FROM customers_public")
    assert e.value.status == 403 and e.value.error == "no_entitlement"

    sub.order(name, "month", idempotency_key=f"month-{name}")  # one order, replayed
    result = query(sub, name, "SELECT district, tariff_class, count(*) AS n FROM "
                   "customers_public GROUP BY district, tariff_class ORDER BY n DESC")
    assert [c["name"] for c in result["columns"]] == ["district", "tariff_class", "n"]
    assert sum(row[2] for row in result["rows"]) > 0 and result["log_index"] is not None
    everything = sub.http.post(sub.url + f"api/products/{name}/query",
                               json={"sql": "SELECT * FROM customers_public", "limit": 1000})
    assert everything.status_code == 200
    assert find_canaries(everything.text) == []  # names, phones, addresses, meters: dropped
    assert "customer_id" in everything.text  # hashed, not dropped
    joined = query(sub, name, "SELECT c.district, round(sum(d.kwh), 1) FROM "
                   "consumption_daily_public d JOIN customers_public c USING (customer_id) "
                   "GROUP BY c.district", limit=5)
    assert joined["rows"] and len(joined["rows"]) <= 5


@pytest.mark.parametrize("sql,status", [
    ("SELECT * FROM customers", 403),                         # the base table
    ("SELECT * FROM unit_b.customers", 403),                  # another unit's table
    ("SELECT * FROM customers_public c JOIN customers x ON c.customer_id = x.customer_id",
     403),                                                    # a join reaching past the grant
    ("DROP VIEW customers_public", 400),
    ("INSERT INTO customers_public VALUES (1)", 400),
    ("SELECT 1; SELECT 2", 400),
])
def test_queries_beyond_the_grant_are_refused(data_product, sql, status):
    sub, name = data_product["sub"], data_product["name"]
    sub.order(name, "month", idempotency_key=f"month-{name}")  # one order, replayed
    r = sub.http.post(sub.url + f"api/products/{name}/query", json={"sql": sql})
    assert r.status_code == status, r.text
    assert r.json()["field"] == "sql" and r.json()["message"]
    assert find_canaries(r.text) == []


def test_per_use_query_is_used_once(platform_proc, data_product):
    logins = platform_proc.logins()
    other = market_as(platform_proc.url, "subscriber-d", logins["subscriber-d"])
    name = data_product["name"]
    other.order(name, "per_use")
    assert query(other, name, "SELECT count(*) FROM consumption_daily_public")["rows"]
    with pytest.raises(MarketAPIError) as e:
        query(other, name, "SELECT count(*) FROM consumption_daily_public")
    assert e.value.status == 403
    # the gate answers first: without a use left even a malformed query is a 403 ...
    r = other.http.post(other.url + f"api/products/{name}/query", json={"sql": 42})
    assert r.status_code == 403 and r.json()["error"] == "no_entitlement"
    # ... and with one, the body's fault is named
    sub = data_product["sub"]
    sub.order(name, "month", idempotency_key=f"month-{name}")
    r = sub.http.post(sub.url + f"api/products/{name}/query", json={"sql": 42})
    assert r.status_code == 400 and r.json()["field"] == "sql"
