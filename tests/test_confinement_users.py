"""Users are confined: each hub user's notebook server runs as their own system account, and
neither their JupyterLab kernels (sandboxed) nor their terminals can reach the platform's
secrets, processes or other users.

The platform is the session's real one (`market run`, see conftest.py). Two demo users of
different units start their servers through the hub API; the same probe then runs in a kernel
of subscriber-a's server and in a JupyterLab terminal of it (a plain shell as the account).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests
from notebook_client import execute, run_in_terminal, spawn_server, stop_server

from marketplace_ext import accounts
from marketplace_ext.hardening import harden_var
from marketplace_ext.hubsession import HubSession
from marketplace_ext.launcher import descendants
from marketplace_ext.spawner import _executable_problem, cgroup2_available

USER, OTHER = "subscriber-a", "subscriber-b"  # units a and b
#: the secrets under var/ that no user may read
SECRETS = ("marketplace_kek", "jupyterhub_cookie_secret", "marketplace.sqlite")
#: every unit's Spark port and token (the unit servers' supervisor keeps it under var/)
TOKENS_FILE = "unit_servers.json"
#: more of the platform's files, checked when present
MORE_SECRETS = ("marketplace_cookie_secret", "log_signing.key", "jupyterhub.sqlite",
                "demo_logins.json", "platform_hash_secret", "jupyterhub.log")
SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "KEY")


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(kv.split("=", 1) for kv in raw.split("\0") if "=" in kv)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _port(url: str) -> int:
    return urlparse(url.replace("sc://", "http://", 1)).port


@dataclass
class Server:
    user: str
    token: str
    url: str
    pid: int

    @property
    def env(self) -> dict[str, str]:
        return _environ(self.pid)


@dataclass
class PlatformProcs:
    hub: int
    service: int
    proxy: int


@pytest.fixture(scope="module")
def platform_pids(platform_proc) -> PlatformProcs:
    found = {}
    for pid in descendants(platform_proc.proc.pid):
        cmd = _cmdline(pid)
        if "-m jupyterhub" in cmd:
            found["hub"] = pid
        elif "-m marketplace_ext" in cmd:
            found["service"] = pid
        elif "configurable-http-proxy" in cmd and "node" in cmd.split()[0]:
            found["proxy"] = pid
    return PlatformProcs(**found)


def _server_pid(platform_proc, user: str) -> int:
    for pid in descendants(platform_proc.proc.pid):
        if "jupyterhub-singleuser" in _cmdline(pid):
            try:
                if _environ(pid).get("JUPYTERHUB_USER") == user:
                    return pid
            except OSError:
                continue
    raise AssertionError(f"no jupyterhub-singleuser process of {user} under the platform")


@pytest.fixture(scope="module")
def servers(hub_url, logins, platform_proc):
    started: dict[str, Server] = {}
    try:
        for user in (USER, OTHER):
            session = HubSession(hub_url)
            session.login(user, logins[user])
            token = session.create_token("confinement test")
            url = spawn_server(hub_url, user, token)
            started[user] = Server(user, token, url, _server_pid(platform_proc, user))
        yield started
    finally:
        for server in started.values():
            stop_server(hub_url, server.user, server.token)


def _secret_paths(var: Path) -> list[str]:
    missing = [name for name in SECRETS if not (var / name).exists()]
    assert not missing, f"expected platform files missing from {var}: {missing}"
    return [str(var / n) for n in (*SECRETS, *MORE_SECRETS) if (var / n).exists()] + [
        str(p) for p in var.rglob(TOKENS_FILE)]


def _platform_secrets(platform_proc, platform_pids) -> dict[str, str]:
    """{where: value} of the secrets the platform holds: secret-named variables of the hub's,
    the service's and the proxy's environments, the cookie secrets, every unit's Spark token."""
    secrets = {}
    for name in ("hub", "service", "proxy"):
        for k, v in _environ(getattr(platform_pids, name)).items():
            # secrets by name, and settings that carry one (MARKET_SPARK_ENDPOINTS' tokens)
            if len(v) >= 8 and (any(w in k for w in SECRET_WORDS) or "token=" in v):
                secrets[f"{name}:{k}"] = v
    assert "service:JUPYTERHUB_API_TOKEN" in secrets  # we looked at the right processes
    assert "proxy:CONFIGPROXY_AUTH_TOKEN" in secrets
    var = platform_proc.var_dir
    for name in ("jupyterhub_cookie_secret", "marketplace_cookie_secret"):
        if (var / name).exists():
            secrets[name] = (var / name).read_text(errors="replace").strip()
    for path in var.rglob(TOKENS_FILE):
        for unit, entry in json.loads(path.read_text()).items():
            secrets[f"unit {unit}'s Spark token"] = entry["token"]
    return secrets


