"""Remote calls (:mod:`marketplace_ext.predict`) with real ``grid-python`` kernels: predictions of
the tool templates, warm reuse, errors, timeouts, dead kernels, row validation, eviction,
shutdown, the kernel's environment, entry points, and that no kernel process outlives its
worker."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import nbformat
import pytest
from helpers import make_bundle, wait_until_async

from marketplace_ext.bundle import archive_sha256, canonical_archive
from marketplace_ext.launcher import pid_alive
from marketplace_ext.predict import (
    InvalidRows,
    PredictError,
    PredictPool,
    PredictTimeout,
    PredictUnavailable,
)
from marketplace_ext.sandbox.procs import MARKER_ENV, processes_of

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "product_templates" / "tool"
TARIFF = ROOT / "product_templates" / "catalogue" / "tariff-risk-prediction"

PROBE_PARAMETERS = 'rows: list = []\nmode: str = "default"\noutput_dir: str = "elsewhere"'
# "pid" is the kernel's pid in its sandbox's PID namespace (the same small number in every
# sandbox); "kernel" (its connection file) tells kernels apart
PROBE_CELLS = (
    "import json, os, subprocess, sys, time\nfrom pathlib import Path",
    """\
op = rows[0].get("op", "echo")
if op == "raise":
    raise ValueError(f"boom {rows[0]['n']}")
if op == "missing":
    open(os.path.abspath("nope.txt"))
if op == "sleep":
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    Path(rows[0]["pidfile"]).write_text(str(child.pid))
    time.sleep(rows[0]["s"])
if op == "exit":
    os._exit(3)
if op == "env":
    answer = sorted(os.environ)
elif op == "dict":
    answer = {"a": 1}
else:
    answer = [{"pid": os.getpid(), "kernel": sys.argv[-1], "cwd": os.getcwd(), "rows": rows,
               "mode": mode, "output_dir": output_dir}]
if op != "nothing":
    Path("outputs/predictions.json").write_text(json.dumps(answer))
if op == "chdir":
    os.chdir("/")
