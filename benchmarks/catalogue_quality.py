"""Quality of the catalogue products (issue 17) on the demo data, next to their baselines.

    python benchmarks/catalogue_quality.py [PRODUCT ...] [--scale 0.01] [--unit a] [--seed 7]

Builds the demo unit's tables (marketplace_ext.griddata, the same seed as `make run`), puts
them where each product's notebook reads its sample (files/sample_<table>.csv.gz) in a copy of
the bundle, runs the notebook with papermill and prints its outputs/metrics.json. Prints
measured numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from marketplace_ext import griddata

CATALOGUE = Path(__file__).resolve().parents[1] / "product_templates" / "catalogue"
TABLES = {
    "abnormal-consumption-detection": ["commercial_consumption_daily",
                                       "abnormal_consumption_labels", "commercial_customers"],
    "transformer-overload-prediction": ["transformer_load", "overload_episodes"],
    "power-resumption-index": ["commercial_customers", "commercial_consumption_daily",
                               "resumption_truth"],
    "abnormal-price-detection": ["commercial_bills", "commercial_customers", "tariff_schedule",
                                 "price_error_labels"],
    # E1's service-side products
    "business-hall-efficiency": ["business_halls", "hall_transactions", "hall_efficiency_truth"],
    "service-efficiency-analysis": ["service_tickets", "service_contacts", "service_bottlenecks"],
    "traffic-prediction": ["hall_transactions", "service_contacts"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("products", nargs="*", default=list(TABLES))
    parser.add_argument("--scale", type=float, default=0.01)
    parser.add_argument("--unit", default="a")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true",
                        help="one product at 1 %% scale (seconds): the smoke run tests use")
    args = parser.parse_args()
    if args.quick:
        args.products, args.scale = args.products[:1] if args.products != list(TABLES) \
            else ["abnormal-price-detection"], 0.01
    tables = griddata.build_unit_tables(griddata.default_data_dir(), units=[args.unit],
                                        scale=args.scale, seed=args.seed)[args.unit]
    for product in args.products:
        with tempfile.TemporaryDirectory() as tmp:
            bundle = Path(tmp) / product
            shutil.copytree(CATALOGUE / product, bundle)
            for name in TABLES[product]:
                tables[name].to_csv(bundle / "files" / f"sample_{name}.csv.gz", index=False)
            subprocess.run([sys.executable, "-m", "papermill", "main.ipynb", "out.ipynb",
                            "-k", "grid-python", "--log-level", "WARNING"], cwd=bundle,
                           check=True)
            metrics = json.loads((bundle / "outputs" / "metrics.json").read_text())
        print(json.dumps({"product": product, "unit": args.unit, "scale": args.scale,
                          "seed": args.seed, **metrics}))
        for name, ours, base in baseline_pairs(metrics):
            print(f"  ratio {name} product/baseline: {ours:.4g} / {base:.4g} = "
                  f"{ours / base:.2f}")


def baseline_pairs(metrics: dict) -> list[tuple[str, float, float]]:
    """(measure, product, baseline) for each ``baseline_<m>`` with a product figure named
    ``<m>`` or ``..._<m>`` beside it (the notebooks' metrics.json convention)."""
    pairs = []
    for key, base in metrics.items():
        if not key.startswith("baseline_") or not isinstance(base, int | float) or not base:
            continue
        measure = key[len("baseline_"):]
        ours = metrics.get(measure)
        if ours is None:
            ours = next((v for k, v in metrics.items() if k.endswith("_" + measure)
                         and not k.startswith("baseline_")), None)
        if isinstance(ours, int | float) and not isinstance(ours, bool):
            pairs.append((measure, float(ours), float(base)))
    return pairs


if __name__ == "__main__":
    main()
