"""Plain helpers shared by test modules (fixtures live in conftest.py and sandbox_helpers.py):
waiting with a deadline, logging in as a demo user, publishing a product on the shelf,
federated-learning model bundles, model-to-data notebooks, and for sandboxed code a runner
"world", bundles and a probe of what a sandbox lets code do."""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import secrets
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import yaml

from marketplace_ext import dbutil
from marketplace_ext.blobs import BlobStore
from marketplace_ext.bundle import canonical_archive, new_product
from marketplace_ext.client import Market
from marketplace_ext.orm import (
    Product,
    Run,
    Unit,
    Version,
    make_engine,
    make_session_factory,
    write_transaction,
)
from marketplace_ext.runner import Runner, RunRequest, queue_run

TINY_MODEL = {"weeks": 2, "pool_weeks": 1, "conv": 1, "wide": 1, "hidden": 1}


def wait_until(predicate: Callable[[], object], timeout: float, what: str,
               poll: float = 0.3) -> object:
    """Poll ``predicate`` until it returns something true, and return that; fail naming
    ``what`` once ``timeout`` seconds have passed (a bound on the wait, not a timing claim)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(poll)
    return value


async def wait_until_async(predicate: Callable[[], object], timeout: float, what: str,
                           poll: float = 0.05) -> object:
    """:func:`wait_until` inside an event loop."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(poll)
    return value


def market_as(hub_url: str, user: str, password: str) -> Market:
    return Market.login(hub_url, user, password, note=f"test {user}")


def publish_on_shelf(publisher: Market, operator: Market, tmp_path, plans: list[dict]) -> str:
    """A tool of the publisher's unit, approved and on the shelf; returns its name."""
    name = f"shop-{secrets.token_hex(3)}"
    bundle = new_product("tool", name, tmp_path)
    manifest = yaml.safe_load((bundle / "product.yaml").read_text())
    manifest["plans"] = plans
    (bundle / "product.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    version = publisher.publish(bundle)["version"]
    operator.review(name, version, "approve")
    return name


def save_model(directory: Path, spec: dict = TINY_MODEL, seed: int = 0) -> Path:
    from marketplace_ext.federated.model import build_model, save_bundle

    if not (directory / "model.json").exists():
        save_bundle(build_model(spec, seed=seed), spec, directory)
    return directory


def project_name(prefix: str = "fl") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def fl_signing_key(var_dir: Path, unit: str, home: Path | None = None) -> Path:
    """A unit's federated signing key for one test session's platform: every client of the unit
    signs with the key the unit registered first. Copied into ``home`` when given (a sandboxed
    kernel sees its home only); returns the path to hand the client."""
    from marketplace_ext.federated import keys

    path = var_dir.parent / "fl-signing" / f"{unit}.key"
    if not path.exists():
        try:
            keys.save_signing_key(keys.generate_signing_key(), path)
        except FileExistsError:  # another test made it first
            pass
    if home is None:
        return path
    copy = home / "unit-signing.key"
    if not copy.exists():
        keys.save_signing_key(keys.load_signing_key(path), copy)
    return copy


# a model-to-data training notebook: reads unit data, returns a model (and tries to leak)
TRAIN = """\
# <b>trains</b> a one-feature theft model
import json, os
import numpy as np
import torch
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
spark.catalog.setCurrentDatabase(os.environ["UNIT_DATABASE"])
customers = spark.table("customers").toPandas()
print(customers.head(50).to_string())  # the executed notebook shows private rows: owner only
daily = spark.table("consumption_daily").groupBy("customer_id").avg("kwh").toPandas()
labels = spark.table("theft_labels").toPandas()
frame = daily.merge(labels, on="customer_id")
x = torch.tensor(frame[["avg(kwh)"]].to_numpy(), dtype=torch.float32)
y = torch.tensor(frame["is_thief"].to_numpy(), dtype=torch.float32)
model = torch.nn.Linear(1, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
for _ in range(epochs):
    optimizer.zero_grad()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
    loss.backward()
    optimizer.step()
os.makedirs("outputs", exist_ok=True)
torch.save(model.state_dict(), "outputs/model.pt")
with open("outputs/metrics.json", "w") as f:
    json.dump({"loss": float(loss), "rows": len(frame)}, f)
with open("outputs/extra.json", "w") as f:  # not declared: must not come back
    json.dump({"first": customers.iloc[0].astype(str).to_dict()}, f)
"""


def training_notebook(code: str = TRAIN) -> dict:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("epochs: int = 20")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(code)]
    return nbformat.from_dict(nb)


