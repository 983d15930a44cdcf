"""The compute layer with real papermill and the real grid-python kernel: the run queue, the
worker pool, parameters and context, outputs, progress, timeouts, cancellation, recovery, and
that no process of a run outlives it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

import nbformat
import pytest
from helpers import World, make_world, notebook, run_to_end

from marketplace_ext.errors import Conflict, InvalidField, NotFound
from marketplace_ext.launcher import pid_alive
from marketplace_ext.orm import (
    Run,
    utcnow,
    write_transaction,
)
from marketplace_ext.parameters import validate_parameters
from marketplace_ext.runner import Runner
from marketplace_ext.sandbox.procs import MARKER_ENV, processes_of
from marketplace_ext.sandbox.workspace import inside

pytest_plugins = ["sandbox_helpers"]  # removes the work roots of make_world after each test

@pytest.fixture
def world(tmp_path):
    engine, w = make_world(f"sqlite:///{tmp_path / 'market.sqlite'}", tmp_path)
    yield w
    engine.dispose()


async def running(world: World, run_id: int, cells_done: int = 1, timeout: float = 30) -> Run:
    """Until the run is running with at least ``cells_done`` code cells executed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = world.get(run_id)
        if run.status == "running" and run.cells_done >= cells_done:
            return run
        assert run.status in ("queued", "running"), (run.status, run.error)
        await asyncio.sleep(0.1)
    raise AssertionError(f"run {run_id} did not get going")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def assert_gone(world: World, run_id: int, pids: set[int]) -> None:
    workdir = world.work_root / f"run-{run_id}"
    assert not {p for p in pids if pid_alive(p)}, "a process of the run is still alive"
    assert processes_of(workdir) == set()
    assert not workdir.exists()


# --- parameters and queueing (no kernel) ------------------------------------------------------

SPEC = {
    "n": {"name": "n", "inferred_type_name": "int", "default": "1", "help": ""},
    "rate": {"name": "rate", "inferred_type_name": "float", "default": "0.5", "help": ""},
    "flag": {"name": "flag", "inferred_type_name": "bool", "default": "False", "help": ""},
    "label": {"name": "label", "inferred_type_name": "str", "default": "'x'", "help": ""},
    "ids": {"name": "ids", "inferred_type_name": "list[str]", "default": "[]", "help": ""},
    "opts": {"name": "opts", "inferred_type_name": "dict", "default": "{}", "help": ""},
    "maybe": {"name": "maybe", "inferred_type_name": "str", "default": "None", "help": ""},
    "run_id": {"name": "run_id", "inferred_type_name": "int", "default": "0", "help": ""},
}


def test_validate_parameters():
    ok = validate_parameters(SPEC, {"n": 3, "rate": 2, "flag": True, "label": "a",
                                    "ids": ["a", "b"], "opts": {"k": [1]}, "maybe": None})
    assert ok == {"n": 3, "rate": 2, "flag": True, "label": "a", "ids": ["a", "b"],
                  "opts": {"k": [1]}, "maybe": None}
    assert validate_parameters(SPEC, {}) == {}
    assert validate_parameters(SPEC, None) == {}
    cases = [
        ({"nope": 1}, "parameters.nope", "unknown parameter 'nope'"),
        ({"n": True}, "parameters.n", "must be int: it is a boolean"),
        ({"n": 1.5}, "parameters.n", "must be int: it is a number"),
        ({"n": "3"}, "parameters.n", "must be int: it is a string"),
        ({"rate": "fast"}, "parameters.rate", "must be float"),
        ({"rate": False}, "parameters.rate", "must be float"),
        ({"flag": 1}, "parameters.flag", "must be bool"),
        ({"ids": ["a", 2]}, "parameters.ids", "item 1 is an integer, not str"),
        ({"ids": "a"}, "parameters.ids", "must be list[str]"),
        ({"opts": []}, "parameters.opts", "must be dict"),
        ({"label": None}, "parameters.label", "it is null"),
        ({"run_id": 5}, "parameters.run_id", "set by the marketplace"),
    ]
    for given, fld, message in cases:
        with pytest.raises(InvalidField) as e:
            validate_parameters(SPEC, given)
        assert e.value.field == fld and message in e.value.message, (given, e.value.message)
    with pytest.raises(InvalidField) as e:
        validate_parameters(SPEC, [1, 2])
    assert e.value.field == "parameters"


