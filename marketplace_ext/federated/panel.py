"""The partner's round panel in a notebook: ipywidgets over :class:`FederatedClient`.

It shows the project's current round (number, attempt, state, deadline countdown, units that
have sent their update against the quorum), the members, a "Train and submit" button that runs
this unit's round in a background thread (the kernel stays responsive while the round waits for
the others), a live chart of every unit's validation metric per round, with differential
privacy the privacy budget this unit has spent, and the project's reward pool with the
contribution estimate as rounds progress (the certified split once settled).

It is drawn in the look of the marketplace's pages and widgets (:mod:`marketplace_ext.reprs`:
the same card, badges and palette as ``Shop`` and ``RunForm``).

Background threads only ever set widget values (HTML text, the chart's PNG bytes): an Output
widget's ``with out:`` capture follows the *current cell's* message, so used from a thread it
would put output in the wrong place.
"""

from __future__ import annotations

import copy
import html
import io
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np

from ..reprs import BAD, BRAND, MUTED, badge, box
from .client import FederatedClient, RoundResult


def metric_series(metrics: list[dict], name: str) -> dict[str, list[tuple[int, float]]]:
    """``{unit: [(round, value), ...]}`` of one metric from ``FederatedClient.metrics``,
    rounds ascending, missing values left out."""
    series: dict[str, list[tuple[int, float]]] = {}
    for row in sorted(metrics, key=lambda r: (r["unit"], r["round"])):
        value = row["metrics"].get(name)
        if value is not None:
            series.setdefault(row["unit"], []).append((row["round"], float(value)))
    return series


def seconds_left(deadline: str | None, now: datetime | None = None) -> float | None:
    """Seconds until an ISO ``...Z`` deadline of the API (negative once passed)."""
    if not deadline:
        return None
    at = datetime.fromisoformat(deadline.rstrip("Z")).replace(tzinfo=UTC)
    return (at - (now or datetime.now(UTC))).total_seconds()


def round_status_html(project: dict) -> str:
    """A short HTML summary of the project's current round (a card as on the pages)."""
    rnd = project.get("round")
    active = [
        m
        for m in project["members"]
        if m["left_at"] is None and m.get("status", "approved") == "approved"
    ]
    title = f"{html.escape(project['title'])} {badge(project['state'])}"
    head = f"{len(active)} units: {', '.join(html.escape(m['unit']) for m in active)}"
    if rnd is None:
        return box(title, f"{head}<br>no round open yet (the initiator starts the project)")
    sent = [u["unit"] for u in rnd["updates"]]
    left = seconds_left(rnd["deadline"])
    clock = (
        ""
        if left is None or rnd["state"] != "open"
        else (f" &middot; deadline in {max(left, 0):.0f}s")
    )
    return box(
        title,
        f"{head}<br>round <b>{rnd['number']}</b> of {project['rounds']} "
        f"(attempt {rnd['attempt']}) &middot; {badge(rnd['state'])}{clock}<br>"
        f"updates in: {len(sent)} / quorum {rnd['quorum']} "
        f"({', '.join(map(html.escape, sent)) or 'none yet'})",
    )


def economy_html(economy: dict) -> str:
    """The pool and each unit's estimated (or, once settled, certified) share, as a card."""
    settled = economy.get("settlement")
    if settled and settled["measure"] == "refund":  # cancelled or failed: the pool went back
        back = ", ".join(f"{a} points to {html.escape(u)}" for u, a in settled["paid"].items())
        return box(
            f"Reward pool: {html.escape(economy['pool']['held'])} points",
            f"the project was {html.escape(str(settled['inputs'].get('state')))}: "
            f"{back or 'the pool was empty'}",
        )
    shares = settled["shares"] if settled else economy["estimate"]["shares"]
    units = (settled["inputs"] if settled else economy["estimate"])["units"]
    rows = []
    for unit, row in sorted(units.items()):
        delta = "not evaluated" if row["delta"] is None else f"{row['delta']:+.4f}"
        gate = " (gated)" if row["gated"] else ""
        share = f"{shares[unit] / 100:.2f} %" if unit in shares else "-"
        paid = f", paid {settled['paid'].get(unit, '0.00')}" if settled else ""
        rows.append(
            f"<code>{html.escape(unit)}</code>: weight {row['weight']}, "
            f"leave-one-out {delta}{gate}, share <b>{share}</b>{paid}"
        )
    what = "certified split" if settled else "contribution estimate"
    return box(
        f"Reward pool: {html.escape(economy['pool']['held'])} points",
        f"{what}<br>" + ("<br>".join(rows) or "no update in a published round yet"),
    )


