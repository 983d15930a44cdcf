"""One data platform per unit, on real servers: accounts, tokens, isolation, restarts, TLS.

The session's ``unit_servers`` (spark_fixtures) run units b and c, each on its own supervised
Spark Connect server. b holds a customers table; c must not be able to read it by any route.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from spark_fixtures import passable_tmpdir, unit_platform, unit_servers  # noqa: F401
from tls_certs import issue_cert, make_ca
from traitlets.config import Config

from marketplace_ext.errors import PlatformUnavailable
from marketplace_ext.platform import DataPlatform
from marketplace_ext.platform.common import _new_connect_session
from marketplace_ext.platform.supervisor import UnitServers, read_unit_endpoints
from marketplace_ext.platform.tls import TlsRelay, needs_tls, redact_url

CUSTOMERS = pd.DataFrame({"customer_id": ["C1", "C2"], "name": ["Ada", "Bo"],
                          "phone": ["555-0101", "555-0102"]})


@pytest.fixture(scope="module")
def loaded(unit_platform):  # noqa: F811
    unit_platform.load_unit_tables("b", {"customers": CUSTOMERS})
    return unit_platform


def _refusal(url: str, table: str) -> str:
    """The error a client of *url* gets reading *table* (the test fails if it reads it)."""
    session = _new_connect_session(url, retries=0)
    try:
        with pytest.raises(Exception) as info:
            session.table(table).collect()
    finally:
        session.client.close()
    # gRPC adds a timestamp to its debug string; what the server said is in `details`
    found = re.search(r'details = "([^"]*)"', str(info.value))
    return found.group(1) if found else str(info.value).splitlines()[0]


def _port(url: str) -> int:
    return int(url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])


def test_each_unit_server_runs_as_its_own_account_with_private_state(unit_servers):  # noqa: F811
    if os.geteuid() != 0:
        pytest.skip("accounts need root")
    root = unit_servers.var_path
    for unit in ("b", "c"):
        server = unit_servers.server(unit)
        account = pwd.getpwnam(f"gds-spark-{unit}")
        status = Path(f"/proc/{server.pid}/status").read_text()
        assert re.search(rf"^Uid:\s+{account.pw_uid}\s", status, re.M), status
        st = os.stat(server.var_path)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (account.pw_uid, 0o700)
        # the token is in the server's environment (its account and root only), never on its
        # command line, which every account can read
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes()
        assert server.token and server.token.encode() not in cmdline
        assert "127.0.0.1" in cmdline.decode(errors="replace")  # loopback only
    for path in (root, root / "units"):
        st = os.stat(path)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o711)
    st = os.stat(root / "unit_servers.json")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    # the servers are different processes on different ports with different tokens
    b, c = unit_servers.server("b"), unit_servers.server("c")
    assert b.port != c.port and b.token != c.token and b.pid != c.pid
    assert read_unit_endpoints(root) == {"b": b.remote, "c": c.remote}


def test_a_units_own_client_reads_its_tables(loaded, unit_servers):  # noqa: F811
    session = _new_connect_session(unit_servers.remote_for("b"), retries=1)
    try:
        rows = session.table("unit_b.customers").orderBy("customer_id").collect()
    finally:
        session.stop()
    assert [r.name for r in rows] == ["Ada", "Bo"]


@pytest.mark.parametrize("credential", ["no token", "c's token", "a wrong token"])
def test_another_units_client_cannot_read_b(loaded, unit_servers, credential):  # noqa: F811
    port = unit_servers.server("b").port
    token = {"no token": None, "c's token": unit_servers.server("c").token,
             "a wrong token": "x" * 43}[credential]
    url = f"sc://localhost:{port}/" + (f";token={token}" if token else "")
    existing = _refusal(url, "unit_b.customers")
    missing = _refusal(url, "unit_b.no_such_table")
    assert "authentication token" in existing
    # the refusal comes before any table is looked up: it is the same either way
    assert existing == missing


def test_units_own_server_holds_only_its_own_data(loaded, unit_servers):  # noqa: F811
    """With its own (valid) token, c reaches only c's server, where unit_b does not exist."""
    c_url = unit_servers.remote_for("c")
    error = _refusal(c_url, "unit_b.customers")
    assert "unit_b" in error and ("NOT_FOUND" in error or "cannot be found" in error)
    session = _new_connect_session(c_url, retries=1)
    try:
        databases = {r[0] for r in session.sql("SHOW DATABASES").collect()}
    finally:
        session.stop()
    assert "unit_b" not in databases


