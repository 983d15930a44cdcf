"""The sandbox with real processes: what product code sees and reaches from a run (through the
runner) and from a warm predict kernel, that nothing of it outlives its run, the limits, a
platform that goes down mid-run, and outputs that are links."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import socketserver
import threading
import time
from pathlib import Path

import pytest
from helpers import SANDBOX_PROBE as PROBE
from helpers import SLEEP_MARK, make_bundle, make_world, notebook, run_to_end

from marketplace_ext.predict import PredictError, PredictPool
from marketplace_ext.sandbox import usage
from marketplace_ext.sandbox.limits import Limits
from marketplace_ext.sandbox.procs import descendants

pytest_plugins = ["sandbox_helpers"]

ROOT = Path(__file__).resolve().parent.parent
class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data = b""
        while chunk := self.request.recv(4096):
            data += chunk
        self.request.sendall(data)


@pytest.fixture
def listeners():
    """A TCP echo server standing in for the unit's Spark endpoint, and two more listeners
    standing in for the hub API, the service and another unit's platform."""
    servers = [socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo) for _ in range(3)]
    for server in servers:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield [s.server_address[1] for s in servers]
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def world(tmp_path):
    engine, w = make_world(f"sqlite:///{tmp_path / 'market.sqlite'}", tmp_path)
    yield w
    engine.dispose()


def secrets_of(world, tmp_path: Path) -> list[str]:
    """Files product code must not read: a root-only secret, the service's database, the
    repository, and another run's file that everyone may read (but not see)."""
    private = tmp_path / "var"
    private.mkdir(mode=0o700)
    (private / "marketplace_kek").write_bytes(os.urandom(64))
    (private / "marketplace_kek").chmod(0o600)
    other = world.work_root / "run-999"
    other.mkdir(mode=0o755)
    (other / "customers.csv").write_text("name,phone\n")
    return [str(private / "marketplace_kek"), str(tmp_path / "market.sqlite"),
            str(ROOT / "pyproject.toml"), str(ROOT / "hub_config" / "jupyterhub_config.py"),
            "/etc/shadow", str(other / "customers.csv")]


def sleepers() -> set[int]:
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().split(b"\0")[:2] == [b"sleep", SLEEP_MARK.encode()]:
                found.add(int(cmdline.parent.name))
        except OSError:
            pass
    return found


def check_probe(result: dict, account: str, work: str) -> None:
    """What every sandboxed probe must have found."""
    assert result["uid"] == pwd.getpwnam(account).pw_uid
    assert set(result["reads"].values()) <= {"FileNotFoundError", "PermissionError"}, \
        result["reads"]
    assert set(result["writes"].values()) == {"OSError"}, result["writes"]  # read-only
    assert result["work"] == "written" and result["tmp"] == "written"
    assert set(result["others"].values()) == {"ConnectionRefusedError"}, result["others"]
    assert result["relay"] == "ping"  # the unit's platform, through the relay
    # /proc: only the sandbox's own few processes, bwrap's init first
    cmdlines = result["processes"]
    assert "bwrap" in cmdlines["1"], cmdlines
    assert len(cmdlines) < 12, cmdlines
    assert not [c for c in cmdlines.values() if "pytest" in c or "jupyterhub" in c]
    assert not [n for n in result["env"] if n.startswith(("JUPYTERHUB_", "MARKET_"))]
    # of the repository, only the package is there
    assert result["listing"] == [".venv", "marketplace_ext"] or result["listing"] == [
        "marketplace_ext"], result["listing"]
    assert work  # (the working directory is checked by the caller)


def targets(world, tmp_path: Path, ports: list[int]) -> dict:
    return {"secrets": secrets_of(world, tmp_path),
            "outside": [str(ROOT / "marketplace_ext" / "x.py"), "/x", "/usr/x",
                        os.path.join(os.path.dirname(os.__file__), "x.py"),
                        str(ROOT / ".venv" / "x")],
            "ports": ports[1:], "relay": ports[0],
            "package": str(ROOT / "marketplace_ext")}


def test_a_run_is_confined(world, tmp_path, listeners):
    world.env["SPARK_REMOTE"] = f"sc://localhost:{listeners[0]}/;token=t0ken"
    spec = json.dumps(targets(world, tmp_path, listeners))
    nb = notebook("x: int = 1", PROBE,
                  f"import json\nopen('outputs/probe.json', 'w').write(json.dumps(probe("
                  f"json.loads({spec!r}))))")
    v = world.version(nb, ["outputs/probe.json"])
    run_id = world.queue(v)
    before = sleepers()

    run = run_to_end(world.runner(), run_id, 120)
    assert run.status == "succeeded", run.error
    result = json.loads(world.blobs.get(json.loads(run.artifacts)["outputs/probe.json"]))
    check_probe(result, "gds-run-north", str(world.work_root))
    # the double-forked sleep died with its run
    assert sleepers() - before == set()


