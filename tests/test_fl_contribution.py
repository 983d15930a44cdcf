"""The contribution measure on real models and real encrypted updates (no mocks): three units
train a logistic model on their own data; one sends noise instead (or a stale update). Their
updates are packed and encrypted with the project's Paillier key, the service's leave-one-out
sums (``loo.loo_sum``) are decrypted by the members, each member evaluates every model on its
own validation data (AUC), and the measure gives the noisy partner less than the honest ones,
in basis points that sum to exactly 10 000."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from marketplace_ext.blobs import BlobStore
from marketplace_ext.federated import economy, loo, packing

FEATURES = 8
UNITS = ("a", "b", "c")


def unit_data(rng, truth: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(rows, FEATURES))
    p = 1 / (1 + np.exp(-(x @ truth[:-1] + truth[-1])))
    return x, (rng.random(rows) < p).astype(float)


def local_update(w: np.ndarray, x: np.ndarray, y: np.ndarray, steps: int = 30,
                 lr: float = 0.3) -> np.ndarray:
    """Plain gradient descent on the logistic loss from ``w``; returns the weight change."""
    v = w.copy()
    xb = np.hstack([x, np.ones((len(x), 1))])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(xb @ v)))
        v -= lr * xb.T @ (p - y) / len(y)
    return v - w


def auc(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(roc_auc_score(y, x @ w[:-1] + w[-1]))


def run_measure(paillier, tmp_path, bad: str, kind: str) -> tuple[dict, dict]:
    pk, sk = paillier
    rng = np.random.default_rng(7)
    truth = rng.normal(size=FEATURES + 1)
    train = {u: unit_data(rng, truth, 300) for u in UNITS}
    valid = {u: unit_data(rng, truth, 400) for u in UNITS}
    w0 = np.zeros(FEATURES + 1)
    spec = packing.PackSpec.create(int(pk.n), FEATURES + 1, bits=16, clip=1.0, max_parties=3,
                                   max_weight=1000)
    blobs = BlobStore(tmp_path / "blobs")
    shas, weights = {}, {}
    with packing.Encryptor(pk, sk) as enc:
        for u in UNITS:
            update = local_update(w0, *train[u])
            if u == bad:
                # noise of the same size, or a stale model's step away from the truth
                update = (rng.normal(scale=np.abs(update).mean() * 3, size=update.shape)
                          if kind == "noise" else -update)
            packed = packing.pack_update(spec, update, 300, enc)
            shas[u] = blobs.put(packing.ciphertexts_to_bytes(spec, packed.ciphertexts))
            weights[u] = packed.weight

    def model_without(left_out: str | None) -> np.ndarray:
        others = [u for u in UNITS if u != left_out]
        job = loo.LeaveOneOutJob(spec, tuple(shas[u] for u in others), len(others),
                                 sum(weights[u] for u in others), left_out or "")
        data = loo.loo_sum(job, blobs)  # what the service adds, without the key
        mean = packing.unpack_aggregate(spec, packing.ciphertexts_from_bytes(spec, data), sk,
                                        job.total_weight, job.parties)
        return w0 + mean

    full = model_without(None)
    without = {u: model_without(u) for u in UNITS}
    evaluations = [(1, e, {"auc": auc(full, *valid[e]),
                           **{f"loo.{u}": auc(without[u], *valid[e]) for u in UNITS}})
                   for e in UNITS]
    deltas, _counts = economy.loo_deltas(evaluations, list(UNITS))
    return deltas, economy.shares_from(weights, deltas)


@pytest.mark.parametrize("kind", ["noise", "stale"])
def test_a_partner_that_does_not_help_earns_less(paillier, tmp_path, kind):
    deltas, shares = run_measure(paillier, tmp_path, "c", kind)
    assert sum(shares.values()) == 10_000
    assert deltas["c"] < 0 < min(deltas["a"], deltas["b"])
    assert shares["c"] < min(shares["a"], shares["b"]), (deltas, shares)
    print(f"\n{kind}: deltas {deltas} shares {shares}")
