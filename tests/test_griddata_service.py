"""The synthetic service tables (marketplace_ext.griddata_service): halls, visits, contacts and
tickets hang together, and the ground truth they carry is really in the data. (Columns, types
and determinism: tests/test_griddata.py, which checks every table of a build.)"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from marketplace_ext import griddata, griddata_service
from marketplace_ext.griddata_service import BANK_HOLIDAYS, FRONTIER_A

UNITS = ("a", "d")


@pytest.fixture(scope="module")
def built() -> dict[str, dict[str, pd.DataFrame]]:
    data_dir = griddata.default_data_dir()
    if not (data_dir / griddata.READINGS_FILE).is_file():
        pytest.skip(f"LCL data not available at {data_dir}")
    return griddata.build_unit_tables(data_dir, units=UNITS, scale=0.01, seed=7)


@pytest.mark.parametrize("unit", UNITS)
def test_tables_hang_together(built, unit):
    t = built[unit]
    halls, visits = t["business_halls"], t["hall_transactions"]
    contacts, tickets = t["service_contacts"], t["service_tickets"]
    customers = t["customers"].set_index("customer_id")
    assert halls["hall_id"].is_unique and set(visits["hall_id"]) <= set(halls["hall_id"])
    assert set(halls["district"]) == set(t["transformers"]["district"])
    # halls are closed on Sundays and bank holidays; every visit is within opening hours
    day = visits["arrived_at"].dt.normalize()
    assert not (visits["arrived_at"].dt.weekday == 6).any()
    assert not day.isin(BANK_HOLIDAYS).any()
    hour = visits["arrived_at"].dt.hour + visits["arrived_at"].dt.minute / 60
    assert ((hour >= 8.5) & (hour <= 17.5)).all()
    # customers are the unit's own, and visit the halls of their own district
    linked = visits.dropna(subset=["customer_id"])
    assert len(linked) > 0 and set(linked["customer_id"]) <= set(customers.index)
    hall_district = linked["hall_id"].map(halls.set_index("hall_id")["district"])
    assert (hall_district.to_numpy() == customers.loc[linked["customer_id"], "district"]
            .to_numpy()).all()
    assert set(contacts["customer_id"].dropna()) <= set(customers.index)
    # every ticket comes from exactly one visit or contact, and says so
    refs = pd.concat([visits["ticket_id"], contacts["ticket_id"]]).dropna()
    assert refs.is_unique and set(refs) == set(tickets["ticket_id"])
    from_hall = tickets.set_index("ticket_id").loc[visits["ticket_id"].dropna()]
    assert (from_hall["channel"] == "hall").all()
    assert not contacts.loc[contacts["abandoned"], "ticket_id"].notna().any()
    closed = tickets.dropna(subset=["closed_at"])
    assert (closed["closed_at"] > closed["opened_at"]).all()
    assert tickets["closed_at"].isna().any()  # some still open at the extract date
    assert tickets["satisfaction"].dropna().between(1, 5).all()


@pytest.mark.parametrize("unit", UNITS)
def test_ground_truth_is_in_the_data(built, unit):
    t = built[unit]
    # hall efficiency: visits follow efficiency x frontier(staff, counters), a 10 % sample
    halls = t["business_halls"].set_index("hall_id")
    visits = t["hall_transactions"].groupby("hall_id").size()
    frontier = FRONTIER_A * halls["staff_fte"] ** 0.6 * halls["counters"] ** 0.4
    implied = visits / (griddata_service.VOLUME_FLOOR * frontier)
    truth = t["hall_efficiency_truth"].set_index("hall_id")["efficiency"]
    assert np.corrcoef(implied.loc[truth.index], truth)[0, 1] > 0.9
    assert truth.between(0.5, 1.0).all() and (truth == 1.0).any()
    # bottlenecks: inside a window the cell's tickets take far longer than outside it
    tickets = t["service_tickets"].dropna(subset=["closed_at"])
    hours = (tickets["closed_at"] - tickets["opened_at"]).dt.total_seconds() / 3600
    labels = t["service_bottlenecks"]
    assert len(labels) == 2
    for b in labels.itertuples():
        cell = (tickets["channel"] == b.channel) & (tickets["ticket_type"] == b.ticket_type)
        inside = cell & tickets["opened_at"].between(b.start_day, b.end_day + pd.Timedelta(1, "D"))
        assert inside.sum() >= 3
        assert hours[inside].median() > 1.8 * hours[cell & ~inside].median(), b
    # traffic: the bill-due days around the 15th are busier than the rest of the month
    hotline = t["service_contacts"].query("channel == 'hotline'")
    per_day = hotline.groupby(hotline["started_at"].dt.normalize()).size()
    dom = per_day.index.day
    assert per_day[(dom >= 14) & (dom <= 16)].mean() > 1.3 * per_day[(dom >= 20)].mean()


def test_small_scales_keep_a_volume_floor(built):
    # at 1 % every hall still sees visitors most open days, so forecasts have something to fit
    visits = built["d"]["hall_transactions"]
    per_hall_day = visits.groupby(["hall_id", visits["arrived_at"].dt.normalize()]).size()
    assert per_hall_day.groupby("hall_id").size().min() > 150
