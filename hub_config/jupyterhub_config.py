"""JupyterHub configuration of the Grid Data Supermarket.

Everything host- or secret-specific comes from environment variables (``MARKET_*``) or from
``hub_config/local_config.py`` (git-ignored; ``MARKET_LOCAL_CONFIG`` names another file), with
safe defaults for the embedded mode: state under ``var/``, loopback only, generated secrets.
"""

import json
import os
import sys
from pathlib import Path

from marketplace_ext.auth import (
    CUSTOM_SCOPES,
    SCOPE_APPROVE,
    SCOPE_PUBLISH,
    SCOPE_SUBSCRIBE,
)
from marketplace_ext.errors import PlatformUnavailable
from marketplace_ext.hardening import harden_var
from marketplace_ext.platform import DataPlatform
from marketplace_ext.platform.supervisor import EndpointsFile

c = get_config()  # noqa: F821 - provided by jupyterhub

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VAR = Path(os.environ.get("MARKET_VAR_DIR") or ROOT / "var").resolve()
VAR.mkdir(parents=True, exist_ok=True)
# var/ is the platform's alone (0711, secrets 0600, directories 0700 unless an account's):
# applied at every start, before any user's server or product run exists
harden_var(VAR)
# what the hub and the service create on their first start would otherwise get the default
# modes (0644, 0755) until the next start: the hub's database, the blob store, upload area
if not os.environ.get("MARKET_HUB_DB_URL"):
    os.close(os.open(VAR / "jupyterhub.sqlite", os.O_WRONLY | os.O_CREAT, 0o600))
for _private in ("blobs", "tmp"):
    (VAR / _private).mkdir(mode=0o700, exist_ok=True)
BIN = Path(sys.executable).parent


def env(name: str, default: str) -> str:
    return os.environ.get(name) or default


HUB_IP = env("MARKET_HUB_IP", "127.0.0.1")
HUB_PORT = int(env("MARKET_HUB_PORT", "8000"))
HUB_API_PORT = int(env("MARKET_HUB_API_PORT", "8081"))
PROXY_API_PORT = int(env("MARKET_PROXY_API_PORT", "8001"))
SERVICE_PORT = int(env("MARKET_SERVICE_PORT", "10101"))
OPERATOR = env("MARKET_OPERATOR_USER", "operator")
PUBLIC_URL = env("MARKET_PUBLIC_URL", f"http://{HUB_IP}:{HUB_PORT}")

