"""Output pictures for the catalogue's cards (issue 17): the products without ground truth show
what they produce instead of a quality figure.

Each picture is a real output: the product's own notebook, run with papermill on a copy of its
bundle, on the demo tables (the bundled sample where that already is a demo unit's tables,
otherwise the publishing unit's tables written in place of the sample files); then either the
notebook's own figure or a plot of its output files. The PNG goes into the bundle as
:data:`PICTURE`, which the card's README shows (``![...](card/output.png)``); the marketplace
serves a version's card images at ``products/{product}/versions/{version}/card/{path}``.

    python -m marketplace_ext.catalogue_pictures [--out product_templates/catalogue] [NAME ...]

(``make card-pictures``). CPU-light, a minute or two; matplotlib with Agg, no display.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

#: where a card's output picture lives in its bundle
PICTURE = "card/output.png"
#: a card picture stays small: it is part of every version's archive
MAX_BYTES = 80_000
CATALOGUE = Path(__file__).resolve().parent.parent / "product_templates" / "catalogue"
KERNEL = "grid-python"
SEED = 7


def demo_tables(unit: str, scale: float) -> dict[str, pd.DataFrame]:
    """One demo unit's tables, as `make run` builds them (seed 7)."""
    from . import griddata

    return griddata.build_unit_tables(griddata.default_data_dir(), units=[unit], scale=scale,
                                      seed=SEED)[unit]


