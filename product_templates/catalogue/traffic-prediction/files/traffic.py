"""Daily contact-volume forecasts (service halls, hotline, online): a Poisson regression with a
level per series and calendar effects shared by the series of one family.

Used by the notebook and, as the tool's remote-call entry point, by ``predict(rows)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

# England and Wales bank holidays 2012-2015 (halls closed, hotline quieter)
HOLIDAYS = pd.to_datetime([
    "2012-01-02", "2012-04-06", "2012-04-09", "2012-05-07", "2012-06-04", "2012-06-05",
    "2012-08-27", "2012-12-25", "2012-12-26", "2013-01-01", "2013-03-29", "2013-04-01",
    "2013-05-06", "2013-05-27", "2013-08-26", "2013-12-25", "2013-12-26", "2014-01-01",
    "2014-04-18", "2014-04-21", "2014-05-05", "2014-05-26", "2014-08-25", "2014-12-25",
    "2014-12-26", "2015-01-01", "2015-04-03", "2015-04-06", "2015-05-04", "2015-05-25",
    "2015-08-31", "2015-12-25", "2015-12-28",
])
FEATURES = ["tue", "wed", "thu", "fri", "sat", "sun", "holiday", "due_window", "bill_issue",
            "season_cos", "season_sin"]
FAMILIES = ("hall", "hotline", "online")
MODEL_PATH = Path(__file__).resolve().parent / "model.json"


def family_of(series: str) -> str:
    """``hall:<id>`` and ``halls`` are halls; otherwise the series' own name if it is a family."""
    if series.startswith("hall"):
        return "hall"
    return series if series in FAMILIES else "hotline"


def calendar(days: pd.DatetimeIndex, due_day: int = 15) -> np.ndarray:
    """The shared features of each day (see FEATURES)."""
    days = pd.DatetimeIndex(days)
    wd, dom, doy = days.weekday.to_numpy(), days.day.to_numpy(), days.dayofyear.to_numpy()
    cols = [(wd == k).astype(float) for k in range(1, 7)]
    cols.append(days.isin(HOLIDAYS).astype(float))
    cols.append(np.exp(-(((dom - due_day) / 2.0) ** 2)))
    cols.append(np.exp(-(((dom - 5) / 2.0) ** 2)))
    cols.append(np.cos(2 * np.pi * doy / 365.25))
    cols.append(np.sin(2 * np.pi * doy / 365.25))
    return np.column_stack(cols)


def daily_counts(events: pd.DataFrame) -> pd.DataFrame:
    """``events`` (series, at) to a complete daily table (series, day, count) with zeros."""
    day = pd.to_datetime(events["at"]).dt.normalize()
    counts = events.assign(day=day).groupby(["series", "day"]).size().rename("count")
    days = pd.date_range(day.min(), day.max(), freq="D")
    full = pd.MultiIndex.from_product([sorted(events["series"].unique()), days],
                                      names=["series", "day"])
    return counts.reindex(full, fill_value=0).reset_index()


def fit(counts: pd.DataFrame, ridge: float = 1.0, iterations: int = 40) -> dict:
    """Poisson regression per family: log mu = level[series] + beta . calendar(day), by Newton
    steps with a small ridge on beta. Returns {family: {"beta": [...], "level": {series: x},
    "dispersion": phi}}."""
    model: dict = {"features": FEATURES, "families": {}}
    for family in FAMILIES:
        part = counts[counts["series"].map(family_of) == family]
        if part.empty:
            continue
        names = sorted(part["series"].unique())
        index = {s: i for i, s in enumerate(names)}
        s_idx = part["series"].map(index).to_numpy()
        X = calendar(pd.DatetimeIndex(part["day"]))
        y = part["count"].to_numpy(dtype=float)
        S = np.zeros((len(part), len(names)))
        S[np.arange(len(part)), s_idx] = 1.0
        A = np.hstack([S, X])
        means = np.array([max(y[s_idx == i].mean(), 0.05) for i in range(len(names))])
        theta = np.concatenate([np.log(means), np.zeros(X.shape[1])])
        penalty = np.concatenate([np.full(len(names), 1e-6), np.full(X.shape[1], ridge)])
        for _ in range(iterations):
            eta = np.clip(A @ theta, -20, 12)
            mu = np.exp(eta)
            grad = A.T @ (y - mu) - penalty * theta
            hess = (A * mu[:, None]).T @ A + np.diag(penalty)
            step = np.linalg.solve(hess, grad)
            theta += step
            if np.max(np.abs(step)) < 1e-6:
                break
        mu = np.exp(np.clip(A @ theta, -20, 12))
        dof = max(1, len(y) - len(theta))
        phi = float(max(1.0, np.sum((y - mu) ** 2 / np.maximum(mu, 1e-9)) / dof))
        model["families"][family] = {
            "beta": theta[len(names):].round(6).tolist(),
            "level": {s: round(float(theta[i]), 6) for s, i in index.items()},
            "dispersion": round(phi, 4)}
    return model