def test_killed_server_is_restarted_on_the_same_port_and_token(loaded, unit_servers):  # noqa: F811
    server = unit_servers.server("b")
    old_pid, port, token = server.pid, server.port, server.token
    dp = DataPlatform(servers=unit_servers, var_dir=str(unit_servers.var_path / "dp"),
                      connect_retries=1)
    try:
        assert dp.unit_down("b") is None
        assert dp.health("b")["ok"]
        os.kill(old_pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):  # the supervisor may have reaped it
            os.waitid(os.P_PID, old_pid, os.WEXITED | os.WNOWAIT)
        assert "unit b" in (dp.unit_down("b") or "")
        # a call in the meantime is a 503 naming the unit, without the token
        with pytest.raises(PlatformUnavailable) as info:
            dp.query("b", "SELECT count(*) FROM customers", {"unit_b.customers"})
        assert info.value.status == 503 and "unit b" in info.value.message
        assert token not in info.value.message
        down = unit_servers.wait_up(["b"], timeout=300)
        assert down == {}, down
        server = unit_servers.server("b")
        assert (server.port, server.token) == (port, token) and server.pid != old_pid
        assert unit_servers.status()["b"]["restarts"] >= 1
        # the data survived, and the cached session recovers
        result = dp.query("b", "SELECT count(*) AS n FROM customers", {"unit_b.customers"})
        assert result["rows"] == [[2]]
    finally:
        dp.close()


def test_unit_without_a_server_is_a_503_naming_it(unit_platform):  # noqa: F811
    with pytest.raises(PlatformUnavailable) as info:
        unit_platform.spark_remote_for("zz")
    assert info.value.status == 503 and "unit zz" in info.value.message
    assert "unit zz" in unit_platform.unit_down("zz")


# --- remote endpoints: TLS with a configured CA ------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "market test CA")
    return {
        "ca": ca.cert_file,
        "server": issue_cert(d, ca, "server", server=True),
        "client": issue_cert(d, ca, "client", server=False),
        "other_ca": make_ca(d, "someone else").cert_file,
    }


@pytest.fixture(scope="module")
def relay(loaded, unit_servers, pki):  # noqa: F811
    """b's server behind a TLS relay that requires a client certificate of the test CA."""
    cert, key = pki["server"]
    relay = TlsRelay(("127.0.0.1", unit_servers.server("b").port), cert, key,
                     client_ca_file=pki["ca"])
    port = relay.start()
    yield f"sc://127.0.0.1:{port}/;token={unit_servers.server('b').token}"
    relay.stop()


def _remote_platform(url: str, tmp_path, **tls: str) -> DataPlatform:
    config = Config()
    for key, value in tls.items():
        setattr(config.EndpointTLS, key, value)
    return DataPlatform(config=config, endpoints={"b": url}, var_dir=str(tmp_path),
                        connect_retries=0)


def test_remote_endpoint_over_tls_with_a_configured_ca(relay, pki, tmp_path):
    assert needs_tls(relay) and not needs_tls("sc://localhost:1/;token=t")
    cert, key = pki["client"]
    dp = _remote_platform(relay, tmp_path, ca_file=pki["ca"], cert_file=cert, key_file=key)
    try:
        result = dp.query("b", "SELECT name FROM customers ORDER BY name", {"unit_b.customers"})
        assert result["rows"] == [["Ada"], ["Bo"]]
        assert dp.unit_down("b") is None
        assert "<token>" in dp.health("b")["endpoint"]
    finally:
        dp.close()


@pytest.mark.parametrize("case", ["untrusted server", "no client certificate"])
def test_remote_endpoint_refused_without_trust(relay, pki, tmp_path, case):
    cert, key = pki["client"]
    tls = ({"ca_file": pki["other_ca"], "cert_file": cert, "key_file": key}
           if case == "untrusted server" else {"ca_file": pki["ca"]})
    dp = _remote_platform(relay, tmp_path, **tls)
    token = relay.rsplit("=", 1)[1]
    try:
        with pytest.raises(PlatformUnavailable) as info:
            dp.query("b", "SELECT name FROM customers", {"unit_b.customers"})
    finally:
        dp.close()
    assert "unit b" in info.value.message and token not in info.value.message
    assert redact_url(relay) in info.value.message


# --- scale-out: a unit's server as the driver of a real Spark standalone cluster ---------------


