"""The arms of the theft-detection experiment: the data each unit holds, the aggregation a
federated round uses, and the training runs (each unit alone, federated, pooled).

The personalized arm, which starts from the federated arm's final weights, is in
:mod:`marketplace_ext.federated.personalization`; tables and figures in
:mod:`marketplace_ext.federated.experiment_report`; the command line in
:mod:`marketplace_ext.federated.experiment`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marketplace_ext import griddata
from marketplace_ext.federated import features as feats
from marketplace_ext.federated.model import build_model, flatten_state, load_flat_state
from marketplace_ext.federated.training import (
    clip_and_noise,
    dp_epsilon,
    evaluate,
    train_local,
    weighted_mean,
)

Aggregate = Callable[[list[np.ndarray], list[int]], np.ndarray]
DP_DELTA = 1e-5


class ExperimentError(ValueError):
    """The experiment was asked for something it cannot run (bad arguments, no packing)."""


@dataclass(frozen=True)
class Config:
    scale: float = 1.0
    rounds: int = 80
    local_epochs: int = 2
    epochs: int = 40
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 7
    weeks: int = feats.DEFAULT_WEEKS
    test_fraction: float = feats.DEFAULT_TEST_FRACTION
    dp_noise: float = 0.0
    dp_clip: float = 1.0
    key_bits: int = 2048
    quant_bits: int = 16
    optimizer: str = "adam"
    # personalization after the federated rounds (0 epochs: no personalized arm)
    personalize_rule: str = "select"
    personalize_confidence: float = 0.95
    personalize_epochs: int = 10
    personalize_lr: float = 1e-3
    personalize_layers: str = "head"
    personalize_patience: int = 3
    val_fraction: float = 0.2


@dataclass
class UnitData:
    train: feats.Features
    test: feats.Features


@dataclass
class ArmResult:
    per_unit: dict[str, dict[str, dict[str, float]]]
    seconds: float
    curve: list[float] = field(default_factory=list)  # federated: mean balanced accuracy a round
    extra: dict[str, Any] = field(default_factory=dict)


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


# --- data ----------------------------------------------------------------------------------------


def prepare(cfg: Config, data_dir: Path | str | None = None) -> dict[str, UnitData]:
    """Every unit's train/test features, all on one common window ending on the last day any
    unit has a reading."""
    frames = feats.all_frames_from_griddata(griddata.UNITS, cfg.scale, cfg.seed, data_dir)
    end = max(f.consumption["day"].max() for f in frames.values())
    end = np.datetime64(end.date(), "D")
    out = {}
    for unit, frame in frames.items():
        f = feats.build_features(frame, weeks=cfg.weeks, end=end)
        train, test = feats.split_customers(
            f.customer_ids, f.y, test_fraction=cfg.test_fraction, seed=cfg.seed
        )
        out[unit] = UnitData(f.subset(train), f.subset(test))
    return out


# --- aggregation ---------------------------------------------------------------------------------


def plaintext_aggregate(updates: list[np.ndarray], weights: list[int]) -> np.ndarray:
    """FedAvg's sample-weighted mean, in the clear."""
    return weighted_mean(updates, weights)