# --- the server's account ----------------------------------------------------------------------


def test_server_runs_as_the_users_own_account(servers, platform_proc):
    for user, unit, other_unit in ((USER, "a", "b"), (OTHER, "b", "a")):
        server = servers[user]
        account = pwd.getpwnam(accounts.user_account(user))
        assert account.pw_name == f"jupyter-{user}"
        status = Path(f"/proc/{server.pid}/status").read_text()
        uids = re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()
        assert {int(u) for u in uids} == {account.pw_uid}  # real, effective, saved, fs
        groups = {int(g) for g in re.search(r"^Groups:\s*(.*)$", status, re.M).group(1).split()}
        assert grp.getgrnam(f"gds-unit-{unit}").gr_gid in groups
        try:
            other_gid = grp.getgrnam(f"gds-unit-{other_unit}").gr_gid
        except KeyError:
            other_gid = None
        assert other_gid not in groups
        assert "--allow-root" not in _cmdline(server.pid)

        home = Path(server.env["HOME"])
        home_root = Path(platform_proc.env.get("MARKET_USER_HOME_ROOT") or "/home")
        assert home.parent == home_root and home.name == account.pw_name
        st = home.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (account.pw_uid, 0o700)
        assert Path(f"/proc/{server.pid}/cwd").resolve() == home


def test_server_has_its_limits(servers, platform_proc):
    pid = servers[USER].pid
    if cgroup2_available():
        cgroup = Path(f"/proc/{pid}/cgroup").read_text()
        assert f"/gds-users/jupyter-{USER}" in cgroup
        return
    limits = Path(f"/proc/{pid}/limits").read_text()
    mem = re.search(r"^Max address space\s+(\S+)\s+(\S+)", limits, re.M).groups()
    procs = re.search(r"^Max processes\s+(\S+)\s+(\S+)", limits, re.M).groups()
    from jupyterhub.traitlets import ByteSpecification

    expected_mem = ByteSpecification().validate(
        None, platform_proc.env.get("MARKET_USER_MEM_LIMIT") or "8G")
    assert mem == (str(expected_mem), str(expected_mem))
    expected_procs = platform_proc.env.get("MARKET_USER_PROC_LIMIT") or "1024"
    assert procs == (expected_procs, expected_procs)
    nice = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
    assert nice == 10


def test_server_environment_holds_only_its_own_secrets(servers, platform_pids, platform_proc):
    env = servers[USER].env
    assert env["JUPYTERHUB_API_TOKEN"] and env["MARKET_UNIT"] == "a" and env["SPARK_REMOTE"]
    assert [k for k in env if k.startswith("MARKET_")] == ["MARKET_UNIT"]
    assert "CONFIGPROXY_AUTH_TOKEN" not in env
    # no secret of the hub's, the proxy's or the service's environment, nor a cookie secret
    secrets = _platform_secrets(platform_proc, platform_pids)
    # the unit's own endpoint may also be in the service's environment: it is the user's
    values = "\n".join(v for k, v in env.items() if k != "SPARK_REMOTE")
    leaked = sorted(name for name, value in secrets.items() if value in values)
    assert leaked == [], f"platform secrets in {USER}'s server environment: {leaked}"


def test_each_unit_has_its_own_endpoint(servers, platform_proc):
    """A user's SPARK_REMOTE is their own unit's server, with its token (per-unit servers),
    and the file of all units' tokens is the platform's alone."""
    tokens = list(platform_proc.var_dir.rglob(TOKENS_FILE))
    assert tokens, f"no {TOKENS_FILE} under {platform_proc.var_dir}: no per-unit servers?"
    st = tokens[0].stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    mine, theirs = servers[USER].env["SPARK_REMOTE"], servers[OTHER].env["SPARK_REMOTE"]
    assert re.fullmatch(r"sc://localhost:\d+/;token=\S+", mine), mine
    assert _port(mine) != _port(theirs)


def _unit_groups_of(pid: int) -> set[str]:
    status = Path(f"/proc/{pid}/status").read_text()
    gids = {int(g) for g in re.search(r"^Groups:\s*(.*)$", status, re.M).group(1).split()}
    return {g.gr_name for g in grp.getgrall()
            if g.gr_gid in gids and g.gr_name.startswith("gds-unit-")}


