"""The service's event loop under load (issue 18): 50 clients buy at once while two runs upload
data files and a few readers walk the read-only lists and pages (their reads run in the db
executor), and the service's own loop-lag monitor (``GET api/loop-lag``) is read over that
window. The lag figure is printed (``-s``), never asserted: CI machines are loaded. What is
asserted could fail: the monitor sampled the window, every purchase succeeded and the points
moved exactly (and came back with the refunds), every read answered 200, both uploads
reached the store and their runs read them; and a file larger than a download chunk comes back
whole through its link, with its length announced.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import nbformat
import pytest
import yaml
from helpers import market_as, wait_until

from marketplace_ext.bundle import new_product
from marketplace_ext.client import Market

CLIENTS = 50
BUYER_UNITS = ("b", "c", "d", "e")
#: clients reading lists and pages during the window, each walking READ_PATHS once
READERS = 4
READ_PATHS = ("api/products", "api/forum/threads", "api/topics", "api/inbox", "api/workshops",
              "api/ranking", "api/report", "api/runs", "api/log/checkpoint", "forum", "topics",
              "workshops", "inbox", "report", "log")
#: rows of each uploaded CSV (about 3 MB: several body chunks, spooled to a file)
UPLOAD_ROWS = 120_000
#: larger than the service's 256 kB download chunk, so the link streams several chunks
BIG_FILE_BYTES = 700 * 1024

COUNT_ROWS = """\
import json, os
import pandas as pd
rows = len(pd.read_csv(input_path))
os.makedirs(output_dir, exist_ok=True)
with open(f"{output_dir}/rows.json", "w") as f:
    json.dump({"rows": rows}, f)
