"""Session-wide parts started once: the platform (`market run`: hub, proxy, service) and a
PostgreSQL server; per-test database URLs for SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from marketplace_ext.launcher import descendants, free_port, pid_alive

sys.path.insert(0, str(Path(__file__).parent))
from spark_fixtures import *  # noqa: E402, F403  (spark_server, platform: one server a session)

ROOT = Path(__file__).resolve().parent.parent


class RunningPlatform:
    """`market run` as a user starts it, on free ports in a temporary var dir. Without
    *spark_remote* its service runs one Spark Connect server per unit (the default); with it,
    every unit shares that server."""

    def __init__(self, var_dir: Path, spark_remote: str | None = None):
        self.var_dir = var_dir
        self.port = free_port()
        self.env = dict(os.environ)
        self.env.update(
            MARKET_VAR_DIR=str(var_dir),
            MARKET_HUB_PORT=str(self.port),
            MARKET_HUB_API_PORT=str(free_port()),
            MARKET_PROXY_API_PORT=str(free_port()),
            MARKET_SERVICE_PORT=str(free_port()),
            MARKET_DEMO_SCALE="0.01",
        )
        self.env.pop("MARKET_SPARK_REMOTE", None)
        if spark_remote:
            self.env["MARKET_SPARK_REMOTE"] = spark_remote
        else:
            self.env.setdefault("MARKET_SPARK_MEMORY", "512m")
        # two witnesses, both needed for a final checkpoint
        from marketplace_ext.witness import WitnessState

        self.witness_dirs = {name: var_dir.parent / name for name in ("witness-a", "witness-b")}
        vkeys = {name: WitnessState(d).init(name) for name, d in self.witness_dirs.items()}
        self.env["MARKET_LOG_WITNESSES"] = json.dumps(vkeys)
        self.env["MARKET_LOG_QUORUM"] = "2"
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.started_pids: set[int] = set()

    def spark_remote_for(self, unit: str) -> str:
        """What a notebook or run of *unit* gets as SPARK_REMOTE."""
        return self.env.get("MARKET_SPARK_REMOTE") or unit_remote(self.var_dir, unit)  # noqa: F405

    def start(self, timeout: float = 600) -> None:
        self.log_path = self.var_dir.parent / f"market-run-{uuid.uuid4().hex[:6]}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "market"), "run", "--port", str(self.port)],
            cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while "is running at" not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                report = f"market run did not come up:\n{self.output()}\n{self.hub_log()[-4000:]}"
                if self.proc.poll() is None:
                    self.stop()  # never leave a half-started platform (its Spark servers) behind
                raise RuntimeError(report)
            time.sleep(0.3)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def hub_log(self) -> str:
        path = self.var_dir / "jupyterhub.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> set[int]:
        """Ctrl-C the launcher; returns the pids of anything it started that is still alive."""
        self.started_pids = descendants(self.proc.pid)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(90)
        self._log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            alive = {pid for pid in self.started_pids if pid_alive(pid)}
            if not alive:
                break
            time.sleep(0.2)
        return alive

    def logins(self) -> dict[str, str]:
        from marketplace_ext.demo import load_logins

        return {a["user"]: a["password"] for a in load_logins(self.var_dir)}


@pytest.fixture(scope="session")
def platform_proc(tmp_path_factory):
    """The whole platform, started once per test session with `market run`."""
    # not under pytest's temporary root: sandboxed runs and users' servers run as other
    # accounts and pass through (o+x, no listing) to their directories under var/, and every
    # pytest session resets /tmp/pytest-of-<user> to 0700
    base = Path(tempfile.mkdtemp(prefix="platform-"))
    base.chmod(0o711)
    var_dir = base / "var"
    running = RunningPlatform(var_dir)  # one Spark server per unit, started by the service
    running.start()
    yield running
    if running.proc is not None and running.proc.poll() is None:
        running.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def hub_url(platform_proc) -> str:
    return platform_proc.url


@pytest.fixture(scope="session")
def logins(platform_proc) -> dict[str, str]:
    return platform_proc.logins()


# --- browsers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium driven by Playwright (one per test module: Playwright's sync API
    keeps an event loop of its own, so it is not shared across modules' asyncio tests)."""
    from browser import CHROMIUM, CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page_as(browser, hub_url, logins):
    """``page_as(user, narrow=False)``: a new browser context logged in as demo ``user``,
    on the shelf; closed after the test."""
    from browser import NARROW, login

    contexts = []

    def open_page(user: str, narrow: bool = False, password: str | None = None):
        context = browser.new_context(viewport=NARROW if narrow else {"width": 1280,
                                                                      "height": 900})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(30_000)
        login(page, hub_url, user, password or logins[user])
        return page

    yield open_page
    for context in contexts:
        context.close()


# --- databases -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server():
    """A throw-away PostgreSQL cluster (initdb into a temp dir, random port), run as the
    ``postgres`` system user because initdb refuses root."""
    initdb = shutil.which("initdb")
    if initdb is None:
        pytest.skip("no PostgreSQL server binaries (initdb) on this machine")
    data = Path(tempfile.mkdtemp(prefix="market-pg-"))
    port = free_port()
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_postgres, initdb, "-D", str(data / "db"), "-A", "trust", "-U", "postgres",
                    "--no-sync"], check=True, capture_output=True)
    subprocess.run([*as_postgres, "pg_ctl", "-D", str(data / "db"), "-w", "-l",
                    str(data / "log"), "-o", f"-p {port} -k {data} -h 127.0.0.1 -F", "start"],
                   check=True, capture_output=True)
    yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    subprocess.run([*as_postgres, "pg_ctl", "-D", str(data / "db"), "-m", "immediate", "stop"],
                   capture_output=True)
    shutil.rmtree(data, ignore_errors=True)


def _new_postgres_db(server_url: str) -> str:
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = server_url.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server_url}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """An empty database of each supported kind (not yet migrated)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'market.sqlite'}"
    return _new_postgres_db(request.getfixturevalue("postgres_server"))


def _migrated_session_factory(url: str):
    """A session factory on database ``url``, migrated first; its engine disposed after."""
    from marketplace_ext import dbutil
    from marketplace_ext.orm import make_engine, make_session_factory

    dbutil.upgrade(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def session_factory(db_url):
    """A session factory on a freshly migrated database of each supported kind (``db_url``)."""
    yield from _migrated_session_factory(db_url)


@pytest.fixture
def postgres_session_factory(postgres_server):
    """A session factory on a freshly migrated PostgreSQL database, for tests of
    PostgreSQL's own behaviour (row locks, concurrent writers)."""
    yield from _migrated_session_factory(_new_postgres_db(postgres_server))


@pytest.fixture
def sqlite_session_factory(tmp_path):
    """A session factory on a freshly migrated SQLite file (``tmp_path/market.sqlite``), for
    tests of SQLite's own behaviour or of parts that need no PostgreSQL."""
    yield from _migrated_session_factory(f"sqlite:///{tmp_path / 'market.sqlite'}")


# --- federated learning ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def paillier():
    """One 2048-bit Paillier key pair for the session's federated tests (seconds to make)."""
    from marketplace_ext.federated import keys

    return keys.generate_paillier_keypair(2048)


@pytest.fixture(scope="session")
def model_b64(tmp_path_factory) -> str:
    """The tiny test model as a base64 bundle, as a project's creation body carries it."""
    import base64

    from helpers import save_model

    from marketplace_ext.federated.client import bundle_zip

    return base64.b64encode(bundle_zip(save_model(tmp_path_factory.mktemp("m") / "b"))).decode()