class PackedPaillierAggregate:
    """FedAvg through packed Paillier, in one process: each party clips, quantizes, weights and
    encrypts its delta; the ciphertexts are multiplied (the service's part); the key holder
    decrypts the sum. Keeps the numbers a report needs (time, clipped values, error against the
    plaintext mean)."""

    def __init__(
        self,
        length: int,
        max_parties: int,
        max_weight: int,
        clip: float,
        bits: int = 16,
        key_bits: int = 2048,
    ):
        try:
            from marketplace_ext.federated import packing
        except ImportError as e:  # written alongside this module; say so rather than crash
            raise ExperimentError(
                f"--encrypted needs marketplace_ext.federated.packing: {e}"
            ) from e
        from phe import paillier

        self._packing = packing
        self.public_key, self.private_key = paillier.generate_paillier_keypair(n_length=key_bits)
        self.spec = packing.PackSpec.create(
            self.public_key.n,
            length,
            bits=bits,
            clip=clip,
            max_parties=max_parties,
            max_weight=max_weight,
        )
        self.encryptor = packing.Encryptor(self.public_key, self.private_key)
        self.seconds = {"encrypt": 0.0, "add": 0.0, "decrypt": 0.0}
        self.clipped = 0
        self.values = 0
        self.max_abs_error = 0.0

    def __call__(self, updates: list[np.ndarray], weights: list[int]) -> np.ndarray:
        p = self._packing
        t = time.perf_counter()
        packed = [
            p.pack_update(self.spec, u, int(w), self.encryptor)
            for u, w in zip(updates, weights, strict=True)
        ]
        t1 = time.perf_counter()
        total = p.add_encrypted(self.spec, [u.ciphertexts for u in packed])
        t2 = time.perf_counter()
        mean = p.unpack_aggregate(
            self.spec, total, self.private_key, int(sum(weights)), len(updates)
        )
        t3 = time.perf_counter()
        self.seconds["encrypt"] += t1 - t
        self.seconds["add"] += t2 - t1
        self.seconds["decrypt"] += t3 - t2
        self.clipped += sum(u.clipped for u in packed)
        self.values += sum(len(u) for u in updates)
        # what the encryption changed: against the plaintext mean of the unclipped deltas
        self.max_abs_error = max(
            self.max_abs_error, float(np.abs(mean - weighted_mean(updates, weights)).max())
        )
        return mean

    def report(self) -> dict[str, Any]:
        return {
            "key_bits": self.public_key.n.bit_length(),
            "quant_bits": self.spec.bits,
            "clip": self.spec.clip,
            "slots_per_ciphertext": self.spec.slots,
            "ciphertexts_per_update": self.spec.ciphertexts,
            "update_bytes": self.spec.update_bytes,
            "clipped_values": self.clipped,
            "clipped_fraction": self.clipped / self.values if self.values else 0.0,
            "max_abs_error_vs_plaintext": self.max_abs_error,
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
        }


def packing_clip(cfg: Config, max_train: int) -> float:
    """The packing clip for local Adam deltas, fixed before training as a project must fix it.

    An Adam step moves a weight by about ``lr`` at most (``3.2 lr`` in the pathological worst
    case, ``(1 - beta1) / sqrt(1 - beta2)``), and a party takes ``local_epochs * ceil(n /
    batch_size)`` steps a round; steps rarely all push one weight the same way, so 1.5 x that
    leaves room and still quantizes finely. Whatever falls outside is clipped and counted."""
    steps = cfg.local_epochs * math.ceil(max_train / cfg.batch_size)
    clip = 1.5 * cfg.lr * steps
    if cfg.dp_noise > 0:
        # a DP update is the delta scaled to L2 norm dp_clip (so no coordinate beyond it) plus
        # noise of sd dp_noise * dp_clip; 6 sd leaves about 2e-9 of the values to clip
        clip = min(clip, cfg.dp_clip) + 6 * cfg.dp_noise * cfg.dp_clip
    return clip


# --- alone, federated, pooled ---------------------------------------------------------------------


def _evaluate_units(
    models: Mapping[str, torch.nn.Module], data: Mapping[str, UnitData], seed: int
) -> dict[str, dict[str, dict[str, float]]]:
    return {
        u: evaluate(models[u], d.test.X, d.test.y, seed=_seed(seed, 99, i))
        for i, (u, d) in enumerate(data.items())
    }


def run_alone(data: Mapping[str, UnitData], spec: Mapping[str, Any], cfg: Config) -> ArmResult:
    return train_alone(data, spec, cfg)[0]


def train_alone(
    data: Mapping[str, UnitData], spec: Mapping[str, Any], cfg: Config
) -> tuple[ArmResult, dict[str, np.ndarray]]:
    """Each unit trains its own model on its own training customers; returns the arm and each
    unit's final weights (float64)."""
    t = time.perf_counter()
    models = {}
    for i, (unit, d) in enumerate(data.items()):
        model = build_model(spec, seed=cfg.seed)
        train_local(
            model,
            d.train.X,
            d.train.y,
            epochs=cfg.epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            optimizer=cfg.optimizer,
            seed=_seed(cfg.seed, 1, i),
        )
        models[unit] = model
    seconds = time.perf_counter() - t
    weights = {u: flatten_state(m, np.float64) for u, m in models.items()}
    return ArmResult(_evaluate_units(models, data, cfg.seed), seconds), weights