class RoundPanel:
    """``RoundPanel(fl, project, train).show()`` in a partner's notebook.

    ``train(global_vector) -> (update, weight)`` trains locally (see
    :meth:`FederatedClient.run_round`); ``on_result(RoundResult)`` is called after each round
    this panel ran (evaluate and post metrics there). ``metric`` is the one charted.
    """

    def __init__(
        self,
        fl: FederatedClient,
        project: int,
        train: Callable[[np.ndarray], tuple[np.ndarray, int]],
        on_result: Callable[[RoundResult], None] | None = None,
        metric: str = "auc",
        refresh: float = 3.0,
        timeout: float = 3600,
    ):
        import ipywidgets as w

        self.fl, self.project, self.train = fl, int(project), train
        self.on_result, self.metric = on_result, metric
        self.interval, self.timeout = refresh, timeout
        self.results: list[RoundResult] = []
        self.status = w.HTML()
        self.budget = w.HTML()
        self.economy = w.HTML()
        self.button = w.Button(
            description="Train and submit", button_style="primary", icon="upload"
        )
        self.button.on_click(lambda _: self._run_round())
        self.log = w.HTML(layout={"max_height": "12em", "overflow": "auto"})
        self.heading = w.HTML(
            box(
                f"Federated project {self.project}",
                f'<span style="color:{MUTED}">this unit: '
                f"<code>{html.escape(str(fl.unit))}</code></span>",
            )
        )
        self.chart = w.Image(format="png", layout={"max_width": "640px"})
        self.widget = w.VBox(
            [
                self.heading,
                self.status,
                self.budget,
                self.economy,
                self.button,
                self.log,
                self.chart,
            ]
        )
        self._stop = threading.Event()
        self._busy = False
        self._charted: object = None

    def show(self):
        from IPython.display import display

        self.refresh()
        display(self.widget)
        threading.Thread(target=self._refresher, name="fl-panel", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _refresher(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except Exception as e:  # a network hiccup must not kill the panel
                self.status.value += f"<br><i>refresh failed: {html.escape(str(e))}</i>"

    def refresh(self) -> None:
        info = self.fl.project(self.project)
        self.status.value = round_status_html(info)
        rnd = info.get("round")
        mine_sent = bool(rnd) and any(u["unit"] == self.fl.unit for u in rnd["updates"])
        self.button.disabled = (
            self._busy or not rnd or rnd["state"] != "open" or mine_sent or not info["is_member"]
        )
        if info["is_member"]:
            self._draw(self.fl.metrics(self.project), info)
            self.economy.value = economy_html(self.fl.contributions(self.project))

    def _draw(self, metrics: list[dict], info: dict) -> None:
        series = metric_series(metrics, self.metric)
        dp = info.get("dp")
        if dp:
            spent = [
                r["metrics"].get("epsilon")
                for r in metrics
                if r["unit"] == self.fl.unit and r["metrics"].get("epsilon") is not None
            ]
            eps = max(spent) if spent else 0.0
            self.budget.value = box(
                "Differential privacy",
                (
                    f"noise multiplier {dp['noise_multiplier']}, clip norm {dp['clip_norm']}; "
                    f"budget spent by {html.escape(str(self.fl.unit))}: "
                    f"<b>&epsilon; = {eps:.2f}</b> "
                    f"(&delta; = {dp['delta']:g})"
                ),
            )
        if series == self._charted:
            return
        self._charted = series
        self.chart.value = chart_png(series, self.metric)

    def say(self, line: str) -> None:
        colour = BAD if "failed" in line else BRAND
        self.log.value += (
            f'<div style="border-left:3px solid {colour};padding-left:6px">'
            f"{html.escape(line)}</div>"
        )

    def _run_round(self) -> None:
        if self._busy:
            return
        self._busy = True
        self.button.disabled = True

        def work() -> None:
            started = time.monotonic()
            # no progress bars from this thread (they would land in whatever cell runs now)
            quiet = copy.copy(self.fl)
            quiet.progress = False
            try:
                self.say("training, encrypting and uploading; then waiting for the others ...")
                result = quiet.run_round(self.project, self.train, timeout=self.timeout)
                if result is None:
                    self.say("the project has finished")
                    return
                self.results.append(result)
                self.say(
                    f"round {result.number}: {result.parties} units, total weight "
                    f"{result.total_weight}, {time.monotonic() - started:.0f}s"
                )
                if self.on_result is not None:
                    self.on_result(result)
            except Exception as e:
                self.say(f"round failed: {e}")
            finally:
                self._busy = False
                self.refresh()

        threading.Thread(target=work, name="fl-round", daemon=True).start()


def chart_png(series: dict[str, list[tuple[int, float]]], metric: str) -> bytes:
    """A small line chart of ``{unit: [(round, value)]}`` as PNG bytes (matplotlib, Agg)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3))
    ax = fig.subplots()
    for unit, points in sorted(series.items()):
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=unit)
    ax.set_xlabel("round")
    ax.set_ylabel(metric)
    ax.set_title(f"validation {metric} per unit")
    if series:
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()
