"""Local training, evaluation and the optional differential-privacy step of one party.

A party trains from weights it is given and hands back flat vectors (see
:func:`marketplace_ext.federated.model.flatten_state`), so whatever aggregates them - a plaintext
mean or packed Paillier ciphertexts - never sees a torch object.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from marketplace_ext.federated.model import StateShapeError, flatten_state

METRICS = ("accuracy", "precision", "recall", "f1", "auc")


class TrainingError(ValueError):
    """Training inputs are inconsistent (shapes, empty data, bad hyper-parameters)."""


@dataclass(frozen=True)
class TrainResult:
    """What a local training pass hands back: the new flat weights, how many samples they were
    trained on (the party's weight in federated averaging) and the mean loss of the last epoch."""

    weights: np.ndarray
    n_samples: int
    loss: float
    losses: tuple[float, ...]


def _pos_weight(y: np.ndarray, class_weight: str | float | None) -> float:
    if class_weight is None:
        return 1.0
    if class_weight == "balanced":
        # thieves are rare; weighting them by the honest/thief ratio makes the 0.5 threshold a
        # balanced one, which is what a unit with 4 % thieves needs to flag anybody at all
        n_pos = float(y.sum())
        return (len(y) - n_pos) / n_pos if n_pos > 0 else 1.0
    if isinstance(class_weight, int | float) and not isinstance(class_weight, bool):
        if class_weight > 0:
            return float(class_weight)
    raise TrainingError(
        f"class_weight must be 'balanced', None or a positive number, got {class_weight!r}"
    )


def _check_data(X: np.ndarray, y: np.ndarray) -> None:
    if len(X) != len(y):
        raise TrainingError(f"X has {len(X)} rows but y has {len(y)}")
    if len(y) == 0:
        raise TrainingError("no training samples")


def train_local(
    model: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    class_weight: str | float | None = "balanced",
    weight_decay: float = 1e-4,
    optimizer: str = "adam",
    parameters: Sequence[nn.Parameter] | None = None,
    after_epoch: Callable[[int], bool] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``(X, y)`` and return its new flat weights.

    ``optimizer`` is ``"adam"`` or ``"sgd"`` (with Nesterov momentum 0.9).

    The optimiser starts fresh on every call (a federated round hands over weights, not optimiser
    state). Shuffling is drawn from ``seed`` and the global torch RNG is left as it was, so the
    same call gives the same weights. ``class_weight="balanced"`` weights thieves by the
    honest-to-thief ratio of this party's data.

    ``parameters`` limits training to those of the model's parameters (default: all), e.g. a
    per-unit head. ``after_epoch(epoch)`` (1-based) is called after every epoch with the model in
    eval mode; returning True stops training early (a caller's early stopping, which keeps its
    own copy of the best weights: the returned weights are the last epoch's).
    """
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    _check_data(X, y)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise TrainingError(f"epochs must be a positive integer, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise TrainingError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not lr > 0:
        raise TrainingError(f"lr must be positive, got {lr!r}")
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(_pos_weight(y, class_weight)))
    xs, ys = torch.from_numpy(X), torch.from_numpy(y)
    params = list(model.parameters()) if parameters is None else list(parameters)
    if not params:
        raise TrainingError("no parameters to train")
    if optimizer == "adam":
        optimiser = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        optimiser = torch.optim.SGD(
            params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
        )
    else:
        raise TrainingError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    generator = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for epoch in range(1, epochs + 1):
            order = torch.randperm(len(ys), generator=generator)
            total = 0.0
            for start in range(0, len(ys), batch_size):
                idx = order[start : start + batch_size]
                optimiser.zero_grad()
                loss = loss_fn(model(xs[idx]), ys[idx])
                loss.backward()
                optimiser.step()
                total += loss.item() * len(idx)
            losses.append(total / len(ys))
            if after_epoch is not None:
                model.eval()
                stop = after_epoch(epoch)
                model.train()
                if stop:
                    break
    model.eval()
    return TrainResult(flatten_state(model), len(ys), losses[-1], tuple(losses))


def model_delta(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """``after - before`` of two flat weight vectors (what a party ships for aggregation)."""
    before, after = np.asarray(before), np.asarray(after)
    if before.shape != after.shape or before.ndim != 1:
        raise StateShapeError(f"weight vectors differ in shape: {before.shape} vs {after.shape}")
    return after - before


# --- evaluation ----------------------------------------------------------------------------------


@torch.no_grad()
def predict_proba(model: nn.Module, X: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """The model's probability of theft for each row of ``X``."""
    model.eval()
    xs = torch.from_numpy(np.asarray(X, dtype=np.float32))
    out = [torch.sigmoid(model(xs[i : i + batch_size])) for i in range(0, len(xs), batch_size)]
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    # 1-based ranks, ties sharing the mean of the ranks they span (as Mann-Whitney needs)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum statistic (ties count one half); NaN when only
    one class is present."""
    y = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(scores)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_metrics(
    y_true: np.ndarray, scores: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (thief = positive, flagged when score >= threshold) and
    ROC AUC, plus the counts ``n`` and ``n_thieves``. A ratio with a zero denominator is 0, as
    scikit-learn reports it, except AUC, which is NaN without both classes."""
    y = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if y.shape != scores.shape:
        raise TrainingError(f"{y.shape} labels but {scores.shape} scores")
    pred = scores >= threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": float((pred == y).mean()) if len(y) else math.nan,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auc": roc_auc(y, scores),
        "n": len(y),
        "n_thieves": int(y.sum()),
    }


def balanced_indices(y: np.ndarray, seed: int = 0) -> np.ndarray:
    """Sorted indices of a balanced subset: every member of the smaller class (thieves, in
    practice) and an equal-size seeded sample of the other."""
    y = np.asarray(y).astype(bool)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    small, large = (pos, neg) if len(pos) <= len(neg) else (neg, pos)
    rng = np.random.default_rng(seed)
    picked = rng.choice(large, size=len(small), replace=False)
    return np.sort(np.concatenate([small, picked]))


def evaluate(
    model: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    *,
    threshold: float = 0.5,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Metrics of ``model`` on ``(X, y)``: ``{"natural": ..., "balanced": ...}``, the second on
    all thieves plus as many honest customers drawn with ``seed``
    (see :func:`classification_metrics` for the keys)."""
    y = np.asarray(y)
    _check_data(np.asarray(X), y)
    scores = predict_proba(model, X)
    idx = balanced_indices(y, seed)
    return {
        "natural": classification_metrics(y, scores, threshold),
        "balanced": classification_metrics(y[idx], scores[idx], threshold),
    }


# --- differential privacy ------------------------------------------------------------------------


def clip_and_noise(
    delta: np.ndarray,
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Scale ``delta`` down to L2 norm at most ``clip_norm`` and add Gaussian noise of standard
    deviation ``noise_multiplier * clip_norm`` to every coordinate (the Gaussian mechanism on
    one party's update; its sensitivity is ``clip_norm``)."""
    if not clip_norm > 0:
        raise TrainingError(f"clip_norm must be positive, got {clip_norm!r}")
    if not noise_multiplier >= 0:
        raise TrainingError(f"noise_multiplier must be non-negative, got {noise_multiplier!r}")
    delta = np.asarray(delta, dtype=np.float64)
    norm = float(np.linalg.norm(delta))
    clipped = delta * min(1.0, clip_norm / norm) if norm > 0 else delta.copy()
    if noise_multiplier == 0:
        return clipped
    return clipped + rng.normal(0.0, noise_multiplier * clip_norm, size=delta.shape)


def dp_epsilon(
    noise_multiplier: float, steps: int, delta: float, sample_rate: float = 1.0
) -> float:
    """Epsilon spent by ``steps`` Gaussian-mechanism releases with ``noise_multiplier``, each on
    a Poisson subsample of rate ``sample_rate`` (1.0: every party every round), for ``delta``.

    Uses the Renyi-DP accountant of Opacus (Mironov et al. 2019 for the subsampled Gaussian, with
    the RDP-to-(epsilon, delta) conversion of Balle et al. 2020). Infinite without noise.
    """
    if not noise_multiplier >= 0:
        raise TrainingError(f"noise_multiplier must be non-negative, got {noise_multiplier!r}")
    if not 0 < delta < 1:
        raise TrainingError(f"delta must be in (0, 1), got {delta!r}")
    if not 0 < sample_rate <= 1:
        raise TrainingError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    return float(accountant.get_epsilon(delta))


def weighted_mean(updates: Sequence[np.ndarray], weights: Sequence[int]) -> np.ndarray:
    """The sample-weighted mean of flat vectors: FedAvg's plaintext aggregation."""
    if not updates or len(updates) != len(weights):
        raise TrainingError(f"{len(updates)} updates but {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise TrainingError(f"weights must be non-negative with a positive sum, got {list(w)}")
    stacked = np.stack([np.asarray(u, dtype=np.float64) for u in updates])
    return (w[:, None] * stacked).sum(axis=0) / w.sum()
