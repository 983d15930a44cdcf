"""The theft detector: a small wide & deep network over a customer's weeks x days matrix.

After Zheng et al., "Wide and Deep Convolutional Neural Networks for Electricity-Theft Detection
to Secure Smart Grids" (IEEE Trans. Industrial Informatics 14(4), 2018): the *wide* part is a
fully connected layer over the daily series, which can weigh one stretch of the window against
another (a thief's level drops from the attack on); the *deep* part is a 2-D CNN over the
(weeks, 7) matrix, which sees local shapes such as zeroed days or a week flattened to its mean.

A model is fully described by a small JSON-able spec, so a federated project can ship it as a
bundle (spec + initial weights) and every unit rebuilds the identical module. The network has no
normalisation buffers: its state is its parameters, which keeps federated averaging plain.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ARCH = "wide_deep_cnn"
BUNDLE_FORMAT = "griddata-theft-detector/1"
SPEC_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"

DEFAULT_SPEC: Mapping[str, Any] = {
    "arch": ARCH,
    "weeks": 96,
    "channels": 2,
    "conv": 16,
    "pool_weeks": 8,
    "wide": 12,
    "hidden": 16,
}
_INT_FIELDS = ("weeks", "channels", "conv", "pool_weeks", "wide", "hidden")


class ModelSpecError(ValueError):
    """A model spec names an unknown architecture or field, or a field is out of range."""


class StateShapeError(ValueError):
    """A flat weight vector does not fit the model it is loaded into."""


class BundleError(ValueError):
    """A model bundle is missing a file, is of another format, or its weights do not match."""


def check_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec with defaults filled in; raises :class:`ModelSpecError` naming the bad field."""
    if not isinstance(spec, Mapping):
        raise ModelSpecError(f"spec must be a mapping, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(DEFAULT_SPEC))
    if unknown:
        raise ModelSpecError(f"spec has unknown field(s) {unknown}; known: {sorted(DEFAULT_SPEC)}")
    out = {**DEFAULT_SPEC, **spec}
    if out["arch"] != ARCH:
        raise ModelSpecError(f"spec.arch must be {ARCH!r}, got {out['arch']!r}")
    for name in _INT_FIELDS:
        value = out[name]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
            raise ModelSpecError(f"spec.{name} must be an integer in [1, 4096], got {value!r}")
    if out["pool_weeks"] > out["weeks"]:
        raise ModelSpecError(
            f"spec.pool_weeks ({out['pool_weeks']}) cannot exceed spec.weeks ({out['weeks']})"
        )
    return out


class WideDeepDetector(nn.Module):
    """Input ``(batch, channels, weeks, 7)``; output one logit per customer (thief if > 0)."""

    def __init__(
        self, weeks: int, channels: int, conv: int, pool_weeks: int, wide: int, hidden: int
    ):
        super().__init__()
        self.weeks, self.channels = weeks, channels
        # wide: the kWh channel as one long series; the mask channel only matters locally
        self.wide = nn.Sequential(nn.Linear(weeks * 7, wide), nn.ReLU())
        self.deep = nn.Sequential(
            nn.Conv2d(channels, conv, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(conv, conv, kernel_size=3, padding=1),
            nn.ReLU(),
            # pool over days first (a week's shape is found by now), keep time coarse but ordered
            nn.AdaptiveMaxPool2d((pool_weeks, 1)),
            nn.Flatten(),
            nn.Linear(conv * pool_weeks, hidden),
            nn.ReLU(),
        )
        self.head = nn.Linear(wide + hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        series = x[:, 0].reshape(x.shape[0], self.weeks * 7)
        joined = torch.cat([self.wide(series), self.deep(x)], dim=1)
        return self.head(joined).squeeze(1)


def build_model(spec: Mapping[str, Any] | None = None, seed: int | None = None) -> nn.Module:
    """A fresh detector for ``spec`` (defaults: :data:`DEFAULT_SPEC`), initialised from ``seed``
    when given so that every party can build the same initial weights."""
    s = check_spec(spec or {})
    kwargs = {k: s[k] for k in _INT_FIELDS}
    if seed is None:
        return WideDeepDetector(**kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WideDeepDetector(**kwargs)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- the model as one flat vector ----------------------------------------------------------------


def _float_state(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    # state_dict order is registration order: the same on every party that built the same spec
    return [(k, v) for k, v in model.state_dict().items() if v.is_floating_point()]


def flatten_state(model: nn.Module, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """Every floating-point entry of the model's state, concatenated in state_dict order."""
    parts = [v.detach().cpu().reshape(-1).numpy() for _, v in _float_state(model)]
    if not parts:
        return np.zeros(0, dtype=dtype)
    return np.concatenate(parts).astype(dtype, copy=False)


def load_flat_state(model: nn.Module, vector: np.ndarray) -> None:
    """Write a :func:`flatten_state` vector back into ``model`` (in place).

    Raises :class:`StateShapeError` when the length differs or a value is not finite.
    """
    vector = np.asarray(vector)
    entries = _float_state(model)
    total = sum(v.numel() for _, v in entries)
    if vector.ndim != 1 or vector.size != total:
        raise StateShapeError(f"expected a flat vector of {total} values, got shape {vector.shape}")
    if not np.all(np.isfinite(vector)):
        raise StateShapeError("the weight vector holds NaN or infinite values")
    state, at = {}, 0
    for name, v in entries:
        chunk = vector[at : at + v.numel()].reshape(tuple(v.shape))
        state[name] = torch.as_tensor(chunk, dtype=v.dtype)
        at += v.numel()
    model.load_state_dict(state, strict=False)


# --- bundle: spec + initial weights --------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_bundle(model: nn.Module, spec: Mapping[str, Any], path: Path | str) -> Path:
    """Write ``model.json`` (format, spec, parameter count, weights' sha256) and ``weights.pt``
    (``torch.save`` of the state dict) into the directory ``path``; returns the directory."""
    s = check_spec(spec)
    reference = build_model(s)
    if [(k, tuple(v.shape)) for k, v in reference.state_dict().items()] != [
        (k, tuple(v.shape)) for k, v in model.state_dict().items()
    ]:
        raise BundleError("the model does not match its spec (different layers or shapes)")
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS_FILE
    torch.save({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, weights)
    meta = {
        "format": BUNDLE_FORMAT,
        "spec": s,
        "parameters": parameter_count(model),
        "weights": WEIGHTS_FILE,
        "weights_sha256": _sha256(weights),
    }
    (directory / SPEC_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return directory


def load_bundle(path: Path | str) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild ``(model, spec)`` from a :func:`save_bundle` directory.

    The weights are loaded with ``weights_only=True`` (no pickled code runs) and must match the
    recorded sha256 and the spec's layers exactly; anything else raises :class:`BundleError`.
    """
    directory = Path(path)
    meta_file, weights = directory / SPEC_FILE, directory / WEIGHTS_FILE
    for f in (meta_file, weights):
        if not f.is_file():
            raise BundleError(f"model bundle file missing: {f}")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{meta_file} is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{meta_file}: format must be {BUNDLE_FORMAT!r}")
    if meta.get("weights_sha256") != _sha256(weights):
        raise BundleError(f"{weights} does not match the sha256 recorded in {meta_file}")
    try:
        spec = check_spec(meta.get("spec"))
    except ModelSpecError as e:
        raise BundleError(f"{meta_file}: {e}") from e
    model = build_model(spec)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except (pickle.UnpicklingError, RuntimeError, TypeError, AttributeError, ValueError) as e:
        raise BundleError(f"{weights} does not fit the spec: {e}") from e
    if not all(math.isfinite(float(v.abs().max())) for v in state.values() if v.numel()):
        raise BundleError(f"{weights} holds NaN or infinite values")
    return model, spec