def test_a_warm_predict_kernel_is_confined(world, tmp_path, listeners):
    spec = json.dumps(targets(world, tmp_path, listeners))
    data = make_bundle(tmp_path / "probe", "name: probe\nkind: tool\nnotebook: main.ipynb\n",
                       "rows: list = []", (PROBE, f"import json\nopen('outputs/predictions.json', "
                                           f"'w').write(json.dumps([probe(json.loads({spec!r}))]))"))
    pool = PredictPool(world.work_root / "predict")
    env = {"SPARK_REMOTE": f"sc://localhost:{listeners[0]}/;token=t0ken"}
    before = sleepers()

    async def main():
        try:
            [result] = await pool.predict("probe", lambda: data, [{"a": 1}], env, unit="north")
            [worker] = pool.workers()
            tree = descendants(worker.pid)
            return result, tree
        finally:
            await pool.shutdown()

    result, tree = asyncio.run(main())
    check_probe(result, "gds-run-north", str(world.work_root))
    assert tree and sleepers() - before == set()


def test_outputs_that_are_links_or_fifos_are_refused(world, tmp_path):
    secret = tmp_path / "secret.key"
    secret.write_text("s3cret")
    secret.chmod(0o600)
    nb = notebook("x: int = 1",
                  f"import os\nos.symlink({str(secret)!r}, 'outputs/model.pt')\n"
                  "os.mkfifo('outputs/pipe.csv')")
    v = world.version(nb, ["outputs/model.pt"])
    w = world.version(nb, ["outputs/pipe.csv"])
    first, second = world.queue(v), world.queue(w)
    runner = world.runner(max_workers=1)

    async def main():
        await runner.start()
        try:
            return [await runner.wait(r, 120) for r in (first, second)]
        finally:
            await runner.stop()

    a, b = asyncio.run(main())
    assert (a.status, a.error) == (
        "failed", "declared output 'outputs/model.pt' is outside the working directory")
    assert b.status == "failed" and "not a regular file" in b.error, b.error
    assert json.loads(a.artifacts) == {} and json.loads(b.artifacts) == {}


LIMITED = Limits(memory=int(1.5 * 2**30), cpu_seconds=3600, processes=120,
                 disk_bytes=64 * 2**20, file_size=32 * 2**20)


@pytest.mark.parametrize("code, names", [
    ("big = bytearray(3 * 2**30)",
     "the run exceeded its memory limit (sandbox memory_limit = 1.5 GiB)"),
    ("import subprocess, sys, time\n"
     "subprocess.Popen([sys.executable, '-c', 'import os\\nwhile True:\\n    try:\\n"
     "        os.fork()\\n    except OSError:\\n        pass'])\ntime.sleep(120)",
     "the run exceeded its process limit (sandbox max_processes = 120)"),
    ("import time\nfor i in range(200):\n    open(f'fill-{i}', 'wb').write(b'x' * 2**20)\n"
     "    time.sleep(0.02)",
     "the run exceeded its disk limit (sandbox disk_limit = 64 MiB)"),
    ("open('big.bin', 'wb').write(b'x' * 40 * 2**20)",
     "the run exceeded its file size limit (sandbox max_file_size = 32 MiB)"),
])
def test_a_run_over_a_limit_fails_naming_it_and_the_next_run_goes_on(world, code, names):
    hog = world.version(notebook("x: int = 1", code))
    fine = world.version(notebook("x: int = 1", "print(x)"))
    runs = [world.queue(hog, timeout=120), world.queue(fine)]
    runner = world.runner(max_workers=1, limits=LIMITED)

    async def main():
        await runner.start()
        try:
            return [await runner.wait(r, 180) for r in runs]
        finally:
            await runner.stop()

    bad, good = asyncio.run(main())
    assert bad.status == "failed" and bad.error.startswith(names), bad.error
    assert world.calls(bad.id) == ["failed"]  # on_finished: the refund rules apply
    assert good.status == "succeeded", good.error


def test_a_cpu_spinner_fails_naming_the_limit(world):
    spinner = world.version(notebook("x: int = 1", "while True:\n    pass"))
    run_id = world.queue(spinner, timeout=120)
    limits = Limits(memory=LIMITED.memory, cpu_seconds=12, processes=LIMITED.processes)
    run = run_to_end(world.runner(limits=limits), run_id, 180)
    assert run.status == "failed"
    assert run.error.startswith("the run exceeded its CPU time limit (sandbox cpu_limit = "
                                "12 s)"), run.error


