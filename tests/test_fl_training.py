"""The federated zone's machine learning: features, the model and its bundle, local training,
metrics, the DP step and FedAvg. Fast: synthetic data, except one small griddata build."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from marketplace_ext.federated import experiment as E
from marketplace_ext.federated import features as F
from marketplace_ext.federated import model as M
from marketplace_ext.federated import training as T

TINY = {"weeks": 4, "conv": 4, "pool_weeks": 2, "wide": 4, "hidden": 4}


# --- model: flat state and bundle ----------------------------------------------------------------


def test_default_model_is_modest():
    n = M.parameter_count(M.build_model())
    assert 10_000 <= n <= 100_000
    assert M.flatten_state(M.build_model()).shape == (n,)


def test_flatten_load_round_trip():
    a, b = M.build_model(TINY, seed=0), M.build_model(TINY, seed=1)
    va = M.flatten_state(a)
    assert va.dtype == np.float32
    assert not np.array_equal(va, M.flatten_state(b))
    M.load_flat_state(b, va)
    assert np.array_equal(M.flatten_state(b), va)
    x = torch.rand(3, 2, 4, 7)
    assert torch.equal(a(x), b(x))
    # the same seed builds the same weights, which is how parties share an initial model
    assert np.array_equal(M.flatten_state(M.build_model(TINY, seed=0)), va)
    assert M.flatten_state(a, np.float64).dtype == np.float64


def test_load_flat_state_refuses_bad_vectors():
    m = M.build_model(TINY, seed=0)
    v = M.flatten_state(m)
    with pytest.raises(M.StateShapeError, match="flat vector"):
        M.load_flat_state(m, v[:-1])
    with pytest.raises(M.StateShapeError, match="flat vector"):
        M.load_flat_state(m, v.reshape(1, -1))
    bad = v.copy()
    bad[3] = np.nan
    with pytest.raises(M.StateShapeError, match="NaN"):
        M.load_flat_state(m, bad)
    assert np.array_equal(M.flatten_state(m), v)


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"arch": "resnet"}, "arch"),
        ({"depth": 3}, "unknown"),
        ({"conv": 0}, "conv"),
        ({"weeks": 2, "pool_weeks": 4}, "pool_weeks"),
        ({"wide": True}, "wide"),
    ],
)
def test_bad_spec(spec, match):
    with pytest.raises(M.ModelSpecError, match=match):
        M.build_model(spec)


def test_bundle_round_trip(tmp_path):
    model = M.build_model(TINY, seed=3)
    M.save_bundle(model, TINY, tmp_path / "b")
    meta = json.loads((tmp_path / "b" / M.SPEC_FILE).read_text())
    assert meta["format"] == M.BUNDLE_FORMAT and meta["parameters"] == M.parameter_count(model)
    loaded, spec = M.load_bundle(tmp_path / "b")
    assert spec == M.check_spec(TINY)
    assert np.array_equal(M.flatten_state(loaded), M.flatten_state(model))


def test_bundle_refuses_tampering_and_pickles(tmp_path):
    M.save_bundle(M.build_model(TINY, seed=3), TINY, tmp_path)
    weights = tmp_path / M.WEIGHTS_FILE
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(M.BundleError, match="sha256"):
        M.load_bundle(tmp_path)
    # an arbitrary pickled object, even with a matching hash, is refused by weights_only=True
    torch.save({"x": pd.Timestamp("2024-01-01")}, weights)
    meta = json.loads((tmp_path / M.SPEC_FILE).read_text())
    meta["weights_sha256"] = M._sha256(weights)
    (tmp_path / M.SPEC_FILE).write_text(json.dumps(meta))
    with pytest.raises(M.BundleError, match="does not fit"):
        M.load_bundle(tmp_path)
    with pytest.raises(M.BundleError, match="missing"):
        M.load_bundle(tmp_path / "nowhere")
    with pytest.raises(M.BundleError, match="does not match its spec"):
        M.save_bundle(M.build_model(TINY), {**TINY, "wide": 5}, tmp_path / "c")


# --- features ------------------------------------------------------------------------------------


def _frames() -> F.UnitFrames:
    end = pd.Timestamp("2014-02-28")
    days = pd.date_range(end=end, periods=14, freq="D")
    rows = []
    for k, day in enumerate(days):
        rows.append(("C-2", day, 2.0 if k % 2 else 4.0))  # mean 3
        if k != 5:  # one day without a row, one with an empty reading: both are missing
            rows.append(("C-1", day, np.nan if k == 6 else 1.0))
    rows.append(("C-2", days[0] - pd.Timedelta(days=1), 100.0))  # before the window
    consumption = pd.DataFrame(rows, columns=["customer_id", "day", "kwh"])
    labels = pd.DataFrame({"customer_id": ["C-3", "C-2", "C-1"], "is_thief": [False, True, False]})
    return F.UnitFrames(consumption, labels)


def test_features_shape_normalisation_and_missing_days():
    f = F.build_features(_frames(), weeks=2)
    assert f.X.shape == (3, 2, 2, 7) and f.X.dtype == np.float32
    assert list(f.customer_ids) == ["C-1", "C-2", "C-3"]
    assert list(f.y) == [0.0, 1.0, 0.0]
    assert f.end == np.datetime64("2014-02-28")
    c1, c2, c3 = (x.reshape(2, 14) for x in f.X)
    assert c1[1].sum() == 12 and c1[1, 5] == 0 and c1[1, 6] == 0  # day 6 is a NaN reading
    assert np.allclose(c1[0][c1[1] == 1], 1.0) and c1[0, 5] == 0
    # per customer: mean 1 over the observed days, the reading before the window ignored
    assert np.isclose(c2[0].mean(), 1.0) and np.allclose(c2[0][:2], [4 / 3, 2 / 3])
    assert not c3.any()  # labelled but no readings: all zero, all missing
    # rows are calendar weeks ending on `end`, oldest first
    assert np.isclose(f.X[1, 0, 1, 6], 2 / 3)


def test_features_clip_and_errors():
    frames = _frames()
    spiky = frames.consumption.copy()
    spiky.loc[len(spiky)] = ["C-1", pd.Timestamp("2014-02-20"), 1000.0]
    spiky = spiky.drop_duplicates(["customer_id", "day"], keep="last")
    f = F.build_features(F.UnitFrames(spiky, frames.labels), weeks=2, clip=5.0)
    assert f.X[:, 0].max() == 5.0
    with pytest.raises(F.FeatureError, match="do not list"):
        F.build_features(F.UnitFrames(frames.consumption, frames.labels.iloc[:2]), weeks=2)
    with pytest.raises(F.FeatureError, match="lacks column"):
        F.build_features(F.UnitFrames(frames.consumption.drop(columns="kwh"), frames.labels))
    with pytest.raises(F.FeatureError, match="weeks"):
        F.build_features(frames, weeks=0)
    # an explicit end moves the window: the last week is then empty
    later = F.build_features(frames, weeks=2, end="2014-03-07")
    assert not later.X[:, 1, 1].any() and later.X[:, 1, 0].any()


def test_features_of_a_customer_use_only_that_customer():
    frames = _frames()
    full = F.build_features(frames, weeks=2)
    alone = F.UnitFrames(
        frames.consumption[frames.consumption["customer_id"] == "C-2"],
        frames.labels[frames.labels["customer_id"] == "C-2"],
    )
    assert np.array_equal(F.build_features(alone, weeks=2, end=full.end).X[0], full.X[1])
    flipped = F.UnitFrames(frames.consumption, frames.labels.assign(is_thief=lambda d: ~d.is_thief))
    assert np.array_equal(F.build_features(flipped, weeks=2).X, full.X)


def test_split_is_deterministic_stratified_and_disjoint():
    ids = np.array([f"A-{i:04d}" for i in range(200)])
    y = (np.arange(200) % 10 == 0).astype(np.float32)  # 20 thieves
    train, test = F.split_customers(ids, y, test_fraction=0.3, seed=5)
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.union1d(train, test), np.arange(200))
    assert y[test].sum() == 6 and len(test) == 60
    again = F.split_customers(ids, y, test_fraction=0.3, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(again, (train, test), strict=True))
    # a customer's side does not depend on the order customers come in
    perm = np.random.default_rng(0).permutation(200)
    _, test_p = F.split_customers(ids[perm], y[perm], test_fraction=0.3, seed=5)
    assert set(ids[perm][test_p]) == set(ids[test])
    assert set(ids[F.split_customers(ids, y, seed=6)[1]]) != set(ids[test])
    # a class of two still has a member on each side
    _, test2 = F.split_customers(ids[:12], np.r_[np.ones(2), np.zeros(10)], seed=1)
    assert np.r_[np.ones(2), np.zeros(10)][test2].sum() == 1
    with pytest.raises(F.FeatureError, match="unique"):
        F.split_customers(["x", "x"], [0, 1])


def test_frames_from_griddata_match_the_tables():
    frames = F.frames_from_griddata("e", scale=0.01, seed=7)
    assert list(frames.consumption.columns) == ["customer_id", "day", "kwh"]
    f = F.build_features(frames, weeks=8)
    assert f.X.shape == (len(frames.labels), 2, 8, 7)
    assert f.n_thieves == int(frames.labels["is_thief"].sum()) >= 1
    x, seen = f.X[:, 0].reshape(len(f), -1), f.X[:, 1].reshape(len(f), -1)
    unclipped = (seen.sum(axis=1) > 0) & (x.max(axis=1) < F.DEFAULT_CLIP)
    assert unclipped.sum() >= len(f) - 2
    means = x.sum(axis=1)[unclipped] / seen.sum(axis=1)[unclipped]
    assert np.allclose(means, 1.0, atol=1e-5)


# --- metrics -------------------------------------------------------------------------------------


def test_metrics_by_hand():
    m = T.classification_metrics([1, 1, 0, 0, 0], [0.9, 0.4, 0.6, 0.2, 0.1])
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == m["recall"] == m["f1"] == pytest.approx(0.5)
    assert m["auc"] == pytest.approx(5 / 6)
    assert (m["n"], m["n_thieves"]) == (5, 2)
    nobody = T.classification_metrics([1, 0, 0], [0.1, 0.2, 0.3])
    assert nobody["precision"] == nobody["recall"] == nobody["f1"] == 0.0
    assert nobody["auc"] == 0.0
    # a score exactly at the threshold is flagged
    assert T.classification_metrics([1, 0], [0.5, 0.49])["accuracy"] == 1.0


def test_auc_with_ties():
    assert T.roc_auc([1, 0, 1, 0], [0.5, 0.5, 0.7, 0.2]) == pytest.approx(3.5 / 4)
    assert T.roc_auc([1, 0, 1, 0, 0], [0.3] * 5) == pytest.approx(0.5)
    assert T.roc_auc([0, 1, 1], [0.2, 0.2, 0.9]) == pytest.approx(0.75)
    assert math.isnan(T.roc_auc([1, 1], [0.2, 0.3]))
    rng = np.random.default_rng(1)
    y, s = rng.random(300) < 0.3, np.round(rng.random(300), 1)  # many ties
    pairs = [(a > b) + 0.5 * (a == b) for a in s[y] for b in s[~y]]
    assert T.roc_auc(y, s) == pytest.approx(np.mean(pairs))


def test_balanced_indices_and_evaluate():
    y = np.r_[np.ones(5), np.zeros(45)]
    idx = T.balanced_indices(y, seed=3)
    assert len(idx) == 10 and y[idx].sum() == 5 and set(np.flatnonzero(y)) <= set(idx)
    assert np.array_equal(idx, T.balanced_indices(y, seed=3))
    model = M.build_model(TINY, seed=0)
    X = np.random.default_rng(0).random((50, 2, 4, 7), dtype=np.float32)
    out = T.evaluate(model, X, y, seed=3)
    assert out["natural"]["n"] == 50 and out["balanced"]["n"] == 10
    assert set(T.METRICS) <= set(out["balanced"])


# --- training, DP, aggregation -------------------------------------------------------------------


def _synthetic_unit(n: int, thief_rate: float, seed: int, weeks: int = 4) -> F.Features:
    # thieves report a lower level in the second half of the window, like the h1/h3 attacks
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < thief_rate).astype(np.float32)
    x = rng.lognormal(0.0, 0.3, (n, weeks * 7))
    x[y == 1, weeks * 7 // 2 :] *= rng.uniform(0.2, 0.6, ((y == 1).sum(), 1))
    x /= x.mean(axis=1, keepdims=True)
    X = np.stack([x, np.ones_like(x)], axis=1).reshape(n, 2, weeks, 7).astype(np.float32)
    ids = np.array([f"U{seed}-{i:04d}" for i in range(n)])
    return F.Features(X, y, ids, np.datetime64("2014-02-28"))


def test_train_local_is_deterministic_and_leaves_global_rng_alone():
    f = _synthetic_unit(64, 0.3, seed=1)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    runs = []
    for _ in range(2):
        model = M.build_model(TINY, seed=0)
        runs.append(T.train_local(model, f.X, f.y, epochs=2, batch_size=16, seed=9))
    assert torch.rand(1) == before
    assert np.array_equal(runs[0].weights, runs[1].weights)
    assert runs[0].n_samples == 64 and len(runs[0].losses) == 2
    assert np.array_equal(runs[0].weights, M.flatten_state(model))
    with pytest.raises(T.TrainingError, match="class_weight"):
        T.train_local(model, f.X, f.y, class_weight="auto")
    with pytest.raises(M.StateShapeError):
        T.model_delta(runs[0].weights, runs[0].weights[:-1])
    d = T.model_delta(M.flatten_state(M.build_model(TINY, seed=0)), runs[0].weights)
    assert d.shape == runs[0].weights.shape and np.abs(d).max() > 0


def test_clip_and_noise_bounds_the_update():
    rng = np.random.default_rng(0)
    big = rng.normal(0, 10, 1000)
    clipped = T.clip_and_noise(big, 2.0, 0.0, rng)
    assert np.linalg.norm(clipped) == pytest.approx(2.0)
    assert np.allclose(clipped / np.linalg.norm(clipped), big / np.linalg.norm(big))
    small = np.full(4, 0.1)
    assert np.array_equal(T.clip_and_noise(small, 2.0, 0.0, rng), small)
    noisy = T.clip_and_noise(np.zeros(200_000), 0.5, 1.5, rng)
    assert noisy.std() == pytest.approx(0.75, rel=0.02)
    with pytest.raises(T.TrainingError):
        T.clip_and_noise(small, 0.0, 1.0, rng)


def test_dp_epsilon():
    eps = T.dp_epsilon(1.0, 20, 1e-5)
    # full participation: no better than the plain Gaussian-mechanism RDP bound at some order
    alphas = np.linspace(1.5, 200, 2000)
    plain = np.min(20 * alphas / 2 + np.log(1e5) / (alphas - 1))
    assert 0 < eps <= plain
    assert T.dp_epsilon(2.0, 20, 1e-5) < eps < T.dp_epsilon(1.0, 40, 1e-5)
    assert T.dp_epsilon(1.0, 20, 1e-5, sample_rate=0.1) < eps
    assert T.dp_epsilon(0.0, 5, 1e-5) == math.inf and T.dp_epsilon(1.0, 0, 1e-5) == 0.0


def test_weighted_mean():
    out = T.weighted_mean([np.array([1.0, 0.0]), np.array([4.0, 3.0])], [1, 2])
    assert np.allclose(out, [3.0, 2.0])
    with pytest.raises(T.TrainingError):
        T.weighted_mean([np.zeros(2)], [1, 2])


def test_fedavg_over_two_units_beats_chance():
    data = {
        "a": E.UnitData(_synthetic_unit(160, 0.1, seed=1), _synthetic_unit(80, 0.25, seed=2)),
        "b": E.UnitData(_synthetic_unit(60, 0.3, seed=3), _synthetic_unit(80, 0.25, seed=4)),
    }
    calls = []

    def aggregate(updates, weights):
        calls.append(list(weights))
        return T.weighted_mean(updates, weights)

    cfg = E.Config(rounds=8, local_epochs=2, lr=1e-2, batch_size=32, seed=0, weeks=4)
    arm = E.run_federated(data, TINY, cfg, aggregate=aggregate)
    assert calls == [[160, 60]] * 8
    assert len(arm.curve) == 8
    acc = [arm.per_unit[u]["balanced"]["accuracy"] for u in data]
    auc = [arm.per_unit[u]["natural"]["auc"] for u in data]
    assert min(acc) > 0.7 and min(auc) > 0.8, (acc, auc)


def test_packed_paillier_aggregate_matches_plaintext():
    agg = E.PackedPaillierAggregate(
        length=40, max_parties=3, max_weight=100, clip=0.1, key_bits=512
    )
    rng = np.random.default_rng(0)
    updates = [rng.uniform(-0.09, 0.09, 40) for _ in range(3)]
    updates[0][0] = 0.5  # clipped to 0.1 before encryption
    out = agg(updates, [100, 7, 40])
    reference = T.weighted_mean([np.clip(u, -0.1, 0.1) for u in updates], [100, 7, 40])
    assert np.abs(out - reference).max() <= agg.spec.quantization_bound(147)
    report = agg.report()
    assert report["clipped_values"] == 1 and report["max_abs_error_vs_plaintext"] > 0.05


def test_experiment_command_line(tmp_path, capsys):
    png, out = tmp_path / "fl.png", tmp_path / "r.json"
    argv = [
        "--scale",
        "0.05",
        "--rounds",
        "1",
        "--local-epochs",
        "1",
        "--epochs",
        "1",
        "--weeks",
        "8",
        "--out",
        str(png),
        "--json",
        str(out),
        "--cache",
        str(tmp_path / "weights"),
    ]
    assert E.main(argv) == 0
    text = capsys.readouterr().out
    # every trained model went to the cache (a second run would train none of them)
    assert "trained ['federated', 'alone', 'rehearsal', 'alone-fit', 'pooled']" in text
    assert "| Federated (FedAvg) | balanced |" in text and "Paper: federated" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(out.read_text())
    assert set(report["summary"]) == {"alone", "federated", "federated_personalized", "pooled"}
    assert set(report["runs"][0]["units"]) == set("abcde")
    # the personalized arm, per unit, with its safeguard and the goal per unit
    assert "| Federated, then personalized per unit | balanced |" in text
    assert "Goal: no unit below its local model - " in text
    arm = report["runs"][0]["arms"]["federated_personalized"]
    assert set(arm["per_unit"]) == set(arm["extra"]["units"]) == set("abcde")
    for info in arm["extra"]["units"].values():
        if info["federated_val_auc"] is not None:
            assert info["personalized_val_auc"] >= info["federated_val_auc"]
    assert report["config"]["personalize_rule"] == "select"
    assert set(report["goal"]["units"]) == set("abcde")
    assert report["config"]["personalize_epochs"] == 10