def _wait_stopped(hub_url: str, user: str, token: str, timeout: float = 60) -> None:
    """The hub answers a DELETE with 202 while a slow server is still stopping."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = requests.get(f"{hub_url}/hub/api/users/{user}", timeout=30,
                             headers={"Authorization": f"token {token}"}).json()
        if not model.get("servers"):
            return
        time.sleep(0.5)
    raise AssertionError(f"{user}'s server still there after {timeout}s")


def test_new_member_gets_an_account_that_follows_their_unit(hub_url, logins, platform_proc):
    """A newly authorized user's account is made at the first spawn, in their unit's group;
    moved to another unit, the next server is in the new unit's group only."""
    name = f"mover-{uuid.uuid4().hex[:6]}"
    password = uuid.uuid4().hex
    operator = HubSession(hub_url)
    operator.login("operator", logins["operator"])
    operator.open_marketplace()
    HubSession(hub_url).signup(name, password)
    operator.authorize(name)
    assert operator.market("PUT", f"units/c/members/{name}").status_code == 201
    with pytest.raises(KeyError):
        pwd.getpwnam(accounts.user_account(name))  # not before the first spawn

    user = HubSession(hub_url)
    user.login(name, password)
    token = user.create_token("mover")
    groups = []
    try:
        for unit in ("c", "d"):
            if unit == "d":
                assert operator.market("DELETE", f"units/c/members/{name}").status_code == 204
                assert operator.market("PUT", f"units/d/members/{name}").status_code == 201
            spawn_server(hub_url, name, token)
            try:
                groups.append(_unit_groups_of(_server_pid(platform_proc, name)))
            finally:
                stop_server(hub_url, name, token)
                _wait_stopped(hub_url, name, token)
    finally:  # the demo units keep their members (other tests count them)
        for unit in ("c", "d"):
            operator.market("DELETE", f"units/{unit}/members/{name}")
    assert groups == [{"gds-unit-c"}, {"gds-unit-d"}]
    assert accounts.user_account(name) not in grp.getgrnam("gds-unit-c").gr_mem


def test_spawn_fails_clearly_when_the_venv_is_out_of_reach():
    """The check the spawner runs before starting a server as another account."""
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        base.chmod(0o755)
        hidden = base / "home"
        (hidden / "venv" / "bin").mkdir(parents=True)
        script = hidden / "venv" / "bin" / "jupyterhub-singleuser"
        script.write_text("#!/bin/sh\n")
        script.chmod(0o755)
        hidden.chmod(0o700)
        problem = _executable_problem(str(script))
        assert problem.startswith(f"{hidden} is mode 700: other accounts cannot reach")
        hidden.chmod(0o755)
        assert _executable_problem(str(script)) is None
        script.chmod(0o700)
        assert "other accounts cannot execute it" in _executable_problem(str(script))
    finally:
        shutil.rmtree(base)
    assert _executable_problem(sys.executable) is None  # the venv we ship is reachable


# --- var/ --------------------------------------------------------------------------------------


def test_var_follows_the_filesystem_contract(platform_proc):
    var = platform_proc.var_dir
    st = var.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o711)
    for path in _secret_paths(var):
        st = os.stat(path)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600), path


def test_harden_var_applies_the_contract(tmp_path):
    var = tmp_path / "var"
    (var / "units" / "a").mkdir(parents=True)
    (var / "blobs" / "ab").mkdir(parents=True)
    for name in ("marketplace_kek", "blobs/ab/cdef", "units/tokens.json"):
        (var / name).write_text("s3cr3t-content")
        (var / name).chmod(0o644)
    (var / "build.sh").write_text("#!/bin/sh\n")
    (var / "build.sh").chmod(0o755)
    outside = tmp_path / "outside"
    outside.write_text("not var's")
    outside.chmod(0o644)
    (var / "link").symlink_to(outside)
    # a passage another module made (var/envs: venvs that sandbox accounts read) stays as is
    (var / "envs" / "e1" / "venv").mkdir(parents=True)
    (var / "envs" / "e1" / "venv" / "lib.py").write_text("x")
    for path, mode in (("envs", 0o711), ("envs/e1", 0o711), ("envs/e1/venv", 0o755),
                       ("envs/e1/venv/lib.py", 0o644)):
        (var / path).chmod(mode)
    nobody = pwd.getpwnam("nobody")
    os.chown(var / "units" / "a", nobody.pw_uid, nobody.pw_gid)
    (var / "units" / "a").chmod(0o750)

    changes = harden_var(var)

    def mode(p):
        return stat.S_IMODE(os.lstat(var / p).st_mode)

    assert mode(".") == 0o711
    assert mode("marketplace_kek") == mode("blobs/ab/cdef") == mode("units/tokens.json") == 0o600
    assert mode("build.sh") == 0o700
    assert mode("blobs") == mode("blobs/ab") == 0o700
    assert mode("units") == 0o711  # passage to the account's own directory
    assert mode("units/a") == 0o750  # the account's business
    assert (mode("envs"), mode("envs/e1/venv"), mode("envs/e1/venv/lib.py")) == (
        0o711, 0o755, 0o644)
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644  # links are not followed
    assert any("marketplace_kek" in line for line in changes)
    assert not any("s3cr3t" in line for line in changes)  # modes only, no content
    assert harden_var(var) == []  # idempotent


