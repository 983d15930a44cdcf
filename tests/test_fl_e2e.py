"""Acceptance of the federated-learning zone: five units (a-e) run three rounds through the real
hub and service, each partner an unattended papermill run of ``fl_notebooks/local_round.ipynb``
with its own token and its own unit's data platform environment. Every party ends with the same
model, equal (within the quantization bound) to plaintext FedAvg of the very updates they
encrypted, and neither the service database nor the service and hub logs hold a plaintext
update, a plaintext aggregate or the Paillier private key."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
from helpers import fl_signing_key, market_as, project_name, save_model

from marketplace_ext.federated import packing
from marketplace_ext.federated.client import FederatedClient
from marketplace_ext.federated.model import flatten_state, load_bundle

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "fl_notebooks" / "local_round.ipynb"
UNITS = "abcde"
ROUNDS = 3
MODEL = {"weeks": 8, "pool_weeks": 2, "conv": 4, "wide": 4, "hidden": 4}
# the environment a partner's kernel must not inherit from the test process
DROPPED_ENV = ("JUPYTERHUB_", "MARKET_", "CONFIGPROXY_")


def partner_env(market, home: Path, unit: str, spark_remote: str,
                var_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED_ENV)}
    # the partner's kernel runs in the sandbox, which sees the home (and the notebook's
    # directory) only: the unit's FL keys live in it, as in a user's JupyterLab (the unit's
    # signing key is this test session's, the one the unit registered first)
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        MARKET_FL_SIGNING_KEY=str(fl_signing_key(var_dir, unit, home)),
        HOME=str(home),
        MARKETPLACE_URL=market.url,
        MARKET_TOKEN=market.http.headers["Authorization"].split(" ", 1)[1],
        MARKET_FL_HOME=str(home),
        SPARK_REMOTE=spark_remote,
        UNIT_DATABASE=f"unit_{unit}",
        # five kernels share two cores: one thread each
        OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
    )
    return env


def run_partners(project: int, markets: dict, homes: dict, work: Path, spark_remote_for,
                 var_dir: Path, timeout: float = 600) -> dict[str, Path]:
    """Start every unit's papermill run at once; wait for all; return their output dirs."""
    procs: dict[str, subprocess.Popen] = {}
    outputs = {}
    try:
        for unit in UNITS:
            cwd = work / unit
            cwd.mkdir(parents=True)
            outputs[unit] = cwd / "out"
            with open(cwd / "papermill.log", "wb") as log:
                procs[unit] = subprocess.Popen(
                    [str(ROOT / ".venv" / "bin" / "papermill"), str(NOTEBOOK), "executed.ipynb",
                     "-k", "grid-python", "--start-timeout", "300",
                     "-p", "project", str(project), "-p", "rounds", str(ROUNDS),
                     "-p", "epochs", "2", "-p", "save_updates", "True",
                     "-p", "output_dir", "out", "-p", "timeout", "300"],
                    cwd=cwd, env=partner_env(markets[unit], homes[unit], unit,
                                             spark_remote_for(unit), var_dir),
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            time.sleep(2)  # kernels starting all at once on two cores time out
        deadline = time.monotonic() + timeout
        # one failed partner would leave the others waiting for their quorum: stop early
        while any(p.poll() is None for p in procs.values()) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs.values()):
                break
            time.sleep(1)
        failed = {u: p.poll() for u, p in procs.items() if p.poll() != 0}
        assert not failed, "partners failed: " + "\n\n".join(
            f"--- {u} (exit {code}) ---\n"
            + (work / u / "papermill.log").read_text(errors="replace")[-3000:]
            for u, code in failed.items())
    finally:
        for proc in procs.values():  # the papermill runs we started, and their kernels
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return outputs