def test_queue_run_refuses_bad_requests(world):
    v = world.version(notebook("x: int = 1"))
    bad = [
        (dict(data_kind="hdfs"), "data"),
        (dict(data_kind="upload", data_name="a.csv"), "data.sha256"),
        (dict(data_kind="upload", data_sha256="0" * 64, data_name="../a.csv"), "data.name"),
        (dict(data_kind="upload", data_sha256="0" * 64, data_name=".env"), "data.name"),
        (dict(data_sha256="0" * 64), "data"),
        (dict(timeout=0), "timeout_seconds"),
    ]
    for kw, fld in bad:
        with pytest.raises(InvalidField) as e:
            world.queue(v, **kw)
        assert e.value.field == fld, kw
    with world.sf() as s:
        assert s.query(Run).count() == 0


def test_inside():
    root = Path("/tmp/some-run")
    assert inside("outputs/a.csv", root) == root / "outputs" / "a.csv"
    for bad in ("/etc/passwd", "../x", "outputs/../../x", ""):
        assert inside(bad, root) is None


def test_cancel_queued_and_unknown(world):
    v = world.version(notebook("x: int = 1"))
    run_id = world.queue(v)
    runner = world.runner()
    with world.sf() as s:
        run = runner.cancel(s, run_id)
    assert run.status == "cancelled"
    assert world.get(run_id).status == "cancelled"
    assert world.calls(run_id) == ["cancelled"]
    with world.sf() as s, pytest.raises(Conflict):
        runner.cancel(s, run_id)
    with world.sf() as s, pytest.raises(NotFound):
        runner.cancel(s, 999)
    assert world.calls(run_id) == ["cancelled"]


def test_queue_claim_cancel_on_both_databases(db_url, tmp_path):
    engine, world = make_world(db_url, tmp_path)
    try:
        v = world.version(notebook("x: int = 1"))
        first, second, third = (world.queue(v, {"x": i}) for i in range(3))
        runner = world.runner()
        assert runner._claim() == first  # oldest first
        assert world.get(first).status == "running" and world.get(first).started_at
        with world.sf() as s:
            assert runner.cancel(s, second).status == "cancelled"
        assert runner._claim() == third
        assert runner._claim() is None
        with world.sf() as s:  # a running run is only flagged; its runner kills it
            run = runner.cancel(s, first)
        assert (run.status, run.cancel_requested) == ("running", True)
        assert world.calls(second) == ["cancelled"] and world.calls(first) == []
        world.runner()._recover()  # what a restart (a new runner) does with runs left running
        assert [world.get(r).status for r in (first, second, third)] == ["failed", "cancelled",
                                                                          "failed"]
        assert world.calls(first) == ["failed"] and world.calls(third) == ["failed"]
    finally:
        engine.dispose()


def test_a_failing_on_finished_loses_nothing(world):
    v = world.version(notebook("x: int = 1"))
    queued, stale = world.queue(v), world.queue(v)
    with world.sf() as s:
        write_transaction(s)
        s.get(Run, stale).status = "running"
        s.commit()

    def broken(session, run):
        raise RuntimeError("ledger unavailable")

    runner = Runner(world.sf, world.blobs, world.work_root, bundle_for=None, env_for=None,
                    on_finished=broken)
    with world.sf() as s, pytest.raises(RuntimeError):
        runner.cancel(s, queued)
    assert world.get(queued).status == "queued"  # rolled back, not cancelled without a refund
    runner._recover()
    assert world.get(stale).status == "running"  # left for the next start to fail and refund
    world.runner()._recover()
    assert world.get(stale).status == "failed" and world.calls(stale) == ["failed"]