# --- the hub and its proxy -------------------------------------------------------------------
c.JupyterHub.bind_url = f"http://{HUB_IP}:{HUB_PORT}"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = HUB_API_PORT
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{PROXY_API_PORT}"
c.ConfigurableHTTPProxy.command = [
    env("MARKET_CHP", str(ROOT / "node_modules" / ".bin" / "configurable-http-proxy"))
]
c.ConfigurableHTTPProxy.pid_file = str(VAR / "jupyterhub-proxy.pid")
c.JupyterHub.db_url = env("MARKET_HUB_DB_URL", f"sqlite:///{VAR / 'jupyterhub.sqlite'}")
c.JupyterHub.cookie_secret_file = str(VAR / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(VAR / "jupyterhub.pid")
c.JupyterHub.cleanup_servers = True
c.JupyterHub.cleanup_proxy = True

# --- login: sign up, then an operator authorizes (the real-name check) -------------------------
c.JupyterHub.authenticator_class = "native"
c.NativeAuthenticator.open_signup = False
c.NativeAuthenticator.minimum_password_length = 8
# NativeAuthenticator's own is_authorized flag is the gate; without allow_all JupyterHub 5
# refuses every authorized user.
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {OPERATOR}
c.JupyterHub.template_vars = {"announcement_login": "Grid Data Supermarket - new accounts "
                              "wait for an operator's authorization."}

# --- notebook servers --------------------------------------------------------------------------
# each hub user's server runs as their own system account jupyter-<name> (created at the first
# spawn), home <home_root>/jupyter-<name> mode 0700, in the group gds-unit-<unit> of their unit;
# the hub stays root to start them (docs/accounts.md; KubeSpawner is the scale-out setting)
c.JupyterHub.spawner_class = "marketplace_ext.spawner.GridSpawner"
c.GridSpawner.home_root = env("MARKET_USER_HOME_ROOT", "/home")
# enrolled trainees' workshop materials, staged by the service, installed into ~/Workshops
c.GridSpawner.workshop_materials_dir = str(VAR / "workshop_homes")
# per-user limits (cgroup v2 where the machine has it, else rlimits and nice; see the help of
# GridSpawner.mem_limit / cpu_limit / proc_limit); per-user exceptions: c.Spawner.pre_spawn_hook
c.GridSpawner.mem_limit = env("MARKET_USER_MEM_LIMIT", "8G")
c.GridSpawner.cpu_limit = float(env("MARKET_USER_CPU_LIMIT", "1.0"))
c.GridSpawner.proc_limit = int(env("MARKET_USER_PROC_LIMIT", "1024"))
c.Spawner.cmd = [str(BIN / "jupyterhub-singleuser")]
c.Spawner.default_url = "/lab"
c.Spawner.http_timeout = 60
c.Spawner.start_timeout = 90
# nothing of the hub's own environment but these (the service's MARKET_* settings and the
# proxy's token stay out); a server gets its own token and its unit's SPARK_REMOTE below
c.Spawner.env_keep = ["JUPYTERHUB_SINGLEUSER_APP", "LANG", "LC_ALL", "PATH"]
# users' kernels start in the sandbox (kernels/grid-python: own PID and network namespaces, only
# the unit's Spark endpoint reachable); the plain python3 kernelspec would bypass it
# JupyterLab: a "Grid Data Supermarket" Launcher card (a prebuilt extension, no build step)
# and Help-menu entries, the news prompt off (settings overrides); the "Start here" folder of
# every home is GridSpawner.start_here (marketplace_ext/start_here.py)
LAB = ROOT / "marketplace_ext" / "jupyterlab"
c.Spawner.args = ["--KernelSpecManager.allowed_kernelspecs=grid-python",
                  "--MultiKernelManager.default_kernel_name=grid-python",
                  f"--LabApp.extra_labextensions_path={LAB / 'labextensions'}",
                  f"--LabApp.app_settings_dir={LAB / 'settings'}"]

MARKETPLACE_URL = f"{PUBLIC_URL.rstrip('/')}/services/marketplace/"


def unit_of(spawner) -> str:
    units = sorted(g.name[len("unit-"):] for g in spawner.user.groups if g.name.startswith("unit-"))
    return units[0] if units else ""


# each unit's data platform, URL with token: a remote endpoint from MARKET_SPARK_ENDPOINTS
# ('{"a": "sc://spark-a.example:15002/;token=..."}', TLS), else the unit's own embedded server,
# whose port and token the marketplace service keeps in var/platform/unit_servers.json (0600,
# read at every spawn, so units created later work too). MARKET_SPARK_REMOTE instead puts every
# unit on one shared server (development and tests only: no isolation between units).
DATA_PLATFORM = DataPlatform(
    endpoints=json.loads(env("MARKET_SPARK_ENDPOINTS", "{}")),
    default_endpoint=env("MARKET_SPARK_REMOTE", "sc://127.0.0.1:15002"),
    servers=None if os.environ.get("MARKET_SPARK_REMOTE") else EndpointsFile(VAR / "platform"),
)


def spark_remote_of(spawner) -> str:
    """The user's own unit's endpoint and token, nothing else; a user in no unit gets none."""
    unit = unit_of(spawner)
    if not unit:
        return ""
    try:
        return DATA_PLATFORM.spark_remote_for(unit)
    except PlatformUnavailable as e:  # the unit's server was never started (yet)
        spawner.log.warning("%s: %s has no SPARK_REMOTE", e.message, spawner.user.name)
        return ""


def database_of(spawner) -> str:
    unit = unit_of(spawner)
    return DATA_PLATFORM.database_for(unit) if unit else ""


c.Spawner.environment = {
    "MARKETPLACE_URL": MARKETPLACE_URL,
    "MARKET_UNIT": unit_of,
    "SPARK_REMOTE": spark_remote_of,
    # products call spark.catalog.setCurrentDatabase($UNIT_DATABASE) (product_templates/README)
    "UNIT_DATABASE": database_of,
}
# the notebook's own JUPYTERHUB_API_TOKEN may call the marketplace with the user's rights
# (the hub grants only the subset the user actually holds)
c.Spawner.server_token_scopes = [
    "users:activity!user",
    "access:servers!server",
    "access:services!service=marketplace",
    SCOPE_SUBSCRIBE,
    SCOPE_PUBLISH,
    SCOPE_APPROVE,
]

# --- scopes, roles and groups ------------------------------------------------------------------
c.JupyterHub.custom_scopes = CUSTOM_SCOPES
c.JupyterHub.load_groups = {"operators": {"users": [OPERATOR]}, "publishers": {"users": []}}
c.JupyterHub.load_roles = [
    {
        "name": "user",
        "description": "Every authorized member: their own resources, browse and subscribe",
        "scopes": ["self", "access:services!service=marketplace", SCOPE_SUBSCRIBE],
    },
    {
        "name": "marketplace-publisher",
        "description": "Publish products on behalf of the member's unit",
        "scopes": [SCOPE_PUBLISH],
        "groups": ["publishers"],
    },
    {
        "name": "marketplace-operator",
        "description": "Run the marketplace: review listings, units, members, account approval",
        "scopes": [SCOPE_APPROVE, "admin:users", "admin-ui", "list:users", "read:users",
                   "list:groups", "read:groups", "read:roles"],
        "groups": ["operators"],
    },
    {
        "name": "marketplace-service",
        "description": "The marketplace service mirrors units into hub groups",
        "scopes": ["admin:users", "admin:groups", "list:users", "list:groups"],
        "services": ["marketplace"],
    },
]

# --- the marketplace service -------------------------------------------------------------------
# JupyterHub gives a managed service ten one-second tries to answer HTTP, then exits. Ours
# imports pandas, pyspark and nbformat and migrates its database first: on two loaded cores
# that can take longer than 10 s, and the whole hub stopped. Each try waits up to 6 s for it.
SERVICE_START_TRY_SECONDS = 6.0


def _patient_wait_up(wait_up):
    def wait(server, timeout=10, http=False, ssl_context=None, extra_path=""):
        if http and timeout == 1 and server.port == SERVICE_PORT:
            timeout = SERVICE_START_TRY_SECONDS
        return wait_up(server, timeout=timeout, http=http, ssl_context=ssl_context,
                       extra_path=extra_path)
    return wait


from jupyterhub.objects import Server  # noqa: E402

if not getattr(Server.wait_up, "_market_patient", False):
    Server.wait_up = _patient_wait_up(Server.wait_up)
    Server.wait_up._market_patient = True

SERVICE_ENV = {
    k: v for k, v in os.environ.items()
    if k.startswith("MARKET_") or k in {"PATH", "LANG", "LC_ALL", "HOME", "PYTHONPATH", "JAVA_HOME"}
}
SERVICE_ENV["MARKET_VAR_DIR"] = str(VAR)
c.JupyterHub.services = [
    {
        "name": "marketplace",
        "url": f"http://127.0.0.1:{SERVICE_PORT}",
        "command": [sys.executable, "-m", "marketplace_ext",
                    f"--config={HERE / 'marketplace_config.py'}"],
        "cwd": str(ROOT),
        "environment": SERVICE_ENV,
        "oauth_no_confirm": True,
        "display": True,
        "oauth_client_allowed_scopes": [SCOPE_SUBSCRIBE, SCOPE_PUBLISH, SCOPE_APPROVE],
    }
]

# --- site overrides ----------------------------------------------------------------------------
LOCAL_CONFIG = Path(env("MARKET_LOCAL_CONFIG", str(HERE / "local_config.py")))
if LOCAL_CONFIG.exists():
    load_subconfig(str(LOCAL_CONFIG))  # noqa: F821 - provided by traitlets
