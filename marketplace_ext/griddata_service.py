"""Customer-service tables of a demo unit: business halls, their transactions, hotline and online
contacts and the service tickets they open. All synthetic (labelled so in every docstring and in
the products' cards) and deterministic: the same ``seed`` and ``scale`` give identical frames.

:func:`build_service` adds to one unit's tables (it reads the unit's ``customers``,
``payments`` and ``transformers`` built by :mod:`marketplace_ext.griddata`):

- ``business_halls``: hall_id, name, district, lat, lon, counters, staff_fte,
  open_hours_per_week - two or three halls per district;
- ``hall_transactions``: transaction_id, hall_id, customer_id (<NA> for a visitor outside the
  smart-meter sample), arrived_at, service, wait_minutes, handle_minutes, satisfaction (1-5 or
  <NA>), ticket_id;
- ``service_contacts``: contact_id, customer_id, channel (``hotline``, ``online``), started_at,
  reason, wait_seconds, duration_seconds, abandoned, ticket_id;
- ``service_tickets``: ticket_id, customer_id, channel (``hall``, ``hotline``, ``online``),
  ticket_type, hall_id, opened_at, closed_at (<NaT> while open at the extract date),
  satisfaction;

and the labels (ground truth for evaluating products, never their input):

- ``hall_efficiency_truth``: hall_id, efficiency - each hall's technical efficiency in (0, 1]
  against the Cobb-Douglas frontier its yearly transactions were drawn from
  (``A * staff^0.6 * counters^0.4``);
- ``service_bottlenecks``: channel, ticket_type, start_day, end_day, factor - stretches during
  which the handling time of one kind of ticket was multiplied by ``factor``.

The service year is 2013 (:data:`SERVICE_START` .. :data:`SERVICE_END`). Daily volumes follow a
weekday profile, English bank holidays (halls closed), a winter season, the bill cycle (bills
are due on the 15th: payments and queries peak around it) and a few outage days (hotline
surges). A hall's size (staff, counters) is that of a full-scale unit; the rows are a sample of
``max(scale, VOLUME_FLOOR)`` of the traffic, so tests at 1 % stay small while every hall still
sees a few visitors a day.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np
import pandas as pd

TEXT = "string"
_DATE = "datetime64[ns]"

SERVICE_START = pd.Timestamp("2013-01-01")
SERVICE_END = pd.Timestamp("2013-12-31")
EXTRACT_AT = pd.Timestamp("2014-01-15")  # tickets not closed by then are open (closed_at NaT)
BANK_HOLIDAYS = pd.to_datetime([
    "2013-01-01", "2013-03-29", "2013-04-01", "2013-05-06", "2013-05-27", "2013-08-26",
    "2013-12-25", "2013-12-26",
])  # fmt: skip
BILL_DUE_DAY = 15  # griddata bills are due on the 15th of the following month
VOLUME_FLOOR = 0.1

HALL_SERVICES: Mapping[str, tuple[float, float, float]] = {
    # service: (share of visits, mean handling minutes, chance it opens a ticket)
    "bill_payment": (0.35, 4.0, 0.0),
    "billing_query": (0.20, 9.0, 0.3),
    "tariff_change": (0.10, 12.0, 0.9),
    "new_connection": (0.08, 25.0, 1.0),
    "meter_issue": (0.12, 14.0, 0.9),
    "complaint": (0.15, 16.0, 1.0),
}
CONTACT_REASONS: Mapping[str, tuple[float, float]] = {
    # reason: (share of hotline/online contacts on a normal day, chance it opens a ticket)
    "billing": (0.35, 0.25),
    "outage": (0.12, 0.6),
    "meter": (0.12, 0.8),
    "tariff": (0.08, 0.6),
    "moving": (0.10, 0.5),
    "complaint": (0.10, 1.0),
    "other": (0.13, 0.0),
}
TICKET_OF: Mapping[str, str] = {
    "billing_query": "billing_query", "tariff_change": "tariff_change",
    "new_connection": "new_connection", "meter_issue": "meter_fault", "complaint": "complaint",
    "billing": "billing_query", "outage": "outage_report", "meter": "meter_fault",
    "tariff": "tariff_change", "moving": "new_connection",
}  # fmt: skip
TICKET_TYPES: tuple[str, ...] = ("billing_query", "complaint", "meter_fault", "outage_report",
                                 "new_connection", "tariff_change")
# median handling hours by ticket type, and a factor by channel
HANDLING_HOURS: Mapping[str, float] = {
    "billing_query": 20.0, "complaint": 60.0, "meter_fault": 90.0, "outage_report": 6.0,
    "new_connection": 240.0, "tariff_change": 30.0,
}  # fmt: skip
CHANNEL_FACTOR: Mapping[str, float] = {"hall": 0.85, "hotline": 1.0, "online": 1.3}
CHANNELS: tuple[str, ...] = ("hall", "hotline", "online")

# Monday .. Sunday
HALL_WEEKDAY = np.array([1.15, 1.0, 1.0, 1.0, 1.1, 0.6, 0.0])
HOTLINE_WEEKDAY = np.array([1.25, 1.0, 1.0, 1.0, 0.95, 0.55, 0.45])
ONLINE_WEEKDAY = np.array([1.1, 1.0, 1.0, 1.0, 0.95, 0.8, 0.85])
HALL_OPEN = {5: (9.0, 4.0)}  # Saturday 9:00 for 4 h; other open days 8:30 for 9 h
FRONTIER_A = 1400.0  # yearly transactions of a fully efficient hall with 1 FTE and 1 counter
HALL_NAMES = ("Central", "North", "South", "East", "West")


_I = "int64"
_F = "float64"
#: every table's columns and dtypes, in order
SCHEMA: Mapping[str, Mapping[str, str]] = {
    "business_halls": {"hall_id": TEXT, "name": TEXT, "district": TEXT, "lat": _F, "lon": _F,
                       "counters": _I, "staff_fte": _F, "open_hours_per_week": _F},
    "hall_transactions": {"transaction_id": TEXT, "hall_id": TEXT, "customer_id": TEXT,
                          "arrived_at": _DATE, "service": TEXT, "wait_minutes": _F,
                          "handle_minutes": _F, "satisfaction": "Int64", "ticket_id": TEXT},
    "service_contacts": {"contact_id": TEXT, "customer_id": TEXT, "channel": TEXT,
                         "started_at": _DATE, "reason": TEXT, "wait_seconds": _I,
                         "duration_seconds": _I, "abandoned": "bool", "ticket_id": TEXT},
    "service_tickets": {"ticket_id": TEXT, "customer_id": TEXT, "channel": TEXT,
                        "ticket_type": TEXT, "hall_id": TEXT, "opened_at": _DATE,
                        "closed_at": _DATE, "satisfaction": "Int64"},
    "hall_efficiency_truth": {"hall_id": TEXT, "efficiency": _F},
    "service_bottlenecks": {"channel": TEXT, "ticket_type": TEXT, "start_day": _DATE,
                            "end_day": _DATE, "factor": _F},
}


def _rng(seed: int, *names: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


def service_days() -> pd.DatetimeIndex:
    return pd.date_range(SERVICE_START, SERVICE_END, freq="D")


def day_effects(days: pd.DatetimeIndex) -> pd.DataFrame:
    """The deterministic multipliers of the daily volumes: season, bill cycle, holiday."""
    doy = days.dayofyear.to_numpy()
    dom = days.day.to_numpy()
    season = 1.0 + 0.15 * np.cos(2 * np.pi * (doy - 15) / 365.0)
    due = 1.0 + 0.6 * np.exp(-(((dom - BILL_DUE_DAY) / 1.8) ** 2))
    issued = 1.0 + 0.25 * np.exp(-(((dom - 5) / 2.0) ** 2))
    return pd.DataFrame({"weekday": days.weekday.to_numpy(), "season": season,
                         "cycle": due * issued, "holiday": days.isin(BANK_HOLIDAYS)},
                        index=days)


def _halls(unit: str, transformers: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    centres = transformers.groupby("district")[["lat", "lon"]].mean()
    for district in sorted(centres.index):
        lat, lon = centres.loc[district]
        for j in range(int(rng.integers(2, 4))):
            staff = float(np.round(rng.uniform(2.0, 12.0) * 2) / 2)
            rows.append({
                "hall_id": f"{unit.upper()}-H{len(rows) + 1:02d}",
                "name": f"{district} {HALL_NAMES[j]} hall",
                "district": district,
                "lat": round(float(lat + rng.normal(0, 0.006)), 5),
                "lon": round(float(lon + rng.normal(0, 0.009)), 5),
                # counters were built for another era: they follow the staff only loosely
                "counters": int(rng.integers(2, 11)),
                "staff_fte": staff,
                "open_hours_per_week": 49.0,
            })
    halls = pd.DataFrame(rows)
    # a third of the halls sit on the frontier; the rest lose up to half of their output
    halls["efficiency"] = np.round(np.minimum(1.0, rng.uniform(0.5, 1.15, len(halls))), 4)
    return halls


def _poisson_days(rng: np.random.Generator, expected: np.ndarray) -> np.ndarray:
    return rng.poisson(np.maximum(expected, 0.0))


def _expand(counts: np.ndarray, days: pd.DatetimeIndex) -> np.ndarray:
    return np.repeat(days.to_numpy(), counts)


def _hall_transactions(unit: str, halls: pd.DataFrame, volume: float,
                       rng: np.random.Generator) -> pd.DataFrame:
    days = service_days()
    eff = day_effects(days)
    weekday = HALL_WEEKDAY[eff["weekday"].to_numpy()] * ~eff["holiday"].to_numpy()
    shape = weekday * eff["season"].to_numpy() * eff["cycle"].to_numpy()
    services = list(HALL_SERVICES)
    share = np.array([HALL_SERVICES[s][0] for s in services])
    frames = []
    for h in halls.itertuples():
        yearly = (h.efficiency * FRONTIER_A * h.staff_fte**0.6 * h.counters**0.4
                  * np.exp(rng.normal(0, 0.03)))
        counts = _poisson_days(rng, volume * yearly * shape / shape.sum())
        n = int(counts.sum())
        day = _expand(counts, days)
        wd = pd.DatetimeIndex(day).weekday.to_numpy()
        start = np.where(wd == 5, 9.0, 8.5)
        length = np.where(wd == 5, 4.0, 9.0)
        arrived = day + ((start + rng.random(n) * length) * 3600).astype("timedelta64[s]")
        service = np.asarray(services)[rng.choice(len(services), n, p=share)]
        # efficient halls serve faster and keep queues short: P(wait <= 15 min) = timely
        timely = 0.45 + 0.5 * h.efficiency**2
        wait = rng.exponential(-15.0 / np.log(1.0 - timely), n)
        base = np.array([HALL_SERVICES[s][1] for s in service])
        handle = base / (0.6 + 0.4 * h.efficiency) * rng.lognormal(0.0, 0.35, n)
        score = np.clip(np.round(5.2 - wait / 10.0 + rng.normal(0, 0.7, n)), 1, 5)
        rated = rng.random(n) < 0.4
        frames.append(pd.DataFrame({
            "hall_id": h.hall_id, "arrived_at": arrived, "service": service,
            "wait_minutes": np.round(wait, 1), "handle_minutes": np.round(handle, 1),
            "satisfaction": pd.array(np.where(rated, score, np.nan)).astype("Int64"),
        }))
    out = pd.concat(frames, ignore_index=True).sort_values(["arrived_at", "hall_id"],
                                                           kind="stable", ignore_index=True)
    out.insert(0, "transaction_id", [f"{unit.upper()}-HT{i:07d}" for i in range(1, len(out) + 1)])
    return out


def _contacts(unit: str, n_halls: int, volume: float,
              rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    days = service_days()
    eff = day_effects(days)
    base = eff["season"].to_numpy() * eff["cycle"].to_numpy()
    holiday = eff["holiday"].to_numpy()
    outage_days = np.sort(rng.choice(len(days), 4, replace=False))
    surge = np.ones(len(days))
    surge[outage_days] = rng.uniform(2.5, 4.0, len(outage_days))
    reasons = list(CONTACT_REASONS)
    share = np.array([CONTACT_REASONS[r][0] for r in reasons])
    outage_share = np.where(np.arange(len(reasons)) == reasons.index("outage"), 1.0, 0.0)
    frames = []
    for channel, per_hall, weekday in (("hotline", 25.0, HOTLINE_WEEKDAY),
                                       ("online", 8.0, ONLINE_WEEKDAY)):
        expected = (volume * per_hall * n_halls * base * weekday[eff["weekday"].to_numpy()]
                    * np.where(holiday, 0.5 if channel == "hotline" else 0.8, 1.0))
        normal = _poisson_days(rng, expected)
        extra = _poisson_days(rng, expected * (surge - 1.0) * (channel == "hotline"))
        day = np.concatenate([_expand(normal, days), _expand(extra, days)])
        p = np.vstack([np.tile(share, (normal.sum(), 1)), np.tile(outage_share, (extra.sum(), 1))])
        reason = np.asarray(reasons)[(p.cumsum(axis=1) > rng.random((len(day), 1))).argmax(axis=1)]
        n = len(day)
        hour = np.clip(rng.normal(13.0, 3.2, n), 0.0, 23.99)
        started = day + (hour * 3600).astype("timedelta64[s]")
        # a crowded day (many calls for the staff planned on the expected volume) waits longer
        ratio = (normal + extra) / np.maximum(expected, 1e-9)
        load = np.concatenate([np.repeat(ratio, normal), np.repeat(ratio, extra)])
        if channel == "hotline":
            wait = rng.exponential(45.0 * np.maximum(load, 0.3) ** 2)
            abandoned = wait > rng.exponential(240.0, n)
        else:
            wait = np.zeros(n)
            abandoned = np.zeros(n, dtype=bool)
        duration = np.where(abandoned, 0.0, rng.lognormal(np.log(240.0), 0.5, n))
        frames.append(pd.DataFrame({
            "channel": channel, "started_at": started, "reason": reason,
            "wait_seconds": np.round(wait).astype(int), "duration_seconds":
            np.round(duration).astype(int), "abandoned": abandoned}))
    out = pd.concat(frames, ignore_index=True).sort_values(["started_at", "channel"],
                                                           kind="stable", ignore_index=True)
    out.insert(0, "contact_id", [f"{unit.upper()}-C{i:07d}" for i in range(1, len(out) + 1)])
    events = pd.DataFrame({"day": days[outage_days], "kind": "outage",
                           "hotline_factor": np.round(surge[outage_days], 2)})
    return out, events


def _link_customers(rows: pd.DataFrame, pool_of: pd.Series, customers: pd.DataFrame,
                    risk: pd.Series, rate: float, rng: np.random.Generator) -> np.ndarray:
    """customer_id per row: each customer takes Poisson(rate * (1 + 3 * late share)) of the rows
    in their pool (``pool_of``: a row's district, or one pool); the rest stay <NA>."""
    linked = np.full(len(rows), None, dtype=object)
    free = {k: list(rng.permutation(np.flatnonzero(pool_of.to_numpy() == k)))
            for k in pool_of.unique()}
    for cid, pool in zip(customers["customer_id"], customers["pool"], strict=True):
        rows_left = free.get(pool, [])
        for _ in range(min(len(rows_left), int(rng.poisson(rate * (1 + 3 * risk.get(cid, 0.0)))))):
            linked[rows_left.pop()] = cid
    return linked


def _tickets(unit: str, hall: pd.DataFrame, contacts: pd.DataFrame, rng: np.random.Generator,
             ) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray]:
    p_hall = hall["service"].map({k: v[2] for k, v in HALL_SERVICES.items()}).to_numpy()
    p_contact = contacts["reason"].map({k: v[1] for k, v in CONTACT_REASONS.items()}).to_numpy()
    from_hall = rng.random(len(hall)) < p_hall
    from_contact = (rng.random(len(contacts)) < p_contact) & ~contacts["abandoned"].to_numpy()
    t = pd.concat([
        pd.DataFrame({"customer_id": hall["customer_id"][from_hall], "channel": "hall",
                      "ticket_type": hall["service"][from_hall].map(TICKET_OF),
                      "hall_id": hall["hall_id"][from_hall],
                      "opened_at": hall["arrived_at"][from_hall], "src": "h",
                      "src_row": np.flatnonzero(from_hall)}),
        pd.DataFrame({"customer_id": contacts["customer_id"][from_contact],
                      "channel": contacts["channel"][from_contact],
                      "ticket_type": contacts["reason"][from_contact].map(TICKET_OF),
                      "hall_id": None, "opened_at": contacts["started_at"][from_contact],
                      "src": "c", "src_row": np.flatnonzero(from_contact)}),
    ], ignore_index=True).sort_values(["opened_at", "channel"], kind="stable", ignore_index=True)
    # injected bottlenecks: two (channel, type) cells whose handling slows down for weeks
    cells = [(c, k) for c in CHANNELS for k in TICKET_TYPES if k != "outage_report"]
    counts = t.groupby(["channel", "ticket_type"]).size()
    busy = [cell for cell in cells if counts.get(cell, 0) >= 20] or cells
    chosen = [busy[i] for i in rng.choice(len(busy), min(2, len(busy)), replace=False)]
    bottlenecks = []
    factor = np.ones(len(t))
    for channel, kind in chosen:
        start = SERVICE_START + pd.Timedelta(days=int(rng.integers(31, 290)))
        end = start + pd.Timedelta(days=int(rng.integers(35, 71)))
        f = round(float(rng.uniform(2.2, 3.5)), 2)
        hit = ((t["channel"] == channel) & (t["ticket_type"] == kind)
               & (t["opened_at"] >= start) & (t["opened_at"] < end + pd.Timedelta(days=1)))
        factor[hit.to_numpy()] = f
        bottlenecks.append({"channel": channel, "ticket_type": kind, "start_day": start,
                            "end_day": end, "factor": f})
    hours = (t["ticket_type"].map(HANDLING_HOURS).to_numpy()
             * t["channel"].map(CHANNEL_FACTOR).to_numpy() * factor
             * rng.lognormal(0.0, 0.5, len(t)))
    closed = t["opened_at"] + pd.to_timedelta(np.round(hours * 3600), unit="s")
    closed = closed.where(closed <= EXTRACT_AT)
    score = np.clip(np.round(4.6 - 0.6 * np.log1p(hours / 24) + rng.normal(0, 0.7, len(t))), 1, 5)
    rated = (rng.random(len(t)) < 0.5) & closed.notna().to_numpy()
    t.insert(0, "ticket_id", [f"{unit.upper()}-TK{i:07d}" for i in range(1, len(t) + 1)])
    t["closed_at"] = closed.astype(_DATE)
    t["satisfaction"] = pd.array(np.where(rated, score, np.nan)).astype("Int64")
    hall_ticket = np.full(len(hall), None, dtype=object)
    contact_ticket = np.full(len(contacts), None, dtype=object)
    is_h = (t["src"] == "h").to_numpy()
    hall_ticket[t["src_row"].to_numpy()[is_h]] = t["ticket_id"].to_numpy()[is_h]
    contact_ticket[t["src_row"].to_numpy()[~is_h]] = t["ticket_id"].to_numpy()[~is_h]
    tickets = t[["ticket_id", "customer_id", "channel", "ticket_type", "hall_id", "opened_at",
                 "closed_at", "satisfaction"]]
    labels = pd.DataFrame(bottlenecks, columns=["channel", "ticket_type", "start_day",
                                                "end_day", "factor"])
    return tickets, labels, hall_ticket, contact_ticket