""",
)


def reachable(tmp_path: Path) -> Path:
    """A work root the sandbox accounts can reach (pytest's own directories are 0700)."""
    root = Path(tempfile.mkdtemp(prefix="p-", dir="/tmp"))
    root.chmod(0o711)
    _roots.append(root)
    return root / "work"


_roots: list[Path] = []


@pytest.fixture(autouse=True)
def _remove_roots():
    yield
    while _roots:
        shutil.rmtree(_roots.pop(), ignore_errors=True)


def probe_bundle(tmp_path: Path) -> bytes:
    return make_bundle(tmp_path / "probe", "name: probe\nkind: tool\nnotebook: main.ipynb\n",
                       PROBE_PARAMETERS, PROBE_CELLS)


def marked(work_root: Path) -> set[int]:
    """Live processes carrying the marker of any worker under ``work_root``."""
    prefix = f"{MARKER_ENV}={work_root.resolve()}/".encode()
    found = set()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            entries = environ.read_bytes().split(b"\0")
        except OSError:
            continue
        pid = int(environ.parent.name)
        if any(e.startswith(prefix) for e in entries) and pid_alive(pid):
            found.add(pid)
    return found


def assert_gone(work_root: Path, pids: set[int]) -> None:
    deadline = time.monotonic() + 5
    while {p for p in pids if pid_alive(p)} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not {p for p in pids if pid_alive(p)}, "a worker process is still alive"
    assert marked(work_root) == set()


def expected_tool_scores(rows: list[dict]) -> list[dict]:
    """The tool template's answer computed by hand from files/model.json."""
    model = json.loads((TOOL / "files" / "model.json").read_text())
    out = []
    for i, row in enumerate(rows):
        z = sum(w * (row[f] - m) / s for f, m, s, w in
                zip(model["features"], model["mean"], model["scale"], model["weights"],
                    strict=True))
        out.append({"customer_id": row.get("customer_id", f"row-{i}"),
                    "score": 1.0 / (1.0 + math.exp(-(z + model["bias"])))})
    return sorted(out, key=lambda r: -r["score"])


def test_tool_templates_warm_reuse_and_lru_eviction(tmp_path):
    tool = canonical_archive(TOOL)
    tariff = canonical_archive(TARIFF)
    loads: list[str] = []

    def loader(name: str, data: bytes):
        def load() -> bytes:
            loads.append(name)
            return data
        return load

    rows = [{"customer_id": f"c{i}", "mean_kwh": 2.0 + i, "cv": 0.1 * i, "zero_share": 0.02 * i,
             "drop": 0.3 - 0.05 * i} for i in range(10)]
    tariff_rows = [
        {"customer_id": "a", "late_share": 0.0, "missed_share": 0.0, "mean_days_late": 0.0,
         "mean_amount": 80.0, "last_late": 0.0, "tariff_class": "standard"},
        {"customer_id": "b", "late_share": 0.8, "missed_share": 0.4, "mean_days_late": 25.0,
         "mean_amount": 150.0, "last_late": 1.0, "tariff_class": "economy7"},
    ]
    work = reachable(tmp_path)
    pool = PredictPool(work, max_workers=1)

    async def main():
        try:
            first = await pool.predict(archive_sha256(tool), loader("tool", tool), rows, {})
            [w1] = pool.workers()
            # rows without customer_id: the notebook names them; same kernel, no new bundle load
            second = await pool.predict(archive_sha256(tool), loader("tool", tool),
                                        [{k: v for k, v in r.items() if k != "customer_id"}
                                         for r in rows[:3]], {})
            [w2] = pool.workers()
            # a second version with max_workers=1: the tool's worker is stopped for it
            risks = await pool.predict(archive_sha256(tariff), loader("tariff", tariff),
                                       tariff_rows, {})
            [w3] = pool.workers()
            assert not pid_alive(w1.pid) and processes_of(w1.directory) == set()
            assert not w1.directory.exists()
            return first, second, risks, (w1, w2, w3)
        finally:
            await pool.shutdown()

    first, second, risks, (w1, w2, w3) = asyncio.run(main())
    expected = expected_tool_scores(rows)
    assert [p["customer_id"] for p in first] == [e["customer_id"] for e in expected]
    assert [p["score"] for p in first] == pytest.approx([e["score"] for e in expected], abs=2e-6)
    expected = expected_tool_scores([{k: v for k, v in r.items() if k != "customer_id"}
                                     for r in rows[:3]])
    assert [p["customer_id"] for p in second] == [e["customer_id"] for e in expected]
    assert [p["score"] for p in second] == pytest.approx([e["score"] for e in expected], abs=2e-6)
    assert w1.pid == w2.pid and w2.calls == 2 and w3.pid != w1.pid
    assert loads == ["tool", "tariff"]
    assert [r["customer_id"] for r in risks] == ["b", "a"]
    assert risks[0]["flagged"] is True and risks[1]["flagged"] is False
    assert 0 <= risks[1]["risk"] < risks[0]["risk"] <= 1
    assert_gone(work, {w3.pid})
    assert list(work.iterdir()) == []


def test_errors_env_and_concurrency_in_one_warm_kernel(tmp_path, monkeypatch):
    monkeypatch.setenv("MARKET_PROBE_SECRET", "s3cret")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "t0ken")
    monkeypatch.setenv("SOME_PASSWORD", "pw")
    data = probe_bundle(tmp_path)
    work = reachable(tmp_path)
    pool = PredictPool(work)
    env = {"SPARK_REMOTE": "sc://unit-a:15002"}

    async def call(rows, env=env):
        return await pool.predict("probe-v1", lambda: data, rows, env)

    async def main():
        try:
            [echo] = await call([{"op": "echo", "n": 1}])
            directory = pool.workers()[0].directory
            names = await call([{"op": "env"}])
            with pytest.raises(PredictError) as boom:
                await call([{"op": "raise", "n": 7}])
            with pytest.raises(PredictError) as missing:
                await call([{"op": "missing"}])
            await call([{"op": "chdir"}])
            [after] = await call([{"op": "echo", "n": 2}])
            # the previous call's predictions.json must not be returned
            with pytest.raises(PredictError) as nothing:
                await call([{"op": "nothing"}])
            with pytest.raises(PredictError) as not_list:
                await call([{"op": "dict"}])
            answers = await asyncio.gather(*(call([{"op": "echo", "n": n}]) for n in range(3)))
            # a caller that goes away mid-call: the call finishes, the kernel keeps serving
            gone = asyncio.ensure_future(call([{"op": "sleep", "s": 2, "pidfile": "c.pid"}]))
            await wait_until_async((directory / "work" / "c.pid").exists, 60, "the call to run")
            gone.cancel()
            [late] = await call([{"op": "echo", "n": 9}])
            assert gone.cancelled() and late["kernel"] == echo["kernel"]
            [other] = await call([{"op": "echo"}], env={"SPARK_REMOTE": "sc://unit-b:15002"})
            workers = pool.workers()
            return (echo, directory, names, boom.value, missing.value, after, nothing.value,
                    not_list.value, answers, other, workers)
        finally:
            await pool.shutdown()

    (echo, directory, names, boom, missing, after, nothing, not_list, answers, other,
     workers) = asyncio.run(main())
    assert echo["cwd"] == str(directory / "work") and echo["rows"] == [{"op": "echo", "n": 1}]
    # the other parameters keep their defaults; output_dir is set as for a run
    assert echo["mode"] == "default" and echo["output_dir"] == "outputs"
    assert not [n for n in names if n.startswith(("MARKET_", "JUPYTERHUB_", "CONFIGPROXY_"))]
    assert "SOME_PASSWORD" not in names
    assert "SPARK_REMOTE" in names and MARKER_ENV in names
    assert boom.message == "ValueError: boom 7 (code cell 3)"
    assert (boom.ename, boom.evalue, boom.cell) == ("ValueError", "boom 7", 3)
    assert missing.ename == "FileNotFoundError" and "nope.txt" in missing.message
    assert str(tmp_path) not in missing.message
    # errors, a cell that changed directory: the same kernel keeps serving
    assert after["kernel"] == echo["kernel"] and after["cwd"] == str(directory / "work")
    assert nothing.message == "the notebook wrote no outputs/predictions.json"
    assert "must hold a JSON array" in not_list.message
    assert [a[0]["rows"][0]["n"] for a in answers] == [0, 1, 2]
    assert {a[0]["kernel"] for a in answers} == {echo["kernel"]}
    # another environment, another kernel
    assert other["kernel"] != echo["kernel"] and len(workers) == 2
    assert_gone(work, {w.pid for w in workers})


