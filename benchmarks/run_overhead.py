"""The marketplace's overhead on a product run: the median wall time of a remote run through
the real service (POST api/runs -> output.html ready) against running the same notebook with
the bare `papermill` CLI in the same environment, as a ratio. Not a test: nothing is asserted.

    .venv/bin/python benchmarks/run_overhead.py [--runs 7]

(The remote-call `predict` latency of the compute issue is not measured: that mode is not
built yet.)
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _platform import ROOT, market_for, throwaway_platform  # noqa: E402

from marketplace_ext.bundle import new_product  # noqa: E402


def trivial_notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "grid-python", "display_name": "Python 3 (grid)",
                                 "language": "python"}
    params = nbformat.v4.new_code_cell("x: int = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("print(x * 2)")]
    nbformat.write(nb, path)


def bare_papermill(notebook: Path, runs: int) -> list[float]:
    times = []
    out = notebook.with_name("out.ipynb")
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([str(ROOT / ".venv" / "bin" / "papermill"), str(notebook), str(out),
                        "-k", "grid-python", "-p", "x", "2"], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-run-"))
    with throwaway_platform(MARKET_INITIAL_GRANT="100000") as (platform, accounts):
        url = platform.url
        publisher = market_for(url, "publisher-a", accounts["publisher-a"])
        operator = market_for(url, "operator", accounts["operator"])
        buyer = market_for(url, "subscriber-b", accounts["subscriber-b"])
        name = f"trivial-{secrets.token_hex(3)}"
        bundle = new_product("tool", name, work)
        manifest = yaml.safe_load((bundle / "product.yaml").read_text())
        manifest.update(plans=[{"type": "per_use", "price": 10}], outputs=[])
        (bundle / "product.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
        trivial_notebook(bundle / "main.ipynb")
        publisher.publish(bundle)
        operator.review(name, manifest["version"], "approve")

        market_times = []
        for _ in range(args.runs):
            buyer.order(name, "per_use")
            t0 = time.perf_counter()
            run = buyer.request("POST", "runs", json={"product": name,
                                                      "parameters": {"x": 2}})
            while run["status"] in ("queued", "running"):
                time.sleep(0.05)
                run = buyer.request("GET", f"runs/{run['id']}")
            html = buyer.http.get(buyer.url + f"api/runs/{run['id']}/output.html", timeout=30)
            market_times.append(time.perf_counter() - t0)
            if run["status"] != "succeeded" or html.status_code != 200:
                raise SystemExit(f"run failed: {run['error']}")
    bare_times = bare_papermill(bundle / "main.ipynb", args.runs)
    market, bare = statistics.median(market_times), statistics.median(bare_times)
    print(f"{args.runs} runs of a two-cell notebook on the grid-python kernel")
    print(f"marketplace run (POST api/runs -> output.html): median {market:6.2f} s")
    print(f"bare papermill CLI, same notebook:               median {bare:6.2f} s")
    print(f"ratio marketplace / bare papermill:              {market / bare:6.2f}")


if __name__ == "__main__":
    main()