def test_a_run_that_cannot_start_fails_with_the_reason(world):
    v = world.version(notebook("x: int = 1"))
    run_id = world.queue(v, data_kind="upload", data_sha256="ab" * 32, data_name="gone.csv")
    runner = world.runner()

    run = run_to_end(runner, run_id, 30)
    assert (run.status, run.error) == (
        "failed", "could not start the run: the uploaded file 'gone.csv' is missing from the "
        "store")
    assert world.calls(run_id) == ["failed"]
    assert not (world.work_root / f"run-{run_id}").exists()


def test_recovery_fails_runs_left_running_and_kills_their_processes(world):
    v = world.version(notebook("x: int = 1"))
    run_id = world.queue(v)
    with world.sf() as s:
        write_transaction(s)
        run = s.get(Run, run_id)
        run.status, run.started_at = "running", utcnow()
        s.commit()
    # what a crashed service leaves: the run's directory and an orphan process of the run
    workdir = (world.work_root / f"run-{run_id}").resolve()
    workdir.mkdir(parents=True)
    orphan = subprocess.Popen(["sleep", "60"], env={**os.environ, MARKER_ENV: str(workdir)},
                              start_new_session=True)
    runner = world.runner()

    async def main():
        await runner.start()
        await runner.stop()

    try:
        asyncio.run(main())
        run = world.get(run_id)
        assert (run.status, run.error) == ("failed", "service restarted")
        assert run.finished_at is not None
        assert world.calls(run_id) == ["failed"]
        assert orphan.wait(5) == -9
        assert not workdir.exists()
    finally:
        if orphan.poll() is None:
            orphan.kill()


# --- real runs --------------------------------------------------------------------------------


def test_success_parameters_context_env_artifact_html_progress(world, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "service-secret")
    world.env["SPARK_REMOTE"] = "sc://north.example:15002"
    nb = notebook(
        'n: int = 1  # a number\nlabel: str = "x"\nrun_id: int = 0\nunit: str = ""\n'
        'output_dir: str = "nowhere"\ninput_path: str = "unset"',
        "import json, os, time\ntime.sleep(0.6)",
        "time.sleep(0.6)",
        "print('half way', n * 2)\ntime.sleep(0.6)",
        "import pathlib\n"
        "out = {'n': n, 'label': label, 'run_id': run_id, 'unit': unit,\n"
        "       'output_dir': output_dir, 'input_path': input_path,\n"
        "       'spark': os.environ.get('SPARK_REMOTE'),\n"
        "       'token': os.environ.get('JUPYTERHUB_API_TOKEN'),\n"
        "       'model': pathlib.Path('files/model.txt').read_text(), 'cwd': os.getcwd()}\n"
        "pathlib.Path(output_dir, 'result.json').write_text(json.dumps(out))",
    )
    v = world.version(nb, ["outputs/result.json"], {"files/model.txt": b"weights"})
    params = validate_parameters(
        {"n": {"inferred_type_name": "int"}, "label": {"inferred_type_name": "str"}},
        {"n": 21, "label": "hello"})
    run_id = world.queue(v, params)
    runner = world.runner()
    samples: list[tuple[int, int]] = []

    async def main():
        await runner.start()
        runner.kick()
        try:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 60:
                run = world.get(run_id)
                samples.append((run.cells_done, run.cells_total))
                if run.status not in ("queued", "running"):
                    break
                await asyncio.sleep(0.1)
            return await runner.wait(run_id, 60)
        finally:
            await runner.stop()

    run = asyncio.run(main())
    assert run.status == "succeeded", run.error
    assert run.error is None and run.started_at and run.finished_at
    # the injected-parameters cell, the parameters cell and four more
    assert run.cells_total == 6 and run.cells_done == 6
    assert any(0 < done < total for done, total in samples), samples
    artifacts = json.loads(run.artifacts)
    assert list(artifacts) == ["outputs/result.json"]
    out = json.loads(world.blobs.get(artifacts["outputs/result.json"]))
    workdir = world.work_root.resolve() / f"run-{run_id}"
    assert out == {"n": 21, "label": "hello", "run_id": run_id, "unit": "north",
                   "output_dir": "outputs", "input_path": "", "spark": "sc://north.example:15002",
                   "token": None, "model": "weights", "cwd": str(workdir / "work")}
    executed = nbformat.reads(world.blobs.get(run.output_sha256).decode(), as_version=4)
    assert any("half way 42" in o.get("text", "") for c in executed.cells
               for o in c.get("outputs", []))
    html = world.blobs.get(run.html_sha256).decode()
    assert "<html" in html and "half way 42" in html
    assert world.calls(run_id) == ["succeeded"]
    assert not workdir.exists()


