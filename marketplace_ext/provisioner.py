"""A jupyter_client kernel provisioner that starts every kernel in the sandbox.

Selected by a kernelspec's ``metadata.kernel_provisioner``::

    "metadata": {"kernel_provisioner": {"provisioner_name": "grid-sandbox-provisioner"}}

(``kernels/grid-python/kernel.json`` and every product environment's kernelspec carry it), so
papermill, the warm predict kernels and users' JupyterLab servers start kernels the same way:

- in the marketplace service (root): the caller prepared a :class:`~.sandbox.workspace.
  Workspace` and passes its spec template in the kernel's environment as
  ``GRID_SANDBOX_SPEC=<file>``; the kernel runs as the template's account (``gds-run-<unit>``)
  with its view, limits and Spark relay;
- in a user's JupyterLab (the server runs unprivileged as ``jupyter-<name>``): no account
  change; the sandbox sees the user's home read-write (the kernel's directory is in it), the
  interpreter read-only, and its network is only the relays to the unit's ``SPARK_REMOTE``
  and to the hub's public address (``MARKETPLACE_URL``: what a browser reaches, with the
  user's own token) from the server's environment; not the hub API, the proxy API, the
  service's own port, PostgreSQL, other units' platforms or other users' servers; limits
  from ``SandboxConfig``;
- already inside a sandbox (``GRID_SANDBOX=1``: papermill in a sandboxed run): a plain local
  kernel, since the sandbox is around it already.

The kernel talks to its client over ZeroMQ ``ipc`` (Unix sockets in a directory bound into the
sandbox): the sandbox has no network to carry TCP. Interrupts go as messages
(``interrupt_mode: "message"`` in the kernelspec): a signal to the launcher would not reach a
kernel in another PID namespace. Stopping the kernel kills its launcher, and the sandbox's PID
namespace takes every process the kernel started along.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from jupyter_client.provisioning import LocalProvisioner
from traitlets import Bool

from .bundle import TEMPLATES_DIR
from .sandbox.config import SandboxConfig
from .sandbox.files import account_ids
from .sandbox.spec import (
    INSIDE_ENV,
    SandboxSpec,
    launcher_argv,
    public_url_relay,
    spark_relay,
)
from .sandbox.workspace import spec_paths

#: names the spec template a service-side caller prepared (see module docstring)
SPEC_ENV = "GRID_SANDBOX_SPEC"
#: what a user's own kernel keeps of the server's secrets: the user's own API token
USER_KERNEL_ENV = ("JUPYTERHUB_API_TOKEN", "MARKET_TOKEN")


class SandboxProvisioner(LocalProvisioner):
    """Starts the kernel in the sandbox (see the module docstring)."""

    enabled = Bool(
        True,
        help="""Start kernels in the sandbox. Turn off only where bubblewrap cannot run; the
        kernel then runs as a plain local kernel, with the server's account and network.""",
    ).tag(config=True)

    _spec: SandboxSpec | None = None

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        env = dict(kwargs.pop("env", None) or os.environ)
        template = env.pop(SPEC_ENV, None)
        # papermill's cwd= (and a plain jupyter_client caller) changes the process's directory
        # instead of passing one: the kernel must start there, inside the sandbox too
        if not kwargs.get("cwd"):
            kwargs["cwd"] = os.getcwd()
        if os.environ.get(INSIDE_ENV) == "1" or not self.enabled or self.parent is None:
            return await super().pre_launch(env=env, **kwargs)
        km = self.parent
        if template:
            spec = SandboxSpec.from_dict(_read_json(template))
        else:
            spec = self._user_spec(env, kwargs.get("cwd"))
            env = user_kernel_env(env)
        assert spec.socket_dir
        os.makedirs(spec.socket_dir, mode=0o700, exist_ok=True)
        # before the connection file is written: the sandbox has no network for tcp
        km.transport = "ipc"
        km.cache_ports = False
        km.ip = os.path.join(spec.socket_dir, "k")
        kwargs = await super().pre_launch(env=env, **kwargs)
        ids = account_ids(spec.account)
        if ids is not None:  # the kernel reads its connection file (0600) as the account
            os.lchown(km.connection_file, *ids)
            os.lchown(spec.socket_dir, *ids)
        connection_file = os.path.abspath(km.connection_file)
        if not connection_file.startswith(spec.workdir.rstrip("/") + "/"):
            spec.binds.append((connection_file, connection_file, False))
        spec.command = list(kwargs["cmd"])
        if spec.chdir is None and kwargs.get("cwd"):
            spec.chdir = str(kwargs["cwd"])
        spec_file = Path(template).with_name(f"kernel-{self.kernel_id}.json") if template \
            else Path(spec.socket_dir) / "spec.json"
        spec.write(spec_file)
        self._spec = spec
        kwargs["cmd"] = launcher_argv(spec_file)
        return kwargs

    def _user_spec(self, env: dict[str, str], cwd: str | None) -> SandboxSpec:
        """The sandbox of a kernel in a user's own server: the home read-write, no account
        change, the server's SPARK_REMOTE relayed, limits from ``SandboxConfig``."""
        home = env.get("HOME") or os.path.expanduser("~")
        workdir = home if os.path.isdir(home) else (cwd or os.getcwd())
        relays = [r for r in (spark_relay(env.get("SPARK_REMOTE")),
                              public_url_relay(env.get("MARKETPLACE_URL"))) if r is not None]
        kernel = self.kernel_spec
        binds = [(p, p, False) for p in spec_paths(kernel.resource_dir, kernel.argv)]
        # the product skeletons `market new` and `new_product` copy from: public, read-only
        if TEMPLATES_DIR.is_dir():
            binds.append((str(TEMPLATES_DIR), str(TEMPLATES_DIR), False))
        if cwd and not (os.path.realpath(cwd) + "/").startswith(
                os.path.realpath(workdir).rstrip("/") + "/"):
            binds.append((str(cwd), str(cwd), True))  # a notebook outside the home
        return SandboxSpec(
            command=[], workdir=workdir, account=None, binds=binds,
            # a short path of the user's own (0700) under /tmp, not the runtime directory in
            # the home: a Unix socket's path is at most 107 bytes, and homes can be deep
            socket_dir=tempfile.mkdtemp(prefix=f"gds-k-{self.kernel_id[:8]}-"),
            relays=relays,
            limits=SandboxConfig(parent=self).limits(),
        )

    async def cleanup(self, restart: bool = False) -> None:
        await super().cleanup(restart)
        spec, self._spec = self._spec, None
        if spec is not None and spec.account is None and spec.socket_dir:
            # the user's own runtime directory: leave no sockets behind
            import shutil

            shutil.rmtree(spec.socket_dir, ignore_errors=True)


def user_kernel_env(env: dict[str, str]) -> dict[str, str]:
    """What a user's own kernel keeps of its server's environment: the user's settings
    (``MARKET_UNIT``, ``MARKET_FL_HOME``, ``SPARK_REMOTE``...) and the user's own API token, so
    the Market client, the shop widgets and the FL notebooks work from a notebook (through the
    public address only: the hub API, the proxy API and the service's own port are not
    reachable from in there); not the server's other hub credentials (OAuth client, cookie)
    nor anything named like a secret."""
    kept = {k: v for k, v in env.items()
            if not k.startswith(("JUPYTERHUB_", "CONFIGPROXY_"))
            and not any(w in k.upper() for w in ("SECRET", "PASSWORD"))}
    kept.update({k: env[k] for k in USER_KERNEL_ENV if k in env})
    return kept


def _read_json(path: str) -> dict:
    import json

    with open(path, encoding="utf-8") as f:
        return json.load(f)