def run_pooled(data: Mapping[str, UnitData], spec: Mapping[str, Any], cfg: Config) -> ArmResult:
    return train_pooled(data, spec, cfg)[0]


def train_pooled(
    data: Mapping[str, UnitData], spec: Mapping[str, Any], cfg: Config
) -> tuple[ArmResult, np.ndarray]:
    """One model on every unit's training customers; returns the arm and its weights."""
    t = time.perf_counter()
    X = np.concatenate([d.train.X for d in data.values()])
    y = np.concatenate([d.train.y for d in data.values()])
    model = build_model(spec, seed=cfg.seed)
    train_local(
        model,
        X,
        y,
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        optimizer=cfg.optimizer,
        seed=_seed(cfg.seed, 2),
    )
    seconds = time.perf_counter() - t
    arm = ArmResult(_evaluate_units(dict.fromkeys(data, model), data, cfg.seed), seconds)
    return arm, flatten_state(model, np.float64)


def run_federated(
    data: Mapping[str, UnitData],
    spec: Mapping[str, Any],
    cfg: Config,
    aggregate: Aggregate = plaintext_aggregate,
) -> ArmResult:
    """The federated arm (see :func:`train_federated`) without its final weights."""
    return train_federated(data, spec, cfg, aggregate)[0]


def train_federated(
    data: Mapping[str, UnitData],
    spec: Mapping[str, Any],
    cfg: Config,
    aggregate: Aggregate = plaintext_aggregate,
) -> tuple[ArmResult, np.ndarray]:
    """FedAvg: each round every unit trains ``local_epochs`` from the global weights, and the
    global weights move by ``aggregate`` of the units' deltas weighted by training samples.
    With ``cfg.dp_noise > 0`` each delta is clipped to L2 norm ``dp_clip`` and noised first
    (DP-FedAvg of McMahan et al., ICLR 2018, with the unit as the "user": the epsilon reported
    covers a unit's whole update each round, so every one of its customers as well).
    Returns the arm and the final global weights (float64)."""
    t = time.perf_counter()
    model = build_model(spec, seed=cfg.seed)
    global_w = flatten_state(model, np.float64)
    rng = np.random.default_rng(_seed(cfg.seed, 4))
    curve, losses = [], []
    for r in range(cfg.rounds):
        deltas, weights, round_loss = [], [], []
        for i, d in enumerate(data.values()):
            load_flat_state(model, global_w)
            res = train_local(
                model,
                d.train.X,
                d.train.y,
                epochs=cfg.local_epochs,
                lr=cfg.lr,
                batch_size=cfg.batch_size,
                optimizer=cfg.optimizer,
                seed=_seed(cfg.seed, 3, r, i),
            )
            delta = res.weights.astype(np.float64) - global_w
            if cfg.dp_noise > 0:
                delta = clip_and_noise(delta, cfg.dp_clip, cfg.dp_noise, rng)
            deltas.append(delta)
            weights.append(res.n_samples)
            round_loss.append(res.loss)
        global_w = global_w + np.asarray(aggregate(deltas, weights), dtype=np.float64)
        load_flat_state(model, global_w)
        losses.append(float(np.average(round_loss, weights=weights)))
        # a learning curve for the figure only; nothing is selected by it
        per_unit = _evaluate_units(dict.fromkeys(data, model), data, cfg.seed)
        curve.append(float(np.mean([m["balanced"]["accuracy"] for m in per_unit.values()])))
    seconds = time.perf_counter() - t
    extra: dict[str, Any] = {"train_loss": losses}
    if cfg.dp_noise > 0:
        extra["dp"] = {
            "noise_multiplier": cfg.dp_noise,
            "clip_norm": cfg.dp_clip,
            "delta": DP_DELTA,
            "epsilon": dp_epsilon(cfg.dp_noise, cfg.rounds, DP_DELTA, sample_rate=1.0),
        }
    arm = ArmResult(
        _evaluate_units(dict.fromkeys(data, model), data, cfg.seed), seconds, curve, extra
    )
    return arm, global_w
