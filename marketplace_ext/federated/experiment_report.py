"""Reporting of the theft-detection experiment: the summary over seeds, the markdown tables (the
arms side by side, per unit, and the issue's goal for personalization) and the figure."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from marketplace_ext.federated.experiment_arms import Config
from marketplace_ext.federated.training import METRICS

PAPER = {
    "alone": {"accuracy": 0.555, "recall": 0.578},
    "federated": {"accuracy": 0.806, "recall": 0.643},
}
ARM_LABELS = {
    "alone": "Each unit alone",
    "federated": "Federated (FedAvg)",
    "federated_encrypted": "Federated, packed Paillier",
    "federated_service": "Federated via the service, packed Paillier",
    "federated_personalized": "Federated, then personalized per unit",
    "pooled": "Pooled (centralised)",
}
COLOURS = {
    "alone": "#9e9e9e",
    "federated": "#1f77b4",
    "federated_encrypted": "#17becf",
    "federated_service": "#9467bd",
    "federated_personalized": "#ff7f0e",
    "pooled": "#2ca02c",
}
# the goal for personalization: no unit below its local model, the mean over units within
# this much ROC AUC of the pooled model (balanced held-out set)
GOAL_ARM = "federated_personalized"
GOAL_AUC_GAP = 0.01
SPLITS = ("balanced", "natural")


def unit_mean(
    per_unit: Mapping[str, Mapping[str, Mapping[str, float]]], split: str, metric: str
) -> float:
    return float(np.nanmean([m[split][metric] for m in per_unit.values()]))


def summarise(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per arm, split and metric: the mean over units, then mean and standard deviation over
    repeats; per unit, the mean (``per_unit``) and standard deviation (``per_unit_sd``) over
    repeats."""
    arms = list(runs[0]["arms"])
    out: dict[str, Any] = {}
    for arm in arms:
        out[arm] = {"mean": {}, "per_unit": {}}
        for split in SPLITS:
            out[arm]["mean"][split] = {}
            for metric in METRICS:
                vals = [unit_mean(r["arms"][arm]["per_unit"], split, metric) for r in runs]
                out[arm]["mean"][split][metric] = {
                    "mean": float(np.mean(vals)),
                    "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                }
        out[arm]["per_unit_sd"] = {}
        for unit in runs[0]["arms"][arm]["per_unit"]:
            out[arm]["per_unit_sd"][unit] = {
                split: {
                    metric: _sd([r["arms"][arm]["per_unit"][unit][split][metric] for r in runs])
                    for metric in METRICS
                }
                for split in SPLITS
            }
            out[arm]["per_unit"][unit] = {
                split: {
                    metric: float(
                        np.nanmean([r["arms"][arm]["per_unit"][unit][split][metric] for r in runs])
                    )
                    for metric in METRICS
                }
                for split in SPLITS
            }
        out[arm]["seconds"] = float(np.mean([r["arms"][arm]["seconds"] for r in runs]))
    return out


def _choice(info: Mapping[str, Any]) -> str:
    # reports written before the select rule only say whether the fine-tuned head was kept
    return str(info.get("choice") or ("finetuned" if info.get("kept") else "federated"))


# how the per-unit table names a unit's choice
CHOICE_LABELS = {"federated": "fed", "finetuned": "head", "local": "local"}


def choice_label(choice: str) -> str:
    if choice.startswith("blend"):
        return f"blend {choice[len('blend') :]}"
    return CHOICE_LABELS.get(choice, choice)


def _sd(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


def goal(summary: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The issue's goal, on the balanced held-out set's ROC AUC: per unit the alone, federated,
    personalized and pooled means over seeds, whether personalized is below alone (on the mean,
    and in how many seeds), and the gap of the mean over units to pooled. None without the
    personalized arm."""
    if GOAL_ARM not in summary:
        return None
    arms = [a for a in ("alone", "federated", GOAL_ARM, "pooled") if a in summary]

    def auc(run: Mapping[str, Any], arm: str, unit: str) -> float:
        return run["arms"][arm]["per_unit"][unit]["balanced"]["auc"]

    units = {}
    for unit in runs[0]["units"]:
        row = {a: summary[a]["per_unit"][unit]["balanced"]["auc"] for a in arms}
        row["sd"] = {a: summary[a]["per_unit_sd"][unit]["balanced"]["auc"] for a in arms}
        row["kept"] = sum(bool(r["arms"][GOAL_ARM]["extra"]["units"][unit]["kept"]) for r in runs)
        row["choices"] = [_choice(r["arms"][GOAL_ARM]["extra"]["units"][unit]) for r in runs]
        row["seeds_below_alone"] = sum(auc(r, GOAL_ARM, unit) < auc(r, "alone", unit) for r in runs)
        row["below_alone"] = row[GOAL_ARM] < row["alone"]
        units[unit] = row
    mean = {a: summary[a]["mean"]["balanced"]["auc"]["mean"] for a in arms}
    gap = mean["pooled"] - mean[GOAL_ARM] if "pooled" in mean else math.nan
    return {
        "arm": GOAL_ARM,
        "metric": "balanced auc",
        "units": units,
        "mean": mean,
        "gap_to_pooled": gap,
        "no_unit_below_alone": not any(r["below_alone"] for r in units.values()),
        "no_unit_below_alone_any_seed": not any(r["seeds_below_alone"] for r in units.values()),
        "within_gap_of_pooled": bool(gap <= GOAL_AUC_GAP),
        "seeds": len(runs),
    }


# --- reporting -----------------------------------------------------------------------------------


def _pct(value: float, sd: float | None = None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if sd:
        return f"{100 * value:.1f} ± {100 * sd:.1f}"
    return f"{100 * value:.1f}"


def markdown(
    summary: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], cfg: Config, params: int
) -> str:
    lines = []
    n_rep = len(runs)
    rep = f", mean ± sd over {n_rep} seeds" if n_rep > 1 else ""
    lines.append(
        f"Theft detection on each unit's held-out customers, mean over units A-E "
        f"(scale {cfg.scale}; federated {cfg.rounds} rounds x {cfg.local_epochs} local epochs, "
        f"alone and pooled {cfg.epochs} epochs; "
        f"{params:,} parameters{rep}); percentages."
    )
    lines.append("")
    lines.append("| Training | Test set | Accuracy | Precision | Recall | F1 | ROC AUC |")
    lines.append("|---|---|---|---|---|---|---|")
    for split in SPLITS:
        for arm, s in summary.items():
            m = s["mean"][split]
            cells = [_pct(m[k]["mean"], m[k]["sd"]) for k in METRICS]
            lines.append(f"| {ARM_LABELS[arm]} | {split} | " + " | ".join(cells) + " |")
    for arm in ("alone", "federated"):
        p = PAPER[arm]
        label = "Paper: each province alone" if arm == "alone" else "Paper: federated"
        lines.append(
            f"| {label} | (paper's data) | {_pct(p['accuracy'])} | - | {_pct(p['recall'])} "
            "| - | - |"
        )
    lines.append("")
    lines.append("Per unit, balanced test set (accuracy / recall / ROC AUC, %):")
    lines.append("")
    head = " | ".join(ARM_LABELS[a] for a in summary)
    lines.append(f"| Unit | train (thieves) | test (thieves) | {head} |")
    lines.append("|---|---|---|" + "---|" * len(summary))
    for unit, counts in runs[0]["units"].items():
        cells = []
        for arm in summary:
            b = summary[arm]["per_unit"][unit]["balanced"]
            cells.append(" / ".join(_pct(b[k]) for k in ("accuracy", "recall", "auc")))
        lines.append(
            f"| {unit.upper()} | {counts['train']} ({counts['train_thieves']}) | "
            f"{counts['test']} ({counts['test_thieves']}) | " + " | ".join(cells) + " |"
        )
    g = goal(summary, runs)
    if g:
        lines.append("")
        lines.extend(goal_markdown(g, runs))
    return "\n".join(lines)


def goal_markdown(g: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The per-unit ROC AUC table of the goal (alone, federated, personalized, pooled) and the
    verdict, in percent."""
    n = len(runs)
    arms = [a for a in ("alone", "federated", GOAL_ARM, "pooled") if a in g["mean"]]
    over = f"mean ± sd over {n} seeds" if n > 1 else f"seed {runs[0]['seed']}"
    seeds = ", ".join(str(r["seed"]) for r in runs)
    lines = [
        f"Per unit, balanced test set, ROC AUC (%, {over}); choice: the model each unit chose on "
        f"its validation split, per seed ({seeds}): fed = the federated model, head = its "
        "fine-tuned head, local = its own model, blend w = w x federated + (1 - w) x local "
        "logits:",
        "",
        "| Unit | "
        + " | ".join(ARM_LABELS[a] for a in arms)
        + " | choice | personalized - alone |",
        "|---|" + "---|" * (len(arms) + 2),
    ]
    for unit, row in g["units"].items():
        cells = [_pct(row[a], row["sd"][a]) for a in arms]
        diff = 100 * (row[GOAL_ARM] - row["alone"])
        below = f" (below in {row['seeds_below_alone']} of {n})" if row["seeds_below_alone"] else ""
        choices = ", ".join(choice_label(c) for c in row["choices"])
        lines.append(
            f"| {unit.upper()} | " + " | ".join(cells) + f" | {choices} | {diff:+.1f}{below} |"
        )
    lines.append(
        "| Mean over units | "
        + " | ".join(_pct(g["mean"][a]) for a in arms)
        + f" | | {100 * (g['mean'][GOAL_ARM] - g['mean']['alone']):+.1f} |"
    )
    lines.append("")
    lines.extend(per_seed_markdown(runs))
    lines.append("")
    below = [u.upper() for u, r in g["units"].items() if r["below_alone"]]
    below_seeds = [
        f"{u.upper()} on seed {r['seed']}"
        for u in g["units"]
        for r in runs
        if r["arms"][GOAL_ARM]["per_unit"][u]["balanced"]["auc"]
        < r["arms"]["alone"]["per_unit"][u]["balanced"]["auc"]
    ]
    lines.append(
        "Goal: no unit below its local model - "
        + ("met" if g["no_unit_below_alone"] else f"NOT met (below: {', '.join(below)})")
        + " on the mean over seeds, "
        + (
            "met"
            if g["no_unit_below_alone_any_seed"]
            else f"NOT met (below: {', '.join(below_seeds)})"
        )
        + " in every seed"
        + f"; the mean within {100 * GOAL_AUC_GAP:.0f} AUC point of pooled - "
        + ("met" if g["within_gap_of_pooled"] else "NOT met")
        + f" ({_pct(g['mean'][GOAL_ARM])} vs {_pct(g['mean']['pooled'])}, gap "
        f"{100 * g['gap_to_pooled']:.1f})."
    )
    return lines


def per_seed_markdown(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Per unit and seed, the balanced ROC AUC alone / federated / personalized (and the unit's
    choice), in percent; a personalized score below alone is marked."""
    seeds = [r["seed"] for r in runs]
    lines = [
        "Per unit and seed, balanced test set, ROC AUC (%): alone / federated / personalized "
        "(choice); ! marks personalized below alone:",
        "",
        "| Unit | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|" + "---|" * len(seeds),
    ]
    for unit in runs[0]["units"]:
        cells = []
        for r in runs:
            auc = {
                a: r["arms"][a]["per_unit"][unit]["balanced"]["auc"]
                for a in ("alone", "federated", GOAL_ARM)
            }
            choice = choice_label(_choice(r["arms"][GOAL_ARM]["extra"]["units"][unit]))
            mark = " !" if auc[GOAL_ARM] < auc["alone"] else ""
            cells.append(
                f"{_pct(auc['alone'])} / {_pct(auc['federated'])} / "
                f"{_pct(auc[GOAL_ARM])}{mark} ({choice})"
            )
        lines.append(f"| {unit.upper()} | " + " | ".join(cells) + " |")
    return lines


def plot(
    summary: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], cfg: Config, path: Path | str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = COLOURS
    arms = list(summary)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), gridspec_kw={"width_ratios": [3, 3, 2]})

    ax = axes[0]
    width = 0.8 / (len(arms) + 2)
    x = np.arange(len(METRICS))
    for k, arm in enumerate(arms):
        m = summary[arm]["mean"]["balanced"]
        ax.bar(
            x + k * width,
            [m[q]["mean"] for q in METRICS],
            width,
            yerr=[m[q]["sd"] for q in METRICS] if len(runs) > 1 else None,
            color=colours[arm],
            label=ARM_LABELS[arm],
        )
    for k, arm in enumerate(("alone", "federated")):
        vals = [PAPER[arm].get(q, np.nan) for q in METRICS]
        ax.bar(
            x + (len(arms) + k) * width,
            vals,
            width,
            color=colours[arm],
            alpha=0.45,
            hatch="//",
            edgecolor="black",
            linewidth=0.5,
            label=f"paper: {'alone' if arm == 'alone' else 'federated'}",
        )
    ax.set_xticks(
        x + width * (len(arms) + 1) / 2, [q.upper() if q == "auc" else q for q in METRICS]
    )
    # headroom above 1.0 for the legend, so it covers no bar
    ax.set_ylim(0, 1.3)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_title("Mean over units, balanced held-out set")
    ax.legend(fontsize=7, loc="upper center", ncol=3)

    ax = axes[1]
    units = list(runs[0]["units"])
    x = np.arange(len(units))
    width = 0.8 / len(arms)
    for k, arm in enumerate(arms):
        vals = [summary[arm]["per_unit"][u]["balanced"]["auc"] for u in units]
        sds = [summary[arm]["per_unit_sd"][u]["balanced"]["auc"] for u in units]
        ax.bar(
            x + k * width,
            vals,
            width,
            yerr=sds if len(runs) > 1 else None,
            color=colours[arm],
            label=ARM_LABELS[arm],
        )
    ax.set_xticks(
        x + width * (len(arms) - 1) / 2,
        [
            f"{u.upper()}\n{runs[0]['units'][u]['train']} train\n"
            f"{runs[0]['units'][u]['test_thieves']} test thieves"
            for u in units
        ],
        fontsize=7,
    )
    ax.set_ylim(0.5, 1.0)
    ax.set_title("ROC AUC per unit, balanced held-out set")

    ax = axes[2]
    for arm in arms:
        curves = [r["arms"][arm]["curve"] for r in runs if r["arms"][arm]["curve"]]
        if curves:
            c = np.mean(curves, axis=0)
            ax.plot(np.arange(1, len(c) + 1), c, color=colours[arm], label=ARM_LABELS[arm])
        else:
            ax.axhline(
                summary[arm]["mean"]["balanced"]["accuracy"]["mean"],
                color=colours[arm],
                linestyle="--",
                label=f"{ARM_LABELS[arm]} (final)",
            )
    ax.set_xlabel("round")
    ax.set_ylim(0.4, 1.0)
    ax.set_title("Balanced accuracy by federated round")
    ax.legend(fontsize=7, loc="lower right")

    fig.suptitle(
        f"Electricity-theft detection, LCL households x Jokar attacks "
        f"(scale {cfg.scale}, seed {cfg.seed}"
        f"{f', {len(runs)} seeds' if len(runs) > 1 else ''})",
        fontsize=10,
    )
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def json_safe(value: Any) -> Any:
    # NaN (an AUC without both classes) is not JSON; null is
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