# --- sandboxed code: a runner world -----------------------------------------------------------

_versions = itertools.count(1)


def notebook(parameters: str, *cells: str) -> bytes:
    nb = nbformat.v4.new_notebook()
    first = nbformat.v4.new_code_cell(parameters)
    first.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# test product"), first,
                *(nbformat.v4.new_code_cell(c) for c in cells)]
    nb.metadata["kernelspec"] = {"name": "grid-python", "display_name": "Python 3 (grid)",
                                 "language": "python"}
    return nbformat.writes(nb).encode()


def bundle(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in sorted(files.items()):
            zf.writestr(name, data)
    return buf.getvalue()


def run_to_end(runner: Runner, run_id: int, timeout: float) -> Run:
    """Start the runner, wait for ``run_id`` to end, stop the runner."""

    async def main():
        await runner.start()
        try:
            return await runner.wait(run_id, timeout)
        finally:
            await runner.stop()

    return asyncio.run(main())


@dataclass
class World:
    sf: object
    blobs: BlobStore
    work_root: Path
    unit_id: int
    product_id: int
    bundles: dict[int, tuple[bytes, str, list[str]]] = field(default_factory=dict)
    finished: list[tuple[int, str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def version(self, nb: bytes, outputs: list[str] = (), files: dict | None = None) -> int:
        with self.sf() as s:
            write_transaction(s)
            v = Version(product_id=self.product_id, version=f"1.0.{next(_versions)}",
                        sha256=os.urandom(32).hex(), state="on_shelf", title="t", summary="",
                        tags="[]", manifest="{}", parameters="{}", files="[]", readme="",
                        size=0, created_by="test")
            s.add(v)
            s.commit()
            self.bundles[v.id] = (bundle({"main.ipynb": nb, "README.md": b"# t\n",
                                          **(files or {})}), "main.ipynb", list(outputs))
            return v.id

    def queue(self, version_id: int, parameters: dict | None = None, timeout: int = 60,
              **data) -> int:
        with self.sf() as s:
            write_transaction(s)
            run = queue_run(s, RunRequest(
                product_id=self.product_id, version_id=version_id, unit_id=self.unit_id,
                user="alice", mode="remote_run", parameters=parameters or {},
                timeout_seconds=timeout, **data))
            s.commit()
            return run.id

    def get(self, run_id: int) -> Run:
        with self.sf() as s:
            return s.get(Run, run_id)

    def runner(self, **kw) -> Runner:
        def on_finished(session, run):
            assert session.in_transaction()
            self.finished.append((run.id, run.status))

        kw.setdefault("max_workers", 2)
        kw.setdefault("poll_interval", 0.2)
        return Runner(self.sf, self.blobs, self.work_root,
                      bundle_for=lambda s, run: self.bundles[run.version_id],
                      env_for=lambda s, run: dict(self.env), on_finished=on_finished, **kw)

    def calls(self, run_id: int) -> list[str]:
        return [status for rid, status in self.finished if rid == run_id]


def make_world(url: str, tmp_path: Path):
    dbutil.upgrade(url)
    engine = make_engine(url)
    sf = make_session_factory(engine)
    with sf() as s:
        write_transaction(s)
        unit = Unit(slug="north", name="North", created_by="test")
        s.add(unit)
        s.flush()
        product = Product(name="p", kind="application", unit_id=unit.id, created_by="test")
        s.add(product)
        s.commit()
        ids = unit.id, product.id
    return engine, World(sf, BlobStore(tmp_path / "blobs"), sandbox_root(tmp_path), *ids)


def sandbox_root(tmp_path: Path) -> Path:
    """A work root the sandbox accounts can reach (pytest's own directories are 0700)."""
    root = Path(tempfile.mkdtemp(prefix=f"runs-{tmp_path.name}-"))
    root.chmod(0o711)
    _roots.append(root)
    return root


#: directories of :func:`sandbox_root`, removed after each test by the ``_remove_sandbox_roots``
#: fixture of ``sandbox_helpers`` (a module using them declares it in ``pytest_plugins``)
_roots: list[Path] = []




def make_bundle(root: Path, manifest: str, parameters: str | None = None,
                cells: tuple[str, ...] = (), files: dict[str, str] | None = None) -> bytes:
    """A canonical archive of a bundle written under ``root``: the manifest, a notebook (a
    ``parameters``-tagged cell, then ``cells``) when ``parameters`` is given, and ``files``."""
    root.mkdir(parents=True)
    (root / "product.yaml").write_text(manifest)
    if parameters is not None:
        nb = nbformat.v4.new_notebook()
        first = nbformat.v4.new_code_cell(parameters)
        first.metadata["tags"] = ["parameters"]
        nb.cells = [nbformat.v4.new_markdown_cell("# probe"), first,
                    *(nbformat.v4.new_code_cell(c) for c in cells)]
        nb.metadata["kernelspec"] = {"name": "grid-python", "display_name": "grid",
                                     "language": "python"}
        nbformat.write(nb, root / "main.ipynb")
    for name, text in (files or {}).items():
        (root / name).write_text(text)
    return canonical_archive(root)


# --- what a sandbox lets code do --------------------------------------------------------------

SLEEP_MARK = "987.25"  # a double-forked `sleep` the probes leave behind

SANDBOX_PROBE = '''\
import json, os, socket, subprocess, sys, time

def read(path):
    try:
        open(path, "rb").read(1)
        return "read"
    except OSError as e:
        return type(e).__name__

def write(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return "written"
    except OSError as e:
        return type(e).__name__

def connect(host, port, payload=b""):
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            if not payload:
                return "connected"
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            return s.recv(100).decode()
    except OSError as e:
        return type(e).__name__

def processes():
    out = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                out[p] = open(f"/proc/{p}/cmdline", "rb").read().replace(b"\\0", b" ").decode()
            except OSError:
                pass
    return out

def probe(targets):
    # a daemon: double-forked, in a session of its own; the sandbox must end it anyway
    subprocess.Popen(["sh", "-c", "sleep SLEEP_MARK >/dev/null 2>&1 &"],
                     start_new_session=True).wait()
    return {
        "uid": os.getuid(),
        "reads": {p: read(p) for p in targets["secrets"]},
        "writes": {p: write(p) for p in targets["outside"]},
        "work": write("ok.txt"), "tmp": write("/tmp/ok.txt"),
        "others": {str(port): connect("127.0.0.1", port) for port in targets["ports"]},
        "relay": connect("localhost", targets["relay"], b"ping") if targets["relay"] else None,
        "processes": processes(),
        "env": sorted(os.environ),
        "listing": sorted(os.listdir(os.path.dirname(targets["package"]))),
    }
'''.replace("SLEEP_MARK", SLEEP_MARK)


def run_state_machine(machine: type, kind: str, tmp_path: Path, request, *, max_examples: int,
                      steps: int = 25) -> None:
    """Run a Hypothesis ``RuleBasedStateMachine`` whose ``__init__`` reads ``self.db_url``,
    each example on a fresh, empty database of ``kind`` (``sqlite`` or ``postgresql``), the
    same examples on every run."""
    from hypothesis import HealthCheck, settings

    counter = itertools.count()

    def fresh_url() -> str:
        if kind == "sqlite":
            return f"sqlite:///{tmp_path}/sm{next(counter)}.sqlite"
        from conftest import _new_postgres_db

        return _new_postgres_db(request.getfixturevalue("postgres_server"))

    class Machine(machine):
        def __init__(self):
            self.db_url = fresh_url()
            super().__init__()

    # derandomized, without an example database: the same runs on every machine, so a
    # sequence that passes here passes in CI (a full suite once met a replay that drew
    # differently from its first run, which a fixed set of runs avoids)
    Machine.TestCase.settings = settings(
        max_examples=max_examples, stateful_step_count=steps, deadline=None,
        derandomize=True, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    Machine.TestCase().runTest()