# --- what the user's code can reach ------------------------------------------------------------

PROBE = r'''
import json, os, socket
cfg = json.loads(CONFIG)
out = {"uid": os.getuid(), "read": {}, "environ": {}, "connect": {}, "listdir": {}}
for p in cfg["read"]:
    try:
        with open(p, "rb") as f:
            f.read(1)
        out["read"][p] = "read"
    except OSError as e:
        out["read"][p] = type(e).__name__
for pid in cfg["environ"]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            out["environ"][str(pid)] = "read" if f.read() else "empty"
    except OSError as e:
        out["environ"][str(pid)] = type(e).__name__
for name, port in cfg["connect"].items():
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect(("127.0.0.1", port))
        out["connect"][name] = "connected"
    except OSError as e:
        out["connect"][name] = type(e).__name__
    finally:
        s.close()
for d in cfg["listdir"]:
    try:
        os.listdir(d)
        out["listdir"][d] = "listed"
    except OSError as e:
        out["listdir"][d] = type(e).__name__
import http.client, urllib.parse
for url in cfg.get("http", []):
    # no redirects followed: a 302 to the login page is a refusal
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    token = os.environ.get("JUPYTERHUB_API_TOKEN")
    try:
        conn.request("GET", u.path, headers={"Authorization": f"token {token}"} if token else {})
        out.setdefault("http", {})[url] = conn.getresponse().status
    except OSError as e:
        out.setdefault("http", {})[url] = type(e).__name__
    finally:
        conn.close()
procs = {}
for e in os.listdir("/proc"):
    if e.isdigit():
        try:
            with open(f"/proc/{e}/cmdline", "rb") as f:
                procs[e] = f.read().replace(b"\0", b" ").decode(errors="replace")[:20000]
        except OSError:
            pass
out["procs"] = procs
# markers split in the source: the probe's own command line (in procs) must not match them
print("@@PRO" "BE@@" + json.dumps(out) + "@@E" "ND@@")
'''


def _probe_config(platform_proc, platform_pids, servers) -> dict:
    env = platform_proc.env
    other = servers[OTHER].env
    ports = {
        "hub API": int(env["MARKET_HUB_API_PORT"]),
        "proxy API": int(env["MARKET_PROXY_API_PORT"]),
        "marketplace service": int(env["MARKET_SERVICE_PORT"]),
        "other user's server": _port(other["JUPYTERHUB_SERVICE_URL"]),
    }
    if _port(other["SPARK_REMOTE"]) != _port(servers[USER].env["SPARK_REMOTE"]):
        # (units sharing one server fail test_each_unit_has_its_own_endpoint instead)
        ports["other unit's Spark"] = _port(other["SPARK_REMOTE"])
    return {
        "read": _secret_paths(platform_proc.var_dir),
        "environ": [platform_pids.hub, platform_pids.service, platform_pids.proxy],
        "connect": ports,
        "listdir": [other["HOME"], str(platform_proc.var_dir)],
        # the other user's server through the proxy's public address, with our own token
        "http": [f"{platform_proc.url}/user/{OTHER}/api/status"],
    }


def _parse_probe(text: str) -> dict:
    match = re.search(r"@@PROBE@@(.*?)@@END@@", text, re.S)
    assert match, f"the probe printed no result:\n{text[-3000:]}"
    return json.loads(match.group(1).replace("\r\n", ""))


def _assert_confined(result: dict, cfg: dict, account: str) -> None:
    assert result["uid"] == pwd.getpwnam(account).pw_uid
    assert {p: r for p, r in result["read"].items() if r == "read"} == {}
    assert {p: r for p, r in result["environ"].items() if r in ("read", "empty")} == {}
    assert {d: r for d, r in result["listdir"].items() if r == "listed"} == {}
    assert set(result["read"]) == set(cfg["read"])
    assert {u: r for u, r in result["http"].items()
            if r == 200 and f"/user/{USER}/" not in u} == {}


