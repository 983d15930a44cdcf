"""What a federated project's page shows beside its details: the round timeline, a chart of the
members' metrics (geometry for a server-side SVG) and the differential-privacy budget.

Pure functions over :mod:`.projects` / :mod:`.rounds` output; nothing here writes.

The budget is the Renyi-DP accountant of Opacus for the Gaussian mechanism with every party
taking part in every round (sampling rate 1, where the subsampled Gaussian's RDP is exactly
``alpha / (2 sigma^2)`` per release), converted to (epsilon, delta) as Opacus does (Balle et
al. 2020), over the same orders: the numbers equal ``training.dp_epsilon`` without importing
torch into the service.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from .common import PUBLISHED, VOID
from .orm import FLProject, FLRound

#: Opacus's RDPAccountant.DEFAULT_ALPHAS
RDP_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + [float(a) for a in range(12, 64)]
)


def gaussian_epsilon(noise_multiplier: float, steps: int, delta: float) -> float:
    """Epsilon after ``steps`` full-participation Gaussian releases of noise multiplier
    ``noise_multiplier`` at ``delta`` (inf without noise, 0 before any release)."""
    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    best = math.inf
    for a in RDP_ORDERS:
        rdp = steps * a / (2 * noise_multiplier**2)
        eps = rdp - (math.log(delta) + math.log(a)) / (a - 1) + math.log((a - 1) / a)
        if not math.isnan(eps):
            best = min(best, eps)
    return best


def dp_budget(project: dict, metrics: Sequence[dict]) -> dict | None:
    """The project's DP settings, the epsilon spent after its published rounds, and each
    unit's own latest reported ``epsilon`` metric (None when DP is off)."""
    dp = project.get("dp")
    if not dp:
        return None
    published = sum(1 for r in project.get("timeline", ()) if r["state"] == PUBLISHED)
    reported: dict[str, tuple[int, float]] = {}
    for row in metrics:
        value = row["metrics"].get("epsilon")
        if isinstance(value, int | float) and row["round"] >= reported.get(row["unit"], (-1, 0))[0]:
            reported[row["unit"]] = (row["round"], float(value))
    planned = gaussian_epsilon(dp["noise_multiplier"], project["rounds"], dp["delta"])
    return {
        **dp,
        "published_rounds": published,
        "epsilon": gaussian_epsilon(dp["noise_multiplier"], published, dp["delta"]),
        "epsilon_planned": planned,
        "rounds": project["rounds"],
        "reported": [
            {"unit": u, "round": r, "epsilon": e} for u, (r, e) in sorted(reported.items())
        ],
    }


def timeline(session: Session, project: FLProject) -> list[dict]:
    """Every attempt of every round, oldest first: state, times, the units that sent an update
    and the aggregate's log index."""
    from .projects import round_summary

    rows = session.scalars(
        select(FLRound)
        .where(FLRound.project_id == project.id)
        .order_by(FLRound.number, FLRound.attempt)
    )
    out = []
    for rnd in rows:
        summary = round_summary(session, project, rnd)
        out.append(
            {
                "number": rnd.number,
                "attempt": rnd.attempt,
                "state": rnd.state,
                "opened_at": summary["opened_at"],
                "deadline": summary["deadline"],
                "closed_at": summary["closed_at"],
                "close_reason": rnd.close_reason,
                "units": [u["unit"] for u in summary["updates"]],
                "contributions": [
                    {"unit": u["unit"], "log_index": u["log_index"]} for u in summary["updates"]
                ],
                "aggregate": summary["aggregate"],
                "void": rnd.state == VOID,
            }
        )
    return out


def metric_names(metrics: Sequence[dict]) -> list[str]:
    names = {
        name for row in metrics for name, v in row["metrics"].items() if isinstance(v, int | float)
    }
    return sorted(names, key=lambda n: (n != "auc", n))


# chart geometry: a viewBox of WIDTH x HEIGHT with margins for the axes' labels
WIDTH, HEIGHT = 640, 300
LEFT, RIGHT, TOP, BOTTOM = 56, 120, 16, 40
PALETTE = ("#0a5fb4", "#a4161a", "#1b5e20", "#6a1b9a", "#8a4b00", "#00695c", "#37474f")


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    step = (high - low) / (count - 1)
    return [low + i * step for i in range(count)]


def metric_chart(metrics: Sequence[dict], name: str) -> dict | None:
    """One line per unit of metric ``name`` over the rounds, as SVG coordinates: ``series``
    (unit, colour, points "x,y ...", dots with their values), axis ticks, and a text table of
    the same numbers for screen readers. None when no unit reported that metric."""
    series: dict[str, list[tuple[int, float]]] = {}
    for row in sorted(metrics, key=lambda r: (r["unit"], r["round"])):
        value = row["metrics"].get(name)
        if isinstance(value, int | float) and math.isfinite(value):
            series.setdefault(row["unit"], []).append((row["round"], float(value)))
    if not series:
        return None
    rounds = [r for pts in series.values() for r, _ in pts]
    values = [v for pts in series.values() for _, v in pts]
    r_lo, r_hi = min(rounds), max(max(rounds), min(rounds) + 1)
    v_lo, v_hi = min(values), max(values)
    if v_hi - v_lo < 1e-9:
        v_lo, v_hi = v_lo - 0.5, v_hi + 0.5
    pad = (v_hi - v_lo) * 0.08
    v_lo, v_hi = v_lo - pad, v_hi + pad
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(r: float) -> float:
        return round(LEFT + (r - r_lo) / (r_hi - r_lo) * plot_w, 1)

    def y(v: float) -> float:
        return round(TOP + (v_hi - v) / (v_hi - v_lo) * plot_h, 1)

    lines = []
    for i, (unit, pts) in enumerate(sorted(series.items())):
        colour = PALETTE[i % len(PALETTE)]
        lines.append(
            {
                "unit": unit,
                "colour": colour,
                "points": " ".join(f"{x(r)},{y(v)}" for r, v in pts),
                "dots": [{"x": x(r), "y": y(v), "round": r, "value": v} for r, v in pts],
                "label_y": y(pts[-1][1]),
                "label_x": x(pts[-1][0]) + 8,
            }
        )
    return {
        "name": name,
        "width": WIDTH,
        "height": HEIGHT,
        "left": LEFT,
        "top": TOP,
        "right": WIDTH - RIGHT,
        "bottom": HEIGHT - BOTTOM,
        "series": lines,
        "x_ticks": [
            {"x": x(r), "label": str(r)} for r in range(r_lo, r_hi + 1, max(1, (r_hi - r_lo) // 10))
        ],
        "y_ticks": [{"y": y(v), "label": f"{v:.3g}"} for v in _ticks(v_lo, v_hi)],
        "table": {
            "rounds": sorted(set(rounds)),
            "units": {u: dict(pts) for u, pts in sorted(series.items())},
        },
    }
