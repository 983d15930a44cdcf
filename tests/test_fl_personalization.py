"""Personalization after the federated rounds (issue 19, item 4): the arm is per unit, chooses on
a validation split carved from the unit's training customers, and its safeguard holds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from marketplace_ext.federated import experiment as E
from marketplace_ext.federated import experiment_cache as C
from marketplace_ext.federated import features as F
from marketplace_ext.federated import personalization as P
from marketplace_ext.federated.experiment_arms import _seed
from marketplace_ext.federated.experiment_report import goal, goal_markdown, json_safe, summarise
from marketplace_ext.federated.model import build_model, flatten_state
from marketplace_ext.federated.training import evaluate

TINY = {"weeks": 4, "conv": 4, "pool_weeks": 2, "wide": 4, "hidden": 4}


def _unit(n: int, thief_rate: float, seed: int, drop: bool = True) -> F.Features:
    # thieves report a lower level in the second half of the window (``drop``), or a higher one:
    # a unit whose thieves look unlike everybody else's is one the federated model serves badly
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < thief_rate).astype(np.float32)
    x = rng.lognormal(0.0, 0.3, (n, 28))
    factor = rng.uniform(0.2, 0.6, ((y == 1).sum(), 1))
    x[y == 1, 14:] *= factor if drop else 1 / factor
    x /= x.mean(axis=1, keepdims=True)
    X = np.stack([x, np.ones_like(x)], axis=1).reshape(n, 2, 4, 7).astype(np.float32)
    ids = np.array([f"U{seed}-{i:04d}" for i in range(n)])
    return F.Features(X, y, ids, np.datetime64("2014-02-28"))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # these tests train; on a busy machine two intra-op threads only wait on each other
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data() -> dict[str, E.UnitData]:
    return {
        "a": E.UnitData(_unit(200, 0.2, 1), _unit(80, 0.25, 2)),
        "b": E.UnitData(_unit(200, 0.2, 3), _unit(80, 0.25, 4)),
        "c": E.UnitData(_unit(150, 0.3, 5, drop=False), _unit(80, 0.25, 6, drop=False)),
    }


@pytest.fixture(scope="module")
def arms(one_thread):
    data = _data()
    cfg = E.Config(
        rounds=4, local_epochs=1, epochs=8, lr=1e-2, batch_size=32, seed=0, weeks=4,
        personalize_rule="finetune", personalize_confidence=0.0, personalize_layers="all",
        personalize_epochs=6, personalize_lr=3e-3, personalize_patience=2, val_fraction=0.3,
    )
    federated, weights = E.train_federated(data, TINY, cfg)
    personalized = P.run_personalized(data, TINY, cfg, weights)
    return data, cfg, federated, personalized


@pytest.fixture(scope="module")
def selected(arms, tmp_path_factory):
    # the "select" rule on the same federation: each unit may also take its own local model or
    # a blend of it with the federated one; trained weights go through the cache
    data, cfg, federated, _ = arms
    cfg = dataclasses.replace(
        cfg, personalize_rule="select", personalize_confidence=0.95, personalize_layers="head"
    )
    cache = C.WeightCache(tmp_path_factory.mktemp("weights"))
    federated, weights = cache.get_or_train(
        "federated", cfg, data, lambda: E.train_federated(data, TINY, cfg)
    )
    alone, alone_w = cache.get_or_train(
        "alone", cfg, data, lambda: E.train_alone(data, TINY, cfg)
    )
    personalized = P.run_personalized(data, TINY, cfg, weights, cache=cache)
    return data, cfg, federated, weights, alone, alone_w, personalized, cache


def test_validation_split_comes_from_the_training_customers_only(arms):
    data, cfg, _, _ = arms
    rehearsal = P.rehearsal_data(data, cfg)
    for unit, d in data.items():
        fit, val = rehearsal[unit].train, rehearsal[unit].test
        assert set(fit.customer_ids) | set(val.customer_ids) == set(d.train.customer_ids)
        assert not set(fit.customer_ids) & set(val.customer_ids)
        assert not set(val.customer_ids) & set(d.test.customer_ids)
        assert 0 < val.n_thieves < len(val)
        assert len(val) == pytest.approx(cfg.val_fraction * len(d.train), abs=2)


def test_safeguard_per_unit(arms):
    data, _, federated, personalized = arms
    assert set(personalized.per_unit) == set(data) == set(personalized.extra["units"])
    for unit, info in personalized.extra["units"].items():
        # by construction: the chosen model never validates below the federated (rehearsal) one
        assert info["personalized_val_auc"] >= info["federated_val_auc"], unit
        assert info["kept"] == (info["best_epoch"] > 0)
        assert info["kept"] == (info["personalized_val_auc"] > info["federated_val_auc"])
        assert 1 <= len(info["val_curve"]) <= 6
        if info["kept"]:
            assert info["personalized_val_auc"] == max(info["val_curve"])
        else:
            # a unit that refuses keeps the federated model exactly: same scores on its tests
            assert personalized.per_unit[unit] == federated.per_unit[unit]
    units = personalized.extra["units"]
    assert personalized.extra["kept"] == sum(i["kept"] for i in units.values())
    # unit c's thieves raise their level where everybody else's lower it: personalizing pays
    assert units["c"]["kept"], units["c"]
    assert personalized.per_unit["c"]["natural"]["auc"] > federated.per_unit["c"]["natural"]["auc"]


def test_select_rule_takes_the_best_validated_candidate(selected):
    data, cfg, federated, weights, alone, alone_w, personalized, cache = selected
    # the alone models came from the cache, the rehearsal federation and the local models on the
    # fit splits were trained and stored by the personalization
    assert cache.hits == ["alone"] and cache.misses == ["federated", "alone", "rehearsal",
                                                       "alone-fit"]
    assert personalized.extra["config"]["personalize_rule"] == "select"
    for i, (unit, info) in enumerate(personalized.extra["units"].items()):
        aucs, wins = info["val_aucs"], info["val_wins"]
        assert set(aucs) >= {"federated", "local", "blend0.5"}
        # a win rate for every candidate that validates above the federated model
        assert set(wins) == {c for c in aucs if aucs[c] > aucs["federated"]}
        eligible = [c for c in wins if wins[c] >= cfg.personalize_confidence]
        # the first eligible candidate (federated first, local last) with the best AUC
        best = max((aucs[c] for c in eligible), default=None)
        assert info["choice"] == next(
            (c for c in P.CANDIDATES if c in eligible and aucs[c] == best), "federated"
        )
        assert info["personalized_val_auc"] == aucs[info["choice"]] >= info["federated_val_auc"]
        assert info["kept"] == (info["choice"] != "federated")
        got = personalized.per_unit[unit]
        if info["choice"] == "federated":
            assert got == federated.per_unit[unit]
        elif info["choice"] == "local":
            # a unit that keeps its own model scores exactly what it scored alone
            assert got == alone.per_unit[unit]
        elif info["choice"].startswith("blend"):
            model = P.candidate_model(info["choice"], TINY, weights, alone_w[unit])
            d = data[unit]
            assert got == evaluate(model, d.test.X, d.test.y, seed=_seed(cfg.seed, 99, i))
    assert personalized.extra["choices"] == {
        u: i["choice"] for u, i in personalized.extra["units"].items()
    }
    # unit c's thieves look unlike everybody else's: it leaves the plain federated model, and
    # gains on its own test customers
    c = personalized.extra["units"]["c"]
    assert c["kept"], c
    assert personalized.per_unit["c"]["natural"]["auc"] > federated.per_unit["c"]["natural"]["auc"]


def test_win_rate():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(10), np.zeros(40)]
    noise = rng.random(50)
    # a perfect ranking beats noise on every resample; nothing beats itself (strictly)
    assert P.win_rate(y, y + 0.01 * noise, noise, seed=1, n=200) == 1.0
    assert P.win_rate(y, noise, noise, seed=1, n=200) == 0.0
    # another noisy scorer with a little signal wins some resamples only
    other = rng.random(50) + 0.2 * y
    assert 0.2 < P.win_rate(y, other, noise, seed=1, n=200) < 0.8


def test_logit_blend_is_between_its_models():
    fed, loc = build_model(TINY, seed=1), build_model(TINY, seed=2)
    x = torch.from_numpy(_unit(20, 0.3, 9).X)
    with torch.no_grad():
        zf, zl = fed(x), loc(x)
        for w in (0.0, 0.25, 1.0):
            blend = P.LogitBlend(fed, loc, w)
            assert torch.allclose(blend(x), w * zf + (1 - w) * zl)
    # candidates from flat weights: federated and local are the models themselves
    wf, wl = flatten_state(fed), flatten_state(loc)
    assert np.array_equal(flatten_state(P.candidate_model("local", TINY, wf, wl)), wl)
    assert np.array_equal(flatten_state(P.candidate_model("federated", TINY, wf, None)), wf)
    with pytest.raises(P.PersonalizationError, match="local model"):
        P.candidate_model("blend0.5", TINY, wf, None)
    with pytest.raises(P.PersonalizationError, match="unknown candidate"):
        P.candidate_model("mixture", TINY, wf, wl)


def test_weight_cache_keys(tmp_path):
    data = _data()
    cfg = E.Config(epochs=1, batch_size=32, seed=0, weeks=4)
    cache = C.WeightCache(tmp_path)
    calls = []

    def train(cfg=cfg, data=data):
        calls.append(1)
        return E.train_pooled(data, TINY, cfg)

    arm, w = cache.get_or_train("pooled", cfg, data, train)
    # personalization settings do not change the trained weights: a hit
    other = dataclasses.replace(cfg, personalize_lr=0.5, personalize_rule="finetune")
    arm2, w2 = cache.get_or_train("pooled", other, data, lambda: pytest.fail("retrained"))
    assert np.array_equal(w, w2) and arm2.per_unit == arm.per_unit
    assert arm2.seconds == arm.seconds and len(calls) == 1
    # another training setting, another tag, other data: misses
    cache.get_or_train("pooled", dataclasses.replace(cfg, lr=0.5), data, train)
    cache.get_or_train("alone", cfg, data, lambda: E.train_alone(data, TINY, cfg))
    less = {u: d for u, d in data.items() if u != "c"}
    cache.get_or_train("pooled", cfg, less, lambda: train(data=less))
    assert len(calls) == 3 and cache.hits == ["pooled"]
    # per-unit weights come back per unit
    _, units = cache.get_or_train("alone", cfg, data, lambda: pytest.fail("retrained"))
    assert set(units) == set(data) and all(v.dtype == np.float64 for v in units.values())


def test_head_only_moves_only_the_head(arms):
    # the default personalization trains a per-unit head: the shared layers stay federated
    data, cfg, _, _ = arms
    model = build_model(TINY, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head = dataclasses.replace(cfg, personalize_layers="head")
    P._fine_tune(model, data["c"].train, head, seed=1, epochs=2)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"head.weight", "head.bias"}
    assert E.Config().personalize_layers == "head"
    assert E.Config().personalize_rule == "select" and E.Config().personalize_confidence == 0.95


def test_bad_settings_are_refused(arms):
    data, cfg, _, _ = arms
    for bad, field in (
        ({"personalize_layers": "tail"}, "personalize_layers"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"personalize_lr": 0.0}, "personalize_lr"),
        ({"personalize_rule": "oracle"}, "personalize_rule"),
        ({"personalize_confidence": 1.0}, "personalize_confidence"),
    ):
        with pytest.raises(P.PersonalizationError, match=field):
            P.check_config(dataclasses.replace(cfg, **bad))


def _run(arms, seed: int = 0) -> dict:
    # one seed's run as experiment.run_once reports it ('alone' and 'pooled' played by the
    # federated arm)
    data, _, federated, personalized = arms
    return {
        "seed": seed,
        "prepare_seconds": 0.5,
        "units": {u: {"train": len(d.train), "train_thieves": d.train.n_thieves,
                      "test": len(d.test), "test_thieves": d.test.n_thieves}
                  for u, d in data.items()},
        "arms": {name: dataclasses.asdict(a) for name, a in (
            ("alone", federated), ("federated", federated),
            ("federated_personalized", personalized), ("pooled", federated))},
    }


def test_goal_report_per_unit(arms):
    data, cfg, federated, personalized = arms
    run = _run(arms)
    summary = summarise([run, run])
    g = goal(summary, [run, run])
    assert set(g["units"]) == set(data)
    for unit, row in g["units"].items():
        assert row["federated_personalized"] == personalized.per_unit[unit]["balanced"]["auc"]
        assert row["kept"] == 2 * personalized.extra["units"][unit]["kept"]
    # here 'alone' and 'pooled' are the federated model
    below = [u for u in data if personalized.per_unit[u]["balanced"]["auc"]
             < federated.per_unit[u]["balanced"]["auc"]]
    assert g["no_unit_below_alone"] == (not below)
    assert g["gap_to_pooled"] == pytest.approx(
        np.mean([federated.per_unit[u]["balanced"]["auc"] for u in data])
        - np.mean([personalized.per_unit[u]["balanced"]["auc"] for u in data]))
    text = "\n".join(goal_markdown(g, [run, run]))
    # unit c fine-tuned its head in both (identical) seeds
    assert personalized.extra["units"]["c"]["choice"] == "finetuned"
    assert g["units"]["c"]["choices"] == ["finetuned", "finetuned"]
    assert "| C | " in text and "| head, head | " in text
    # the per-seed table: alone / federated / personalized (choice), ! where below alone
    assert "| Unit | seed 0 | seed 0 |" in text
    assert "(head) | " in text.split("| C | ")[-1]
    assert ("!" in text.split("| Unit | seed 0")[1]) == bool(below)
    assert "Goal: no unit below its local model - " + ("met" if not below else "NOT met") in text


def test_merge_reports_of_separate_seeds(arms, tmp_path, capsys):
    _, cfg, _, _ = arms
    paths = []
    for seed in (3, 4):
        path = tmp_path / f"s{seed}.json"
        # weeks: the parameter count is of the experiment's model (pool_weeks 8)
        config = {**dataclasses.asdict(cfg), "seed": seed, "weeks": 8}
        report = {"config": config, "threads": 1,
                  "seconds": 2.0, "runs": [_run(arms, seed)]}
        path.write_text(json.dumps(json_safe(report)))
        paths.append(str(path))
    out = tmp_path / "merged.json"
    assert E.main(["--merge", *paths, "--out", "", "--json", str(out)]) == 0
    merged = json.loads(out.read_text())
    assert [r["seed"] for r in merged["runs"]] == [3, 4] and merged["repeats"] == 2
    assert merged["config"]["seed"] == 3 and merged["seconds"] == 4.0
    assert set(merged["goal"]["units"]) == set("abc")
    assert "mean ± sd over 2 seeds" in capsys.readouterr().out
    # the same seed twice, or another configuration, is refused
    assert E.main(["--merge", paths[0], paths[0], "--out", ""]) == 2
    other = json.loads(Path(paths[1]).read_text())
    other["config"]["rounds"] = 99
    Path(paths[1]).write_text(json.dumps(other))
    assert E.main(["--merge", *paths, "--out", ""]) == 2
    assert "configurations differ" in capsys.readouterr().err