#: how the platform's processes look in /proc/<pid>/cmdline
PLATFORM_COMMANDS = ("-m jupyterhub", "-m marketplace_ext", "configurable-http-proxy", "java ",
                     "jupyterhub-singleuser", "postgres")


def test_kernel_is_confined(servers, platform_proc, platform_pids):
    server = servers[USER]
    cfg = _probe_config(platform_proc, platform_pids, servers)
    code = f"CONFIG = {json.dumps(json.dumps(cfg))}\n" + PROBE
    result = _parse_probe(execute(server.url, server.token, code, timeout=120))
    _assert_confined(result, cfg, accounts.user_account(USER))
    assert {name: r for name, r in result["connect"].items() if r == "connected"} == {}
    platform_seen = {pid: cmd for pid, cmd in result["procs"].items()
                     if any(word in cmd for word in PLATFORM_COMMANDS)}
    assert platform_seen == {}, "the sandboxed kernel sees platform processes"
    # its own PID namespace: only the sandbox's own few processes
    assert len(result["procs"]) < 10, result["procs"]


def test_kernel_reaches_its_own_units_data_platform(servers):
    server = servers[USER]
    out = execute(server.url, server.token, """
import json, os
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
one = spark.sql("SELECT 1 AS x").collect()[0].x
print(json.dumps({"remote": os.environ["SPARK_REMOTE"], "one": one}))
""", timeout=240)
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {"remote": server.env["SPARK_REMOTE"], "one": 1}


def test_terminal_cannot_read_the_platforms_secrets(servers, platform_proc, platform_pids):
    """A JupyterLab terminal is a plain shell as the user's account (not sandboxed): the
    account's permissions alone must keep secrets, environments and other homes out."""
    server = servers[USER]
    cfg = _probe_config(platform_proc, platform_pids, servers)
    own = f"{platform_proc.url}/user/{USER}/api/status"
    cfg["http"].append(own)  # the control: the same request to the user's own server
    probe_dir = Path(tempfile.mkdtemp(prefix="probe-"))
    try:
        probe_dir.chmod(0o755)
        probe = probe_dir / f"probe-{uuid.uuid4().hex[:6]}.py"
        probe.write_text(f"CONFIG = {json.dumps(json.dumps(cfg))}\n" + PROBE)
        probe.chmod(0o644)
        # `python` is the venv's: the server puts it first on the terminal's PATH
        text = run_in_terminal(server.url, server.token, f"python {probe}")
    finally:
        shutil.rmtree(probe_dir)
    result = _parse_probe(text)
    _assert_confined(result, cfg, accounts.user_account(USER))
    # the terminal has the network: the proxy answers, and refuses the other user's server
    assert result["http"][own] == 200
    assert all(isinstance(status, int) for status in result["http"].values()), result["http"]
    # refused by the modes (the paths exist and the processes run: nothing was missed)
    assert set(result["read"].values()) == {"PermissionError"}, result["read"]
    assert set(result["environ"].values()) == {"PermissionError"}, result["environ"]
    # the platform's processes are visible (same PID namespace) but not their environments,
    # and no secret is on a command line (/proc/<pid>/cmdline is world-readable)
    visible = {int(p) for p in result["procs"]}
    assert platform_pids.service in visible
    cmdlines = "\n".join(result["procs"].values())
    secrets = _platform_secrets(platform_proc, platform_pids)
    assert sorted(n for n, v in secrets.items() if v in cmdlines) == []


def test_plain_process_as_the_account_cannot_read_secrets(servers, platform_proc, platform_pids):
    """The same from a process started outside JupyterLab as the account (what a terminal is
    if JupyterLab's terminals are switched off)."""
    cfg = _probe_config(platform_proc, platform_pids, servers)
    account = pwd.getpwnam(accounts.user_account(USER))
    done = subprocess.run(
        ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--init-groups",
         "--", sys.executable, "-c", f"CONFIG = {json.dumps(json.dumps(cfg))}\n" + PROBE],
        capture_output=True, text=True, timeout=60, cwd="/",
        env={"PATH": os.defpath, "HOME": servers[USER].env["HOME"]})
    assert done.returncode == 0, done.stderr
    _assert_confined(_parse_probe(done.stdout), cfg, account.pw_name)
