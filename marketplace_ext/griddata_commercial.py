"""Commercial and industrial customers, their tariffs and bills, with injected ground truth.

All synthetic (the London readings are households only) and deterministic: the same ``seed``
gives identical frames on any machine, and one unit's frames depend only on that unit's own
transformers and readings period. :func:`build_commercial` adds to one unit's tables:

- ``commercial_customers``: customer_id, name (a made-up business name), industry,
  tariff_class (``commercial``, ``industrial``, ``large_industrial``), district,
  transformer_id, contracted_kw, profile (weekly shape: ``weekday``, ``continuous``,
  ``weekend_peak``) and typical_kwh (a normal working day);
- ``commercial_consumption_daily``: customer_id, day, kwh - a weekly shape, a season, noise,
  a shutdown-and-resumption period around the 2013 Spring Festival (every industry drops and
  recovers at its own pace, faster in some districts) and abnormal episodes;
- ``tariff_schedule``: tariff_class, period (``peak``, ``flat``, ``valley``), valid_from,
  valid_to, price_per_kwh - two schedules, revised on :data:`PRICE_REVISION`;
- ``commercial_bills``: bill_id, customer_id, month, tariff_class, period, kwh, unit_price,
  amount - one line per customer, month and period, some of them priced wrongly;

and the labels (ground truth, never an input of a product, only of its evaluation):

- ``price_error_labels``: bill_id, is_error, error_kind (``wrong_class``, ``stale_price``,
  ``wrong_period``, ``amount_mismatch``, or <NA>);
- ``abnormal_consumption_labels``: customer_id, start, end, kind (``spike``, ``drop``,
  ``stuck``) - episodes injected into ``commercial_consumption_daily``;
- ``overload_episodes``: transformer_id, start, ramp_days, end, added_kw - load ramps (a new
  connection building up) injected into the unit's ``transformer_load``, which is rewritten
  (``peak_kw`` and ``load_ratio``) so those transformers run past their rating;
- ``resumption_truth``: industry, district, day, activity - the share of normal activity
  the shutdown scenario imposed, for the days around it.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np
import pandas as pd

TEXT = "string"
_DATE = "datetime64[ns]"

# industry: (class, weekly profile, typical kWh per working day, seasonal amplitude,
#            activity during the shutdown, days to recover, share of kWh at peak/flat/valley)
INDUSTRIES: Mapping[str, tuple[str, str, float, float, float, int, tuple[float, float, float]]] = {
    "manufacturing": ("industrial", "continuous", 1800.0, 0.06, 0.25, 35, (0.35, 0.40, 0.25)),
    "logistics": ("industrial", "continuous", 600.0, 0.08, 0.45, 20, (0.35, 0.40, 0.25)),
    "construction": ("industrial", "weekday", 300.0, 0.05, 0.10, 42, (0.45, 0.45, 0.10)),
    "office": ("commercial", "weekday", 250.0, 0.15, 0.35, 21, (0.50, 0.40, 0.10)),
    "retail": ("commercial", "weekend_peak", 400.0, 0.12, 0.55, 14, (0.50, 0.40, 0.10)),
    "hospitality": ("commercial", "weekend_peak", 350.0, 0.10, 0.30, 28, (0.55, 0.35, 0.10)),
    "healthcare": ("commercial", "continuous", 900.0, 0.10, 0.95, 3, (0.40, 0.40, 0.20)),
    "education": ("commercial", "weekday", 500.0, 0.18, 0.15, 30, (0.45, 0.45, 0.10)),
}
INDUSTRY_SHARE: Mapping[str, float] = {
    "manufacturing": 0.14, "logistics": 0.08, "construction": 0.08, "office": 0.22,
    "retail": 0.22, "hospitality": 0.12, "healthcare": 0.06, "education": 0.08,
}  # fmt: skip
PROFILES: Mapping[str, tuple[float, ...]] = {  # Monday .. Sunday
    "weekday": (1.0, 1.0, 1.0, 1.0, 0.97, 0.35, 0.25),
    "continuous": (1.0, 1.0, 1.0, 1.0, 1.0, 0.90, 0.85),
    "weekend_peak": (0.85, 0.85, 0.90, 0.95, 1.10, 1.35, 1.30),
}
TARIFF_CLASSES: tuple[str, ...] = ("commercial", "industrial", "large_industrial")
PERIODS: tuple[str, ...] = ("peak", "flat", "valley")
# price per kWh by class and period, before and after the revision
PRICES: Mapping[str, tuple[float, float, float]] = {
    "commercial": (0.210, 0.150, 0.090),
    "industrial": (0.180, 0.130, 0.070),
    "large_industrial": (0.160, 0.115, 0.060),
}
REVISED: Mapping[str, tuple[float, float, float]] = {
    "commercial": (0.222, 0.156, 0.088),
    "industrial": (0.192, 0.134, 0.068),
    "large_industrial": (0.171, 0.119, 0.058),
}
PRICE_REVISION = pd.Timestamp("2013-04-01")
LARGE_KW = 400.0  # contracted kW from which an industrial customer is large_industrial

SHUTDOWN_START = pd.Timestamp("2013-02-04")
SHUTDOWN_DAYS = 14
TRUTH_FROM = SHUTDOWN_START - pd.Timedelta(days=28)
TRUTH_TO = SHUTDOWN_START + pd.Timedelta(days=SHUTDOWN_DAYS + 70)

ERROR_KINDS: tuple[str, ...] = ("wrong_class", "stale_price", "wrong_period", "amount_mismatch")
ERROR_RATE = 0.03
ANOMALY_KINDS: tuple[str, ...] = ("spike", "drop", "stuck")
ANOMALY_SHARE = 0.25  # of customers with one injected episode
OVERLOAD_SHARE = 0.4  # of transformers with an injected load ramp

_NAMES_A = ("Northern", "Albion", "Crown", "Harbour", "Summit", "Meridian", "Oakwood", "Pioneer",
            "Riverside", "Sterling", "Thames", "Union", "Victoria", "Westfield", "Kestrel")
_NAMES_B = {
    "manufacturing": ("Engineering", "Plastics", "Metalworks", "Foods", "Textiles"),
    "logistics": ("Freight", "Distribution", "Cold Store", "Haulage"),
    "construction": ("Builders", "Civil Works", "Construction"),
    "office": ("Consulting", "Insurance", "Legal", "Software", "Holdings"),
    "retail": ("Stores", "Market", "Supermarket", "Outlet"),
    "hospitality": ("Hotel", "Restaurant", "Inn", "Leisure"),
    "healthcare": ("Clinic", "Care Home", "Medical Centre"),
    "education": ("Academy", "College", "School"),
}

SCHEMA: Mapping[str, Mapping[str, str]] = {
    "commercial_customers": {
        "customer_id": TEXT, "name": TEXT, "industry": TEXT, "tariff_class": TEXT,
        "district": TEXT, "transformer_id": TEXT, "contracted_kw": "float64", "profile": TEXT,
        "typical_kwh": "float64"},
    "commercial_consumption_daily": {"customer_id": TEXT, "day": _DATE, "kwh": "float64"},
    "tariff_schedule": {"tariff_class": TEXT, "period": TEXT, "valid_from": _DATE,
                        "valid_to": _DATE, "price_per_kwh": "float64"},
    "commercial_bills": {"bill_id": TEXT, "customer_id": TEXT, "month": _DATE,
                         "tariff_class": TEXT, "period": TEXT, "kwh": "float64",
                         "unit_price": "float64", "amount": "float64"},
    "price_error_labels": {"bill_id": TEXT, "is_error": "bool", "error_kind": TEXT},
    "abnormal_consumption_labels": {"customer_id": TEXT, "start": _DATE, "end": _DATE,
                                    "kind": TEXT},
    "overload_episodes": {"transformer_id": TEXT, "start": _DATE, "ramp_days": "int64",
                          "end": _DATE, "added_kw": "float64"},
    "resumption_truth": {"industry": TEXT, "district": TEXT, "day": _DATE,
                         "activity": "float64"},
}  # fmt: skip


def _rng(seed: int, *names: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


def activity(industry: str, district_speed: float, days: pd.DatetimeIndex) -> np.ndarray:
    """The share of normal activity on ``days`` under the shutdown scenario: 1 before it, the
    industry's floor for :data:`SHUTDOWN_DAYS`, then a linear recovery over the industry's
    recovery days divided by the district's speed."""
    floor, recover = INDUSTRIES[industry][4], INDUSTRIES[industry][5] / district_speed
    t = (days - SHUTDOWN_START).days.to_numpy().astype(float)
    after = np.clip((t - SHUTDOWN_DAYS) / max(recover, 1.0), 0.0, 1.0)
    out = np.where(t < 0, 1.0, np.where(t < SHUTDOWN_DAYS, floor, floor + (1 - floor) * after))
    return out