"""


def row_counter(name: str, tmp_path) -> object:
    """An application that counts the rows of the file it is given (owned by unit e)."""
    bundle = new_product("application", name, tmp_path / name)
    manifest = yaml.safe_load((bundle / "product.yaml").read_text())
    manifest.update(plans=[{"type": "per_use", "price": 10}],
                    outputs=[{"path": "outputs/rows.json", "description": "row count"}])
    (bundle / "product.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "grid-python", "display_name": "Python 3 (grid)",
                                 "language": "python"}
    params = nbformat.v4.new_code_cell('output_dir: str = "outputs"\ninput_path: str = ""')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(COUNT_ROWS)]
    nbformat.write(nb, bundle / "main.ipynb")
    for stale in (bundle / "files").glob("*"):
        stale.unlink()
    return bundle


def big_tool(name: str, tmp_path) -> tuple[object, bytes]:
    """A per-use tool of unit a whose bundle holds a file of several download chunks."""
    bundle = new_product("tool", name, tmp_path / name)
    manifest = yaml.safe_load((bundle / "product.yaml").read_text())
    manifest["plans"] = [{"type": "per_use", "price": 10}]
    (bundle / "product.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    big = secrets.token_bytes(BIG_FILE_BYTES)
    (bundle / "files" / "weights.bin").write_bytes(big)
    return bundle, big


def points_of(m: Market, unit: str) -> Decimal:
    return Decimal(m.request("GET", f"units/{unit}/account")["balance"])


@pytest.fixture(scope="module")
def shop(platform_proc, tmp_path_factory):
    url, logins = platform_proc.url, platform_proc.logins()
    tmp = tmp_path_factory.mktemp("looplag")
    op = market_as(url, "operator", logins["operator"])
    pub_a = market_as(url, "publisher-a", logins["publisher-a"])
    pub_e = market_as(url, "publisher-e", logins["publisher-e"])
    tool = f"lag-tool-{secrets.token_hex(3)}"
    bundle, big = big_tool(tool, tmp)
    version = pub_a.publish(bundle)["version"]
    op.review(tool, version, "approve")
    app = f"lag-rows-{secrets.token_hex(3)}"
    op.review(app, pub_e.publish(row_counter(app, tmp))["version"], "approve")
    buyers = {u: market_as(url, f"subscriber-{u}", logins[f"subscriber-{u}"])
              for u in BUYER_UNITS}
    return {"op": op, "pub_a": pub_a, "tool": tool, "version": version, "big": big,
            "app": app, "buyers": buyers, "tmp": tmp}


def test_loop_lag_while_fifty_clients_buy_and_two_runs_upload(shop, record_property):
    op, pub_a, tool, buyers = shop["op"], shop["pub_a"], shop["tool"], shop["buyers"]
    uploaders = [buyers["c"], buyers["d"]]
    for m in uploaders:
        m.order(shop["app"], "per_use")
    uploads = []
    for i, _m in enumerate(uploaders):
        path = shop["tmp"] / f"readings-{i}.csv"
        lines = [f"c{n},2013-01-{1 + n % 28:02d},{n % 97}.5\n" for n in range(UPLOAD_ROWS + i)]
        path.write_text("customer_id,day,kwh\n" + "".join(lines))
        uploads.append(path)
    supplier_before = points_of(pub_a, "a")
    accounts_before = op.request("GET", "accounts")["accounts"]
    assert sum(a["centipoints"] for a in accounts_before) == 0

    start = threading.Barrier(CLIENTS + len(uploaders) + READERS)
    units = list(buyers)

    def buy(n: int) -> tuple[int, dict]:
        m = buyers[units[n % len(units)]]
        start.wait(timeout=60)
        r = m.http.post(m.url + "api/orders", timeout=120, json={
            "product": tool, "plan": "per_use", "idempotency_key": f"lag-{tool}-{n}"})
        return r.status_code, r.json()

    def upload(i: int) -> dict:
        start.wait(timeout=60)
        return uploaders[i].run(shop["app"], data=uploads[i], wait=False)

    def read(n: int) -> list[tuple[str, int]]:
        m = buyers[units[n % len(units)]]
        start.wait(timeout=60)
        return [(path, m.http.get(m.url + path, timeout=120).status_code)
                for path in READ_PATHS[n % 3:] + READ_PATHS[:n % 3]]

    began = time.monotonic()
    with ThreadPoolExecutor(CLIENTS + len(uploaders) + READERS) as pool:
        bought = [pool.submit(buy, n) for n in range(CLIENTS)]
        submitted = [pool.submit(upload, i) for i in range(len(uploaders))]
        reads = [pool.submit(read, n) for n in range(READERS)]
        answers = [f.result() for f in bought]
        runs = [f.result() for f in submitted]
        read_answers = [a for f in reads for a in f.result()]
    window = time.monotonic() - began
    lag = op.request("GET", "loop-lag", params={"seconds": max(1, math.ceil(window))})
    load = os.getloadavg()
    print(f"\nloop lag over {window:.1f} s while {CLIENTS} clients bought, "
          f"{len(uploaders)} runs uploaded {UPLOAD_ROWS}-row CSVs and {READERS} readers made "
          f"{len(read_answers)} GETs: p50 {lag['p50_ms']} ms, "
          f"p99 {lag['p99_ms']} ms, max {lag['max_ms']} ms ({lag['samples']} samples every "
          f"{lag['interval_ms']:.0f} ms); machine load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")

    for stall in lag["stalls"][:5]:  # where the loop was when it stalled (the watchdog's view)
        print(f"  stall {stall['ms']} ms ({stall['samples']} samples, "
              f"{stall['stack_share']:.0%} in): " + " < ".join(stall["stack"][:6]))
    record_property("loop_lag_p99_ms", lag["p99_ms"])  # in a --junitxml report
    # the monitor ran through the window (its figure is the test's output, not its verdict)
    assert lag["samples"] >= 1 and lag["p50_ms"] <= lag["p99_ms"] <= lag["max_ms"], lag
    # every read-only list and page answered (their reads ran beside the purchases)
    assert [status for _, status in read_answers] == [200] * (READERS * len(READ_PATHS)), \
        read_answers
    # every purchase went through, once each, and the supplier got exactly its shares
    assert [status for status, _ in answers] == [201] * CLIENTS, answers
    orders = [body for _, body in answers]
    assert len({o["id"] for o in orders}) == CLIENTS
    shares = sum(Decimal(o["supplier_share"]) for o in orders)
    assert points_of(pub_a, "a") == supplier_before + shares
    assert sum(a["centipoints"] for a in op.request("GET", "accounts")["accounts"]) == 0
    # both uploads were accepted, stored, and their runs read every row of them
    assert len({r["id"] for r in runs}) == 2
    finished = {}

    def done() -> bool:
        for m, r in zip(uploaders, runs, strict=True):
            got = m.get_run(r["id"])
            if got["status"] not in ("queued", "running"):
                finished[r["id"]] = got
        return len(finished) == len(runs)

    wait_until(done, 180, "both upload runs to finish")
    for i, (m, r) in enumerate(zip(uploaders, runs, strict=True)):
        assert finished[r["id"]]["status"] == "succeeded", finished[r["id"]]
        counted = m.http.get(f"{m.url}api/runs/{r['id']}/artifacts/outputs/rows.json",
                             timeout=60)
        assert counted.status_code == 200 and json.loads(counted.content) == {
            "rows": UPLOAD_ROWS + i}
    # the purchases given back: the supplier is where it was, nothing created or lost
    for o in orders:
        op.request("POST", f"orders/{o['id']}/refund", json={"reason": "loop-lag test"})
    assert points_of(pub_a, "a") == supplier_before
    assert sum(a["centipoints"] for a in op.request("GET", "accounts")["accounts"]) == 0


def test_a_large_file_streams_whole_through_its_link(shop):
    pub_a, big = shop["pub_a"], shop["big"]
    link = pub_a.request(
        "POST", f"products/{shop['tool']}/versions/{shop['version']}/files/files/weights.bin")
    assert link["sha256"] == hashlib.sha256(big).hexdigest()
    url = pub_a.url + "api/" + link["url"].split("/api/", 1)[1]
    for _ in range(2):  # the link serves as often as asked (a GET spends nothing)
        r = pub_a.http.get(url, timeout=60)
        assert r.status_code == 200 and r.content == big
        assert r.headers["Content-Length"] == str(BIG_FILE_BYTES)
        assert r.headers["X-Content-SHA256"] == link["sha256"]
