"""Per-customer inputs for the theft detector: a calendar-aligned window of daily kWh.

Each customer becomes a ``(2, weeks, 7)`` array: channel 0 is the daily kWh of the last ``weeks``
weeks up to a common ``end`` day, divided by the customer's own mean over the observed days of
that window (so a household's size says nothing, only the shape of its consumption does);
channel 1 is 1 where a reading exists and 0 where it is missing (channel 0 is 0 there). The
window is the same calendar stretch for every customer and every unit, so rows of the matrix are
comparable across customers (winter rows with winter rows), which is what lets units train one
model together.

Frames come either from a unit's Hive tables through Spark Connect (:func:`frames_from_spark`)
or straight from :func:`marketplace_ext.griddata.build_unit_tables` (:func:`frames_from_griddata`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from marketplace_ext import griddata

DEFAULT_WEEKS = 96
# A normalised reading above this is a meter glitch or a one-off; capping it keeps one party
# night from dominating a customer's input.
DEFAULT_CLIP = 10.0
DEFAULT_TEST_FRACTION = 0.3
CHANNELS = 2

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class FeatureError(ValueError):
    """The frames cannot be turned into features (missing columns, unlabelled customers, ...)."""


@dataclass(frozen=True)
class UnitFrames:
    """What the features need of one unit: its daily readings and its theft labels.

    ``consumption`` has columns ``customer_id``, ``day`` (datetime64) and ``kwh`` (float, NaN
    when missing); ``labels`` has ``customer_id`` and ``is_thief`` (bool), one row per customer.
    """

    consumption: pd.DataFrame
    labels: pd.DataFrame


@dataclass(frozen=True)
class Features:
    """Model inputs ``X`` (n, 2, weeks, 7) float32, labels ``y`` (n,) float32 in {0, 1}, and the
    customer of each row (sorted), for the window ending on ``end``."""

    X: np.ndarray
    y: np.ndarray
    customer_ids: np.ndarray
    end: np.datetime64

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: np.ndarray) -> Features:
        return Features(self.X[index], self.y[index], self.customer_ids[index], self.end)

    @property
    def n_thieves(self) -> int:
        return int(self.y.sum())


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise FeatureError(f"{what} lacks column(s) {missing}; it has {list(frame.columns)}")


def window_start(end: np.datetime64, weeks: int) -> np.datetime64:
    """First day of the ``weeks``-week window that ends on ``end`` (inclusive)."""
    return np.datetime64(end, "D") - np.timedelta64(weeks * 7 - 1, "D")


def build_features(
    frames: UnitFrames,
    *,
    weeks: int = DEFAULT_WEEKS,
    end: np.datetime64 | str | None = None,
    clip: float = DEFAULT_CLIP,
) -> Features:
    """Turn one unit's frames into model inputs; see the module docstring for the layout.

    ``end`` defaults to the last day in ``consumption``; give units the same ``end`` when their
    features must line up (federated training). Customers come in ``customer_id`` order, every
    labelled customer once, even one without readings in the window (all zeros, mask 0).
    Raises :class:`FeatureError` for missing columns, a reading of an unlabelled customer,
    a repeated label, or a bad ``weeks``/``clip``.
    """
    if isinstance(weeks, bool) or not isinstance(weeks, int) or weeks < 1:
        raise FeatureError(f"weeks must be a positive integer, got {weeks!r}")
    if not clip > 0:
        raise FeatureError(f"clip must be positive, got {clip!r}")
    consumption, labels = frames.consumption, frames.labels
    _require_columns(consumption, ("customer_id", "day", "kwh"), "consumption")
    _require_columns(labels, ("customer_id", "is_thief"), "labels")
    if labels["customer_id"].duplicated().any():
        raise FeatureError("labels name a customer more than once")

    labels = labels.sort_values("customer_id", kind="stable")
    ids = labels["customer_id"].astype(str).to_numpy()
    y = labels["is_thief"].astype(bool).to_numpy().astype(np.float32)

    days = pd.to_datetime(consumption["day"]).to_numpy().astype("datetime64[D]")
    if end is None:
        if len(days) == 0:
            raise FeatureError("consumption is empty, so there is no last day to end on")
        end = days.max()
    end = np.datetime64(end, "D")
    start = window_start(end, weeks)
    offset = (days - start).astype(np.int64)
    kwh = consumption["kwh"].to_numpy(dtype=float)
    keep = (offset >= 0) & (offset < weeks * 7) & np.isfinite(kwh)
    row = pd.Index(ids).get_indexer(consumption["customer_id"].astype(str).to_numpy()[keep])
    if (row < 0).any():
        raise FeatureError("consumption has readings of customers that labels do not list")

    n, length = len(ids), weeks * 7
    grid = np.zeros((n, length), dtype=np.float64)
    mask = np.zeros((n, length), dtype=np.float64)
    grid[row, offset[keep]] = np.maximum(kwh[keep], 0.0)
    mask[row, offset[keep]] = 1.0
    seen = mask.sum(axis=1)
    mean = np.divide(grid.sum(axis=1), seen, out=np.zeros(n), where=seen > 0)
    # an all-zero customer stays all zero rather than dividing by nothing
    scale = np.where(mean > 0, mean, 1.0)
    x = np.minimum(grid / scale[:, None], clip)
    X = np.stack([x, mask], axis=1).reshape(n, CHANNELS, weeks, 7).astype(np.float32)
    return Features(X=X, y=y, customer_ids=ids, end=end)


# --- where the frames come from ------------------------------------------------------------------


def frames_from_tables(tables: dict[str, pd.DataFrame]) -> UnitFrames:
    """The two frames the features need, out of one unit's :func:`build_unit_tables` tables."""
    return UnitFrames(
        consumption=tables["consumption_daily"][["customer_id", "day", "kwh"]],
        labels=tables["theft_labels"][["customer_id", "is_thief"]],
    )


