"""Every product of the catalogue (the paper's Table 2, all 13) on the demo platform: published
by its unit, bought per use by another unit and run through the real runner on that unit's demo
tables (1 % scale); the declared outputs exist and are sane (shapes, ranges, and better than the
baseline where the demo data carry ground truth); tools also answer remote calls; the data
product answers through the interface. Then the bad input of issue 17: an out-of-range
parameter is refused at submission, a missing column fails the run naming table and column, and
the use is refunded.

All runs are queued at once (module fixture) so the runner's workers overlap them; each
parametrized test then waits for its own run and checks it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
from canaries import find_canaries
from helpers import market_as, wait_until

from marketplace_ext import griddata
from marketplace_ext.bundle import load_bundle
from marketplace_ext.client import MarketAPIError
from marketplace_ext.demo import DEMO_PRODUCTS
from marketplace_ext.errors import InvalidField
from marketplace_ext.parameters import validate_parameters

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = ROOT / "product_templates" / "catalogue"
PRODUCTS = sorted(p.name for p in CATALOGUE.iterdir() if p.is_dir())
DATA_PRODUCT = "power-marketing-data"
TOOLS = {"tariff-risk-prediction", "abnormal-consumption-detection",
         "transformer-overload-prediction", "abnormal-price-detection", "traffic-prediction"}
# who runs what: always a unit other than the publisher, on its own data
RUN_BY = {
    "electricity-theft-detection": "b", "tariff-risk-prediction": "c", "ev-charger-layout": "d",
    "customer-service-panorama": "a", "business-hall-efficiency": "e", "customer-portrait": "c",
    "abnormal-consumption-detection": "a", "transformer-overload-prediction": "b",
    "service-efficiency-analysis": "d", "power-resumption-index": "c", DATA_PRODUCT: "d",
    "abnormal-price-detection": "a", "traffic-prediction": "e",
}
RUN_TIMEOUT = 1200  # a bound on the wait for the whole queue, not a timing claim


def test_the_catalogue_is_the_papers_table_2():
    assert len(PRODUCTS) == 13 and set(PRODUCTS) == set(DEMO_PRODUCTS) == set(RUN_BY)
    assert all(RUN_BY[p] != DEMO_PRODUCTS[p] for p in PRODUCTS)
    assert len(set(DEMO_PRODUCTS.values())) == 5  # published by every demo unit


def test_declared_ranges_are_enforced_at_submission():
    traffic = load_bundle(CATALOGUE / "traffic-prediction").parameters
    assert validate_parameters(traffic, {"horizon": 28, "backtest_weeks": 0}) == {
        "horizon": 28, "backtest_weeks": 0}
    portrait = load_bundle(CATALOGUE / "customer-portrait").parameters
    assert validate_parameters(portrait, {"k": 0}) == {"k": 0}  # "(0 or 2 to 12)"
    for spec, given, fld in ((traffic, {"horizon": 29}, "parameters.horizon"),
                             (traffic, {"backtest_weeks": -1}, "parameters.backtest_weeks"),
                             (portrait, {"k": 1}, "parameters.k")):
        with pytest.raises(InvalidField) as e:
            validate_parameters(spec, given)
        assert e.value.field == fld and "between" in e.value.message, e.value.message


def balance(m) -> str:
    return m.request("GET", f"units/{m.me()['unit']['slug']}/account")["balance"]


@pytest.fixture(scope="module")
def shop(platform_proc):
    """Log in, check the shelf, buy and queue every run at once; the demo units' reference
    tables (the same build `make run` loaded) for checking the answers."""
    url, logins = platform_proc.url, platform_proc.logins()
    loaded = json.loads((platform_proc.var_dir / "demo_data.json").read_text())
    assert (loaded["scale"], loaded["seed"]) == (0.01, 7), loaded
    subs = {u: market_as(url, f"subscriber-{u}", logins[f"subscriber-{u}"]) for u in "abcde"}
    runs = {}
    for name in PRODUCTS:
        card = subs[RUN_BY[name]].product(name)
        assert (card["state"], card["unit"]) == ("on_shelf", DEMO_PRODUCTS[name]), name
        if name == DATA_PRODUCT:
            continue
        sub = subs[RUN_BY[name]]
        sub.order(name, "per_use")
        runs[name] = sub.run(name, wait=False, progress=False)["id"]
    ref = griddata.build_unit_tables(griddata.default_data_dir(), scale=0.01, seed=7)
    return {"subs": subs, "runs": runs, "ref": ref}


def finished_run(shop, name: str, tmp_path: Path) -> tuple[dict, Path]:
    sub, run_id = shop["subs"][RUN_BY[name]], shop["runs"][name]
    run = wait_until(lambda: (r := sub.get_run(run_id))["status"] not in ("queued", "running")
                     and r, RUN_TIMEOUT, f"the run of {name}")
    assert run["status"] == "succeeded", (name, run["error"])
    for artifact in run["artifacts"]:
        sub.download(f"runs/{run_id}/artifacts/{artifact}", tmp_path / artifact)
    return run, tmp_path / "outputs"


def read_csv(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    assert len(frame) > 0, path.name
    return frame


def metrics_of(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


# --- one check per product: out is the run's outputs/, t the running unit's demo tables ----


def check_theft(out, t, sub):
    suspects = read_csv(out / "suspects.csv")
    assert len(suspects) <= 20 and suspects["score"].between(0, 1).all()
    assert set(suspects["customer_id"]) <= set(t["customers"]["customer_id"])
    assert 0 < metrics_of(out)["customers"] <= t["consumption_daily"]["customer_id"].nunique()


def check_tariff(out, t, sub):
    scores = read_csv(out / "risk_scores.csv")
    assert set(scores["customer_id"]) == set(t["payments"]["customer_id"])
    assert scores["risk"].between(0, 1).all()
    safe = {"customer_id": "safe", "late_share": 0.0, "missed_share": 0.0, "mean_days_late": 0.0,
            "mean_amount": 60.0, "last_late": 0, "tariff_class": "standard"}
    risky = {**safe, "customer_id": "risky", "late_share": 0.9, "missed_share": 0.5,
             "mean_days_late": 30.0, "last_late": 1}
    answer = {r["customer_id"]: r["risk"] for r in sub.predict("tariff-risk-prediction",
                                                               [safe, risky])}
    assert 0 <= answer["safe"] < answer["risky"] <= 1


def check_ev(out, t, sub):
    coverage = json.loads((out / "coverage.json").read_text())
    # at 1 % a unit has three candidate sites on transformers of a few kW: the layout is small
    # (lamp-post chargers) but never empty
    layout = read_csv(out / "layout.csv")
    sites = t["charging_demand"].set_index("site_id")
    candidates = int((sites["kind"] == "candidate_site").sum())
    assert 1 <= len(layout) == coverage["sites"] <= min(5, candidates)
    assert len(layout) + coverage["candidates_blocked_by_transformer_headroom"] <= candidates
    assert layout["site_id"].is_unique and set(layout["site_id"]) <= set(sites.index)
    assert (sites.loc[layout["site_id"], "kind"] == "candidate_site").all()
    # each charger fits its site and leaves its transformer's headroom non-negative
    assert (layout["power_kw"] > 0).all()
    assert (layout["power_kw"].to_numpy() <= layout["capacity_kw"].to_numpy()).all()
    assert (layout["transformer_headroom_left_kw"] >= 0).all()
    assert set(layout["transformer_id"]) <= set(t["transformers"]["transformer_id"])
    assert 0 < coverage["served_share"] <= 1 and layout["served_share"].is_monotonic_increasing
    assert coverage["served_kwh_per_day"] <= (layout["power_kw"] * 8.0).sum() + 0.1
    assert set(coverage["served_share_by_district"]) <= set(t["charging_demand"]["district"])


def check_panorama(out, t, sub):
    pages = json.loads((out / "summary.json").read_text())
    customer_of = {hashlib.sha256(c.encode()).hexdigest()[:16]: c
                   for c in t["customers"]["customer_id"]}
    assert len(pages) == 3 and len(read_csv(out / "index.csv")) == len(customer_of)
    html = (out / "panorama.html").read_text()
    assert find_canaries(html) == []
    for page in pages:
        cid = customer_of[page["hashed_id"]]  # a KeyError here: not one of the unit's customers
        bills = t["billing"][t["billing"]["customer_id"] == cid]
        assert page["bills"] == {"count": len(bills),
                                 "total_amount": round(float(bills["amount"].sum()), 2)}
        tickets = t["service_tickets"]
        assert page["tickets"]["count"] == int((tickets["customer_id"] == cid).sum())
        contacts = t["service_contacts"]
        assert page["contacts"]["count"] == int((contacts["customer_id"] == cid).sum())
        assert page["hashed_id"] in html and cid not in html  # the page names no one
    # the customers with the most tickets come first
    most = t["service_tickets"]["customer_id"].value_counts().max()
    assert pages[0]["tickets"]["count"] == most


def check_halls(out, t, sub):
    halls = read_csv(out / "halls.csv")
    assert sorted(halls["hall_id"]) == sorted(t["business_halls"]["hall_id"])
    assert halls["dea_score"].between(0, 1).all() and halls["frontier"].any()
    m = metrics_of(out)
    assert m["spearman_dea"] > m["spearman_baseline_visits_per_fte"], m


def check_portrait(out, t, sub):
    segments = read_csv(out / "segments.csv")
    m = metrics_of(out)
    assert m["customers"] == t["customers"].shape[0] == segments["customers"].sum()
    assert -1 <= m["silhouette"] <= 1 and len(segments) == m["segments"] >= 2
    assert set(read_csv(out / "customers.csv")["segment"]) == set(segments["segment"])


def check_service(out, t, sub):
    handling = read_csv(out / "handling.csv")
    assert handling["tickets"].sum() == len(t["service_tickets"])
    assert (handling["median_hours"] > 0).all()
    e = metrics_of(out)["evaluation"]
    assert e["product"]["f1"] > e["baseline_slowest_weeks"]["f1"], e


def check_traffic(out, t, sub):
    forecast = read_csv(out / "forecast.csv")
    assert forecast["series"].nunique() == len(t["business_halls"]) + 3
    assert len(forecast) == 7 * forecast["series"].nunique()
    assert ((forecast["low"] >= 0) & (forecast["low"] <= forecast["forecast"])
            & (forecast["forecast"] <= forecast["high"])).all()
    m = metrics_of(out)["wape_all"]
    assert m["model"] < min(m["naive"], m["weekday_mean"]), m
    hotline = t["service_contacts"].query("channel == 'hotline'")
    daily = hotline.groupby(hotline["started_at"].dt.normalize()).size().iloc[-35:-7]
    rows = [{"series": "hotline", "day": f"{d:%Y-%m-%d}", "count": int(n)}
            for d, n in daily.items()]
    answer = sub.predict("traffic-prediction", rows)
    expected_days = pd.date_range(daily.index[-1] + pd.Timedelta(days=1), periods=7)
    assert [a["day"] for a in answer] == [f"{d:%Y-%m-%d}" for d in expected_days]
    assert all(0.2 * daily.mean() < a["forecast"] < 3 * daily.mean() for a in answer), answer


def check_abnormal_consumption(out, t, sub):
    m = metrics_of(out)
    assert m["day_f1"] > m["baseline_day_f1"] and m["auc"] > m["baseline_auc"], m
    readings = t["commercial_consumption_daily"]
    one = readings[readings["customer_id"] == readings["customer_id"].iloc[0]].tail(56)
    rows = [{"customer_id": r.customer_id, "day": f"{r.day:%Y-%m-%d}", "kwh": float(r.kwh)}
            for r in one.itertuples()]
    answer = sub.predict("abnormal-consumption-detection", rows)
    assert answer and {a["customer_id"] for a in answer} == {rows[0]["customer_id"]}
    assert all(isinstance(a["abnormal"], bool) for a in answer)


def check_overload(out, t, sub):
    m = metrics_of(out)
    assert m["warn_f1"] > m["baseline_warn_f1"] and m["ratio_mae"] < m["baseline_ratio_mae"], m
    forecast = read_csv(out / "forecast.csv")
    assert set(forecast["transformer_id"]) <= set(t["transformers"]["transformer_id"])
    load = t["transformer_load"]
    one = load[load["transformer_id"] == load["transformer_id"].iloc[0]].tail(28)
    rows = [{"transformer_id": r.transformer_id, "day": f"{r.day:%Y-%m-%d}",
             "peak_kw": float(r.peak_kw), "rated_kw": float(r.rated_kw)} for r in one.itertuples()]
    answer = sub.predict("transformer-overload-prediction", rows)
    assert [a["transformer_id"] for a in answer] == [rows[0]["transformer_id"]]
    assert 0 <= answer[0]["overload_probability"] <= 1


def check_resumption(out, t, sub):
    m = metrics_of(out)
    assert m["mae"] < min(m["baseline_mae_year_on_year"], m["baseline_mae_no_season"]), m
    index = read_csv(out / "index_by_industry.csv")
    assert set(index["industry"]) <= set(t["commercial_customers"]["industry"])


def check_price(out, t, sub):
    m = metrics_of(out)
    assert m["f1"] > m["baseline_f1"], m
    labels = t["price_error_labels"].set_index("bill_id")["is_error"]
    bills = t["commercial_bills"]
    good = bills[bills["bill_id"].map(labels) == False].iloc[0]  # noqa: E712
    wrong = good.copy()
    wrong["bill_id"] = f"{good['bill_id']}-x"
    wrong["unit_price"] = round(float(good["unit_price"]) * 1.5, 4)
    wrong["amount"] = round(float(wrong["unit_price"] * good["kwh"]), 2)
    rows = json.loads(pd.DataFrame([good, wrong]).to_json(orient="records", date_format="iso"))
    answer = {a["bill_id"]: a["abnormal"] for a in sub.predict("abnormal-price-detection", rows)}
    assert answer == {good["bill_id"]: False, wrong["bill_id"]: True}, answer


CHECKS = {
    "electricity-theft-detection": check_theft, "tariff-risk-prediction": check_tariff,
    "ev-charger-layout": check_ev, "customer-service-panorama": check_panorama,
    "business-hall-efficiency": check_halls, "customer-portrait": check_portrait,
    "abnormal-consumption-detection": check_abnormal_consumption,
    "transformer-overload-prediction": check_overload,
    "service-efficiency-analysis": check_service, "power-resumption-index": check_resumption,
    "abnormal-price-detection": check_price, "traffic-prediction": check_traffic,
}


@pytest.mark.parametrize("name", PRODUCTS)
def test_product_runs_on_another_units_demo_data(shop, name, tmp_path):
    unit, sub = RUN_BY[name], shop["subs"][RUN_BY[name]]
    tables = shop["ref"][unit]
    if name == DATA_PRODUCT:
        check_data_product(sub, tables, shop["ref"][DEMO_PRODUCTS[name]])
        return
    run, out = finished_run(shop, name, tmp_path)
    declared = {o["path"] for o in load_bundle(CATALOGUE / name).manifest["outputs"]}
    assert declared <= set(run["artifacts"]), declared - set(run["artifacts"])
    for path in run["artifacts"]:
        assert (tmp_path / path).stat().st_size > 0, path
    if name in TOOLS:
        sub.order(name, "per_use")  # a remote call is a use of its own
    CHECKS[name](out, tables, sub)


def check_data_product(sub, tables, publisher_tables):
    sub.order(DATA_PRODUCT, "per_use")
    result = sub.query(DATA_PRODUCT, "SELECT c.industry, count(DISTINCT c.customer_id) AS n, "
                       "sum(d.kwh) AS kwh FROM commercial_customers_public c JOIN "
                       "commercial_consumption_public d USING (customer_id) GROUP BY c.industry "
                       "ORDER BY c.industry")
    assert [c["name"] for c in result["columns"]] == ["industry", "n", "kwh"]
    register = publisher_tables["commercial_customers"]
    expected = register.groupby("industry").size()
    assert {row[0]: row[1] for row in result["rows"]} == expected.to_dict()
    sub.order(DATA_PRODUCT, "per_use")
    sample = sub.query(DATA_PRODUCT, "SELECT * FROM commercial_customers_public", limit=20)
    names = {c["name"] for c in sample["columns"]}
    assert "name" not in names and "transformer_id" not in names and "customer_id" in names
    ids = {row[[c["name"] for c in sample["columns"]].index("customer_id")]
           for row in sample["rows"]}
    assert not ids & set(register["customer_id"])  # pseudonyms, not the publisher's ids


def test_bad_input_is_refused_or_refunded(shop):
    sub = shop["subs"]["e"]
    name = "traffic-prediction"
    before = balance(sub)
    sub.order(name, "per_use")
    with pytest.raises(MarketAPIError) as e:
        sub.run(name, {"horizon": 99}, wait=False, progress=False)
    assert e.value.status == 400 and e.value.field == "parameters.horizon", e.value
    # the refused request spent nothing: the use is still there for a run on a table that
    # lacks a column, which fails naming both and refunds the use
    run = sub.run(name, {"contacts_table": "customers"}, progress=False, poll=0.5)
    assert run["status"] == "failed"
    assert "table 'customers' lacks the column 'channel'" in run["error"], run["error"]
    assert balance(sub) == before
    with pytest.raises(MarketAPIError) as e:
        sub.run(name, wait=False, progress=False)
    assert e.value.status == 403  # the refunded use is not handed out twice