def forecast(model: dict, series: str, days: pd.DatetimeIndex, level: float | None = None,
             ) -> pd.DataFrame:
    """Expected counts of ``series`` on ``days`` with an 80 % interval (normal approximation
    of an over-dispersed Poisson). ``level`` overrides the fitted level (remote calls)."""
    fam = model["families"][family_of(series)]
    if level is None:
        level = fam["level"][series]
    mu = np.exp(level + calendar(days) @ np.array(fam["beta"]))
    sd = np.sqrt(mu * fam["dispersion"])
    return pd.DataFrame({"series": series, "day": pd.DatetimeIndex(days), "forecast": mu,
                         "low": np.maximum(0.0, mu - 1.2816 * sd), "high": mu + 1.2816 * sd})


def level_from_history(model: dict, series: str, history: pd.DataFrame) -> float:
    """A series' level from its recent counts, given the family's calendar effects."""
    fam = model["families"][family_of(series)]
    expected = np.exp(calendar(pd.DatetimeIndex(history["day"])) @ np.array(fam["beta"]))
    return float(np.log(max(history["count"].sum(), 0.5) / expected.sum()))


def wape(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Weighted absolute percentage error: sum |actual - predicted| / sum actual."""
    return float(np.abs(actual - predicted).sum() / max(actual.sum(), 1e-9))


def backtest(counts: pd.DataFrame, weeks: int, horizon: int = 7) -> pd.DataFrame:
    """Rolling origin over the last ``weeks`` weeks: refit on the days before each origin,
    forecast ``horizon`` days; beside it the seasonal-naive baseline (the same weekday a week
    earlier). Returns (series, day, actual, model, naive)."""
    last = counts["day"].max()
    pivot = counts.pivot(index="day", columns="series", values="count")
    out = []
    for k in range(weeks, 0, -1):
        origin = last - pd.Timedelta(days=7 * k - 1)
        days = pd.date_range(origin, periods=horizon, freq="D")
        days = days[days <= last]
        model = fit(counts[counts["day"] < origin])
        for s in pivot.columns:
            if family_of(s) not in model["families"] or s not in \
                    model["families"][family_of(s)]["level"]:
                continue
            f = forecast(model, s, days)
            naive = pivot[s].reindex(days - pd.Timedelta(days=7)).to_numpy()
            out.append(pd.DataFrame({"series": s, "day": days,
                                     "actual": pivot[s].reindex(days).to_numpy(),
                                     "model": f["forecast"].to_numpy(), "naive": naive}))
    return pd.concat(out, ignore_index=True)


def predict(rows: list) -> list:
    """Remote call: rows of recent daily counts ``{"series", "day", "count"}`` (at least 14
    days per series) -> the next ``horizon`` days (7, or a row's ``horizon`` up to 28) of each
    series: ``{"series", "day", "forecast", "low", "high"}``."""
    if not isinstance(rows, list) or not rows:
        raise ValueError("rows: post at least 14 daily counts per series")
    frame = pd.DataFrame(rows)
    missing = [c for c in ("series", "day", "count") if c not in frame]
    if missing:
        raise ValueError(f"rows lack {missing}; each row needs series, day and count")
    frame["day"] = pd.to_datetime(frame["day"])
    frame["count"] = pd.to_numeric(frame["count"])
    if (frame["count"] < 0).any():
        raise ValueError("rows: count must not be negative")
    horizon = int(frame.get("horizon", pd.Series([7])).dropna().max()) if "horizon" in frame \
        else 7
    if not 1 <= horizon <= 28:
        raise ValueError("rows: horizon must be between 1 and 28")
    model = json.loads(MODEL_PATH.read_text())
    answer = []
    for series, history in frame.groupby("series", sort=True):
        if history["day"].nunique() < 14:
            raise ValueError(f"rows: series {series!r} needs at least 14 days of counts")
        level = level_from_history(model, series, history)
        days = pd.date_range(history["day"].max() + pd.Timedelta(days=1), periods=horizon)
        f = forecast(model, series, days, level)
        answer += [{"series": series, "day": f"{d:%Y-%m-%d}", "forecast": round(m, 2),
                    "low": round(lo, 2), "high": round(hi, 2)}
                   for d, m, lo, hi in zip(f["day"], f["forecast"], f["low"], f["high"],
                                           strict=True)]
    return answer
