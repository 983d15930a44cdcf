"""Tests for marketplace_ext.griddata: the demo units' tables grown from the LCL readings."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from canaries import find_canaries

from marketplace_ext import griddata, griddata_commercial, griddata_service
from marketplace_ext.griddata import (
    ATTACK_NAMES,
    CANARY_MARKER,
    UNITS,
    assign_households,
    build_unit_tables,
    canary_values,
    read_readings,
)

SCALE = 0.01
DATA_DIR = griddata.default_data_dir()

EXPECTED = {
    "customers": {
        "customer_id": "string",
        "meter_id": "string",
        "name": "string",
        "phone": "string",
        "address": "string",
        "district": "string",
        "tariff_class": "string",
        "transformer_id": "string",
    },
    "consumption_daily": {
        "customer_id": "string",
        "day": "datetime64[ns]",
        "kwh": "float64",
        "n_halfhours": "int16",
    },
    "theft_labels": {
        "customer_id": "string",
        "is_thief": "bool",
        "attack": "string",
        "attack_start": "datetime64[ns]",
    },
    "billing": {
        "customer_id": "string",
        "month": "datetime64[ns]",
        "kwh": "float64",
        "amount": "float64",
        "due_date": "datetime64[ns]",
    },
    "payments": {
        "customer_id": "string",
        "month": "datetime64[ns]",
        "paid_amount": "float64",
        "paid_on": "datetime64[ns]",
        "days_late": "Int64",
        "status": "string",
    },
    "transformers": {
        "transformer_id": "string",
        "district": "string",
        "rated_kva": "float64",
        "lat": "float64",
        "lon": "float64",
    },
    "transformer_load": {
        "transformer_id": "string",
        "day": "datetime64[ns]",
        "peak_kw": "float64",
        "rated_kw": "float64",
        "load_ratio": "float64",
    },
    "charging_demand": {
        "site_id": "string",
        "kind": "string",
        "lat": "float64",
        "lon": "float64",
        "demand_kwh_per_day": "float64",
        "capacity": "float64",
        "district": "string",
    },
}


EXPECTED.update(griddata_commercial.SCHEMA)  # the commercial tables (issue 17)
EXPECTED.update(griddata_service.SCHEMA)  # the service tables (issue 17)


@pytest.fixture(scope="module")
def data_dir() -> Path:
    if not (DATA_DIR / griddata.READINGS_FILE).is_file():
        if "GRIDDATA_DIR" in os.environ:
            pytest.fail(f"GRIDDATA_DIR={DATA_DIR} holds no {griddata.READINGS_FILE}")
        pytest.skip(f"LCL data not available at {DATA_DIR} (set GRIDDATA_DIR)")
    return DATA_DIR


@pytest.fixture(scope="module")
def built(data_dir):
    return build_unit_tables(data_dir, scale=SCALE, seed=7)


def _assert_same(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    for name in left:
        pd.testing.assert_frame_equal(left[name], right[name], check_exact=True)
        assert (
            pd.util.hash_pandas_object(left[name]).to_numpy().tobytes()
            == pd.util.hash_pandas_object(right[name]).to_numpy().tobytes()
        ), name


# --- whole build -----------------------------------------------------------------------------


def test_build_is_deterministic(data_dir, built):
    again = build_unit_tables(data_dir, scale=SCALE, seed=7)
    assert again.keys() == built.keys() == set(UNITS)
    for unit in UNITS:
        _assert_same(built[unit], again[unit])


def test_a_unit_does_not_depend_on_which_others_are_built(data_dir, built):
    alone = build_unit_tables(data_dir, units=["d"], scale=SCALE, seed=7)
    assert list(alone) == ["d"]
    _assert_same(alone["d"], built["d"])


def test_every_table_has_its_columns_and_types(built):
    for unit, tables in built.items():
        assert set(tables) == set(EXPECTED), unit
        for name, columns in EXPECTED.items():
            df = tables[name]
            assert list(df.columns) == list(columns), (unit, name)
            assert {c: str(t) for c, t in df.dtypes.items()} == columns, (unit, name)
            assert len(df) > 0, (unit, name)
            assert df.index.equals(pd.RangeIndex(len(df))), (unit, name)


def test_units_are_uneven_and_disjoint(built):
    sizes = [len(built[u]["customers"]) for u in UNITS]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    assert sum(sizes) == round(SCALE * 5566)
    meters = [set(built[u]["customers"]["meter_id"]) for u in UNITS]
    assert sum(map(len, meters)) == sum(sizes)  # unique within and across units


def test_units_have_different_consumption_mixes(built):
    # households are ordered by source block and consumption before the split, so the first and
    # the last unit sit at opposite ends of it (about 6.5 vs 14 kWh/day at full scale)
    means = {u: t["consumption_daily"]["kwh"].mean() for u, t in built.items()}
    assert means["e"] - means["a"] > 2.0, means


def test_customer_ids_do_not_reveal_meters(built):
    for unit, tables in built.items():
        c = tables["customers"]
        assert c["customer_id"].str.fullmatch(rf"{unit.upper()}-\d{{6}}").all()
        assert c["customer_id"].is_unique and c["customer_id"].is_monotonic_increasing
        real = c[~c["meter_id"].str.startswith(CANARY_MARKER)]
        numbers = real["customer_id"].str[2:].astype(int)
        meters = real["meter_id"].str[3:].astype(int)
        assert not (numbers.to_numpy() == meters.to_numpy()).all()
        assert set(c["transformer_id"]) <= set(tables["transformers"]["transformer_id"])
        assert set(tables["consumption_daily"]["customer_id"]) == set(c["customer_id"])


def test_honest_readings_are_real_and_thieves_are_tampered_after_start(data_dir, built):
    real = read_readings(data_dir, households=round(SCALE * 5566), seed=7).set_index(
        ["LCLid", "day"]
    )["energy_sum_kwh"]
    tampered = 0
    for tables in built.values():
        c = tables["customers"].merge(tables["theft_labels"], on="customer_id")
        cd = tables["consumption_daily"].merge(c, on="customer_id")
        cd = cd[~cd["meter_id"].str.startswith(CANARY_MARKER)]
        orig = real.loc[pd.MultiIndex.from_frame(cd[["meter_id", "day"]])].to_numpy()
        same = np.isclose(cd["kwh"].to_numpy(), orig, equal_nan=True)
        attacked = (cd["is_thief"] & (cd["day"] >= cd["attack_start"])).to_numpy()
        assert same[~attacked].all()
        tampered += (~same[attacked]).sum()
        assert (cd["kwh"].dropna() >= 0).all()
        # tampered values carry no more decimals than the meter's 0.001 kWh
        kwh = cd["kwh"].dropna().to_numpy()
        assert np.allclose(kwh, np.round(kwh, 3), rtol=0, atol=1e-9)
    assert tampered > 0


def test_thief_labels_are_consistent_and_fractions_differ(built):
    fractions = {}
    for unit, tables in built.items():
        labels = tables["theft_labels"]
        assert labels["customer_id"].tolist() == tables["customers"]["customer_id"].tolist()
        thief = labels["is_thief"]
        assert thief.any(), unit
        assert labels.loc[thief, "attack"].isin(ATTACK_NAMES).all()
        assert labels.loc[~thief, "attack"].isna().all()
        assert labels.loc[thief, "attack_start"].notna().all()
        assert labels.loc[~thief, "attack_start"].isna().all()
        fractions[unit] = thief.mean()
    assert len(set(fractions.values())) > 1
    assert fractions["b"] > fractions["a"], fractions  # 15 % vs 4 % configured


def test_billing_follows_metered_kwh_and_tariff(built):
    for tables in built.values():
        b = tables["billing"]
        cd = tables["consumption_daily"]
        per_month = cd.groupby(["customer_id", cd["day"].dt.to_period("M").dt.start_time])["kwh"]
        expected = per_month.sum().round(3).to_numpy()
        assert np.allclose(b["kwh"].to_numpy(), expected)
        assert (b["month"].dt.day == 1).all() and (b["due_date"] > b["month"]).all()
        assert np.allclose(b["amount"], b["amount"].round(2), rtol=0, atol=1e-9)
        tariff = b["customer_id"].map(tables["customers"].set_index("customer_id")["tariff_class"])
        price = tariff.map({k: v[0] for k, v in griddata.TARIFFS.items()})
        days = per_month.size().to_numpy()
        standing = tariff.map({k: v[1] for k, v in griddata.TARIFFS.items()}) * days
        assert np.allclose(b["amount"], b["kwh"] * price + standing, atol=0.01)


def test_payments_are_coherent(built):
    for tables in built.values():
        p, b = tables["payments"], tables["billing"]
        assert p[["customer_id", "month"]].equals(b[["customer_id", "month"]])
        assert set(p["status"]) <= {"on_time", "late", "missed"}
        missed = p["status"] == "missed"
        assert p.loc[missed, "paid_on"].isna().all() and p.loc[missed, "days_late"].isna().all()
        assert (p.loc[missed, "paid_amount"] == 0).all()
        paid = p[~missed]
        due = b.loc[~missed, "due_date"]
        assert (paid["paid_amount"] == b.loc[~missed, "amount"]).all()
        late = paid["status"] == "late"
        assert (paid.loc[late, "days_late"] > 0).all()
        assert (paid.loc[~late, "days_late"] == 0).all()
        assert (paid.loc[~late, "paid_on"] <= due[~late]).all()
        delay = (paid.loc[late, "paid_on"] - due[late]).dt.days
        assert (delay.to_numpy() == paid.loc[late, "days_late"].to_numpy()).all()


def test_grid_tables(built):
    for unit, tables in built.items():
        tr, load = tables["transformers"], tables["transformer_load"]
        assert tr["transformer_id"].is_unique
        assert set(tr["district"]) <= set(griddata.DISTRICTS[unit])
        assert tables["customers"]["transformer_id"].value_counts().max() <= 60
        assert set(load["transformer_id"]) <= set(tr["transformer_id"])
        assert np.allclose(load["load_ratio"], load["peak_kw"] / load["rated_kw"], atol=1e-3)
        assert (load["peak_kw"] >= 0).all() and (load["rated_kw"] > 0).all()
        cd = tables["charging_demand"]
        sites = cd["kind"] == "candidate_site"
        assert sites.any() and (~sites).any()
        assert cd.loc[sites, "capacity"].gt(0).all()
        assert cd.loc[sites, "demand_kwh_per_day"].isna().all()
        assert cd.loc[~sites, "demand_kwh_per_day"].gt(0).all()
        assert cd.loc[~sites, "capacity"].isna().all()
    overloaded = pd.concat(t["transformer_load"] for t in built.values())["load_ratio"].gt(1.0)
    assert overloaded.any()


# --- canaries --------------------------------------------------------------------------------


def test_canaries_in_every_sensitive_column(built):
    seen: set[str] = set()
    for unit, tables in built.items():
        values = canary_values(tables)
        c = tables["customers"]
        for column, tag in griddata.CANARY_FIELDS.items():
            mine = {v for v in values if f"-{tag}-" in v}
            assert 2 <= len(mine) <= 3, (unit, column)
            assert mine <= set(c[column])
            assert all(v.startswith(f"{CANARY_MARKER}{unit}-") for v in mine)
        n = len(values) // len(griddata.CANARY_FIELDS)
        rows = c[c["meter_id"].str.startswith(CANARY_MARKER)]
        assert len(rows) == n and rows[list(griddata.CANARY_FIELDS)].notna().all().all()
        assert not values & seen
        seen |= values


def test_find_canaries_in_dumps(built):
    tables = built["b"]
    values = canary_values(tables)
    csv = tables["customers"].to_csv(index=False)
    assert find_canaries(csv.encode(), values) == sorted(values)
    assert find_canaries(csv) == sorted(values)
    records = json.dumps(tables["customers"].to_dict(orient="records"))
    assert find_canaries(records, values) == sorted(values)
    buf = io.StringIO()
    tables["consumption_daily"].head(500).to_csv(buf)
    assert find_canaries(buf.getvalue(), values) == []
    assert find_canaries(buf.getvalue()) == []
    assert find_canaries(b"Sophie Moore,+44 20 7946 0341,CANARY-", values) == []


def test_find_canaries_is_exact():
    assert find_canaries("x CANARY-a-name-12 y", {"CANARY-a-name-1"}) == []
    assert find_canaries("x CANARY-a-name-1, y", {"CANARY-a-name-1"}) == ["CANARY-a-name-1"]
    assert find_canaries("<td>CANARY-c-phone-2</td>") == ["CANARY-c-phone-2"]
    with pytest.raises(TypeError):
        find_canaries(123)  # type: ignore[arg-type]


# --- the attacks -----------------------------------------------------------------------------

WEEK = np.array([9.1, 12.4, 7.7, 10.0, 11.3, 15.2, 8.6])


@pytest.mark.parametrize("seed", range(20))
def test_h1_scales_by_one_factor(seed):
    out = griddata.attack_h1(WEEK, np.random.default_rng(seed))
    factor = out / WEEK
    assert np.allclose(factor, factor[0]) and 0.1 <= factor[0] <= 0.8


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("window", [WEEK, np.linspace(1, 2, 48)])
def test_h2_zeros_one_contiguous_run(seed, window):
    out = griddata.attack_h2(window, np.random.default_rng(seed))
    zero = np.flatnonzero(out == 0)
    assert zero.size >= int(np.ceil(len(window) / 6))  # 2 of 7 days, 8 of 48 half-hours
    assert (np.diff(zero) == 1).all()
    keep = np.ones(len(window), dtype=bool)
    keep[zero] = False
    assert (out[keep] == window[keep]).all()


@pytest.mark.parametrize("seed", range(20))
def test_h3_scales_each_reading_independently(seed):
    factor = griddata.attack_h3(WEEK, np.random.default_rng(seed)) / WEEK
    assert ((factor >= 0.1) & (factor <= 0.8)).all() and len(set(factor)) == len(WEEK)


@pytest.mark.parametrize("seed", range(20))
def test_h4_scales_the_mean(seed):
    factor = griddata.attack_h4(WEEK, np.random.default_rng(seed)) / WEEK.mean()
    assert ((factor >= 0.1) & (factor <= 0.8)).all() and len(set(factor)) == len(WEEK)


def test_h5_and_h6_keep_the_total():
    rng = np.random.default_rng(0)
    flat = griddata.attack_h5(WEEK, rng)
    assert np.allclose(flat, WEEK.mean()) and np.isclose(flat.sum(), WEEK.sum())
    rev = griddata.attack_h6(WEEK, rng)
    assert (rev == WEEK[::-1]).all() and np.isclose(rev.sum(), WEEK.sum())


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_attacks_are_pure(name):
    window = WEEK.copy()
    out = griddata.ATTACKS[name](window, np.random.default_rng(1))
    assert (window == WEEK).all() and out is not window and out.shape == WEEK.shape
    again = griddata.ATTACKS[name](window, np.random.default_rng(1))
    assert (out == again).all()


def test_tamper_works_on_weeks_from_the_start():
    days = np.arange("2013-01-01", "2013-02-01", dtype="datetime64[D]").astype("datetime64[ns]")
    kwh = np.round(np.random.default_rng(3).uniform(5, 15, len(days)), 3)
    kwh[20] = np.nan
    start = np.datetime64("2013-01-08")
    out = griddata.tamper(kwh, days, start, "h5", np.random.default_rng(0))
    before = days < start
    assert (out[before] == kwh[before]).all()
    assert np.isnan(out[20])
    week = (days[~before] - start).astype("timedelta64[D]").astype(int) // 7
    for w in np.unique(week):
        got, orig = out[~before][week == w], kwh[~before][week == w]
        ok = ~np.isnan(orig)
        assert np.allclose(got[ok], got[ok][0])  # flat within the calendar week
        assert abs(np.nansum(got) - np.nansum(orig)) < 0.001 * 7
    assert np.allclose(out[~np.isnan(out)], np.round(out[~np.isnan(out)], 3), rtol=0, atol=1e-12)


# --- splitting -------------------------------------------------------------------------------


def test_assign_households_is_uneven_ordered_and_seeded():
    ids = [f"MAC{i:06d}" for i in range(1000)]
    split = assign_households(ids)
    assert list(split) == list(UNITS)
    sizes = [len(split[u]) for u in UNITS]
    assert sizes == [350, 250, 180, 130, 90]
    assert sorted(sum(split.values(), [])) == ids
    position = {h: i for i, h in enumerate(ids)}
    mean_pos = [np.mean([position[h] for h in split[u]]) for u in UNITS]
    assert mean_pos == sorted(mean_pos)  # each unit leans to its stretch of the ordering
    assert assign_households(ids) == split
    assert assign_households(ids, seed=8) != split
    two = assign_households(ids, units=("c", "a"))
    assert [len(two["c"]), len(two["a"])] == [340, 660]


def test_assign_households_bad_input():
    with pytest.raises(ValueError, match="units"):
        assign_households(["x", "y"], units=("a", "zz"))
    with pytest.raises(ValueError, match="duplicates"):
        assign_households(["x", "x", "y", "z", "w", "v"])
    with pytest.raises(ValueError, match="household_ids"):
        assign_households(["x", "y"])


# --- bad input -------------------------------------------------------------------------------


def test_missing_data_dir_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        build_unit_tables(missing, scale=SCALE)
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        read_readings(missing)


def test_missing_data_file_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(griddata.READINGS_FILE)):
        read_readings(tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(griddata.WEATHER_FILE)):
        build_unit_tables(tmp_path, scale=SCALE)


@pytest.mark.parametrize("scale", [0, -0.1, 1.01, float("nan"), "0.5", True])
def test_bad_scale(tmp_path, scale):
    # validated before any file is touched, so tmp_path being empty does not matter
    with pytest.raises(ValueError, match="scale"):
        build_unit_tables(tmp_path, scale=scale)


@pytest.mark.parametrize("units", [("a", "f"), ("A",), "abc", (), ("a", "a")])
def test_bad_units(tmp_path, units):
    with pytest.raises(ValueError, match="units"):
        build_unit_tables(tmp_path, units=units, scale=SCALE)


@pytest.mark.parametrize("households", [0, -3, 2.5, True])
def test_bad_households(tmp_path, households):
    with pytest.raises(ValueError, match="households"):
        read_readings(tmp_path, households=households)


def test_too_many_households(data_dir):
    with pytest.raises(ValueError, match="households must be between 1 and 5566"):
        read_readings(data_dir, households=5567)


@pytest.mark.parametrize("seed", [-1, 1.5, None])
def test_bad_seed(tmp_path, seed):
    with pytest.raises(ValueError, match="seed"):
        build_unit_tables(tmp_path, scale=SCALE, seed=seed)
