"""The remote-call sharing mode through the real hub and service: a subscriber calls a tool
with rows and gets its predictions from a warm kernel; per-use orders are consumed only by
calls that answered; every answer is certified."""

from __future__ import annotations

import json
import secrets
import time

import numpy as np
import pytest
import yaml
from helpers import market_as

from marketplace_ext.bundle import new_product
from marketplace_ext.client import MarketAPIError

ROWS = [{"customer_id": f"c{i}", "mean_kwh": 5.0 + i, "cv": 0.1 * i, "zero_share": 0.02 * i,
         "drop": 0.05 * i} for i in range(6)]


@pytest.fixture(scope="module")
def tool(platform_proc, tmp_path_factory):
    url, logins = platform_proc.url, platform_proc.logins()
    pub = market_as(url, "publisher-a", logins["publisher-a"])
    op = market_as(url, "operator", logins["operator"])
    name = f"meter-score-{secrets.token_hex(3)}"
    bundle = new_product("tool", name, tmp_path_factory.mktemp("tool"))
    manifest = yaml.safe_load((bundle / "product.yaml").read_text())
    manifest["plans"] = [{"type": "per_use", "price": 10}, {"type": "month", "price": 30}]
    (bundle / "product.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    op.review(name, pub.publish(bundle)["version"], "approve")
    model = json.loads((bundle / "files" / "model.json").read_text())
    return {"name": name, "model": model,
            "sub": market_as(url, "subscriber-b", logins["subscriber-b"])}


def expected_scores(model: dict, rows: list[dict]) -> dict[str, float]:
    x = np.array([[r[f] for f in model["features"]] for r in rows])
    z = (x - np.array(model["mean"])) / np.array(model["scale"])
    s = 1 / (1 + np.exp(-(z @ np.array(model["weights"]) + model["bias"])))
    return {r["customer_id"]: float(v) for r, v in zip(rows, s, strict=True)}


def balance(m) -> str:
    return m.request("GET", f"units/{m.me()['unit']['slug']}/account")["balance"]


def test_predict_with_a_per_use_order(tool):
    sub, name = tool["sub"], tool["name"]
    with pytest.raises(MarketAPIError) as e:
        sub.predict(name, ROWS)
    assert e.value.status == 403 and e.value.error == "no_entitlement"
    sub.order(name, "per_use")
    before = balance(sub)
    # refused and failed calls take nothing
    for rows, field in (([], "rows"), ("x", "rows"), ([1, 2], "rows"), (None, "rows")):
        r = sub.http.post(sub.url + f"api/products/{name}/predict", json={"rows": rows})
        assert r.status_code == 400 and r.json()["field"] == field, r.text
    with pytest.raises(MarketAPIError) as e:  # rows without the model's features
        sub.predict(name, [{"customer_id": "c1", "kwh": 3}])
    assert e.value.status == 422 and "lack the features" in e.value.message
    assert balance(sub) == before

    r = sub.http.post(sub.url + f"api/products/{name}/predict", json={"rows": ROWS})
    assert r.status_code == 200, r.text
    got = {p["customer_id"]: p["score"] for p in r.json()["predictions"]}
    want = expected_scores(tool["model"], ROWS)
    assert got.keys() == want.keys()
    assert all(abs(got[c] - want[c]) < 1e-5 for c in want)
    with pytest.raises(MarketAPIError) as e:  # the use is spent
        sub.predict(name, ROWS)
    assert e.value.status == 403

    index = int(r.headers["X-Log-Index"])
    deadline = time.monotonic() + 20
    while sub.request("GET", "log/checkpoint")["size"] <= index:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    entry = sub.request("GET", f"log/entries/{index}")["statement"]
    assert entry["type"] == "prediction" and entry["rows"] == len(ROWS)


def test_repeated_calls_on_a_month_plan(tool):
    sub, name = tool["sub"], tool["name"]
    sub.order(name, "month")
    answers = [sub.predict(name, ROWS[: k + 1]) for k in range(len(ROWS))]
    assert [len(a) for a in answers] == list(range(1, len(ROWS) + 1))
    want = expected_scores(tool["model"], ROWS)
    for answer in answers:  # each call sees only its own rows, nothing left from the last
        assert all(abs(p["score"] - want[p["customer_id"]]) < 1e-5 for p in answer)
