"""Several service processes on one PostgreSQL database: a process killed in the middle of a
run loses nothing, no run is executed to its end twice, and the processes share the service's
port and the log integrator."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import _new_postgres_db
from helpers import make_world, notebook, save_model, wait_until
from sqlalchemy import select

from marketplace_ext import certlog, dbutil, leases, units
from marketplace_ext.auth import SCOPE_PUBLISH, SCOPE_SUBSCRIBE, Caller
from marketplace_ext.blobs import BlobStore
from marketplace_ext.federated import enrolment, keys, projects, rounds
from marketplace_ext.federated.client import bundle_zip
from marketplace_ext.federated.orm import FLRound
from marketplace_ext.launcher import free_port
from marketplace_ext.orm import (
    LogCheckpoint,
    make_engine,
    make_session_factory,
    utcnow,
    write_transaction,
)
from marketplace_ext.sandbox.procs import processes_of

pytest_plugins = ["sandbox_helpers"]

HERE = Path(__file__).parent


@pytest.fixture
def pg_world(postgres_server, tmp_path):
    url = _new_postgres_db(postgres_server)
    engine, world = make_world(url, tmp_path)
    world.env["db_url"] = url  # for the worker processes (World.env is otherwise unused here)
    yield world
    engine.dispose()


def start_worker(world, tmp_path: Path, name: str, bundles: dict, finished: Path
                 ) -> subprocess.Popen:
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps({
        "db_url": world.env["db_url"],
        "work_root": str(world.work_root), "blob_root": str(world.blobs.root),
        "bundles": bundles, "lease_seconds": 30, "max_attempts": 2,
        "finished": str(finished)}))
    return subprocess.Popen([sys.executable, str(HERE / "scale_out_worker.py"), str(config)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(HERE.parent)})


def test_a_run_whose_process_dies_is_taken_over_and_finishes_once(pg_world, tmp_path):
    world = pg_world
    # a run long enough to be killed in the middle: its second cell takes a few seconds
    nb = notebook("seconds: float = 4", "import time\ntime.sleep(seconds)", "done = True")
    version = world.version(nb)
    bundle_path = tmp_path / "bundle.zip"
    bundle_path.write_bytes(world.bundles[version][0])
    bundles = {str(version): [str(bundle_path), "main.ipynb", []]}
    finished = tmp_path / "finished.txt"
    finished.touch()
    run_id = world.queue(version)

    first = start_worker(world, tmp_path, "first", bundles, finished)
    second = None
    try:
        first_owner = first.stdout.readline().strip()
        run = wait_until(lambda: (r := world.get(run_id)).status == "running"
                         and r.cells_done >= 1 and r, 60, "the first process runs the notebook")
        assert (run.lease_owner, run.attempts) == (first_owner, 1)
        workdir = world.work_root / f"run-{run_id}"
        assert processes_of(workdir), "the run's processes are up"
        os.killpg(first.pid, signal.SIGKILL)  # the service process dies mid-run
        first.wait(10)

        second = start_worker(world, tmp_path, "second", bundles, finished)
        second_owner = second.stdout.readline().strip()
        run = wait_until(lambda: (r := world.get(run_id)).status in ("succeeded", "failed")
                         and r, 120, "the second process takes the run over and ends it")
        assert (run.status, run.error) == ("succeeded", None)
        assert (run.lease_owner, run.attempts) == (second_owner, 2)
        # on_finished (refund, certification) ran once, by the process that finished the run
        assert finished.read_text().splitlines() == [f"{run_id} succeeded {second_owner}"]
        assert processes_of(workdir) == set()  # the dead process's kernel was swept
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)


def children_of(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (any of its threads may have started them)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def log_holder(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as s:
            return leases.holder(s, leases.LOG_INTEGRATOR)
    finally:
        engine.dispose()


def certify_one(url: str) -> int:
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as s:
            write_transaction(s)
            index = certlog.append(s, "feature", "test", None, "scale-out")
            s.commit()
            return index
    finally:
        engine.dispose()


def checkpoint_size(url: str) -> int:
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as s:
            return max((c.size for c in s.query(LogCheckpoint)), default=0)
    finally:
        engine.dispose()


def test_two_service_processes_share_the_port_and_the_log_integrator(postgres_server,
                                                                     tmp_path):
    url = _new_postgres_db(postgres_server)
    port = free_port()
    health = f"http://127.0.0.1:{port}/services/marketplace/api/health"
    env = {**os.environ, "MARKET_VAR_DIR": str(tmp_path / "var"), "MARKET_DB_URL": url,
           "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}",
           "JUPYTERHUB_API_URL": "http://127.0.0.1:9/hub/api",  # no hub: not needed here
           "JUPYTERHUB_API_TOKEN": secrets.token_hex(16),
           "MARKET_SPARK_REMOTE": "sc://127.0.0.1:9/;use_ssl=false"}  # no Spark servers
    log = tmp_path / "service.log"
    first = subprocess.Popen(
        [sys.executable, "-m", "marketplace_ext", "--MarketplaceApp.processes=2",
         "--MarketplaceApp.lease_seconds=3", "--MarketplaceApp.log_interval=0.2",
         "--MarketplaceApp.reconcile_interval=0"],
        cwd=HERE.parent, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    try:
        def second_process() -> int | None:
            for pid in children_of(first.pid):
                with contextlib.suppress(OSError):
                    if "--MarketplaceApp.process_index=1" in Path(
                            f"/proc/{pid}/cmdline").read_text():
                        return pid
            return None

        second = wait_until(second_process, 60, "the second process")

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(health, timeout=5) as r:
                    return json.load(r)["status"] == "ok"
            except OSError:
                return False

        wait_until(healthy, 120, "the service to answer")
        holder = wait_until(lambda: log_holder(url), 60, "a log integrator")
        assert holder.split(":")[1] in (str(first.pid), str(second))
        # whichever process integrates, a certified entry reaches a checkpoint
        index = certify_one(url)
        wait_until(lambda: checkpoint_size(url) > index, 30, "the entry's checkpoint")

        os.kill(second, signal.SIGKILL)  # a process dies: the other serves and integrates
        wait_until(lambda: not Path(f"/proc/{second}").exists()
                   or "Z" in Path(f"/proc/{second}/stat").read_text().split()[2], 30,
                   "the second process to die")
        assert all(healthy() for _ in range(5))
        index = certify_one(url)
        wait_until(lambda: checkpoint_size(url) > index, 30,
                   "the surviving process to integrate (taking the lease over)")
        assert log_holder(url).split(":")[1] == str(first.pid)
    except AssertionError as e:
        raise AssertionError(f"{e}\nservice log:\n{log.read_text()[-4000:]}") from e
    finally:
        first.send_signal(signal.SIGTERM)
        try:
            first.wait(60)
        except subprocess.TimeoutExpired:
            first.kill()
            first.wait()
    assert first.returncode == 0, log.read_text()[-4000:]
    assert not (tmp_path / "var" / "marketplace.pid").exists()


def test_a_round_whose_coordinator_dies_is_carried_on_by_another(postgres_server, tmp_path):
    """The coordinator's process dies while a round is open; the round passes its deadline
    with too few updates meanwhile. Of two processes started next, one takes the coordinator
    over and opens the round's next attempt, once."""
    url = _new_postgres_db(postgres_server)
    dbutil.upgrade(url)
    engine = make_engine(url)
    sf = make_session_factory(engine)
    blobs = BlobStore(tmp_path / "blobs")
    public, _ = keys.generate_paillier_keypair(2048)
    model = base64.b64encode(bundle_zip(save_model(tmp_path / "model"))).decode()
    with sf() as s:
        write_transaction(s)
        for unit in "ab":
            units.create_unit(s, unit, f"Unit {unit.upper()}", "operator")
        s.commit()
    a, b = (Caller(f"publisher-{u}", frozenset({SCOPE_SUBSCRIBE, SCOPE_PUBLISH}), u)
            for u in "ab")
    with sf() as s:
        write_transaction(s)
        req = projects.parse_project_request({
            "name": "failover", "rounds": 2, "quorum": 2, "deadline_seconds": 600,
            "public_key": keys.public_key_to_json(public), "model": model,
            "allow_units": ["b"]})
        project = projects.create_project(s, a, req, blobs)
        enrolment.join(s, b, project, None)
        rounds.start(s, a, project)
        s.commit()
        project_id = project.id

    def attempts() -> list[tuple[int, str]]:
        with sf() as s:
            return [(r.attempt, r.state) for r in s.scalars(
                select(FLRound).where(FLRound.project_id == project_id)
                .order_by(FLRound.attempt))]

    def start(name: str) -> subprocess.Popen:
        config = tmp_path / f"{name}.json"
        config.write_text(json.dumps({"mode": "coordinator", "db_url": url,
                                      "blob_root": str(blobs.root), "lease_seconds": 30}))
        return subprocess.Popen([sys.executable, str(HERE / "scale_out_worker.py"), str(config)],
                                stdout=subprocess.PIPE, text=True, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(HERE.parent)})

    procs = [start("first")]
    try:
        first = procs[0].stdout.readline().strip()
        wait_until(lambda: holder(sf) == first, 60, "the first coordinator's lease")
        os.killpg(procs[0].pid, signal.SIGKILL)  # it dies with round 1 open
        procs[0].wait(10)
        with sf() as s:  # the deadline passes while nobody coordinates
            write_transaction(s)
            s.scalars(select(FLRound).where(FLRound.project_id == project_id)).one().deadline \
                = utcnow() - timedelta(seconds=1)
            s.commit()
        assert attempts() == [(1, "open")]
        procs += [start("second"), start("third")]
        owners = {p.stdout.readline().strip() for p in procs[1:]}
        wait_until(lambda: holder(sf) in owners, 60, "a new coordinator taking over")
        wait_until(lambda: len(attempts()) == 2, 60, "the round's next attempt")
        assert attempts() == [(1, "void"), (2, "open")]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        engine.dispose()
    assert attempts() == [(1, "void"), (2, "open")]  # not twice, with two coordinators up


def holder(sf) -> str | None:
    with sf() as s:
        return leases.holder(s, leases.FL_COORDINATOR)
