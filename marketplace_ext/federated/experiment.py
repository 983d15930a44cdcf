"""Theft detection trained several ways - each unit alone, federated (FedAvg), federated then
personalized per unit, pooled - on units A-E.

``python -m marketplace_ext.federated.experiment [--scale S] [--rounds R] [--local-epochs E]
[--epochs N] [--seed N] [--repeats K] [--encrypted] [--service] [--personalize-rule R]
[--personalize-epochs N] [--cache DIR] [--out docs/fl_experiment.png] [--json results.json]``,
or ``--merge A.json B.json ...`` to report several ``--json`` reports of single seeds as one.

Every arm starts from the same initial weights, and every arm is scored on the same held-out
customers of each unit: on their natural class balance and on a balanced set (all held-out
thieves plus as many held-out honest customers). Each arm is trained until it stops improving,
which is not the same number of passes over the data: the alone and pooled arms get ``epochs``
(40; on a development seed, 11, the alone arm got no better with 80 or 160, the pooled one
levels off after about 15), the federated arm ``rounds x local_epochs`` (80 x 2). FedAvg moves
the global model by about one party's local progress a round, not the sum of all parties', so
it needs more passes: on the development seed it sat near 81 % balanced accuracy until round
25 and climbed to the pooled arm's 90 % by round 40 (the JSON and the figure keep the curve).

The federated arm's aggregation is a pluggable ``aggregate(updates, weights)`` over the units'
weight *deltas*; ``--encrypted`` adds a second federated arm whose deltas go through packed
Paillier (clip, quantize, encrypt, add ciphertexts, decrypt) in-process, so the table shows what
quantization costs.

The personalized arm lets every unit choose, on a validation split of its own training customers
(never its test set), among the federated model, the federated model with a fine-tuned head, its
own local model and blends of the two; it leaves the federated model only for a strictly better
validation score (:mod:`marketplace_ext.federated.personalization`).

``--cache DIR`` keeps every trained model (federations, local and pooled models) keyed by the
training settings and a digest of the data, so trying another personalization setting on a seed
retrains nothing else (:mod:`marketplace_ext.federated.experiment_cache`).

Modules: the arms in :mod:`~marketplace_ext.federated.experiment_arms`, personalization in
:mod:`~marketplace_ext.federated.personalization`, tables and the figure in
:mod:`~marketplace_ext.federated.experiment_report`; this one runs a seed and the command line.

The paper reproduced (each province alone 55.5 % accuracy / 57.8 % recall, federated 80.6 % /
64.3 %) used its own data; these numbers are whatever our data gives.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marketplace_ext.federated.experiment_arms import (  # noqa: F401 (the experiment's API)
    DP_DELTA,
    Aggregate,
    ArmResult,
    Config,
    ExperimentError,
    PackedPaillierAggregate,
    UnitData,
    packing_clip,
    plaintext_aggregate,
    prepare,
    run_alone,
    run_federated,
    run_pooled,
    train_alone,
    train_federated,
    train_pooled,
)
from marketplace_ext.federated.experiment_cache import WeightCache
from marketplace_ext.federated.experiment_report import (  # noqa: F401
    ARM_LABELS,
    PAPER,
    SPLITS,
    goal,
    json_safe,
    markdown,
    plot,
    summarise,
    unit_mean,
)
from marketplace_ext.federated.model import DEFAULT_SPEC, build_model, parameter_count
from marketplace_ext.federated.personalization import LAYERS, RULES, run_personalized

# --- one seed -------------------------------------------------------------------------------------


def run_once(
    cfg: Config,
    encrypted: bool = False,
    data_dir: Path | str | None = None,
    service: bool = False,
    cache: WeightCache | None = None,
) -> dict[str, Any]:
    t = time.perf_counter()
    data = prepare(cfg, data_dir)
    prep_seconds = time.perf_counter() - t
    spec = {**DEFAULT_SPEC, "weeks": cfg.weeks}

    def trained(tag: str, fn: Any) -> Any:
        if cache is None:
            return fn(data, spec, cfg)
        return cache.get_or_train(tag, cfg, data, lambda: fn(data, spec, cfg))

    federated, federated_w = trained("federated", train_federated)
    alone, alone_w = trained("alone", train_alone)
    arms = {"alone": alone, "federated": federated}
    if cfg.personalize_epochs > 0:
        arms["federated_personalized"] = run_personalized(
            data, spec, cfg, federated_w, local_weights=alone_w, cache=cache
        )
    if encrypted:
        max_train = max(len(d.train) for d in data.values())
        agg = PackedPaillierAggregate(
            length=parameter_count(build_model(spec)),
            max_parties=len(data),
            max_weight=max_train,
            clip=packing_clip(cfg, max_train),
            bits=cfg.quant_bits,
            key_bits=cfg.key_bits,
        )
        arm = run_federated(data, spec, cfg, aggregate=agg)
        arm.extra["encryption"] = agg.report()
        arms["federated_encrypted"] = arm
    if service:
        from marketplace_ext.federated.service_round import ServiceAggregate, demo_platform

        max_train = max(len(d.train) for d in data.values())
        with demo_platform() as (url, logins):
            agg = ServiceAggregate(
                url,
                {u: logins[u] for u in data},
                spec,
                cfg.seed,
                rounds=cfg.rounds,
                clip=packing_clip(cfg, max_train),
                max_weight=max_train,
                bits=cfg.quant_bits,
                key_bits=cfg.key_bits,
            )
            try:
                arm = run_federated(data, spec, cfg, aggregate=agg)
            finally:
                agg.close()
        arm.extra["service"] = agg.report()
        arms["federated_service"] = arm
    arms["pooled"] = trained("pooled", train_pooled)[0]
    return {
        "seed": cfg.seed,
        "units": {
            u: {
                "train": len(d.train),
                "train_thieves": d.train.n_thieves,
                "test": len(d.test),
                "test_thieves": d.test.n_thieves,
            }
            for u, d in data.items()
        },
        "window_end": str(next(iter(data.values())).train.end),
        "prepare_seconds": round(prep_seconds, 2),
        "arms": {name: asdict(a) for name, a in arms.items()},
    }


# --- command line --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> tuple[Config, argparse.Namespace]:
    p = argparse.ArgumentParser(
        prog="python -m marketplace_ext.federated.experiment", description=__doc__.splitlines()[0]
    )
    d = Config()
    p.add_argument(
        "--scale",
        type=float,
        default=d.scale,
        help="fraction of the 5,566 LCL households (default: all)",
    )
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--local-epochs", type=int, default=d.local_epochs)
    p.add_argument(
        "--epochs", type=int, default=d.epochs, help="epochs of the alone and pooled arms"
    )
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="data (griddata), split and initialisation seed (default: the demo's 7)",
    )
    p.add_argument("--repeats", type=int, default=1, help="seeds seed, seed+1, ...")
    p.add_argument("--weeks", type=int, default=d.weeks)
    p.add_argument(
        "--encrypted",
        action="store_true",
        help="add a federated arm aggregated through packed Paillier",
    )
    p.add_argument(
        "--service",
        action="store_true",
        help="add a federated arm aggregated through the real service: a throw-away platform "
        "with units a-e, one partner client per unit encrypting its update, the service "
        "summing ciphertexts",
    )
    p.add_argument("--key-bits", type=int, default=d.key_bits)
    p.add_argument("--quant-bits", type=int, default=d.quant_bits)
    p.add_argument(
        "--dp-noise",
        type=float,
        default=d.dp_noise,
        help="Gaussian noise multiplier on each unit's clipped delta (0: no DP)",
    )
    p.add_argument(
        "--dp-clip",
        type=float,
        default=d.dp_clip,
        help="L2 norm a unit's delta is clipped to when --dp-noise > 0",
    )
    p.add_argument(
        "--personalize-epochs",
        type=int,
        default=d.personalize_epochs,
        help="at most this many epochs of each unit's fine-tuning after the federated rounds "
        "(0: no personalized arm)",
    )
    p.add_argument(
        "--personalize-rule",
        choices=RULES,
        default=d.personalize_rule,
        help="select: each unit picks, on its validation split, among the federated model, its "
        "fine-tuned head, its own local model and their blends; finetune: federated or the "
        "fine-tuned head only",
    )
    p.add_argument(
        "--personalize-confidence",
        type=float,
        default=d.personalize_confidence,
        help="a unit leaves the federated model only for a candidate that beats it on at least "
        "this share of bootstrap resamples of its validation customers (0: any gain)",
    )
    p.add_argument("--personalize-lr", type=float, default=d.personalize_lr)
    p.add_argument(
        "--personalize-layers",
        choices=LAYERS,
        default=d.personalize_layers,
        help="fine-tune every weight, or only the final layer (a per-unit head)",
    )
    p.add_argument(
        "--personalize-patience",
        type=int,
        default=d.personalize_patience,
        help="stop a unit's fine-tuning after this many epochs without a better validation AUC",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help="share of a unit's training customers it keeps aside to validate personalization",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (1: more only pays on an idle machine)",
    )
    p.add_argument(
        "--cache",
        default="",
        metavar="DIR",
        help="keep the trained weights (federations, local and pooled models) in DIR, keyed by "
        "the training settings and a digest of the data, and reuse them when they match: "
        "another personalization setting then retrains nothing but the personalization",
    )
    p.add_argument("--out", default="docs/fl_experiment.png", help="bar chart PNG ('' for none)")
    p.add_argument("--json", default="", help="write every number to this JSON file")
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        default=None,
        help="train nothing: report the runs of these --json files (the same options on "
        "different seeds, e.g. one process a seed) as one, to --out and --json",
    )
    a = p.parse_args(argv)
    for name in ("rounds", "local_epochs", "epochs", "repeats", "threads", "batch_size", "weeks"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 < a.scale <= 1:
        p.error("--scale must be in (0, 1]")
    if a.personalize_epochs < 0:
        p.error("--personalize-epochs must be at least 0")
    if a.personalize_patience < 1:
        p.error("--personalize-patience must be at least 1")
    if not 0 <= a.personalize_confidence < 1:
        p.error("--personalize-confidence must be in [0, 1)")
    if not a.personalize_lr > 0:
        p.error("--personalize-lr must be positive")
    if not 0 < a.val_fraction < 1:
        p.error("--val-fraction must be in (0, 1)")
    cfg = Config(
        scale=a.scale,
        rounds=a.rounds,
        local_epochs=a.local_epochs,
        epochs=a.epochs,
        lr=a.lr,
        batch_size=a.batch_size,
        seed=a.seed,
        weeks=a.weeks,
        dp_noise=a.dp_noise,
        dp_clip=a.dp_clip,
        key_bits=a.key_bits,
        quant_bits=a.quant_bits,
        personalize_rule=a.personalize_rule,
        personalize_confidence=a.personalize_confidence,
        personalize_epochs=a.personalize_epochs,
        personalize_lr=a.personalize_lr,
        personalize_layers=a.personalize_layers,
        personalize_patience=a.personalize_patience,
        val_fraction=a.val_fraction,
    )
    return cfg, a


def _nan(value: Any) -> Any:
    # json_safe wrote NaN as null; the summary wants NaN back
    if isinstance(value, dict):
        return {k: _nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan(v) for v in value]
    return math.nan if value is None else value


def load_runs(paths: Sequence[str | Path]) -> tuple[Config, list[dict[str, Any]], float, int]:
    """The runs of several ``--json`` reports of the same configuration on different seeds (one
    process a seed, on a machine with spare cores), as one: ``(config with the lowest seed,
    runs by seed, summed seconds, threads)``. Raises :class:`ExperimentError` when the
    configurations differ other than in the seed, or a seed comes twice."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    configs = [{k: v for k, v in r["config"].items() if k != "seed"} for r in reports]
    if any(c != configs[0] for c in configs):
        raise ExperimentError("--merge: the reports' configurations differ beyond the seed")
    runs = sorted((_nan(run) for r in reports for run in r["runs"]), key=lambda r: r["seed"])
    seeds = [r["seed"] for r in runs]
    if len(set(seeds)) != len(seeds):
        raise ExperimentError(f"--merge: a seed comes twice ({seeds})")
    cfg = Config(**{**configs[0], "seed": seeds[0]})
    return cfg, runs, float(sum(r["seconds"] for r in reports)), int(reports[0]["threads"])


