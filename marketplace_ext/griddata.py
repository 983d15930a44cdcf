"""Demo business tables for the provincial units, grown from real London smart-meter readings.

The Low Carbon London daily readings (see ``/work/shared/data/lcl_daily/SOURCE.md``) are the only
real part: households are split unevenly across the demo units and each unit gets its customers,
daily consumption, theft labels, bills, payments, transformers, transformer load and EV-charging
demand as pandas DataFrames. Everything else - names, tariffs, payment behaviour, the grid - is
synthesised from a seed, so the same ``seed`` and ``scale`` give identical frames on any machine.

Thieves are synthesised with the false-data-injection attacks h1-h6 of Jokar, Arianpoo and Leung
(IEEE Trans. Smart Grid 7(1), 2016), applied to weekly windows of a thief's readings. Each unit
also holds a few canary customers whose sensitive fields are unique marker strings, so a leak test
can search any exported bytes for them (``tests/canaries.py``).

This module only builds frames; writing them into the unit's Hive database is
:mod:`marketplace_ext.platform`'s concern.
"""

from __future__ import annotations

import math
import os
import re
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from . import griddata_commercial, griddata_service

#: the dtype of every text column: pandas' nullable string (missing values are <NA>)
TEXT = "string"

UNITS: tuple[str, ...] = ("a", "b", "c", "d", "e")

READINGS_FILE = "lcl_daily_kwh.csv.gz"


def default_data_dir() -> Path:
    """Where the read-only LCL data lives: $MARKET_LCL_DATA, else ``../shared/data/lcl_daily``
    beside the checkout, else the workplace's ``/work/shared/data/lcl_daily``."""
    env = os.environ.get("MARKET_LCL_DATA") or os.environ.get("GRIDDATA_DIR")
    if env:
        return Path(env)
    beside = Path(__file__).resolve().parents[2] / "shared" / "data" / "lcl_daily"
    if beside.exists():
        return beside
    return Path("/work/shared/data/lcl_daily")


WEATHER_FILE = "weather_daily_darksky.csv.gz"

# Share of households per unit and fraction of thieves: deliberately unequal, so a model or a
# federated round sees units of different size and base rate.
UNIT_WEIGHTS: Mapping[str, float] = {"a": 0.35, "b": 0.25, "c": 0.18, "d": 0.13, "e": 0.09}
THIEF_FRACTION: Mapping[str, float] = {"a": 0.04, "b": 0.15, "c": 0.07, "d": 0.10, "e": 0.12}
# Each unit needs room for its canaries and at least one thief, even at tiny scales.
MIN_HOUSEHOLDS_PER_UNIT = 4

DISTRICTS: Mapping[str, tuple[str, ...]] = {
    "a": ("Northgate", "Millbrook", "Ashby Vale", "Kingsmere", "Riverside"),
    "b": ("Eastwick", "Hollowmead", "Stonebridge", "Marlow Heath"),
    "c": ("Westcombe", "Fairhaven", "Oakley Down", "Thornleigh", "Larkfield", "Greywater"),
    "d": ("Southmere Green", "Elmstead", "Cranwell"),
    "e": ("Highmoor", "Brackenridge", "Willowby", "Fenwick"),
}
# Rough centre of each unit's area (lat, lon), around Greater London where the meters are.
UNIT_CENTRES: Mapping[str, tuple[float, float]] = {
    "a": (51.55, -0.25),
    "b": (51.45, -0.05),
    "c": (51.60, 0.05),
    "d": (51.40, -0.30),
    "e": (51.50, 0.15),
}

TARIFF_CLASSES: tuple[str, ...] = ("standard", "time_of_use", "economy7", "business")
# price per kWh and standing charge per billed day, in currency units
TARIFFS: Mapping[str, tuple[float, float]] = {
    "standard": (0.145, 0.24),
    "time_of_use": (0.138, 0.24),
    "economy7": (0.128, 0.26),
    "business": (0.160, 0.45),
}
PAYMENT_STATUSES: tuple[str, ...] = ("on_time", "late", "missed")
ATTACK_NAMES: tuple[str, ...] = ("h1", "h2", "h3", "h4", "h5", "h6")
ATTACK_WINDOW_DAYS = 7
POWER_FACTOR = 0.95