def test_failure_keeps_error_cell(world):
    nb = notebook("x: int = 1", "print('before')", "raise ValueError('boom')", "print('never')")
    v = world.version(nb, ["outputs/never.csv"])
    run_id = world.queue(v)
    runner = world.runner()

    run = run_to_end(runner, run_id, 60)
    assert (run.status, run.error) == ("failed", "ValueError: boom")
    assert json.loads(run.artifacts) == {}
    executed = nbformat.reads(world.blobs.get(run.output_sha256).decode(), as_version=4)
    errors = [o for c in executed.cells for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert [(e.ename, e.evalue) for e in errors] == [("ValueError", "boom")]
    assert "ValueError" in world.blobs.get(run.html_sha256).decode()
    assert 0 < run.cells_done < run.cells_total
    assert world.calls(run_id) == ["failed"]
    assert_gone(world, run_id, set())


def test_unknown_kernel_fails_with_papermills_message(world):
    v = world.version(notebook("x: int = 1", "print(x)"))
    run_id = world.queue(v)
    runner = world.runner(kernel_for=lambda s, run: "no-such-kernel")

    run = run_to_end(runner, run_id, 60)
    assert run.status == "failed" and "no-such-kernel" in run.error, run.error
    assert world.calls(run_id) == ["failed"]
    assert_gone(world, run_id, set())


def test_timeout_kills_the_whole_tree(world):
    nb = notebook("x: int = 1",
                  "import subprocess, time\n"
                  "child = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
                  "time.sleep(60)")
    v = world.version(nb)
    run_id = world.queue(v, timeout=6)
    runner = world.runner()
    seen: dict[int, str] = {}

    async def main():
        await runner.start()
        try:
            deadline = time.monotonic() + 120  # a bound for the poll, not a timing claim
            while world.get(run_id).status in ("queued", "running"):
                assert time.monotonic() < deadline, "the run outlived its timeout"
                seen.update({p: cmdline(p) for p in runner.process_ids(run_id) if p not in seen})
                await asyncio.sleep(0.1)
            return await runner.wait(run_id, 5)
        finally:
            await runner.stop()

    run = asyncio.run(main())
    assert (run.status, run.error) == ("failed", "timed out after 6 s")
    # the runner process, the kernel (a session of its own) and the kernel's `sleep 300` child
    assert any("run_notebook" in c for c in seen.values()), seen
    assert any("ipykernel" in c for c in seen.values()), seen
    assert any(c.startswith("sleep 300") for c in seen.values()), seen
    # the partial notebook is kept: the parameters ran, the sleeping cell did not finish
    assert run.output_sha256 and run.html_sha256
    assert world.calls(run_id) == ["failed"]
    assert_gone(world, run_id, set(seen))


def test_cancel_running_run(world):
    nb = notebook("x: int = 1", "import time\ntime.sleep(60)")
    v = world.version(nb)
    run_id = world.queue(v, timeout=120)
    runner = world.runner()
    seen: dict[int, str] = {}

    async def main():
        await runner.start()
        try:
            await running(world, run_id, cells_done=1)
            seen.update({p: cmdline(p) for p in runner.process_ids(run_id)})
            with world.sf() as s:
                assert runner.cancel(s, run_id).cancel_requested
            return await runner.wait(run_id, 60)  # TimeoutError if the cancel is ignored
        finally:
            await runner.stop()

    run = asyncio.run(main())
    assert (run.status, run.error) == ("cancelled", "cancelled")
    assert any("ipykernel" in c for c in seen.values()), seen
    assert world.calls(run_id) == ["cancelled"]
    assert_gone(world, run_id, set(seen))


def test_stop_fails_running_runs_and_leaves_queued_ones(world):
    nb = notebook("x: int = 1", "import time\ntime.sleep(60)")
    v = world.version(nb)
    first, second = world.queue(v), world.queue(v)
    runner = world.runner(max_workers=1)
    seen: set[int] = set()

    async def main():
        await runner.start()
        await running(world, first, cells_done=1)
        seen.update(runner.process_ids(first))
        await runner.stop()

    asyncio.run(main())
    run = world.get(first)
    assert (run.status, run.error) == ("failed", "service stopped")
    assert world.calls(first) == ["failed"]
    assert world.get(second).status == "queued" and world.calls(second) == []
    assert_gone(world, first, seen)


def test_one_worker_runs_fifo_one_at_a_time_with_uploads(world):
    csv = b"customer_id,kwh\n1,2.5\n2,3.5\n3,1.0\n"
    sha = world.blobs.put(csv)
    with_path = world.version(notebook(
        'input_path: str = ""',
        "import pandas as pd, json\n"
        "df = pd.read_csv(input_path)\n"
        "open('outputs/summary.json', 'w').write(json.dumps({'rows': len(df), "
        "'kwh': float(df.kwh.sum()), 'path': input_path}))"), ["outputs/summary.json"])
    without_path = world.version(notebook(
        "x: int = 1",
        "import os\nopen('outputs/names.txt', 'w').write(' '.join(os.listdir('inputs')))"),
        ["outputs/names.txt"])
    missing_output = world.version(notebook("x: int = 1", "print(x)"), ["outputs/missing.csv"])
    runs = [world.queue(with_path, data_kind="upload", data_sha256=sha, data_name="meter.csv"),
            world.queue(without_path, data_kind="upload", data_sha256=sha, data_name="m.csv"),
            world.queue(missing_output)]
    runner = world.runner(max_workers=1)
    samples: list[tuple[str, ...]] = []

    def statuses() -> tuple[str, ...]:
        # the last run first: if a run is seen out of the queue, the one before it (read
        # afterwards) must be seen ended, with no clock involved
        return tuple(reversed([world.get(r).status for r in reversed(runs)]))

    async def main():
        await runner.start()
        try:
            deadline = time.monotonic() + 300  # a bound for the poll, not a timing claim
            samples.append(statuses())
            while {"queued", "running"} & set(samples[-1]):
                assert time.monotonic() < deadline, "the runs did not end"
                await asyncio.sleep(0.1)
                samples.append(statuses())
            return [await runner.wait(r, 5) for r in runs]
        finally:
            await runner.stop()

    a, b, c = asyncio.run(main())
    # one at a time, in the queue's order: a run leaves the queue only once the one before ended
    assert max(s.count("running") for s in samples) == 1 and runner.peak_running == 1
    for sample in samples:
        for before, after in zip(sample, sample[1:], strict=False):
            assert after == "queued" or before not in ("queued", "running"), samples
    assert a.status == "succeeded", a.error
    summary = json.loads(world.blobs.get(json.loads(a.artifacts)["outputs/summary.json"]))
    workdir = world.work_root.resolve() / f"run-{a.id}"
    assert summary == {"rows": 3, "kwh": 7.0,
                       "path": str(workdir / "work" / "inputs" / "meter.csv")}
    assert b.status == "succeeded", b.error
    assert world.blobs.get(json.loads(b.artifacts)["outputs/names.txt"]) == b"m.csv"
    assert (c.status, c.error) == ("failed", "declared output 'outputs/missing.csv' was not "
                                   "produced")
    assert c.output_sha256 and json.loads(c.artifacts) == {}
    assert [world.calls(r) for r in runs] == [["succeeded"], ["succeeded"], ["failed"]]