def main(argv: Sequence[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    runs = []
    if args.merge:
        try:
            cfg, runs, merged_seconds, args.threads = load_runs(args.merge)
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        args.repeats = len(runs)
    cache = WeightCache(args.cache) if args.cache and not args.merge else None
    for k in range(0 if args.merge else args.repeats):
        run_cfg = Config(**{**asdict(cfg), "seed": cfg.seed + k})
        runs.append(run_once(run_cfg, encrypted=args.encrypted, service=args.service, cache=cache))
        arms = runs[-1]["arms"]
        print(
            f"seed {run_cfg.seed}: prepare {runs[-1]['prepare_seconds']:.1f} s, "
            + ", ".join(f"{a} {arms[a]['seconds']:.1f} s" for a in arms),
            file=sys.stderr,
        )
    total = merged_seconds if args.merge else time.perf_counter() - t
    params = parameter_count(build_model({**DEFAULT_SPEC, "weeks": cfg.weeks}))
    summary = summarise(runs)
    print(markdown(summary, runs, cfg, params))
    print()
    print(
        f"Wall time {total:.1f} s{' (summed over the merged reports)' if args.merge else ''} "
        f"for {args.repeats} seed(s) with {args.threads} thread(s): "
        + ", ".join(f"{ARM_LABELS[a]} {summary[a]['seconds']:.1f} s" for a in summary)
        + f" per seed; data preparation {np.mean([r['prepare_seconds'] for r in runs]):.1f} s."
    )
    for arm in summary:
        extra = runs[0]["arms"][arm]["extra"]
        if "encryption" in extra:
            print(f"{ARM_LABELS[arm]}, encryption: {json.dumps(extra['encryption'])}")
        if "service" in extra:
            print(f"{ARM_LABELS[arm]}: {json.dumps(extra['service'])}")
        if "dp" in extra:
            print(f"{ARM_LABELS[arm]}, differential privacy: {json.dumps(extra['dp'])}")
        if "units" in extra:
            kept = [r["arms"][arm]["extra"]["kept"] for r in runs]
            print(f"{ARM_LABELS[arm]}: units that left the federated model, per seed: {kept}")
    if cache is not None:
        print(
            f"Weight cache {args.cache}: reused {cache.hits or 'nothing'}, "
            f"trained {cache.misses or 'nothing'}."
        )
    if args.out:
        plot(summary, runs, cfg, args.out)
    if args.json:
        report = {
            "config": asdict(cfg),
            "repeats": args.repeats,
            "threads": args.threads,
            "parameters": params,
            "seconds": round(total, 2),
            "summary": summary,
            "goal": goal(summary, runs),
            "runs": runs,
            "paper": PAPER,
        }
        Path(args.json).write_text(json.dumps(json_safe(report), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