def all_frames_from_griddata(
    units: Sequence[str] = griddata.UNITS,
    scale: float = 1.0,
    seed: int = 7,
    data_dir: Path | str | None = None,
) -> dict[str, UnitFrames]:
    """Every unit's frames from one in-process :func:`griddata.build_unit_tables` call."""
    tables = griddata.build_unit_tables(
        data_dir if data_dir is not None else griddata.default_data_dir(),
        units=units,
        scale=scale,
        seed=seed,
    )
    return {u: frames_from_tables(t) for u, t in tables.items()}


def frames_from_griddata(
    unit: str, scale: float = 1.0, seed: int = 7, data_dir: Path | str | None = None
) -> UnitFrames:
    """One unit's frames, built in-process (no Spark), exactly as the platform would hold them."""
    return all_frames_from_griddata((unit,), scale, seed, data_dir)[unit]


def frames_from_spark(
    spark: Any,
    database: str,
    *,
    weeks: int | None = DEFAULT_WEEKS,
    end: np.datetime64 | str | None = None,
) -> UnitFrames:
    """Read one unit's frames from its Hive ``database`` through a Spark Connect session.

    Only ``customer_id, day, kwh`` and ``customer_id, is_thief`` leave the server. With ``weeks``
    the server also cuts the readings to the window ending on ``end`` (default: the table's last
    day, found server-side) and drops missing readings, so a unit ships about ``weeks * 7`` rows
    per customer instead of its whole history. ``weeks=None`` reads every reading.
    """
    # SQL text rather than pyspark.sql.functions: those need the Connect mode switched on
    # process-wide, and a session handed in by the platform does not imply it
    if not isinstance(database, str) or not _IDENTIFIER.match(database):
        raise FeatureError(f"database must be a plain identifier, got {database!r}")
    readings = f"`{database}`.`consumption_daily`"
    where = ""
    if weeks is not None:
        if end is None:
            last = spark.sql(f"SELECT max(day) AS last_day FROM {readings}").collect()[0][0]
            if last is None:
                raise FeatureError(f"{database}.consumption_daily is empty")
            end = pd.Timestamp(last).date()
        end = np.datetime64(end, "D")  # a date, so the literals below are only digits and dashes
        start = window_start(end, weeks)
        where = f" WHERE day BETWEEN DATE'{start}' AND DATE'{end}' AND kwh IS NOT NULL"
    consumption = spark.sql(f"SELECT customer_id, day, kwh FROM {readings}{where}").toPandas()
    consumption["day"] = pd.to_datetime(consumption["day"])
    labels = spark.sql(f"SELECT customer_id, is_thief FROM `{database}`.`theft_labels`").toPandas()
    return UnitFrames(consumption=consumption, labels=labels)


# --- held-out customers --------------------------------------------------------------------------


def _customer_key(seed: int, customer_id: str) -> int:
    # a hash of the customer, not a draw from a generator: a customer lands on the same side of
    # the split whatever other customers a unit holds or in what order they come
    digest = hashlib.blake2b(f"{seed}:{customer_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def split_customers(
    customer_ids: Sequence[str] | np.ndarray,
    y: np.ndarray,
    *,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)`` of a seeded split by customer, stratified by label.

    Each class puts ``round(test_fraction * n_class)`` customers into the test side (at least one
    and at most all but one, when the class has two or more), chosen by a seeded hash of the
    customer id. Both index arrays are sorted and together cover every row exactly once.
    """
    if not 0 < test_fraction < 1:
        raise FeatureError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    ids = np.asarray(customer_ids).astype(str)
    y = np.asarray(y)
    if len(ids) != len(y):
        raise FeatureError(f"{len(ids)} customer ids but {len(y)} labels")
    if len(set(ids.tolist())) != len(ids):
        raise FeatureError("customer ids must be unique")
    test = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        keys = np.array([_customer_key(seed, ids[i]) for i in members], dtype=np.uint64)
        ordered = members[np.argsort(keys, kind="stable")]
        k = round(test_fraction * len(ordered))
        if len(ordered) >= 2:
            k = min(max(k, 1), len(ordered) - 1)
        test.append(ordered[:k])
    test_idx = np.sort(np.concatenate(test)) if test else np.array([], dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(ids)), test_idx)
    return train_idx.astype(np.int64), test_idx.astype(np.int64)