def price_for(tariff_class: str, period: str, month: pd.Timestamp) -> float:
    table = REVISED if month >= PRICE_REVISION else PRICES
    return table[tariff_class][PERIODS.index(period)]


def _customers(unit: str, transformers: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    rng = _rng(seed, unit, "commercial-customers")
    names = list(INDUSTRY_SHARE)
    p = np.array([INDUSTRY_SHARE[k] for k in names])
    industry = np.asarray(names)[rng.choice(len(names), n, p=p / p.sum())]
    at = rng.integers(0, len(transformers), n)
    typical = np.array([INDUSTRIES[i][2] for i in industry]) * rng.lognormal(0.0, 0.5, n)
    contracted = np.ceil(typical / 24 * rng.uniform(2.5, 4.0, n) / 10) * 10
    klass = np.array([INDUSTRIES[i][0] for i in industry], dtype=object)
    klass[(klass == "industrial") & (contracted >= LARGE_KW)] = "large_industrial"
    first = np.asarray(_NAMES_A)[rng.integers(0, len(_NAMES_A), n)]
    name = [f"{a} {_NAMES_B[i][rng.integers(0, len(_NAMES_B[i]))]} Ltd"
            for a, i in zip(first, industry, strict=True)]
    return pd.DataFrame({
        "customer_id": [f"{unit.upper()}-C{k:05d}" for k in rng.permutation(n) + 1],
        "name": name,
        "industry": industry,
        "tariff_class": klass.astype(str),
        "district": transformers["district"].to_numpy()[at],
        "transformer_id": transformers["transformer_id"].to_numpy()[at],
        "contracted_kw": contracted,
        "profile": [INDUSTRIES[i][1] for i in industry],
        "typical_kwh": typical.round(1),
    }).sort_values("customer_id", ignore_index=True)


def _consumption(unit: str, customers: pd.DataFrame, days: pd.DatetimeIndex, speed: dict,
                 seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = _rng(seed, unit, "commercial-consumption")
    dow = days.dayofweek.to_numpy()
    doy = days.dayofyear.to_numpy()
    frames, episodes = [], []
    chosen = set(rng.choice(len(customers), max(1, round(ANOMALY_SHARE * len(customers))),
                            replace=False).tolist())
    for i, c in enumerate(customers.itertuples(index=False)):
        amp = INDUSTRIES[c.industry][3]
        season = 1.0 + amp * np.cos(2 * np.pi * (doy - 15) / 365.25)
        shape = np.asarray(PROFILES[c.profile])[dow]
        act = activity(c.industry, speed[c.district], days)
        growth = 1.0 + rng.normal(0.0, 0.04) * (days - days[0]).days.to_numpy() / 365.0
        kwh = c.typical_kwh * shape * season * act * growth * rng.lognormal(0, 0.07, len(days))
        if i in chosen:
            kind = ANOMALY_KINDS[int(rng.integers(0, len(ANOMALY_KINDS)))]
            length = int(rng.integers(3, 15))
            # outside the shutdown window, so an episode is not hidden in it
            while True:
                s = int(rng.integers(30, len(days) - length - 1))
                if not (days[s] <= TRUTH_TO and days[s + length - 1] >= TRUTH_FROM):
                    break
            if kind == "spike":
                kwh[s:s + length] *= rng.uniform(1.8, 3.0)
            elif kind == "drop":
                kwh[s:s + length] *= rng.uniform(0.05, 0.35)
            else:  # a stuck meter repeats one reading
                kwh[s:s + length] = kwh[s - 1]
            episodes.append((c.customer_id, days[s], days[s + length - 1], kind))
        frames.append(pd.DataFrame({"customer_id": c.customer_id, "day": days,
                                    "kwh": np.round(kwh, 2)}))
    consumption = pd.concat(frames, ignore_index=True)
    labels = pd.DataFrame(episodes, columns=["customer_id", "start", "end", "kind"])
    return consumption, labels


def _schedule() -> pd.DataFrame:
    rows = []
    for klass in TARIFF_CLASSES:
        for k, period in enumerate(PERIODS):
            rows.append((klass, period, pd.Timestamp("2010-01-01"),
                         PRICE_REVISION - pd.Timedelta(days=1), PRICES[klass][k]))
            rows.append((klass, period, PRICE_REVISION, pd.Timestamp("2099-12-31"),
                         REVISED[klass][k]))
    return pd.DataFrame(rows, columns=["tariff_class", "period", "valid_from", "valid_to",
                                       "price_per_kwh"])


def _bills(unit: str, customers: pd.DataFrame, consumption: pd.DataFrame,
           seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = _rng(seed, unit, "commercial-bills")
    month = consumption["day"].dt.to_period("M").dt.start_time
    monthly = (consumption.assign(month=month).groupby(["customer_id", "month"], sort=True)
               ["kwh"].sum().reset_index())
    c = customers.set_index("customer_id")
    rows = []
    for r in monthly.itertuples(index=False):
        industry, klass = c.at[r.customer_id, "industry"], c.at[r.customer_id, "tariff_class"]
        shares = np.asarray(INDUSTRIES[industry][6]) * rng.uniform(0.9, 1.1, 3)
        shares /= shares.sum()
        for period, share in zip(PERIODS, shares, strict=True):
            rows.append((r.customer_id, r.month, klass, period, round(r.kwh * share, 1)))
    bills = pd.DataFrame(rows, columns=["customer_id", "month", "tariff_class", "period", "kwh"])
    bills.insert(0, "bill_id", [f"{unit.upper()}-B{k:07d}" for k in range(1, len(bills) + 1)])
    price = np.array([price_for(k, p, m) for k, p, m in
                      zip(bills["tariff_class"], bills["period"], bills["month"], strict=True)])
    kind = np.full(len(bills), None, dtype=object)
    wrong = np.flatnonzero(rng.random(len(bills)) < ERROR_RATE)
    klass = bills["tariff_class"].to_numpy(dtype=object).copy()
    for i in wrong:
        m, p, k = bills.at[i, "month"], bills.at[i, "period"], klass[i]
        options = ["wrong_class", "wrong_period", "amount_mismatch"]
        if m >= PRICE_REVISION:
            options.append("stale_price")
        kind[i] = options[int(rng.integers(0, len(options)))]
        if kind[i] == "wrong_class":
            klass[i] = [t for t in TARIFF_CLASSES if t != k][int(rng.integers(0, 2))]
            price[i] = price_for(klass[i], p, m)
        elif kind[i] == "wrong_period":
            other = [q for q in PERIODS if q != p][int(rng.integers(0, 2))]
            price[i] = price_for(k, other, m)
        elif kind[i] == "stale_price":
            price[i] = PRICES[k][PERIODS.index(p)]
    amount = np.round(bills["kwh"].to_numpy() * price, 2)
    for i in wrong:
        if kind[i] == "amount_mismatch":  # a keying error: the amount, not the price, is off
            amount[i] = round(amount[i] * rng.choice([0.1, 0.5, 1.5, 2.0, 10.0]), 2)
    bills = bills.assign(tariff_class=klass.astype(str), unit_price=price, amount=amount)
    labels = pd.DataFrame({"bill_id": bills["bill_id"], "is_error": pd.notna(kind),
                           "error_kind": pd.array(kind, dtype=TEXT)})
    return bills, labels


def _overloads(unit: str, load: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = _rng(seed, unit, "overloads")
    ids = np.sort(load["transformer_id"].unique())
    picked = np.sort(rng.choice(len(ids), max(1, round(OVERLOAD_SHARE * len(ids))),
                                replace=False))
    load = load.copy()
    peak = load["peak_kw"].to_numpy(dtype=float).copy()
    episodes = []
    for i in picked:
        tid = ids[i]
        idx = np.flatnonzero(load["transformer_id"].to_numpy() == tid)
        if len(idx) < 120:
            continue
        for _ in range(int(rng.integers(1, 4))):
            ramp, hold = int(rng.integers(7, 22)), int(rng.integers(5, 21))
            s = int(rng.integers(60, len(idx) - ramp - hold))
            rated = float(load["rated_kw"].to_numpy()[idx[s]])
            # the held load reaches 1.1-1.4 times the rating on a median day of the episode
            median = float(np.median(peak[idx[s:s + ramp + hold]]))
            added = max(0.0, rated * rng.uniform(1.1, 1.4) - median)
            bump = np.concatenate([np.linspace(added / ramp, added, ramp), np.full(hold, added)])
            peak[idx[s:s + ramp + hold]] += bump
            days = load["day"].to_numpy()
            episodes.append((tid, days[idx[s]], ramp, days[idx[s + ramp + hold - 1]],
                             round(added, 2)))
    peak = np.round(peak, 2)
    load["peak_kw"] = peak
    load["load_ratio"] = np.round(peak / load["rated_kw"].to_numpy(), 4)
    labels = pd.DataFrame(episodes, columns=["transformer_id", "start", "ramp_days", "end",
                                             "added_kw"]).sort_values(["transformer_id",
                                                                       "start"],
                                                                      ignore_index=True)
    return load, labels


def build_commercial(unit: str, tables: Mapping[str, pd.DataFrame],
                     seed: int = 7) -> dict[str, pd.DataFrame]:
    """The commercial tables of one unit, from its ``transformers``, ``transformer_load`` and
    ``consumption_daily`` (for the period); returns them with ``transformer_load`` rewritten
    (injected overload ramps). Sized from the unit's households: 15 % of them, at least 30."""
    transformers, load = tables["transformers"], tables["transformer_load"]
    households = len(tables["customers"])
    day = tables["consumption_daily"]["day"]
    days = pd.date_range(day.min(), day.max(), freq="D")
    rng = _rng(seed, unit, "commercial-districts")
    districts = sorted(transformers["district"].unique())
    speed = {d: float(rng.uniform(0.7, 1.4)) for d in districts}
    customers = _customers(unit, transformers, max(30, round(0.15 * households)), seed)
    consumption, anomalies = _consumption(unit, customers, days, speed, seed)
    bills, errors = _bills(unit, customers, consumption, seed)
    new_load, episodes = _overloads(unit, load, seed)
    window = pd.date_range(max(TRUTH_FROM, days[0]), min(TRUTH_TO, days[-1]), freq="D")
    truth = pd.concat([
        pd.DataFrame({"industry": ind, "district": d, "day": window,
                      "activity": np.round(activity(ind, speed[d], window), 4)})
        for ind in INDUSTRIES for d in districts], ignore_index=True)
    out = {
        "commercial_customers": customers,
        "commercial_consumption_daily": consumption,
        "tariff_schedule": _schedule(),
        "commercial_bills": bills,
        "price_error_labels": errors,
        "abnormal_consumption_labels": anomalies,
        "overload_episodes": episodes,
        "resumption_truth": truth,
    }
    typed = {name: df.astype(dict(SCHEMA[name])) for name, df in out.items()}
    return {**typed, "transformer_load": new_load}