def test_timeout_dead_kernel_and_shutdown_during_a_call(tmp_path):
    data = probe_bundle(tmp_path)
    work = reachable(tmp_path)
    pool = PredictPool(work, call_timeout=3)

    async def call(rows):
        return await pool.predict("probe-v1", lambda: data, rows, {})

    def launcher() -> int:
        [worker] = pool.workers()
        return worker.pid

    async def main():
        [first] = await call([{"op": "echo"}])
        first_pid = launcher()
        with pytest.raises(PredictTimeout) as timeout:  # a 60 s sleep cut at 3 s
            await call([{"op": "sleep", "s": 60, "pidfile": "child.pid"}])
        # the kernel and its `sleep 300` child (a session of its own) are gone
        assert_gone(work, {first_pid})
        [second] = await call([{"op": "echo"}])
        second_pid = launcher()
        with pytest.raises(PredictError) as died:
            await call([{"op": "exit"}])
        assert_gone(work, {second_pid})
        [third] = await call([{"op": "echo"}])
        third_pid = launcher()
        pidfile = pool.workers()[0].directory / "work" / "child.pid"
        # shutdown while a call runs: the call ends at once and nothing is left
        running = asyncio.ensure_future(call([{"op": "sleep", "s": 60, "pidfile": "child.pid"}]))
        await wait_until_async(pidfile.exists, 60, "the call to run")
        await pool.shutdown()
        with pytest.raises(PredictUnavailable):  # cut, not run to its end
            await running
        with pytest.raises(PredictUnavailable):
            await call([{"op": "echo"}])
        return first, second, third, timeout.value, died.value, third_pid

    first, second, third, timeout, died, third_pid = asyncio.run(main())
    assert "longer than 3 s" in timeout.message
    assert len({first["kernel"], second["kernel"], third["kernel"]}) == 3
    assert "the kernel died in code cell 3" in died.message
    assert_gone(work, {third_pid})
    assert list(work.iterdir()) == []


def test_invalid_rows_touch_no_kernel(tmp_path):
    pool = PredictPool(reachable(tmp_path), max_rows=3)

    def never() -> bytes:
        raise AssertionError("no bundle is loaded for invalid rows")

    cases = [
        ({"a": 1}, "rows must be a list of JSON objects, not an object"),
        ([], "rows must hold at least one row"),
        ([{}, {}, {}, {}], "at most 3 rows per call; got 4"),
        ([{"a": 1}, [1]], "rows[1] must be a JSON object, not a list"),
        ([{"a": 1}, None], "rows[1] must be a JSON object, not null"),
        ([{1: 2}], "rows[0] has a key that is not a string"),
        ([{"a": float("nan")}], "rows must hold only JSON values"),
        ([{"a": {1, 2}}], "rows must hold only JSON values"),
    ]

    async def main():
        for rows, message in cases:
            with pytest.raises(InvalidRows) as e:
                await pool.predict("v", never, rows, {})
            assert message in e.value.message, rows
            assert e.value.field == "rows" and e.value.status == 400
            assert isinstance(e.value, ValueError)
        await pool.shutdown()

    asyncio.run(main())
    assert pool.workers() == []