def _wait_for_line(path: Path, text: str, proc, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    raise RuntimeError(f"{text!r} not in {path}:\n{path.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def standalone_cluster():
    """A standalone master and one worker from the pyspark distribution, on 127.0.0.1, run as
    unit s's server account (executors write the unit's warehouse as that account)."""
    from marketplace_ext import accounts
    from marketplace_ext.launcher import free_port
    from marketplace_ext.platform.common import _pyspark_home

    base = passable_tmpdir("market-cluster-")
    as_account: list[str] = []
    if os.geteuid() == 0:
        account = accounts.ensure_account(accounts.spark_account("s"))
        accounts.private_dir(base / "work", account.uid, account.gid)
        as_account = ["setpriv", f"--reuid={account.uid}", f"--regid={account.gid}",
                      "--clear-groups"]
    else:
        (base / "work").mkdir()
    home = _pyspark_home()
    env = {"PATH": os.environ["PATH"], "SPARK_HOME": home, "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_DAEMON_MEMORY": "256m", "HOME": str(base / "work"),
           "SPARK_LOG_DIR": str(base / "work"), "SPARK_WORKER_DIR": str(base / "work")}
    port = free_port()
    master_url = f"spark://127.0.0.1:{port}"
    procs = []
    logs = {name: base / f"{name}.log" for name in ("master", "worker")}
    argv = {
        "master": ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                   "--port", str(port), "--webui-port", str(free_port())],
        "worker": ["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                   "--cores", "1", "--memory", "1g", "--webui-port", str(free_port()),
                   "--work-dir", str(base / "work"), master_url],
    }
    try:
        for name, ready in (("master", "I have been elected leader"),
                            ("worker", "Successfully registered with master")):
            with open(logs[name], "wb") as log:
                proc = subprocess.Popen(
                    [*as_account, f"{home}/bin/spark-class", *argv[name]], env=env,
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True)
            procs.append(proc)
            _wait_for_line(logs[name], ready, proc)
        yield master_url, base / "work"
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(base, ignore_errors=True)


def test_unit_server_on_a_standalone_cluster_runs_a_query_and_a_notebook(
        standalone_cluster, tmp_path, monkeypatch):
    import papermill

    master_url, work = standalone_cluster
    servers = UnitServers(
        var_dir=str(work.parent / "platform"), masters={"s": master_url},
        spark_conf={"spark.executor.memory": "512m", "spark.cores.max": "1"})
    dp = DataPlatform(servers=servers, var_dir=str(tmp_path / "dp"))
    try:
        servers.start(["s"])
        assert servers.wait_up(timeout=300) == {}
        assert servers.server("s").conf()["spark.master"] == master_url
        readings = pd.DataFrame({"meter": [f"M{i % 7}" for i in range(1000)],
                                 "kwh": [float(i) for i in range(1000)]})
        dp.load_unit_tables("s", {"readings": readings})
        result = dp.query("s", "SELECT count(DISTINCT meter) AS meters, sum(kwh) AS kwh "
                          "FROM readings", {"unit_s.readings"})
        assert result["rows"] == [[7, float(sum(range(1000)))]]
        # the work ran in an executor the worker launched, not in the server's JVM
        executors = list(work.glob("app-*/*/stderr"))
        assert executors, f"no executor ran on the worker ({list(work.iterdir())})"

        # a product run: a papermill notebook on the unit's platform, as the runner starts it
        notebook = nbformat.v4.new_notebook(metadata={"kernelspec": {
            "name": "python3", "display_name": "Python 3", "language": "python"}})
        notebook.cells = [nbformat.v4.new_code_cell(
            "import os\n"
            "from pyspark.sql import SparkSession\n"
            "spark = SparkSession.builder.remote(os.environ['SPARK_REMOTE']).getOrCreate()\n"
            "row = spark.sql('SELECT max(kwh) AS m FROM unit_s.readings').collect()[0]\n"
            "print('max kwh', row.m)")]
        source, output = tmp_path / "run.ipynb", tmp_path / "out.ipynb"
        nbformat.write(notebook, source)
        monkeypatch.setenv("SPARK_REMOTE", servers.remote_for("s"))
        papermill.execute_notebook(str(source), str(output), kernel_name="python3",
                                   progress_bar=False, cwd=str(tmp_path))
        outputs = nbformat.read(output, as_version=4).cells[0].outputs
        assert "max kwh 999.0" in "".join(o.get("text", "") for o in outputs)
    finally:
        dp.close()
        servers.stop()


# --- the whole platform: users' kernels get their own unit's server only -----------------------

KERNEL_PROBE = """
import json, os, socket
from pyspark.sql import SparkSession
from pyspark.sql.connect.client.retries import DefaultPolicy
remote = os.environ.get("SPARK_REMOTE", "")
result = {"has_token": ";token=" in remote, "port": remote.split("//")[-1].split("/")[0]}
for name, url in [("own", remote), ("b_no_token", "sc://localhost:%s/" % B_PORT),
                  ("b_own_token", "sc://localhost:%s/%s" % (B_PORT, remote[remote.find(";"):]))]:
    port = int(url.split("//")[1].split("/")[0].rsplit(":", 1)[1])
    for table in ("unit_b.customers", "unit_b.no_such_table"):
        try:  # a sandboxed kernel may not even reach another unit's port
            socket.create_connection(("localhost", port), timeout=5).close()
        except OSError as e:
            result[f"{name} {table}"] = "unreachable: " + type(e).__name__
            continue
        spark = SparkSession.builder.remote(url).create()
        spark.client.set_retry_policies([DefaultPolicy(max_retries=1)])
        try:
            result[f"{name} {table}"] = spark.table(table).count()
        except Exception as e:
            text = str(e)
            result[f"{name} {table}"] = (text.split('details = "')[1].split('"')[0]
                                         if 'details = "' in text else text.splitlines()[0])
        spark.client.close()
print(json.dumps(result))
"""

def test_users_kernels_reach_only_their_own_units_server(platform_proc):
    """Acceptance on the running platform (`market run`, one server per unit): a kernel of unit
    c reads nothing of unit b - not with its own endpoint, not at b's server without a token or
    with c's token - and unit b's own kernel reads b's table."""
    import json

    from notebook_client import execute, spawn_server, stop_server

    from marketplace_ext.hubsession import HubSession

    if platform_proc.env.get("MARKET_SPARK_REMOTE"):
        pytest.skip("platform_proc shares one Spark server between units (MARKET_SPARK_REMOTE)")
    b_remote = read_unit_endpoints(platform_proc.var_dir / "platform")["b"]
    logins = platform_proc.logins()
    results = {}
    for user in ("subscriber-c", "subscriber-b"):
        session = HubSession(platform_proc.url)
        session.login(user, logins[user])
        token = session.create_token("isolation")
        server = spawn_server(platform_proc.url, user, token)
        try:
            out = execute(server, token, f"B_PORT = {_port(b_remote)}\n" + KERNEL_PROBE,
                          timeout=300)
        finally:
            stop_server(platform_proc.url, user, token)
        results[user] = json.loads(out.strip().splitlines()[-1])
    c, b = results["subscriber-c"], results["subscriber-b"]
    assert c["has_token"] and b["has_token"] and c["port"] != b["port"]
    for route in ("own", "b_no_token", "b_own_token"):
        existing, missing = c[f"{route} unit_b.customers"], c[f"{route} unit_b.no_such_table"]
        assert not isinstance(existing, int), (route, existing)
        if route != "own":  # refused before any lookup (or not reachable): the same either way
            assert existing == missing, (route, c)
            assert "authentication token" in existing or "unreachable" in existing, (route, c)
    loaded = json.loads((platform_proc.var_dir / "demo_data.json").read_text())
    assert b["own unit_b.customers"] == loaded["tables"]["b"]["customers"] > 0


def test_a_dead_unit_platform_is_a_503_without_points_and_comes_back(platform_proc):
    """SIGKILL unit d's server under the running platform: a run asked for meanwhile is a 503
    naming the unit, takes no points, and the supervisor brings the server back (same port)."""
    from helpers import market_as

    from marketplace_ext.client import MarketAPIError
    from marketplace_ext.launcher import pid_alive
    from marketplace_ext.platform.supervisor import EndpointsFile, read_unit_status

    if platform_proc.env.get("MARKET_SPARK_REMOTE"):
        pytest.skip("platform_proc shares one Spark server between units (MARKET_SPARK_REMOTE)")
    platform_dir = platform_proc.var_dir / "platform"
    before = read_unit_status(platform_dir)["d"]
    assert before["state"] == "up"
    market = market_as(platform_proc.url, "subscriber-d", platform_proc.logins()["subscriber-d"])
    balance = market.request("GET", "units/d/account")["balance"]
    os.kill(before["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while pid_alive(before["pid"]) and time.monotonic() < deadline:  # a zombie counts as dead
        time.sleep(0.05)
    with pytest.raises(MarketAPIError) as info:
        market.request("POST", "runs", json={"product": "electricity-theft-detection"})
    assert (info.value.status, info.value.error) == (503, "platform_unavailable")
    assert "unit d" in info.value.message and info.value.field == "unit"
    assert market.request("GET", "units/d/account")["balance"] == balance
    servers = EndpointsFile(platform_dir)
    assert "unit d" in (servers.unit_down("d") or "")
    deadline = time.monotonic() + 300
    while servers.unit_down("d") is not None and time.monotonic() < deadline:
        time.sleep(1)
    after = read_unit_status(platform_dir)["d"]
    assert servers.unit_down("d") is None, after
    assert after["port"] == before["port"] and after["pid"] != before["pid"]
    assert after["restarts"] >= 1
