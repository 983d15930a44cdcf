"""Personalization after the federated rounds: each unit adapts the final federated model to its
own customers, and only when that is shown to help on customers the unit held out.

A validation split must be one the model being judged never trained on. Every customer of the
federated arm's model was trained on, so the choice is made on a *rehearsal*, then applied:

1. each unit carves a stratified validation split from its training customers
   (``cfg.val_fraction``, by the same seeded customer hash as the train/test split, so at least
   one thief on each side) - never from its test set;
2. rehearsal: the same federation (same rounds, epochs and initial weights) is run with every
   unit training on its remaining customers only;
3. each unit fine-tunes the rehearsal model on those remaining customers for at most
   ``cfg.personalize_epochs`` epochs at a small learning rate (``personalize_layers="all"``:
   every weight; ``"head"``: only the final linear layer, a per-unit head), scoring the
   validation split's ROC AUC after every epoch and stopping after ``personalize_patience``
   epochs without improvement. Epoch 0 is the rehearsal model itself;
4. the safeguard: the unit personalizes only if its best epoch's validation AUC is strictly
   higher than the rehearsal model's. So the chosen model's validation AUC is never below the
   federated one's, by construction;
5. applied: a unit that chose ``k > 0`` epochs fine-tunes the real federated model on all its
   training customers for ``k`` epochs with the same settings (the usual refit after a
   held-out choice); the others keep the federated model unchanged.

With ``cfg.personalize_rule = "select"`` (the default), step 4 weighs more candidates than the
fine-tuned one, all on the same validation split and all rehearsed on the fit customers only:
the unit's *own local model* (trained alone on its fit customers, as the alone arm trains) and
blends of the federated and local models (the mean of their logits, weighted ``BLENDS``). The
unit takes the candidate with the highest validation AUC; a tie goes to the earlier one in
``CANDIDATES`` order (federated first, local last), so a unit leaves the federated model only
for a strictly better validation score. Applied as in step 5, with the real models: the
federated weights, the unit's alone-arm model (trained on all its training customers), their
blend. This is the "no unit loses by joining" option: a unit keeps its own model, or mixes it
in, where its own held-out customers say that is better.

Everything a unit does here needs only its own data and the federated weights. The cost is one
more federation (step 2) and one more local training (the local model on the fit customers);
a unit that would rather not pay it can keep its validation customers out of the one federation
instead, giving up a fifth of its training data there.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from marketplace_ext.federated import features as feats
from marketplace_ext.federated.experiment_arms import (
    ArmResult,
    Config,
    UnitData,
    _evaluate_units,
    _seed,
    train_alone,
    train_federated,
)
from marketplace_ext.federated.model import build_model, load_flat_state
from marketplace_ext.federated.training import predict_proba, roc_auc, train_local

LAYERS = ("all", "head")
RULES = ("select", "finetune")
# weight of the federated model's logit in a blend with the unit's local model
BLENDS = (0.75, 0.5, 0.25)
# the candidates of the "select" rule, in tie-breaking order (federated first, local last)
CANDIDATES = ("federated", "finetuned", *(f"blend{w:g}" for w in BLENDS), "local")
# resamples of a unit's validation customers behind a candidate's win rate
BOOTSTRAP = 1000
SETTINGS = (
    "personalize_rule",
    "personalize_confidence",
    "personalize_epochs",
    "personalize_lr",
    "personalize_layers",
    "personalize_patience",
    "val_fraction",
)


class LogitBlend(nn.Module):
    """``weight * federated(x) + (1 - weight) * local(x)``: a blend of two detectors' logits (a
    weighted geometric mean of their odds), usable wherever a detector is."""

    def __init__(self, federated: nn.Module, local: nn.Module, weight: float):
        super().__init__()
        self.federated, self.local, self.weight = federated, local, float(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * self.federated(x) + (1 - self.weight) * self.local(x)


def candidate_model(
    choice: str, spec: Mapping[str, Any], federated: np.ndarray, local: np.ndarray | None
) -> nn.Module:
    """The model a candidate names, built from flat federated and local weights (``finetuned``
    gives the federated model, for the caller to fine-tune)."""
    fed = build_model(spec)
    load_flat_state(fed, federated)
    if choice in ("federated", "finetuned"):
        return fed
    if local is None:
        raise PersonalizationError(f"candidate {choice!r} needs the unit's local model")
    loc = build_model(spec)
    load_flat_state(loc, local)
    if choice == "local":
        return loc
    if not choice.startswith("blend"):
        raise PersonalizationError(f"unknown candidate {choice!r}; known: {CANDIDATES}")
    return LogitBlend(fed, loc, float(choice[len("blend") :])).eval()


class PersonalizationError(ValueError):
    """Personalization was asked for something it cannot do (bad layers or fractions)."""


def check_config(cfg: Config) -> None:
    """Raise :class:`PersonalizationError` naming the first bad personalization setting."""
    if cfg.personalize_rule not in RULES:
        raise PersonalizationError(
            f"personalize_rule must be one of {RULES}, got {cfg.personalize_rule!r}"
        )
    if not 0 <= cfg.personalize_confidence < 1:
        raise PersonalizationError(
            f"personalize_confidence must be in [0, 1), got {cfg.personalize_confidence!r}"
        )
    if cfg.personalize_layers not in LAYERS:
        raise PersonalizationError(
            f"personalize_layers must be one of {LAYERS}, got {cfg.personalize_layers!r}"
        )
    if not 0 < cfg.val_fraction < 1:
        raise PersonalizationError(f"val_fraction must be in (0, 1), got {cfg.val_fraction!r}")
    if cfg.personalize_epochs < 1:
        raise PersonalizationError("personalize_epochs must be at least 1")
    if cfg.personalize_patience < 1:
        raise PersonalizationError("personalize_patience must be at least 1")
    if not cfg.personalize_lr > 0:
        raise PersonalizationError(f"personalize_lr must be positive, got {cfg.personalize_lr!r}")


def validation_split(
    train: feats.Features, fraction: float, seed: int
) -> tuple[feats.Features, feats.Features]:
    """``(fit, validation)``: a stratified split of a unit's training customers."""
    fit, val = feats.split_customers(train.customer_ids, train.y, test_fraction=fraction, seed=seed)
    return train.subset(fit), train.subset(val)