def test_idle_worker_is_stopped_and_shutdown_while_starting(tmp_path):
    data = probe_bundle(tmp_path)
    work = reachable(tmp_path)
    pool = PredictPool(work, idle_timeout=1)

    async def main():
        try:
            [echo] = await pool.predict("probe-v1", lambda: data, [{"op": "echo"}], {})
            deadline = time.monotonic() + 10
            while pool.workers() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            idle_left = pool.workers()
            # shut down while a worker's kernel starts: nothing is left once shutdown returns
            starting = asyncio.ensure_future(
                pool.predict("probe-v2", lambda: data, [{"op": "echo"}], {}))
            # the kernel's process is there, the kernel not yet ready
            await wait_until_async(
                lambda: pool.workers() and pool.workers()[0].directory and marked(work), 60,
                "the kernel to start", poll=0.01)
            await pool.shutdown()
            left = marked(work)
            with pytest.raises(PredictUnavailable):
                await starting
            return echo, idle_left, left
        finally:
            await pool.shutdown()

    echo, idle_left, left = asyncio.run(main())
    assert idle_left == [] and left == set()
    assert_gone(work, set())
    assert list(work.iterdir()) == []


def test_entry_point_bad_bundles_and_recovery(tmp_path):
    work = reachable(tmp_path)
    # a worker a crashed service left behind: its process and directory go on first use
    stale = work / "w-0123456789ab-1"
    stale.mkdir(parents=True)
    orphan = subprocess.Popen(["sleep", "300"], env={**os.environ, MARKER_ENV: str(stale)},
                              start_new_session=True)
    entry = make_bundle(
        tmp_path / "entry", 'name: entry\nkind: tool\npredict: "scorer:predict"\n',
        files={"scorer.py": "import numpy as np\n\n"
                            "def predict(rows):\n"
                            "    if rows[0].get('fail'):\n"
                            "        raise KeyError('fail')\n"
                            "    return np.array([r['x'] * 2 for r in rows])\n"})
    no_rows = make_bundle(tmp_path / "no-rows", "name: a\n", "x: int = 1", ("print(x)",))
    no_parameters = make_bundle(tmp_path / "no-params", "name: b\n", None,
                                files={"main.ipynb": nbformat.writes(nbformat.v4.new_notebook())})
    pool = PredictPool(work)

    async def main():
        try:
            with pytest.raises(PredictError) as e1:
                await pool.predict("no-rows", lambda: no_rows, [{"a": 1}], {})
            with pytest.raises(PredictError) as e2:
                await pool.predict("no-params", lambda: no_parameters, [{"a": 1}], {})
            with pytest.raises(PredictUnavailable) as e3:
                await pool.predict("entry", lambda: entry, [{"x": 1}], {},
                                   kernel_name="no-such-kernel")
            doubled = await pool.predict("entry", lambda: entry, [{"x": 1}, {"x": 2.5}], {})
            with pytest.raises(PredictError) as e4:
                await pool.predict("entry", lambda: entry, [{"fail": True}], {})
            again = await pool.predict("entry", lambda: entry, [{"x": 4}], {})
            pids = {w.pid for w in pool.workers()} - {None}
            return e1.value, e2.value, e3.value, doubled, e4.value, again, pids
        finally:
            await pool.shutdown()

    try:
        e1, e2, e3, doubled, e4, again, pids = asyncio.run(main())
    finally:
        if orphan.poll() is None:
            orphan.kill()
        orphan.wait()
    assert orphan.returncode == -9 and not stale.exists()
    assert "does not declare 'rows'" in e1.message
    assert "no code cell tagged 'parameters'" in e2.message
    assert "no-such-kernel" in e3.message
    assert doubled == [2, 5.0] and again == [8]
    assert e4.message == "KeyError: 'fail'" and e4.ename == "KeyError"
    assert len(pids) == 1
    assert_gone(work, pids)
