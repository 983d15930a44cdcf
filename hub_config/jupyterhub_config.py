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
from marketplace_ext.platform import DataPlatform

c = get_config()  # noqa: F821 - provided by jupyterhub

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VAR = Path(os.environ.get("MARKET_VAR_DIR") or ROOT / "var").resolve()
VAR.mkdir(parents=True, exist_ok=True)
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
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = str(VAR / "users" / "{username}")
c.Spawner.cmd = [str(BIN / "jupyterhub-singleuser")]
c.Spawner.default_url = "/lab"
c.Spawner.http_timeout = 60
c.Spawner.start_timeout = 90
if os.geteuid() == 0:
    # sessions and CI run as root; Jupyter Server refuses to start as root without this
    c.Spawner.args = ["--allow-root"]

MARKETPLACE_URL = f"{PUBLIC_URL.rstrip('/')}/services/marketplace/"


def unit_of(spawner) -> str:
    units = sorted(g.name[len("unit-"):] for g in spawner.user.groups if g.name.startswith("unit-"))
    return units[0] if units else ""


# each unit's data platform endpoint: MARKET_SPARK_ENDPOINTS='{"a": "sc://host:15002"}' for
# units with their own Spark Connect server; the rest share MARKET_SPARK_REMOTE (embedded)
DATA_PLATFORM = DataPlatform(
    endpoints=json.loads(env("MARKET_SPARK_ENDPOINTS", "{}")),
    default_endpoint=env("MARKET_SPARK_REMOTE", "sc://127.0.0.1:15002"),
)


def spark_remote_of(spawner) -> str:
    unit = unit_of(spawner)
    # a user in no unit gets no platform: the embedded default isolates units by database only
    return DATA_PLATFORM.spark_remote_for(unit) if unit else ""


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
