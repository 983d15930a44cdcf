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

Everything a unit does here needs only its own data and the federated weights. The cost is one
more federation (step 2); a unit that would rather not pay it can keep its validation customers
out of the one federation instead, giving up a fifth of its training data there.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from marketplace_ext.federated import features as feats
from marketplace_ext.federated.experiment_arms import (
    ArmResult,
    Config,
    UnitData,
    _evaluate_units,
    _seed,
    train_federated,
)
from marketplace_ext.federated.model import build_model, load_flat_state
from marketplace_ext.federated.training import predict_proba, roc_auc, train_local

LAYERS = ("all", "head")
SETTINGS = (
    "personalize_epochs",
    "personalize_lr",
    "personalize_layers",
    "personalize_patience",
    "val_fraction",
)


class PersonalizationError(ValueError):
    """Personalization was asked for something it cannot do (bad layers or fractions)."""


def check_config(cfg: Config) -> None:
    """Raise :class:`PersonalizationError` naming the first bad personalization setting."""
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
) -> dict[str, Any]:
    """Fine-tune ``weights`` on ``fit`` with early stopping on ``val``'s ROC AUC, and say how many
    epochs to personalize for (``best_epoch``; 0: keep the federated model). The safeguard:
    ``best_epoch > 0`` only when that epoch's validation AUC beats the starting model's."""
    model = build_model(spec)
    load_flat_state(model, weights)
    info: dict[str, Any] = {
        "fit": len(fit),
        "validation": len(val),
        "validation_thieves": val.n_thieves,
    }
    start_auc = roc_auc(val.y, predict_proba(model, val.X))
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
        auc = roc_auc(val.y, predict_proba(model, val.X))
        history.append(auc)
        if auc > best["auc"]:
            best.update(auc=auc, epoch=epoch)
        return epoch - best["epoch"] >= cfg.personalize_patience

    _fine_tune(model, fit, cfg, seed, cfg.personalize_epochs, after_epoch)
    info.update(
        personalized_val_auc=best["auc"],
        best_epoch=best["epoch"],
        kept=best["epoch"] > 0,
        val_curve=history,
    )
    return info


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
) -> ArmResult:
    """Every unit personalizes the final federated model as the module docstring says; each unit
    is scored on its test customers with the model it ends up with. ``rehearsal_weights`` (the
    federation on the units' fit splits) are trained here unless given. ``extra["units"]`` holds
    each unit's validation AUCs, chosen epochs and whether it personalized."""
    check_config(cfg)
    t = time.perf_counter()
    rehearsal = rehearsal_data(data, cfg)
    if rehearsal_weights is None:
        rehearsal_weights = train_federated(rehearsal, spec, cfg)[1]
    rehearsal_seconds = time.perf_counter() - t
    models, units = {}, {}
    for i, (unit, d) in enumerate(data.items()):
        r = rehearsal[unit]
        info = choose_epochs(rehearsal_weights, spec, r.train, r.test, cfg, _seed(cfg.seed, 6, i))
        model = build_model(spec)
        load_flat_state(model, federated_weights)
        if info["kept"]:
            _fine_tune(model, d.train, cfg, _seed(cfg.seed, 7, i), info["best_epoch"])
        models[unit], units[unit] = model, info
    seconds = time.perf_counter() - t
    extra = {
        "config": {k: getattr(cfg, k) for k in SETTINGS},
        "units": units,
        "kept": sum(u["kept"] for u in units.values()),
        "rehearsal_seconds": round(rehearsal_seconds, 2),
    }
    return ArmResult(_evaluate_units(models, data, cfg.seed), seconds, extra=extra)