CANARY_MARKER = "CANARY-"
CANARY_FIELDS: Mapping[str, str] = {
    "name": "name",
    "phone": "phone",
    "address": "address",
    "meter_id": "meter",
}
# Markers use only [A-Za-z0-9-] so CSV quoting, JSON, HTML and URL encoding leave them intact.
CANARY_PATTERN = re.compile(
    re.escape(CANARY_MARKER) + r"[a-z0-9]+-(?:name|phone|address|meter)-[0-9]+(?![0-9])"
)

_DATE = "datetime64[ns]"

_FIRST_NAMES = (
    "Oliver", "Amelia", "George", "Isla", "Harry", "Ava", "Jack", "Mia", "Noah", "Grace",
    "Leo", "Lily", "Arthur", "Freya", "Oscar", "Emily", "Charlie", "Sophie", "Thomas", "Ella",
    "James", "Poppy", "William", "Evie", "Henry", "Alice", "Samuel", "Ruby", "Joseph", "Chloe",
    "Priya", "Mohammed", "Aisha", "Ravi", "Fatima", "Tomasz", "Zofia", "Kwame", "Ngozi", "Wei",
)  # fmt: skip
_LAST_NAMES = (
    "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Patel",
    "Robinson", "Wright", "Thompson", "Evans", "Walker", "White", "Roberts", "Green", "Hall",
    "Wood", "Jackson", "Clarke", "Khan", "Hughes", "Edwards", "Lewis", "Hill", "Moore", "Cooper",
    "Ahmed", "Nowak", "Okafor", "Mensah", "Chen", "Singh", "Murphy", "Kelly", "Price", "Bennett",
)  # fmt: skip
_STREETS = (
    "Elm", "Oak", "Beech", "Chestnut", "Rowan", "Willow", "Station", "Church", "Mill", "Park",
    "Victoria", "Albert", "Queens", "Kings", "Manor", "Meadow", "Orchard", "Spring", "Bridge",
    "High", "Cedar", "Holly", "Laurel", "Maple", "Hawthorn", "Linden", "Poplar", "Ash",
)  # fmt: skip
_STREET_KINDS = ("Road", "Street", "Lane", "Avenue", "Close", "Gardens", "Way", "Crescent")
# Ofcom reserves these for drama, so no synthetic customer gets a real person's number.
_PHONES = tuple(f"+44 20 7946 0{i:03d}" for i in range(1000)) + tuple(
    f"+44 7700 900{i:03d}" for i in range(1000)
)


# --- the Jokar et al. attacks: pure functions of one window of readings -------------------------