def _fine_tune(
    model: Any,
    train: feats.Features,
    cfg: Config,
    seed: int,
    epochs: int,
    after_epoch: Any = None,
) -> None:
    params = list(model.head.parameters()) if cfg.personalize_layers == "head" else None
    train_local(
        model,
        train.X,
        train.y,
        epochs=epochs,
        lr=cfg.personalize_lr,
        batch_size=cfg.batch_size,
        optimizer=cfg.optimizer,
        seed=seed,
        parameters=params,
        after_epoch=after_epoch,
    )


def choose_epochs(
    weights: np.ndarray,
    spec: Mapping[str, Any],
    fit: feats.Features,
    val: feats.Features,
    cfg: Config,
    seed: int,
    scores_out: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``weights`` on ``fit`` with early stopping on ``val``'s ROC AUC, and say how many
    epochs to personalize for (``best_epoch``; 0: keep the federated model). The safeguard:
    ``best_epoch > 0`` only when that epoch's validation AUC beats the starting model's.
    ``scores_out`` receives the validation scores of the start (``"federated"``) and of the best
    epoch (``"finetuned"``)."""
    model = build_model(spec)
    load_flat_state(model, weights)
    info: dict[str, Any] = {
        "fit": len(fit),
        "validation": len(val),
        "validation_thieves": val.n_thieves,
    }
    scores = {"federated": predict_proba(model, val.X)}
    if scores_out is not None:
        scores_out.update(scores)
        scores = scores_out
    start_auc = roc_auc(val.y, scores["federated"])
    info["federated_val_auc"] = start_auc
    if not np.isfinite(start_auc) or fit.n_thieves in (0, len(fit)):
        # no thief (or no honest customer) on one side: nothing to validate against
        info.update(
            personalized_val_auc=start_auc,
            best_epoch=0,
            kept=False,
            val_curve=[],
            reason="a split lacks a class",
        )
        return info
    best = {"auc": start_auc, "epoch": 0}
    history: list[float] = []

    def after_epoch(epoch: int) -> bool:
        p = predict_proba(model, val.X)
        auc = roc_auc(val.y, p)
        history.append(auc)
        if auc > best["auc"]:
            best.update(auc=auc, epoch=epoch)
            scores["finetuned"] = p
        return epoch - best["epoch"] >= cfg.personalize_patience

    _fine_tune(model, fit, cfg, seed, cfg.personalize_epochs, after_epoch)
    info.update(
        personalized_val_auc=best["auc"],
        best_epoch=best["epoch"],
        kept=best["epoch"] > 0,
        val_curve=history,
    )
    return info


def choose_model(
    weights: np.ndarray,
    local_weights: np.ndarray | None,
    spec: Mapping[str, Any],
    fit: feats.Features,
    val: feats.Features,
    cfg: Config,
    seed: int,
) -> dict[str, Any]:
    """The unit's choice on its validation split (rehearsal models: ``weights`` federated on the
    fit customers, ``local_weights`` trained alone on them): :func:`choose_epochs`, then, under
    the ``select`` rule, the local model and the blends.

    A candidate is eligible when its validation AUC beats the federated model's in at least
    ``cfg.personalize_confidence`` of :data:`BOOTSTRAP` stratified bootstrap resamples of the
    validation customers (``val_wins``; 0: any strictly higher AUC will do). ``choice`` is the
    eligible candidate with the highest validation AUC (ties to the earlier in
    :data:`CANDIDATES`), else the federated model; ``val_aucs`` has every candidate's AUC."""
    scores: dict[str, np.ndarray] = {}
    info = choose_epochs(weights, spec, fit, val, cfg, seed, scores_out=scores)
    if info["best_epoch"] == 0:
        scores.pop("finetuned", None)
    if cfg.personalize_rule == "select" and "reason" not in info:
        if local_weights is None:
            raise PersonalizationError("the select rule needs every unit's local model")
        for choice in CANDIDATES[2:]:
            model = candidate_model(choice, spec, weights, local_weights)
            scores[choice] = predict_proba(model, val.X)
    aucs = {c: roc_auc(val.y, p) for c, p in scores.items()}
    wins = {
        c: win_rate(val.y, scores[c], scores["federated"], _seed(seed, 8))
        for c in scores
        if c != "federated" and aucs[c] > aucs["federated"]
    }
    best = "federated"
    for choice in CANDIDATES:
        eligible = choice in wins and wins[choice] >= cfg.personalize_confidence
        if eligible and aucs[choice] > aucs[best]:
            best = choice
    info.update(
        choice=best,
        kept=best != "federated",
        val_aucs=aucs,
        val_wins=wins,
        personalized_val_auc=aucs[best],
    )
    return info