def build_service(unit: str, tables: Mapping[str, pd.DataFrame], scale: float = 1.0,
                  seed: int = 7) -> dict[str, pd.DataFrame]:
    """The synthetic service tables of ``unit`` (see the module docstring), from its
    ``customers``, ``payments`` and ``transformers``."""
    rng = _rng(seed, unit, "service")
    volume = max(float(scale), VOLUME_FLOOR)
    customers = tables["customers"]
    payments = tables["payments"]
    halls = _halls(unit, tables["transformers"], rng)
    hall = _hall_transactions(unit, halls, volume, rng)
    contacts, _events = _contacts(unit, len(halls), volume, rng)
    # late payers turn up more often; a customer visits the halls of their own district
    risk = (payments["status"] != "on_time").groupby(payments["customer_id"]).mean()
    hall_district = hall["hall_id"].map(halls.set_index("hall_id")["district"])
    hall["customer_id"] = _link_customers(
        hall, hall_district, customers.assign(pool=customers["district"]), risk, 2.0, rng)
    contacts["customer_id"] = _link_customers(
        contacts, contacts["channel"], customers.assign(pool="hotline"), risk, 3.0, rng)
    online = _link_customers(contacts, contacts["channel"], customers.assign(pool="online"),
                             risk, 1.5, rng)
    contacts["customer_id"] = np.where(pd.isna(contacts["customer_id"]), online,
                                       contacts["customer_id"])
    tickets, bottlenecks, hall_ticket, contact_ticket = _tickets(unit, hall, contacts, rng)
    hall["ticket_id"] = hall_ticket
    contacts["ticket_id"] = contact_ticket
    out = {
        "business_halls": halls,
        "hall_transactions": hall,
        "service_contacts": contacts,
        "service_tickets": tickets,
        "hall_efficiency_truth": halls,
        "service_bottlenecks": bottlenecks,
    }
    return {name: df[list(SCHEMA[name])].reset_index(drop=True).astype(SCHEMA[name])
            for name, df in out.items()}