def run_product(bundle: Path, work: Path, parameters: dict | None = None,
                tables: dict[str, pd.DataFrame] | None = None) -> Path:
    """Run ``bundle``'s notebook in a copy at ``work`` (its outputs/ land there). With
    ``tables``, each bundled ``files/sample_<table>.csv[.gz]`` is replaced by that table."""
    import papermill

    if not work.exists():
        shutil.copytree(bundle, work, ignore=shutil.ignore_patterns("card", "outputs"))
        for sample in sorted((work / "files").glob("sample_*.csv*")):
            table = re.sub(r"\.csv(\.gz)?$", "", sample.name[len("sample_"):])
            if tables is not None and table in tables:
                tables[table].to_csv(sample, index=False)  # gzip follows the suffix
    papermill.execute_notebook(str(work / "main.ipynb"), str(work / "out.ipynb"),
                               parameters=parameters or {}, kernel_name=KERNEL, cwd=str(work),
                               progress_bar=False)
    return work / "outputs"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def small_png(data: bytes) -> bytes:
    """``data`` as a PNG under :data:`MAX_BYTES`: quantized to a 64-colour palette, then
    halved until it fits."""
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB")
    while True:
        buf = io.BytesIO()
        image.quantize(64).save(buf, format="PNG", optimize=True)
        if buf.tell() < MAX_BYTES:
            return buf.getvalue()
        image = image.resize((image.width // 2, image.height // 2))


# --- one picture per product ------------------------------------------------------------------


def ev_charger_layout(bundle: Path, work: Path) -> bytes:
    """The layout on unit C's demo tables at full scale: demand points by how much of their
    demand is served, the candidates, the chosen sites with their charger, the transformers."""
    tables = demo_tables("c", 1.0)
    out = run_product(bundle, work, tables=tables)
    coverage = json.loads((out / "coverage.json").read_text())
    layout = pd.read_csv(out / "layout.csv")
    sites = tables["charging_demand"]
    demand = sites[sites["kind"] == "demand_point"]
    candidates = sites[sites["kind"] == "candidate_site"]
    tr = tables["transformers"]
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    ax.scatter(tr["lon"], tr["lat"], marker="^", s=14, color="#999999", label="transformer")
    ax.scatter(demand["lon"], demand["lat"], s=demand["demand_kwh_per_day"].astype(float),
                    c="#d08c2f", alpha=0.55, label="demand point (size: kWh/day)")
    ax.scatter(candidates["lon"], candidates["lat"], marker="x", s=40, color="#555555",
               label="candidate site")
    ax.scatter(layout["lon"], layout["lat"], marker="*", s=260, color="#2f5d8a",
               edgecolor="white", zorder=3, label="chosen site")
    for row in layout.itertuples():
        ax.annotate(f"{row.rank}: {row.power_kw:g} kW", (row.lon, row.lat),
                    xytext=(6, 6), textcoords="offset points", fontsize=8, color="#1d3d5c")
    ax.set(xlabel="longitude", ylabel="latitude",
           title=f"EV charger layout, unit C's demo tables: {coverage['sites']} sites, "
                 f"{coverage['served_share']:.0%} of demand served, "
                 f"{coverage['candidates_blocked_by_transformer_headroom']} candidates blocked")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="best", markerscale=0.6)
    fig.tight_layout()
    return _png(fig)


def customer_service_panorama(bundle: Path, work: Path) -> bytes:
    """The chart at the top of the first page (the customer with the most tickets) on the
    bundled sample, which is unit E's demo tables at 1 % scale."""
    out = run_product(bundle, work)
    found = re.search(r'data:image/png;base64,([A-Za-z0-9+/=]+)',
                      (out / "panorama.html").read_text())
    if found is None:
        raise RuntimeError("panorama.html holds no chart")
    return base64.b64decode(found.group(1))


def customer_portrait(bundle: Path, work: Path) -> bytes:
    """The product's own figure (outputs/portrait.png) on the bundled sample, which is unit
    A's demo tables at 5 % scale."""
    return (run_product(bundle, work) / "portrait.png").read_bytes()


def power_marketing_data(bundle: Path, work: Path) -> bytes:
    """The card's example query answered on the desensitized views of unit B's demo tables
    (full scale): monthly kWh by industry, from the notebook's previews of the two views."""
    tables = demo_tables("b", 1.0)
    out = run_product(bundle, work, {"view": "commercial_customers_public"}, tables)
    customers = pd.read_csv(out / "preview.csv")
    out = run_product(bundle, work, {"view": "commercial_consumption_public"}, tables)
    daily = pd.read_csv(out / "preview.csv", parse_dates=["day"])
    joined = daily.merge(customers[["customer_id", "industry"]], on="customer_id")
    monthly = (joined.assign(month=joined["day"].dt.to_period("M").dt.start_time)
               .groupby(["month", "industry"])["kwh"].sum().unstack("industry") / 1000.0)
    fig, ax = plt.subplots(figsize=(7.5, 4))
    monthly.plot(ax=ax, linewidth=1.4)
    ax.set(xlabel="", ylabel="MWh per month",
           title=f"commercial_consumption_public joined with commercial_customers_public: "
                 f"{customers['customer_id'].nunique()} hashed customers of unit B")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _png(fig)


PICTURES: dict[str, Callable[[Path, Path], bytes]] = {
    "ev-charger-layout": ev_charger_layout,
    "customer-service-panorama": customer_service_panorama,
    "customer-portrait": customer_portrait,
    "power-marketing-data": power_marketing_data,
}


def make_picture(name: str, catalogue: Path = CATALOGUE) -> tuple[Path, int]:
    """Run product ``name`` and write its card picture; returns (path, bytes)."""
    bundle = catalogue / name
    with tempfile.TemporaryDirectory(prefix=f"card-{name}-") as tmp:
        data = small_png(PICTURES[name](bundle, Path(tmp) / "bundle"))
    target = bundle / PICTURE
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(data)
    return target, len(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"products (default: {', '.join(PICTURES)})")
    parser.add_argument("--out", type=Path, default=CATALOGUE,
                        help="the catalogue directory holding the bundles")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(PICTURES))
    if unknown:
        parser.error(f"no picture for {', '.join(unknown)}; choose from {', '.join(PICTURES)}")
    for name in args.names or PICTURES:
        path, size = make_picture(name, args.out)
        print(f"{path}: {size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