def win_rate(
    y: np.ndarray, scores: np.ndarray, baseline: np.ndarray, seed: int, n: int | None = None
) -> float:
    """Share of ``n`` (default :data:`BOOTSTRAP`) bootstrap resamples of the customers, drawn
    within each class, in which ``scores`` has a strictly higher ROC AUC than ``baseline``."""
    y = np.asarray(y).astype(bool)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    rng = np.random.default_rng(seed)
    n = BOOTSTRAP if n is None else n
    wins = 0
    for _ in range(n):
        idx = np.concatenate([rng.choice(pos, size=len(pos)), rng.choice(neg, size=len(neg))])
        wins += roc_auc(y[idx], scores[idx]) > roc_auc(y[idx], baseline[idx])
    return wins / n


def rehearsal_data(data: Mapping[str, UnitData], cfg: Config) -> dict[str, UnitData]:
    """Every unit's training customers split into ``UnitData(train=fit, test=validation)``."""
    out = {}
    for i, (unit, d) in enumerate(data.items()):
        fit, val = validation_split(d.train, cfg.val_fraction, _seed(cfg.seed, 5, i))
        out[unit] = UnitData(fit, val)
    return out


def run_personalized(
    data: Mapping[str, UnitData],
    spec: Mapping[str, Any],
    cfg: Config,
    federated_weights: np.ndarray,
    rehearsal_weights: np.ndarray | None = None,
    local_weights: Mapping[str, np.ndarray] | None = None,
    local_fit_weights: Mapping[str, np.ndarray] | None = None,
    cache: Any = None,
) -> ArmResult:
    """Every unit personalizes the final federated model as the module docstring says; each unit
    is scored on its test customers with the model it ends up with.

    Trained here unless given: ``rehearsal_weights`` (the federation on the units' fit splits),
    ``local_fit_weights`` (each unit alone on its fit split) and ``local_weights`` (each unit
    alone on all its training customers: the alone arm's models); ``cache`` (a
    :class:`~marketplace_ext.federated.experiment_cache.WeightCache`) keeps what is trained;
    the arm's seconds include the training time of what it gave back (``reused_seconds``).
    ``extra["units"]`` holds each unit's validation AUCs, its choice and whether it left the
    federated model (``kept``)."""
    check_config(cfg)
    t = time.perf_counter()
    rehearsal = rehearsal_data(data, cfg)

    reused = 0.0  # training seconds of what the cache gave back, counted as if trained here

    def trained(tag: str, d: Mapping[str, UnitData], fn: Any) -> Any:
        nonlocal reused
        if cache is None:
            return fn(d, spec, cfg)[1]
        hits = len(cache.hits)
        arm, weights = cache.get_or_train(tag, cfg, d, lambda: fn(d, spec, cfg))
        if len(cache.hits) > hits and tag != "alone":  # the alone arm's own seconds say that
            reused += arm.seconds
        return weights

    select = cfg.personalize_rule == "select"
    if rehearsal_weights is None:
        rehearsal_weights = trained("rehearsal", rehearsal, train_federated)
    if select and local_fit_weights is None:
        local_fit_weights = trained("alone-fit", rehearsal, train_alone)
    if select and local_weights is None:
        local_weights = trained("alone", data, train_alone)
    rehearsal_seconds = time.perf_counter() - t + reused
    models, units = {}, {}
    for i, (unit, d) in enumerate(data.items()):
        r = rehearsal[unit]
        local_fit = local_fit_weights[unit] if select else None
        info = choose_model(
            rehearsal_weights, local_fit, spec, r.train, r.test, cfg, _seed(cfg.seed, 6, i)
        )
        local = local_weights[unit] if select else None
        model = candidate_model(info["choice"], spec, federated_weights, local)
        if info["choice"] == "finetuned":
            _fine_tune(model, d.train, cfg, _seed(cfg.seed, 7, i), info["best_epoch"])
        models[unit], units[unit] = model, info
    seconds = time.perf_counter() - t + reused
    extra = {
        "config": {k: getattr(cfg, k) for k in SETTINGS},
        "units": units,
        "kept": sum(u["kept"] for u in units.values()),
        "choices": {u: info["choice"] for u, info in units.items()},
        "rehearsal_seconds": round(rehearsal_seconds, 2),
        "reused_seconds": round(reused, 2),
    }
    return ArmResult(_evaluate_units(models, data, cfg.seed), seconds, extra=extra)
