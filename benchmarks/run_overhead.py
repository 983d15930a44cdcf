"""The marketplace's overhead on a product run, and the remote-call latency.

1. The median wall time of a remote run through the real service (POST api/runs -> output.html
   ready) against running the same notebook with the bare `papermill` CLI in the same
   environment, as a ratio.
2. The median latency of repeated `POST api/products/{p}/predict` calls (10 rows) of the tool
   template, answered by its warm kernel, against the bare `papermill` CLI running the same
   tool notebook on the same rows (what a call would cost without a warm kernel).
3. The sandbox's own start-up: `true` in a sandbox (launcher, prlimit, setpriv, bwrap, the
   relay process) against a bare `true`.

Runs and remote calls execute in the sandbox (docs/sandbox.md); "bare papermill" is papermill
and its kernel started directly, unsandboxed (GRID_SANDBOX=1 makes the kernelspec's
provisioner start the kernel locally), as a user would run it on a laptop.

Not a test: nothing is asserted.

    .venv/bin/python benchmarks/run_overhead.py [--runs 7] [--calls 30]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import nbformat
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _platform import ROOT, market_for, throwaway_platform  # noqa: E402

from marketplace_ext.bundle import new_product  # noqa: E402
from marketplace_ext.sandbox.limits import Limits  # noqa: E402
from marketplace_ext.sandbox.spec import INSIDE_ENV, launcher_argv  # noqa: E402


def trivial_notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "grid-python", "display_name": "Python 3 (grid)",
                                 "language": "python"}
    params = nbformat.v4.new_code_cell("x: int = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("print(x * 2)")]
    nbformat.write(nb, path)


def bare_papermill(notebook: Path, runs: int, *params: str) -> list[float]:
    times = []
    out = notebook.with_name("out.ipynb")
    env = {**os.environ, INSIDE_ENV: "1"}  # no sandbox: the kernel starts as a local one
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([str(ROOT / ".venv" / "bin" / "papermill"), str(notebook), str(out),
                        "-k", "grid-python", *params], check=True, capture_output=True,
                       cwd=notebook.parent, env=env)
        times.append(time.perf_counter() - t0)
    return times


def sandbox_start(runs: int) -> tuple[float, float]:
    """Median seconds of `true` in a sandbox (as gds-run-bench when root) and of a bare
    `true`."""
    from marketplace_ext.sandbox.workspace import Workspace, identity

    base = Path(tempfile.mkdtemp(prefix="bench-sbx-"))
    base.chmod(0o711)
    space = Workspace(base / "run", *identity("bench"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("main.ipynb", "{}")
    space.create(buf.getvalue())
    space.seal()
    space.spec(["true"], {}, Limits()).write(space.spec_file)
    sandboxed, bare = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(launcher_argv(space.spec_file), check=True)
        sandboxed.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        subprocess.run(["true"], check=True)
        bare.append(time.perf_counter() - t0)
    shutil.rmtree(base, ignore_errors=True)
    return statistics.median(sandboxed), statistics.median(bare)


ROWS = [{"customer_id": f"c{i}", "mean_kwh": 4.0 + i, "cv": 0.05 * i, "zero_share": 0.01 * i,
         "drop": 0.03 * i} for i in range(10)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="small smoke run (one run)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.calls = 1, 3
    work = Path(tempfile.mkdtemp(prefix="bench-run-"))
    with throwaway_platform(MARKET_INITIAL_GRANT="100000") as (platform, accounts):
        url = platform.url
        publisher = market_for(url, "publisher-a", accounts["publisher-a"])
        operator = market_for(url, "operator", accounts["operator"])
        buyer = market_for(url, "subscriber-b", accounts["subscriber-b"])
        name = f"trivial-{secrets.token_hex(3)}"
        bundle = new_product("tool", name, work)
        manifest = yaml.safe_load((bundle / "product.yaml").read_text())
        # a run only: the trivial notebook takes no rows, so it offers no remote call
        manifest.update(plans=[{"type": "per_use", "price": 10}], outputs=[],
                        sharing=["remote_run"])
        (bundle / "product.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
        trivial_notebook(bundle / "main.ipynb")
        publisher.publish(bundle)
        operator.review(name, manifest["version"], "approve")

        market_times = []
        for _ in range(args.runs):
            buyer.order(name, "per_use")
            t0 = time.perf_counter()
            # on an uploaded file: the throw-away platform has no Spark server to run on
            run = buyer.request("POST", "runs", data={"request": json.dumps(
                {"product": name, "parameters": {"x": 2}})},
                files={"data": ("meter.csv", b"customer_id,kwh\n1,2.5\n")})
            while run["status"] in ("queued", "running"):
                time.sleep(0.05)
                run = buyer.request("GET", f"runs/{run['id']}")
            html = buyer.http.get(buyer.url + f"api/runs/{run['id']}/output.html", timeout=30)
            market_times.append(time.perf_counter() - t0)
            if run["status"] != "succeeded" or html.status_code != 200:
                raise SystemExit(f"run failed: {run['error']}")
        tool = f"meter-score-{secrets.token_hex(3)}"
        tool_bundle = new_product("tool", tool, work)
        publisher.publish(tool_bundle)
        operator.review(tool, "0.1.0", "approve")
        buyer.order(tool, "month")
        call_times = []
        for _ in range(args.calls + 1):
            t0 = time.perf_counter()
            predictions = buyer.predict(tool, ROWS)
            call_times.append(time.perf_counter() - t0)
            if len(predictions) != len(ROWS):
                raise SystemExit(f"predict answered {predictions!r}")
    bare_times = bare_papermill(bundle / "main.ipynb", args.runs, "-p", "x", "2")
    bare_calls = bare_papermill(tool_bundle / "main.ipynb", min(args.runs, 5),
                                "-y", json.dumps({"rows": ROWS}))
    market, bare = statistics.median(market_times), statistics.median(bare_times)
    warm, cold = statistics.median(call_times[1:]), call_times[0]
    bare_call = statistics.median(bare_calls)
    in_sandbox, bare_true = sandbox_start(max(args.runs, 10))
    print(f"{args.runs} runs of a two-cell notebook on the grid-python kernel")
    print(f"marketplace run (POST api/runs -> output.html): median {market:6.2f} s")
    print(f"bare papermill CLI, same notebook:               median {bare:6.2f} s")
    print(f"ratio marketplace / bare papermill:              {market / bare:6.2f}")
    print(f"{args.calls} remote calls of the tool template with {len(ROWS)} rows (month plan)")
    print(f"first call (starts the warm kernel):             {cold:9.3f} s")
    print(f"repeated calls (POST .../predict), median:       {warm:9.3f} s")
    print(f"bare papermill CLI on the same rows, median:     {bare_call:9.3f} s")
    print(f"ratio repeated call / bare papermill:            {warm / bare_call:9.3f}")
    print("sandbox start-up (launcher + prlimit + setpriv + bwrap + relay process)")
    print(f"`true` in the sandbox, median:                  {in_sandbox:9.3f} s")
    print(f"bare `true`, median:                             {bare_true:9.3f} s")


if __name__ == "__main__":
    main()