def attack_h1(window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """h1: multiply the whole window by one factor ``a ~ U(0.1, 0.8)``."""
    return window * rng.uniform(0.1, 0.8)


def attack_h2(window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """h2: zero one contiguous run of readings, leave the rest untouched.

    The paper's run is at least 4 h of a 24 h day (8 of 48 half-hours); here the same share of the
    window (at least 2 of 7 days), starting anywhere it fits.
    """
    t = len(window)
    shortest = min(t, max(1, math.ceil(t * 8 / 48)))
    run = int(rng.integers(shortest, t + 1))
    start = int(rng.integers(0, t - run + 1))
    out = np.array(window, dtype=float)
    out[start : start + run] = 0.0
    return out


def attack_h3(window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """h3: multiply each reading by its own factor ``g_t ~ U(0.1, 0.8)``."""
    return window * rng.uniform(0.1, 0.8, size=len(window))


def attack_h4(window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """h4: replace each reading by ``g_t * mean(window)`` with ``g_t ~ U(0.1, 0.8)``."""
    return rng.uniform(0.1, 0.8, size=len(window)) * np.mean(window)


def attack_h5(window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """h5: a flat profile at the window mean (same total)."""
    return np.full(len(window), np.mean(window), dtype=float)


def attack_h6(window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """h6: the readings in reverse order (same total)."""
    return np.array(window[::-1], dtype=float)


ATTACKS: Mapping[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "h1": attack_h1,
    "h2": attack_h2,
    "h3": attack_h3,
    "h4": attack_h4,
    "h5": attack_h5,
    "h6": attack_h6,
}


def tamper(
    kwh: np.ndarray,
    days: np.ndarray,
    start: np.datetime64,
    attack: str,
    rng: np.random.Generator,
) -> np.ndarray:
    """Apply ``attack`` to one household's readings on 7-day windows from ``start`` on.

    ``days`` are the (sorted) days of ``kwh``. A window is a calendar week counted from ``start``,
    holding whichever days have a reading; missing readings (NaN) stay missing. Tampered values are
    rounded to 0.001 kWh like the real ones, so the number of decimals gives no thief away.
    """
    out = np.array(kwh, dtype=float)
    offset = (days.astype("datetime64[D]") - np.datetime64(start, "D")).astype(np.int64)
    week = np.where(offset >= 0, offset // ATTACK_WINDOW_DAYS, -1)
    fn = ATTACKS[attack]
    for w in np.unique(week[week >= 0]):
        idx = np.flatnonzero((week == w) & np.isfinite(kwh))
        if idx.size:
            out[idx] = np.round(fn(out[idx], rng), 3)
    return out


# --- reading the real data -----------------------------------------------------------------------


def _data_file(data_dir: Path | str, name: str) -> Path:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"LCL data directory not found: {data_dir}")
    path = data_dir / name
    if not path.is_file():
        raise FileNotFoundError(f"LCL data file not found: {path}")
    return path


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _rng(seed: int, *names: str) -> np.random.Generator:
    # One independent stream per (unit, purpose): changing one table's recipe must not shift
    # another's draws. crc32, not hash(), because str hashes are salted per process.
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


def _read_table(data_dir: Path | str) -> pa.Table:
    # pyarrow reads the whole gzip in ~0.6 s on two cores; a first pass over LCLid alone costs
    # the same (decompression dominates), so there is nothing to gain from two passes.
    options = pacsv.ConvertOptions(
        column_types={
            "LCLid": pa.string(),
            "day": pa.date32(),
            "energy_sum_kwh": pa.float64(),
            "n_halfhours": pa.int16(),
            "block": pa.int16(),
        },
        include_columns=["LCLid", "day", "energy_sum_kwh", "n_halfhours", "block"],
    )
    return pacsv.read_csv(_data_file(data_dir, READINGS_FILE), convert_options=options)


def _sample_households(table: pa.Table, households: int | None, seed: int) -> pd.DataFrame:
    if households is not None:
        ids = np.sort(pc.unique(table["LCLid"]).to_numpy(zero_copy_only=False))
        if not 1 <= households <= len(ids):
            raise ValueError(f"households must be between 1 and {len(ids)}, got {households}")
        # a permutation prefix, so a smaller sample is a subset of a larger one with the same seed
        chosen = ids[_rng(seed, "households").permutation(len(ids))[:households]]
        table = table.filter(pc.is_in(table["LCLid"], value_set=pa.array(chosen)))
    table = table.set_column(
        table.schema.get_field_index("day"), "day", table["day"].cast(pa.timestamp("ns"))
    )
    df = table.to_pandas()
    return df.sort_values(["LCLid", "day"], kind="stable", ignore_index=True)


def read_readings(
    data_dir: Path | str, households: int | None = None, seed: int = 7
) -> pd.DataFrame:
    """Read the LCL daily readings, optionally a seeded sample of ``households`` households.

    Returns columns ``LCLid`` (str), ``day`` (datetime64[ns]), ``energy_sum_kwh`` (float64, NaN
    where the source is empty), ``n_halfhours`` (int16) and ``block`` (int16), sorted by
    household and day. Raises :class:`FileNotFoundError` naming the missing path and
    :class:`ValueError` for a bad ``households`` or ``seed``.
    """
    seed = _check_seed(seed)
    if households is not None and (
        isinstance(households, bool) or not isinstance(households, int | np.integer)
    ):
        raise ValueError(f"households must be an integer or None, got {households!r}")
    if households is not None and households < 1:
        raise ValueError(f"households must be at least 1, got {households}")
    return _sample_households(_read_table(data_dir), households, seed)


def _read_weather(data_dir: Path | str) -> pd.DataFrame:
    w = pd.read_csv(
        _data_file(data_dir, WEATHER_FILE), usecols=["time", "temperatureMin", "temperatureMax"]
    )
    # Dark Sky stamps local midnight in UTC: 23:00 of the previous day during British Summer
    # Time. Normalising without the hour back would give duplicate and missing days.
    day = (pd.to_datetime(w["time"]) + pd.Timedelta(hours=1)).dt.normalize().astype(_DATE)
    w = pd.DataFrame({"day": day, "t_min": w["temperatureMin"], "t_max": w["temperatureMax"]})
    return w.drop_duplicates("day").set_index("day").sort_index()


# --- splitting households across units -----------------------------------------------------------


def _check_units(units: object) -> tuple[str, ...]:
    if isinstance(units, str) or not isinstance(units, Iterable):
        raise ValueError(f"units must be a sequence of unit names from {UNITS}, got {units!r}")
    units = tuple(units)
    unknown = [u for u in units if u not in UNITS]
    if unknown:
        raise ValueError(f"units: unknown unit name(s) {unknown!r}; known units are {UNITS}")
    if not units:
        raise ValueError("units must name at least one unit")
    if len(set(units)) != len(units):
        raise ValueError(f"units must not repeat a unit, got {units!r}")
    return units


def _split_sizes(n: int, weights: Sequence[float]) -> np.ndarray:
    # largest remainder, then every unit gets at least one household
    w = np.asarray(weights, dtype=float) / sum(weights)
    raw = n * w
    sizes = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - sizes), kind="stable")[: n - sizes.sum()]:
        sizes[i] += 1
    while (sizes == 0).any():
        sizes[np.argmax(sizes)] -= 1
        sizes[np.argmin(sizes)] += 1
    return sizes


def assign_households(
    household_ids: Sequence[str], units: Sequence[str] = UNITS, seed: int = 7
) -> dict[str, list[str]]:
    """Split households across ``units`` unevenly (weights :data:`UNIT_WEIGHTS`).

    The order of ``household_ids`` matters: it is read as a feature axis, and each unit takes a
    noisy contiguous stretch of it, so if the ids come sorted by some feature (consumption level,
    source block) the units get different mixes. Returns each unit's ids, sorted.
    """
    units = _check_units(units)
    seed = _check_seed(seed)
    ids = [str(h) for h in household_ids]
    if len(set(ids)) != len(ids):
        raise ValueError("household_ids must not contain duplicates")
    if len(ids) < len(units):
        raise ValueError(
            f"household_ids: {len(ids)} households cannot be split across {len(units)} units"
        )
    n = len(ids)
    sizes = _split_sizes(n, [UNIT_WEIGHTS[u] for u in units])
    # noise of 0.2 of the whole axis: neighbouring units overlap, far ones barely do
    soft = np.arange(n) / n + _rng(seed, "assign").normal(0.0, 0.2, size=n)
    order = np.argsort(soft, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return {
        u: sorted(ids[i] for i in order[bounds[k] : bounds[k + 1]]) for k, u in enumerate(units)
    }


def _households_for_scale(total: int, scale: float) -> int:
    floor = math.ceil(MIN_HOUSEHOLDS_PER_UNIT / min(UNIT_WEIGHTS.values()))
    return min(total, max(floor, round(scale * total)))


# --- one unit's tables ---------------------------------------------------------------------------


def _customers(unit: str, households: list[str], level: pd.Series, seed: int) -> pd.DataFrame:
    rng = _rng(seed, unit, "customers")
    n = len(households)
    # numbered in a shuffled order so a customer_id says nothing about the meter behind it
    numbers = rng.permutation(n) + 1
    districts = DISTRICTS[unit]
    district_p = rng.dirichlet(np.full(len(districts), 3.0))
    q = level.loc[households].rank(pct=True).to_numpy()
    tou_share = rng.uniform(0.05, 0.25)
    p = np.column_stack(
        [
            np.zeros(n),
            np.full(n, tou_share),
            0.10 + 0.20 * q,
            0.02 + 0.18 * q**3,
        ]
    )
    p[:, 0] = 1.0 - p[:, 1:].sum(axis=1)
    tariff = [TARIFF_CLASSES[i] for i in (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)]
    phone_idx = rng.choice(len(_PHONES), size=n, replace=n > len(_PHONES))
    district = np.asarray(districts)[rng.choice(len(districts), size=n, p=district_p)]
    first = np.asarray(_FIRST_NAMES)[rng.integers(0, len(_FIRST_NAMES), n)]
    last = np.asarray(_LAST_NAMES)[rng.integers(0, len(_LAST_NAMES), n)]
    street = np.asarray(_STREETS)[rng.integers(0, len(_STREETS), n)]
    kind = np.asarray(_STREET_KINDS)[rng.integers(0, len(_STREET_KINDS), n)]
    house_no = rng.integers(1, 240, n)
    df = pd.DataFrame(
        {
            "customer_id": [f"{unit.upper()}-{k:06d}" for k in numbers],
            "meter_id": households,
            "name": [f"{a} {b}" for a, b in zip(first, last, strict=True)],
            "phone": [_PHONES[i] for i in phone_idx],
            "address": [
                f"{h} {s} {k}, {d}"
                for h, s, k, d in zip(house_no, street, kind, district, strict=True)
            ],
            "district": district,
            "tariff_class": tariff,
        }
    )
    # canaries: real households whose sensitive fields become unique markers
    rows = rng.choice(n, size=min(n, int(rng.integers(2, 4))), replace=False)
    for k, row in enumerate(sorted(rows), start=1):
        for column, tag in CANARY_FIELDS.items():
            df.loc[row, column] = f"{CANARY_MARKER}{unit}-{tag}-{k}"
    return df


def _theft(
    unit: str, customer_ids: np.ndarray, readings: pd.DataFrame, seed: int
) -> tuple[pd.DataFrame, np.ndarray]:
    """Pick thieves, tamper their readings; return the labels and the metered kWh."""
    rng = _rng(seed, unit, "theft")
    n = len(customer_ids)
    n_thieves = min(n, max(1, round(THIEF_FRACTION[unit] * n)))
    thieves = np.sort(rng.choice(n, size=n_thieves, replace=False))
    attack = np.full(n, None, dtype=object)
    start = np.full(n, np.datetime64("NaT"), dtype=_DATE)
    kwh = readings["kwh"].to_numpy(dtype=float, copy=True)
    days = readings["day"].to_numpy()
    # readings are sorted by customer_id, as are customer_ids
    bounds = np.searchsorted(readings["customer_id"].to_numpy(), customer_ids)
    bounds = np.append(bounds, len(readings))
    for i in thieves:
        lo, hi = bounds[i], bounds[i + 1]
        if hi == lo:
            continue
        name = ATTACK_NAMES[int(rng.integers(0, len(ATTACK_NAMES)))]
        # leave a clean stretch before the attack so a detector has something to compare with
        first, last = days[lo], days[hi - 1]
        day0 = first + ((last - first) * rng.uniform(0.2, 0.7)).astype("timedelta64[D]")
        attack[i], start[i] = name, day0
        kwh[lo:hi] = tamper(kwh[lo:hi], days[lo:hi], day0, name, rng)
    is_thief = np.zeros(n, dtype=bool)
    is_thief[thieves] = True
    labels = pd.DataFrame(
        {
            "customer_id": customer_ids,
            "is_thief": is_thief,
            "attack": pd.array(attack, dtype=TEXT),
            "attack_start": start,
        }
    )
    return labels, kwh


def _billing(consumption: pd.DataFrame, customers: pd.DataFrame) -> pd.DataFrame:
    month = consumption["day"].dt.to_period("M").dt.start_time.astype(_DATE)
    g = (
        consumption.assign(month=month)
        .groupby(["customer_id", "month"], sort=True)
        .agg(kwh=("kwh", "sum"), days=("day", "size"))
        .reset_index()
    )
    tariff = g["customer_id"].map(customers.set_index("customer_id")["tariff_class"])
    price = tariff.map({k: v[0] for k, v in TARIFFS.items()}).astype(float)
    standing = tariff.map({k: v[1] for k, v in TARIFFS.items()}).astype(float)
    # the bill charges what the meter says (tampered for thieves) plus a daily standing charge
    return pd.DataFrame(
        {
            "customer_id": g["customer_id"],
            "month": g["month"],
            "kwh": g["kwh"].round(3),
            "amount": (g["kwh"] * price + g["days"] * standing).round(2),
            "due_date": (g["month"] + pd.DateOffset(months=1, days=14)).astype(_DATE),
        }
    )


def _payments(
    unit: str, billing: pd.DataFrame, customers: pd.DataFrame, level: pd.Series, seed: int
) -> pd.DataFrame:
    rng = _rng(seed, unit, "payments")
    c = customers.set_index("customer_id")
    # risk = unit base + tariff + consumption level + district + a per-customer habit
    tariff_effect = {"standard": 0.0, "time_of_use": -0.3, "economy7": 0.4, "business": -0.6}
    districts = DISTRICTS[unit]
    district_effect = dict(zip(districts, rng.normal(0.0, 0.6, len(districts)), strict=True))
    log_level = np.log(level.loc[c.index].to_numpy() + 0.1)
    z = (log_level - log_level.mean()) / (log_level.std() or 1.0)
    habit = rng.normal(0.0, 0.7, len(c))
    risk = pd.Series(
        rng.uniform(-2.2, -1.2)
        + c["tariff_class"].map(tariff_effect).to_numpy()
        + 0.5 * z
        + c["district"].map(district_effect).to_numpy()
        + habit,
        index=c.index,
    )
    s = billing["customer_id"].map(risk).to_numpy()
    # multinomial logit: on_time 0, late s, missed s - 1.8
    e_late, e_missed = np.exp(s), np.exp(s - 1.8)
    total = 1.0 + e_late + e_missed
    u = rng.random(len(billing))
    status_idx = np.where(u < e_missed / total, 2, np.where(u < (e_missed + e_late) / total, 1, 0))
    late_days = np.minimum(90, rng.geometric(1 / 12, len(billing)))
    early_days = rng.integers(0, 15, len(billing))
    days_late = np.where(status_idx == 1, late_days, 0)
    due = billing["due_date"].to_numpy()
    paid_on = due + (np.where(status_idx == 1, late_days, -early_days)).astype("timedelta64[D]")
    missed = status_idx == 2
    paid_on[missed] = np.datetime64("NaT")
    return pd.DataFrame(
        {
            "customer_id": billing["customer_id"],
            "month": billing["month"],
            "paid_amount": np.where(missed, 0.0, billing["amount"].to_numpy()),
            "paid_on": pd.Series(paid_on, dtype=_DATE),
            "days_late": pd.array(np.where(missed, None, days_late), dtype="Int64"),
            "status": pd.array(np.asarray(PAYMENT_STATUSES)[status_idx], dtype=TEXT),
        }
    )


def _group_sizes(n: int, rng: np.random.Generator, low: int = 20, high: int = 60) -> list[int]:
    if n <= high:
        return [n]
    k = int(np.clip(round(n / rng.uniform(30, 50)), math.ceil(n / high), max(1, n // low)))
    sizes = np.full(k, n // k)
    sizes[: n % k] += 1
    for _ in range(2 * k):  # jitter sizes, staying within [low, high]
        i, j = rng.choice(k, 2, replace=False)
        room = min(sizes[i] - low, high - sizes[j])
        if room > 0:
            m = int(rng.integers(0, room + 1))
            sizes[i] -= m
            sizes[j] += m
    return sizes.tolist()


def _grid(
    unit: str,
    customers: pd.DataFrame,
    true_consumption: pd.DataFrame,
    weather: pd.DataFrame,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, dict[str, tuple[float, float]]]:
    """Transformers, their daily load, each customer's transformer and the district centres."""
    rng = _rng(seed, unit, "grid")
    lat0, lon0 = UNIT_CENTRES[unit]
    centres = {
        d: (lat0 + rng.normal(0, 0.03), lon0 + rng.normal(0, 0.045)) for d in DISTRICTS[unit]
    }
    rows, member = [], {}
    for district in DISTRICTS[unit]:
        ids = customers.loc[customers["district"] == district, "customer_id"].to_numpy()
        ids = ids[rng.permutation(len(ids))]
        at = 0
        for size in _group_sizes(len(ids), rng):
            tid = f"{unit.upper()}-T{len(rows) + 1:04d}"
            rows.append(
                {
                    "transformer_id": tid,
                    "district": district,
                    "lat": round(centres[district][0] + rng.normal(0, 0.01), 5),
                    "lon": round(centres[district][1] + rng.normal(0, 0.015), 5),
                    "n": size,
                }
            )
            member.update(dict.fromkeys(ids[at : at + size], tid))
            at += size
    tr = pd.DataFrame(rows, columns=["transformer_id", "district", "lat", "lon", "n"])
    of_customer = customers["customer_id"].map(member)

    # The transformer carries the real energy, not what tampered meters report: the gap between
    # the two is what a loss analysis looks for. Only full days count as reporting (a partial day
    # would read as a dip in load); days with few reporting meters are left out and the rest
    # scaled up to all customers of the transformer.
    full = true_consumption[
        true_consumption["kwh"].notna() & (true_consumption["n_halfhours"] == 48)
    ]
    c = full.assign(transformer_id=full["customer_id"].map(member))
    g = c.groupby(["transformer_id", "day"], sort=True)["kwh"].agg(["sum", "size"]).reset_index()
    n = g["transformer_id"].map(tr.set_index("transformer_id")["n"])
    g = g[g["size"] >= np.ceil(n / 3)].reset_index(drop=True)
    n = g["transformer_id"].map(tr.set_index("transformer_id")["n"])
    daily_kwh = g["sum"] * n / g["size"]
    t_min = g["day"].map(weather["t_min"]).fillna(weather["t_min"].median()).to_numpy()
    base_pf = dict(zip(tr["transformer_id"], rng.uniform(1.8, 2.4, len(tr)), strict=True))
    # peak-to-average grows on cold days (electric heating at the evening peak)
    peak_factor = (
        g["transformer_id"].map(base_pf).to_numpy()
        * (1.0 + 0.04 * np.maximum(0.0, 8.0 - t_min))
        * rng.lognormal(0.0, 0.06, len(g))
    )
    peak_kw = (daily_kwh.to_numpy() / 24.0) * peak_factor
    # size each transformer against its own 99th-percentile peak; the fifth drawn with ratio > 1
    # end up overloaded, on their coldest days
    top = pd.Series(peak_kw).groupby(g["transformer_id"].to_numpy()).quantile(0.99)
    ratio = rng.uniform(0.55, 1.12, len(tr))
    need_kw = tr["transformer_id"].map(top).fillna(1.0).to_numpy() / ratio
    tr["rated_kva"] = np.maximum(5.0, np.ceil(need_kw / POWER_FACTOR / 5.0) * 5.0)
    rated_kw = (
        (g["transformer_id"].map(tr.set_index("transformer_id")["rated_kva"]) * POWER_FACTOR)
        .round(2)
        .to_numpy()
    )
    peak_kw = np.round(peak_kw, 2)  # the ratio is of the published numbers, so it can be checked
    load = pd.DataFrame(
        {
            "transformer_id": g["transformer_id"],
            "day": g["day"].astype(_DATE),
            "peak_kw": peak_kw,
            "rated_kw": rated_kw,
            "load_ratio": np.round(peak_kw / rated_kw, 4),
        }
    )
    transformers = tr[["transformer_id", "district", "rated_kva", "lat", "lon"]]
    return transformers, load, of_customer, centres


def _charging(
    unit: str,
    customers: pd.DataFrame,
    transformers: pd.DataFrame,
    level: pd.Series,
    centres: Mapping[str, tuple[float, float]],
    seed: int,
) -> pd.DataFrame:
    rng = _rng(seed, unit, "charging")
    n = len(customers)
    by_district = customers["district"].value_counts().reindex(DISTRICTS[unit], fill_value=0)
    mean_kwh = (
        level.loc[customers["customer_id"]]
        .groupby(customers["district"].to_numpy())
        .mean()
        .reindex(DISTRICTS[unit])
        .fillna(level.mean())
    )
    n_points = max(5, n // 10)
    district = np.asarray(DISTRICTS[unit])[
        rng.choice(len(by_district), n_points, p=(by_district + 1) / (by_district + 1).sum())
    ]
    lat = np.array([centres[d][0] for d in district]) + rng.normal(0, 0.012, n_points)
    lon = np.array([centres[d][1] for d in district]) + rng.normal(0, 0.018, n_points)
    demand = rng.lognormal(np.log(3.0 * mean_kwh.loc[district].to_numpy()), 0.5)
    points = pd.DataFrame(
        {
            "site_id": [f"{unit.upper()}-DP{i:05d}" for i in range(1, n_points + 1)],
            "kind": "demand_point",
            "lat": lat.round(5),
            "lon": lon.round(5),
            "demand_kwh_per_day": demand.round(1),
            "capacity": np.nan,
            "district": district,
        }
    )
    n_sites = max(3, n // 60)
    near = transformers.iloc[rng.choice(len(transformers), n_sites)]
    sites = pd.DataFrame(
        {
            "site_id": [f"{unit.upper()}-S{i:04d}" for i in range(1, n_sites + 1)],
            "kind": "candidate_site",
            "lat": (near["lat"].to_numpy() + rng.normal(0, 0.003, n_sites)).round(5),
            "lon": (near["lon"].to_numpy() + rng.normal(0, 0.0045, n_sites)).round(5),
            "demand_kwh_per_day": np.nan,
            "capacity": rng.choice([22.0, 50.0, 150.0, 350.0], n_sites, p=[0.4, 0.3, 0.2, 0.1]),
            "district": near["district"].to_numpy(),
        }
    )
    out = pd.concat([sites, points], ignore_index=True)
    return out.astype({"site_id": TEXT, "kind": TEXT, "district": TEXT})


def _build_unit(
    unit: str,
    households: list[str],
    readings: pd.DataFrame,
    level: pd.Series,
    weather: pd.DataFrame,
    seed: int,
) -> dict[str, pd.DataFrame]:
    customers = _customers(unit, households, level, seed)
    customer_of = dict(zip(households, customers["customer_id"], strict=True))
    mine = readings[readings["LCLid"].isin(households)]
    true = pd.DataFrame(
        {
            "customer_id": mine["LCLid"].map(customer_of).astype(TEXT),
            "day": mine["day"],
            "kwh": mine["energy_sum_kwh"],
            "n_halfhours": mine["n_halfhours"],
        }
    ).sort_values(["customer_id", "day"], kind="stable", ignore_index=True)
    customers = customers.sort_values("customer_id", ignore_index=True)
    labels, metered = _theft(unit, customers["customer_id"].to_numpy(), true, seed)
    consumption = true.assign(kwh=metered)
    billing = _billing(consumption, customers)
    # keyed by customer, because a canary's meter_id no longer names its household
    level_c = pd.Series(
        level.loc[households].to_numpy(), index=[customer_of[h] for h in households]
    ).sort_index()
    payments = _payments(unit, billing, customers, level_c, seed)
    transformers, load, transformer_of, centres = _grid(unit, customers, true, weather, seed)
    customers = customers.assign(transformer_id=transformer_of.astype(TEXT))
    charging = _charging(unit, customers, transformers, level_c, centres, seed)
    tables = {
        "customers": customers,
        "consumption_daily": consumption,
        "theft_labels": labels,
        "billing": billing,
        "payments": payments,
        "transformers": transformers,
        "transformer_load": load,
        "charging_demand": charging,
    }
    tables.update(griddata_commercial.build_commercial(unit, tables, seed))
    # one text type whatever the pandas version: pandas 2 (which pyspark 4.3 supports) infers
    # object columns where pandas 3 infers "str"; missing text is <NA> in both
    return {name: df.astype({c: TEXT for c in df.columns
                             if df[c].dtype == object or str(df[c].dtype) == "str"})
            for name, df in tables.items()}


def build_unit_tables(
    data_dir: Path | str,
    units: Sequence[str] = UNITS,
    scale: float = 1.0,
    seed: int = 7,
) -> dict[str, dict[str, pd.DataFrame]]:
    """Build every table of each unit in ``units`` from the LCL data in ``data_dir``.

    ``scale`` in (0, 1] is the fraction of the 5,566 households used (never fewer than each unit
    needs for its canaries and a thief: 45). Households are always split across all of
    :data:`UNITS`, so a unit's tables do not depend on which other units are built.

    Returns ``{unit: {table_name: DataFrame}}`` with tables ``customers``, ``consumption_daily``,
    ``theft_labels``, ``billing``, ``payments``, ``transformers``, ``transformer_load`` and
    ``charging_demand``. Raises :class:`FileNotFoundError` naming a missing directory or file and
    :class:`ValueError` naming ``units``, ``scale`` or ``seed`` when one is bad.
    """
    units = _check_units(units)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale <= 1:
        raise ValueError(f"scale must be a number in (0, 1], got {scale!r}")
    seed = _check_seed(seed)
    weather = _read_weather(data_dir)
    table = _read_table(data_dir)
    total = len(pc.unique(table["LCLid"]))
    n = _households_for_scale(total, scale)
    readings = _sample_households(table, None if n == total else n, seed)

    per_household = readings.groupby("LCLid", sort=True).agg(
        level=("energy_sum_kwh", "mean"), block=("block", "first")
    )
    level = per_household["level"].fillna(0.0)
    # order households half by source block, half by consumption level, so units differ in both
    key = 0.5 * per_household["block"].rank(pct=True) + 0.5 * level.rank(pct=True)
    ordered = key.sort_values(kind="stable").index.tolist()
    split = assign_households(ordered, UNITS, seed)
    built = {u: _build_unit(u, split[u], readings, level, weather, seed) for u in units}
    for u in units:  # the synthetic service side (halls, contacts, tickets)
        built[u].update(griddata_service.build_service(u, built[u], scale, seed))
    return built


def canary_values(tables: Mapping[str, pd.DataFrame]) -> set[str]:
    """The canary marker strings planted in one unit's tables (its ``customers`` table)."""
    customers = tables["customers"]
    found: set[str] = set()
    for column in CANARY_FIELDS:
        for value in customers[column].dropna():
            found.update(CANARY_PATTERN.findall(value))
    return found