def dump_database(path: Path) -> str:
    """Every row of every table of the service's SQLite database, as text."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        lines = []
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                lines.append(f"{table}: " + " | ".join(
                    v.hex() if isinstance(v, bytes) else str(v) for v in row))
        return "\n".join(lines)
    finally:
        conn.close()


def needles_of(vector: np.ndarray, count: int = 6) -> tuple[list[str], list[bytes]]:
    """Text and byte patterns that would betray ``vector``: the decimal text (float64 and
    float32) of its largest values, their float64 bytes, and runs of four float32 and two
    float64 values as an array dump would hold them."""
    texts, blobs = [], []
    for i in np.argsort(-np.abs(vector))[:count]:
        value = float(vector[i])
        if abs(value) < 1e-6:
            continue
        texts += [repr(value), str(np.float32(value))]
        blobs.append(np.float64(value).tobytes())
        window = vector[i:i + 4]
        if len(window) == 4 and np.all(np.abs(window) > 1e-7):
            blobs.append(window.astype(np.float32).tobytes())
            blobs.append(window[:2].astype(np.float64).tobytes())
    return texts, blobs


def test_needles_find_a_planted_update():
    vector = np.random.default_rng(0).normal(0, 1e-3, 50)
    texts, blobs = needles_of(vector)
    dumped = json.dumps({"update": vector.tolist()}).encode() + vector.astype(np.float32).tobytes()
    assert all(t.encode() in dumped for t in texts[::2])  # float64 text
    assert any(b in dumped for b in blobs)


def test_five_units_three_rounds_through_the_service(platform_proc, tmp_path):
    url, logins = platform_proc.url, platform_proc.logins()
    markets = {u: market_as(url, f"publisher-{u}", logins[f"publisher-{u}"]) for u in UNITS}
    homes = {u: tmp_path / f"home-{u}" for u in UNITS}
    clients = {u: FederatedClient(markets[u], home=homes[u], progress=False, poll=0.5,
                                  signing_key=fl_signing_key(platform_proc.var_dir, u, homes[u]))
               for u in UNITS}
    bundle = save_model(tmp_path / "model", MODEL, seed=3)
    a = clients["a"]
    project = a.open_project(project_name("theft"), bundle, rounds=ROUNDS, quorum=5,
                             deadline_seconds=300, max_parties=5, max_weight=1000, clip=0.05,
                             allow_units=list(UNITS[1:]), contribution_measure="loo_weight")
    pid = project["id"]
    for unit in UNITS[1:]:
        assert clients[unit].join(pid)["status"] == "approved"
    assert sorted(a.wrap_pending(pid)) == list(UNITS[1:])
    a.start(pid)

    outputs = run_partners(pid, markets, homes, tmp_path / "work",
                           platform_proc.spark_remote_for, platform_proc.var_dir)

    info = a.project(pid)
    assert info["state"] == "finished"
    spec = a.spec(info)
    summaries = {u: json.loads((outputs[u] / "summary.json").read_text()) for u in UNITS}
    finals = {u: np.load(outputs[u] / "global.npy") for u in UNITS}
    for unit in UNITS:
        assert [r["round"] for r in summaries[unit]["rounds"]] == [1, 2, 3]
        assert np.array_equal(finals[unit], finals["a"]), f"unit {unit} ended elsewhere"

    # the same model as plaintext FedAvg of the same (locally kept) updates, round by round
    module, _ = load_bundle(bundle)
    reference = flatten_state(module, np.float64)
    all_updates, all_means = [], []
    for number in range(1, ROUNDS + 1):
        rnd = a.round(pid, number)
        assert rnd["state"] == "published" and rnd["close_reason"] == "quorum"
        contributors = rnd["aggregate"]["contributors"]
        assert sorted(contributors) == list(UNITS)
        updates = {u: np.load(outputs[u] / f"update-round{number}.npy") for u in UNITS}
        weights = {u: summaries[u]["rounds"][number - 1]["weight"] for u in UNITS}
        assert {u["unit"]: u["weight"] for u in rnd["updates"]} == weights
        total = sum(weights.values())
        assert rnd["aggregate"]["total_weight"] == total
        fedavg = packing.plain_fedavg([updates[u] for u in contributors],
                                      [weights[u] for u in contributors], clip=spec.clip)
        means = [np.load(outputs[u] / f"mean-round{number}.npy") for u in UNITS]
        assert all(np.array_equal(m, means[0]) for m in means)
        assert np.max(np.abs(means[0] - fedavg)) <= spec.quantization_bound(total)
        assert np.max(np.abs(fedavg)) > 100 * spec.quantization_bound(total)  # it learnt
        reference = reference + fedavg
        all_updates += updates.values()
        all_means.append(means[0])
    bound = sum(spec.quantization_bound(rnd_total) for rnd_total in
                [a.round(pid, n)["aggregate"]["total_weight"] for n in range(1, ROUNDS + 1)])
    assert np.max(np.abs(finals["a"] - reference)) <= bound + 1e-12

    # every unit posted its held-out metrics for every round; the results notebook shows them
    posted = {(m["unit"], m["round"]) for m in a.metrics(pid)}
    assert posted == {(u, n) for u in UNITS for n in range(1, ROUNDS + 1)}
    # the project opted in to leave-one-out: each unit evaluated the model without each other
    # unit's update (evaluate_contributions), and printed the estimate after every round
    for row in a.metrics(pid):
        assert {f"loo.{u}" for u in UNITS if u != row["unit"]} <= set(row["metrics"]), row
    for unit in UNITS:
        assert [e["round"] for e in summaries[unit]["estimates"]] == [1, 2, 3]
        assert summaries[unit]["settlement"] is None  # nobody settled: the estimate only
    results = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "papermill"), str(NOTEBOOK.with_name("results.ipynb")),
         str(tmp_path / "results.ipynb"), "-k", "grid-python", "--start-timeout", "300",
         "-p", "project", str(pid)],
        env=partner_env(markets["b"], homes["b"], "b",
                        platform_proc.spark_remote_for("b"), platform_proc.var_dir),
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert results.returncode == 0, results.stderr[-3000:]

    # nothing plaintext reached the service: its database, its logs and the hub's, its blobs
    var = platform_proc.var_dir
    database = var / "marketplace.sqlite"
    dump = dump_database(database)
    assert rnd["aggregate"]["sha256"] in dump and rnd["updates"][0]["sha256"] in dump
    texts_haystack = "\n".join([dump, (var / "jupyterhub.log").read_text(errors="replace"),
                                platform_proc.output()])
    raw = b"".join(p.read_bytes() for p in var.glob("marketplace.sqlite*"))
    blob_bytes = b"".join(p.read_bytes() for p in (var / "blobs").rglob("*") if p.is_file())
    private = json.loads((a.key_dir(info) / "paillier.json").read_text())
    for prime in (int(private["p"]), int(private["q"])):
        assert str(prime) not in texts_haystack
        assert str(prime)[:40] not in texts_haystack
        as_bytes = prime.to_bytes((prime.bit_length() + 7) // 8, "big")
        assert as_bytes[:32] not in raw and as_bytes[:32] not in blob_bytes
        assert str(prime).encode()[:40] not in blob_bytes
    checked = 0
    for vector in all_updates + all_means:
        texts, blobs = needles_of(vector)
        for text in texts:
            assert text not in texts_haystack, f"plaintext value {text} found"
            assert text.encode() not in raw and text.encode() not in blob_bytes
        for pattern in blobs:
            assert pattern not in raw and pattern not in blob_bytes
            assert pattern.hex() not in dump
        checked += len(texts) + len(blobs)
    assert checked > 100



def test_guided_notebooks_open_a_project_and_join_it(platform_proc, tmp_path):
    """initiator.ipynb opens a project (b on its allow-list) and waits for a partner, wrapping
    its key; meanwhile partner.ipynb joins (approved at once), registers its signed key, gets
    the wrapped key, loads its unit's data and shows the round panel; the initiator then
    starts round 1."""
    url, logins = platform_proc.url, platform_proc.logins()
    markets = {u: market_as(url, f"publisher-{u}", logins[f"publisher-{u}"]) for u in "ab"}
    homes = {u: tmp_path / f"home-{u}" for u in "ab"}
    name = project_name("guided")
    papermill = str(ROOT / ".venv" / "bin" / "papermill")
    with open(tmp_path / "initiator.log", "wb") as log:
        initiator = subprocess.Popen(
            [papermill, str(NOTEBOOK.with_name("initiator.ipynb")), "initiator.ipynb",
             "-k", "grid-python", "--start-timeout", "300", "-p", "name", name,
             "-p", "weeks", "8", "-p", "rounds", "1", "-p", "quorum", "2",
             "-p", "expected_partners", "1", "-p", "wait_seconds", "300",
             "-p", "allow_units", "b"],
            env=partner_env(markets["a"], homes["a"], "a",
                            platform_proc.spark_remote_for("a"), platform_proc.var_dir),
            cwd=tmp_path, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        b = FederatedClient(markets["b"], home=homes["b"], progress=False,
                            signing_key=fl_signing_key(platform_proc.var_dir, "b", homes["b"]))
        deadline = time.monotonic() + 240
        while not (found := [p for p in b.projects() if p["name"] == name]):
            assert initiator.poll() is None, (tmp_path / "initiator.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the initiator notebook opened no project"
            time.sleep(1)
        pid = found[0]["id"]
        partner = subprocess.run(
            [papermill, str(NOTEBOOK.with_name("partner.ipynb")), str(tmp_path / "partner.ipynb"),
             "-k", "grid-python", "--start-timeout", "300", "--execution-timeout", "300",
             "-p", "project", str(pid)],
            env=partner_env(markets["b"], homes["b"], "b",
                            platform_proc.spark_remote_for("b"), platform_proc.var_dir),
            cwd=tmp_path,
            capture_output=True, text=True, timeout=600)
        assert partner.returncode == 0, partner.stderr[-3000:]
        assert initiator.wait(300) == 0, (tmp_path / "initiator.log").read_text()[-3000:]
    finally:
        if initiator.poll() is None:
            os.killpg(initiator.pid, signal.SIGKILL)
            initiator.wait()
    info = b.project(pid)
    assert info["state"] == "running" and info["round"]["number"] == 1
    assert b.holds_key(info)  # unwrapped into b's home from what a's notebook wrapped
    assert {m["unit"]: m["status"] for m in info["members"]} == {"a": "approved",
                                                                  "b": "approved"}