def test_a_run_whose_platform_goes_down_fails_naming_it(world, listeners):
    port = listeners[0]
    world.env["SPARK_REMOTE"] = f"sc://localhost:{port}/;token=t0ken"
    down: dict[str, str] = {}

    def platform_down(unit: str) -> str | None:
        return down.get(unit)

    v = world.version(notebook("x: int = 1", "import time\ntime.sleep(120)"))
    run_id = world.queue(v, timeout=300)
    runner = world.runner(platform_down=platform_down, platform_check_interval=1)

    async def main():
        await runner.start()
        try:
            deadline = time.monotonic() + 60
            while world.get(run_id).cells_done < 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            down["north"] = "unit north's Spark Connect server exited (status 1)"
            # the bound: a run on a dead platform fails within 30 s (TimeoutError
            # otherwise); the run itself would sleep far longer
            return await runner.wait(run_id, 30)
        finally:
            await runner.stop()

    run = asyncio.run(main())
    assert (run.status, run.error) == (
        "failed", "the run's data platform is down: unit north's Spark Connect server exited "
        "(status 1)")
    assert world.calls(run_id) == ["failed"]


def test_a_real_spark_query_through_the_relay(world, spark_server):
    world.env["SPARK_REMOTE"] = spark_server.remote
    nb = notebook("x: int = 1",
                  "from pyspark.sql import SparkSession\n"
                  "spark = SparkSession.builder.getOrCreate()\n"
                  "n = spark.sql('SELECT 40 + 2 AS n').collect()[0].n\n"
                  "open('outputs/n.txt', 'w').write(str(n))")
    v = world.version(nb, ["outputs/n.txt"])
    run = run_to_end(world.runner(), world.queue(v, timeout=300), 320)
    assert run.status == "succeeded", run.error
    assert world.blobs.get(json.loads(run.artifacts)["outputs/n.txt"]) == b"42"


def test_rlimit_errors_are_told_as_the_limit():
    limits = Limits(memory=2 * 2**30, cpu_seconds=60, processes=100, disk_bytes=2**30,
                    file_size=2**20)
    cases = {
        "MemoryError: ": "memory limit (sandbox memory_limit = 2 GiB): MemoryError: ",
        "BlockingIOError: [Errno 11] Resource temporarily unavailable":
            "process limit (sandbox max_processes = 100)",
        "OSError: [Errno 27] File too large": "file size limit (sandbox max_file_size = 1 MiB)",
    }
    for error, says in cases.items():
        assert usage.explain(error, None, limits) == f"the run exceeded its {says}" + (
            "" if says.endswith(": ") else f": {error}")
    dead = "DeadKernelError: Kernel died"
    assert usage.explain(dead, usage.Usage(cpu_seconds=59.5), limits).startswith(
        "the run exceeded its CPU time limit (sandbox cpu_limit = 60 s)")
    assert usage.explain(dead, usage.Usage(cpu_seconds=3), limits) is None
    assert usage.explain("ValueError: boom", usage.Usage(), limits) is None


USER_KERNEL = '''\
import json, sys
from jupyter_client.manager import start_new_kernel

km, kc = start_new_kernel(kernel_name="grid-python", startup_timeout=60)
try:
    code = sys.stdin.read()
    kc.execute_interactive(code, timeout=60, output_hook=lambda m: None)
    reply = kc.execute_interactive("print(__import__('json').dumps(RESULT))", timeout=30,
                                   output_hook=lambda m: m["msg_type"] == "stream"
                                   and sys.stdout.write(m["content"]["text"]))
    print(json.dumps({"provisioner": type(km.provisioner).__name__,
                      "transport": km.transport}))
finally:
    kc.stop_channels()
    km.shutdown_kernel(now=True)
'''


