"""A disk cache of the experiment's trained weights (``--cache DIR``), so that trying another
personalization rule, or re-reporting a seed, does not retrain the federations.

An entry is keyed by what decides the weights and nothing else: a tag (``"federated"``,
``"rehearsal"``, ``"alone"``, ``"alone-fit"``), the training settings of the :class:`Config`
(every field but the personalization ones, which only act after the weights are trained) and a
digest of every unit's training *and* test features (the test customers feed the federated
arm's learning curve and every arm's scores). Training is seeded and deterministic on one
machine, so a hit gives the weights a fresh run would train; a different torch build or thread
count may differ in the last bits, which is why the cache is an option, off by default.

An entry is two files: ``<tag>-<key>.npz`` (the weights: one vector, or one per unit) and
``<tag>-<key>.json`` (the arm's result as the run reported it: scores, curve, seconds).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from marketplace_ext.federated.experiment_arms import ArmResult, Config, UnitData

Weights = np.ndarray | dict[str, np.ndarray]
# settings that act only after the weights are trained (personalization) stay out of the key
_NOT_TRAINING = frozenset(
    {
        "personalize_epochs",
        "personalize_lr",
        "personalize_layers",
        "personalize_patience",
        "personalize_rule",
        "personalize_confidence",
        "val_fraction",
        "key_bits",
        "quant_bits",
    }
)


def data_digest(data: Mapping[str, UnitData]) -> str:
    """sha256 over every unit's name, training and test features, labels and customer ids."""
    h = hashlib.sha256()
    for unit, d in data.items():
        h.update(unit.encode())
        for part in (d.train, d.test):
            h.update(np.ascontiguousarray(part.X, dtype=np.float32).tobytes())
            h.update(np.ascontiguousarray(part.y, dtype=np.float32).tobytes())
            h.update("\x00".join(map(str, part.customer_ids)).encode())
    return h.hexdigest()


def cache_key(tag: str, cfg: Config, data: Mapping[str, UnitData]) -> str:
    settings = {k: v for k, v in asdict(cfg).items() if k not in _NOT_TRAINING}
    blob = json.dumps({"tag": tag, "settings": settings, "data": data_digest(data)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class WeightCache:
    """``get_or_train(tag, cfg, data, train)``: the cached ``(ArmResult, weights)`` for that key,
    or ``train()``'s, stored. ``hits`` and ``misses`` count the tags looked up."""

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.hits: list[str] = []
        self.misses: list[str] = []

    def _paths(self, tag: str, key: str) -> tuple[Path, Path]:
        stem = self.directory / f"{tag}-{key}"
        return stem.with_suffix(".npz"), stem.with_suffix(".json")

    def get_or_train(
        self,
        tag: str,
        cfg: Config,
        data: Mapping[str, UnitData],
        train: Callable[[], tuple[ArmResult, Weights]],
    ) -> tuple[ArmResult, Weights]:
        npz, meta = self._paths(tag, cache_key(tag, cfg, data))
        if npz.exists() and meta.exists():
            self.hits.append(tag)
            info = json.loads(meta.read_text())
            with np.load(npz) as z:
                if info["kind"] == "vector":
                    weights: Weights = z["w"].copy()
                else:
                    weights = {u: z[f"unit_{u}"].copy() for u in info["units"]}
            return ArmResult(**_nan(info["arm"])), weights
        self.misses.append(tag)
        arm, weights = train()
        if isinstance(weights, dict):
            arrays = {f"unit_{u}": np.asarray(w) for u, w in weights.items()}
            info = {"kind": "units", "units": list(weights)}
        else:
            arrays = {"w": np.asarray(weights)}
            info = {"kind": "vector"}
        info["arm"] = _json_safe(asdict(arm))
        tmp = npz.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(npz)
        meta.write_text(json.dumps(info))
        return arm, weights


def _json_safe(value: Any) -> Any:
    from marketplace_ext.federated.experiment_report import json_safe

    return json_safe(value)


def _nan(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan(v) for v in value]
    return float("nan") if value is None else value
