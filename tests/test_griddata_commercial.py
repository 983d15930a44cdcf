"""The commercial tables and their injected ground truth (marketplace_ext.griddata_commercial),
built through griddata.build_unit_tables at 1 % scale."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from marketplace_ext import griddata
from marketplace_ext import griddata_commercial as gc


@pytest.fixture(scope="module")
def built():
    if not (griddata.default_data_dir() / griddata.READINGS_FILE).is_file():
        pytest.skip("LCL data not available (set GRIDDATA_DIR)")
    return griddata.build_unit_tables(griddata.default_data_dir(), units=["a", "c"],
                                      scale=0.01, seed=7)


def test_customers_and_consumption(built):
    for t in built.values():
        c, k = t["commercial_customers"], t["commercial_consumption_daily"]
        assert c["customer_id"].is_unique and len(c) >= 30
        assert set(c["industry"]) <= set(gc.INDUSTRIES)
        assert set(c["tariff_class"]) <= set(gc.TARIFF_CLASSES)
        assert set(c["transformer_id"]) <= set(t["transformers"]["transformer_id"])
        big = c["tariff_class"] == "large_industrial"
        assert (c.loc[big, "contracted_kw"] >= gc.LARGE_KW).all()
        assert set(k["customer_id"]) == set(c["customer_id"])
        assert (k["kwh"] >= 0).all() and k["kwh"].notna().all()
        # one reading per customer and day, over the households' period
        assert not k.duplicated(["customer_id", "day"]).any()
        assert k["day"].min() == t["consumption_daily"]["day"].min()


def test_price_errors_are_exactly_the_off_schedule_lines(built):
    t = built["a"]
    bills = t["commercial_bills"].merge(t["price_error_labels"], on="bill_id")
    register = t["commercial_customers"].set_index("customer_id")["tariff_class"]
    expected = np.array([gc.price_for(register[c], p, m) for c, p, m in
                         zip(bills["customer_id"], bills["period"], bills["month"], strict=True)])
    right = (np.isclose(bills["unit_price"], expected)
             & (bills["tariff_class"].to_numpy() == register[bills["customer_id"]].to_numpy())
             & np.isclose(bills["amount"], (bills["kwh"] * bills["unit_price"]).round(2)))
    assert (right == ~bills["is_error"]).all()
    assert 0.01 < bills["is_error"].mean() < 0.06
    assert set(bills.loc[bills["is_error"], "error_kind"]) <= set(gc.ERROR_KINDS)
    assert bills.loc[~bills["is_error"], "error_kind"].isna().all()
    stale = bills["error_kind"] == "stale_price"
    assert (bills.loc[stale.fillna(False), "month"] >= gc.PRICE_REVISION).all()


def test_abnormal_episodes_change_the_readings(built):
    t = built["a"]
    k = t["commercial_consumption_daily"].set_index(["customer_id", "day"])["kwh"]
    episodes = t["abnormal_consumption_labels"]
    assert len(episodes) == round(gc.ANOMALY_SHARE * len(t["commercial_customers"]))
    for e in episodes.itertuples(index=False):
        mine = k.loc[e.customer_id]
        inside = mine[(mine.index >= e.start) & (mine.index <= e.end)]
        normal = mine[(mine.index < e.start) & (mine.index >= e.start - pd.Timedelta(days=28))]
        ratio = inside.median() / normal.median()
        if e.kind == "spike":
            assert ratio > 1.3
        elif e.kind == "drop":
            assert ratio < 0.6
        else:
            assert inside.nunique() == 1


def test_overload_ramps_push_load_over_the_rating(built):
    for unit, t in built.items():
        load, episodes = t["transformer_load"], t["overload_episodes"]
        assert len(episodes) >= 1
        assert np.allclose(load["load_ratio"], load["peak_kw"] / load["rated_kw"], atol=1e-3)
        for e in episodes.itertuples(index=False):
            mine = load[(load["transformer_id"] == e.transformer_id)
                        & (load["day"] > e.start + pd.Timedelta(days=e.ramp_days))
                        & (load["day"] <= e.end)]
            assert mine["load_ratio"].max() > 1.0, (unit, e)


def test_resumption_truth_follows_the_scenario(built):
    truth = built["c"]["resumption_truth"]
    assert truth["activity"].between(0, 1).all()
    before = truth[truth["day"] < gc.SHUTDOWN_START]
    during = truth[(truth["day"] >= gc.SHUTDOWN_START)
                   & (truth["day"] < gc.SHUTDOWN_START + pd.Timedelta(days=gc.SHUTDOWN_DAYS))]
    assert (before["activity"] == 1).all()
    floors = during.groupby("industry")["activity"].max()
    assert floors.to_dict() == pytest.approx({k: v[4] for k, v in gc.INDUSTRIES.items()})
    assert (truth[truth["day"] == truth["day"].max()]["activity"] > 0.95).all()


def test_schedule_covers_every_class_period_and_month():
    s = gc._schedule()
    for klass in gc.TARIFF_CLASSES:
        for period in gc.PERIODS:
            rows = s[(s["tariff_class"] == klass) & (s["period"] == period)].sort_values(
                "valid_from")
            assert len(rows) == 2
            # no gap and no overlap between the two schedules
            assert rows["valid_from"].iloc[1] - rows["valid_to"].iloc[0] == pd.Timedelta(days=1)