def test_a_user_kernel_in_jupyterlab_is_confined(reachable_tmp, listeners):
    """What a user's JupyterLab server (unprivileged, ``jupyter-<name>``) gets from the
    grid-python kernelspec: a sandboxed kernel with the home read-write, only the unit's
    Spark relayed, nothing of the platform."""
    import subprocess

    from marketplace_ext import accounts

    home = reachable_tmp / "home"
    user = accounts.ensure_account(accounts.user_account("sbxtest"), home=home)
    if pwd.getpwnam(user.name).pw_dir != str(home):  # made by an earlier run of this test
        subprocess.run(["usermod", "--home", str(home), user.name], check=True)
    secret = reachable_tmp / "other-user.txt"
    secret.write_text("private")
    secret.chmod(0o644)  # readable by anyone who can see it: the sandbox cannot
    spec = {"secrets": [str(secret), str(ROOT / "pyproject.toml")],
            "outside": [str(ROOT / "marketplace_ext" / "x.py"), "/x"],
            "ports": listeners[1:2], "relay": listeners[0],
            "package": str(ROOT / "marketplace_ext")}
    # listeners[2] stands in for the hub's public address (the proxy): a browser's view, which
    # the user's own kernel reaches with the user's own token (the Market client, widgets)
    code = (PROBE + f"\nRESULT = probe({spec!r})\nRESULT['home'] = write({str(home / 'n.txt')!r})"
            f"\nRESULT['public'] = connect('127.0.0.1', {listeners[2]}, b'pub')")
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "USER": user.name,
           "SPARK_REMOTE": f"sc://localhost:{listeners[0]}/;token=t0ken",
           "MARKETPLACE_URL": f"http://127.0.0.1:{listeners[2]}/services/marketplace/",
           "JUPYTERHUB_API_TOKEN": "the-users-server-token",
           "CONFIGPROXY_AUTH_TOKEN": "never-for-a-user"}
    before = sleepers()
    done = subprocess.run(["runuser", "-u", user.name, "--", str(ROOT / ".venv/bin/python"),
                           "-c", USER_KERNEL], input=code, capture_output=True, text=True,
                          env=env, cwd=home, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    result, kernel = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])
    assert kernel == {"provisioner": "SandboxProvisioner", "transport": "ipc"}
    assert result["uid"] == user.uid and result["home"] == "written"
    assert set(result["reads"].values()) == {"FileNotFoundError"}, result["reads"]
    assert set(result["writes"].values()) == {"OSError"}, result["writes"]
    assert set(result["others"].values()) == {"ConnectionRefusedError"}, result["others"]
    assert result["relay"] == "ping"
    assert "bwrap" in result["processes"]["1"] and len(result["processes"]) < 12
    assert result["public"] == "pub"
    assert "JUPYTERHUB_API_TOKEN" in result["env"]  # the user's own
    assert "CONFIGPROXY_AUTH_TOKEN" not in result["env"]
    assert sleepers() - before == set()


def test_a_warm_kernel_over_a_limit_fails_the_call_naming_it(world, tmp_path):
    data = make_bundle(tmp_path / "hog", "name: hog\nkind: tool\nnotebook: main.ipynb\n",
                       "rows: list = []",
                       ("import json\nop = rows[0]['op']\n"
                        "if op == 'memory':\n    big = bytearray(3 * 2**30)\n"
                        "if op == 'disk':\n"
                        "    for name in ('fill-1', 'fill-2', '/tmp/fill-3'):\n"
                        "        open(name, 'wb').write(b'x' * 25 * 2**20)\n"
                        "open('outputs/predictions.json', 'w').write(json.dumps([op]))",))
    pool = PredictPool(world.work_root / "predict", limits=LIMITED)

    async def main():
        try:
            with pytest.raises(PredictError) as memory:
                await pool.predict("hog", lambda: data, [{"op": "memory"}], {}, unit="north")
            after = await pool.predict("hog", lambda: data, [{"op": "fine"}], {}, unit="north")
            with pytest.raises(PredictError) as disk:
                await pool.predict("hog", lambda: data, [{"op": "disk"}], {}, unit="north")
            again = await pool.predict("hog", lambda: data, [{"op": "fine"}], {}, unit="north")
            return memory.value, after, disk.value, again
        finally:
            await pool.shutdown()

    memory, after, disk, again = asyncio.run(main())
    assert memory.message.startswith(
        "the call exceeded its memory limit (sandbox memory_limit = 1.5 GiB): MemoryError")
    assert disk.message.startswith(
        "the call exceeded its disk limit (sandbox disk_limit = 64 MiB)"), disk.message
    assert after == again == ["fine"]


SERVICE_PROBE = """\
import json
from pyspark.sql import SparkSession
result = probe(json.loads(TARGETS))
# the unit's own platform, through the relay: a real query
result["rows"] = SparkSession.builder.getOrCreate().table(f"unit_{unit}.consumption_daily").count()
# of var/, only the way to this run's own directory exists in here
result["var"] = __import__("os").listdir(VAR)
open(f"{output_dir}/probe.json", "w").write(json.dumps(result))
"""


def test_a_product_run_through_the_service_is_confined(platform_proc, tmp_path):
    """A subscriber's run of a published product, through the real hub, service, runner and
    Spark: the platform's secrets, processes and ports are out of its reach; its own unit's
    tables are not."""
    import secrets as random

    import nbformat
    import yaml
    from helpers import market_as

    from marketplace_ext.bundle import new_product

    var, env = platform_proc.var_dir, platform_proc.env
    spec = {"secrets": [str(var / name) for name in (
                "marketplace_kek", "marketplace_cookie_secret", "jupyterhub_cookie_secret",
                "marketplace.sqlite", "jupyterhub.sqlite")],
            # (var/ itself is under /tmp here, which is the run's own /tmp in the sandbox)
            "outside": [str(ROOT / "marketplace_ext" / "x.py"), "/x", "/usr/x"],
            "ports": [platform_proc.port] + [int(env[k]) for k in (
                "MARKET_HUB_API_PORT", "MARKET_PROXY_API_PORT", "MARKET_SERVICE_PORT")],
            "relay": None, "package": str(ROOT / "marketplace_ext")}
    logins = platform_proc.logins()
    pub = market_as(platform_proc.url, "publisher-a", logins["publisher-a"])
    op = market_as(platform_proc.url, "operator", logins["operator"])
    sub = market_as(platform_proc.url, "subscriber-c", logins["subscriber-c"])
    name = f"probe-{random.token_hex(3)}"
    bundle = new_product("application", name, tmp_path / "bundle")
    manifest = yaml.safe_load((bundle / "product.yaml").read_text())
    manifest.update(plans=[{"type": "per_use", "price": 10}],
                    outputs=[{"path": "outputs/probe.json", "description": "what it saw"}])
    (bundle / "product.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "grid-python", "display_name": "Python 3 (grid)",
                                 "language": "python"}
    params = nbformat.v4.new_code_cell('unit: str = ""\noutput_dir: str = "outputs"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(PROBE),
                nbformat.v4.new_code_cell(f"TARGETS = {json.dumps(spec)!r}\nVAR = {str(var)!r}\n"
                                          + SERVICE_PROBE)]
    nbformat.write(nb, bundle / "main.ipynb")
    for stale in (bundle / "files").glob("*"):
        stale.unlink()
    version = pub.publish(bundle)["version"]
    op.review(name, version, "approve")
    sub.order(name, "per_use")
    before = sleepers()

    run = sub.run(name, progress=False, download_to=tmp_path / "out", poll=0.5)
    assert run["status"] == "succeeded", run["error"]
    result = json.loads((tmp_path / "out" / "outputs" / "probe.json").read_text())
    assert result["uid"] == pwd.getpwnam("gds-run-c").pw_uid
    assert set(result["reads"].values()) == {"FileNotFoundError"}, result["reads"]
    assert set(result["writes"].values()) == {"OSError"}, result["writes"]
    assert set(result["others"].values()) == {"ConnectionRefusedError"}, result["others"]
    assert result["rows"] > 0 and result["var"] == ["runs"]
    cmdlines = result["processes"]
    assert "bwrap" in cmdlines["1"] and len(cmdlines) < 12, cmdlines
    # bwrap's init, the relay, papermill, the kernel, a shell and its sleep: nothing else
    programs = {os.path.basename(c.split()[0]) for c in cmdlines.values() if c}
    assert programs <= {"bwrap", "python", "python3", "python3.11", "sh", "sleep"}, cmdlines
    assert not [n for n in result["env"] if n.startswith(("JUPYTERHUB_", "MARKET_"))]
    assert sleepers() - before == set()


def test_a_runs_bundle_and_inputs_are_its_sandbox_accounts_alone(reachable_tmp):
    """Run directories have guessable names under a 0711 var/runs: the bundle (another unit's
    product) and an uploaded input (a subscriber's data) must not be readable by other
    accounts, such as a user's terminal."""
    import io
    import stat
    import zipfile

    from marketplace_ext import accounts
    from marketplace_ext.sandbox.workspace import Workspace

    account = accounts.ensure_account(accounts.sandbox_account("sbxws"))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("main.ipynb", "{}")
        archive.writestr("files/model.json", "{}")
    space = Workspace(reachable_tmp / "run-1", account.name)
    space.create(buffer.getvalue())
    (space.inputs / "upload.csv").write_text("name,phone\nCANARY,1\n")
    space.seal()
    for top in (space.bundle, space.inputs):
        for path in (top, *top.rglob("*")):
            st = path.lstat()
            assert st.st_mode & stat.S_IRWXO == 0, path
            assert (st.st_uid, st.st_gid) == (0, account.gid), path
