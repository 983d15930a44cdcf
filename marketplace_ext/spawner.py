"""Notebook servers as their users' own system accounts, with per-user limits.

:class:`GridSpawner` is JupyterHub's ``LocalProcessSpawner`` (the hub runs as root and starts
each server as another account), as The Littlest JupyterHub uses it:

- hub user ``alice`` gets system account ``jupyter-alice`` (:func:`accounts.user_account`),
  created at her first spawn, with a home ``<home_root>/jupyter-alice`` (mode 0700) and the
  group ``gds-unit-<unit>`` of her unit (the hub group ``unit-<unit>``), nothing else;
- limits come from config: ``mem_limit``, ``cpu_limit`` and ``proc_limit``. Where the machine
  has cgroup v2 they are the server's cgroup's ``memory.max``, ``cpu.max`` and ``pids.max``
  (the whole server: JupyterLab, kernels, terminals). Without cgroup v2 they are rlimits set
  before the server starts and inherited by everything it starts: ``RLIMIT_AS`` (per process
  address space), ``RLIMIT_NPROC`` (processes and threads of the account), and for CPU only a
  lower scheduling priority (``nice``), because rlimits cannot cap a CPU share;
- the server's environment is what the hub gives a server (its own ``JUPYTERHUB_*``), the
  configured ``environment`` (its unit's ``SPARK_REMOTE``) and the harmless parts of the hub's
  own environment: nothing of the hub's or the service's secrets.

On Kubernetes, KubeSpawner does the same with a pod per user (see docs/accounts.md).
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import resource
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner
from jupyterhub.traitlets import ByteSpecification
from traitlets import Bool, Float, Integer, Unicode, default

from . import accounts
from .envs import without_secrets

#: where cgroup v2 is mounted when the machine has it
CGROUP2_ROOT = Path("/sys/fs/cgroup")


class SpawnError(RuntimeError):
    """A notebook server cannot start; the message says why and what to change (the hub
    shows it on the spawn page)."""


def cgroup2_available(root: Path = CGROUP2_ROOT) -> bool:
    """True where the unified (v2) cgroup hierarchy is mounted at *root*."""
    return (root / "cgroup.controllers").exists()


def unit_of_user(user, prefix: str = "unit-") -> str:
    """The unit of a hub user: the hub group ``unit-<slug>`` the marketplace mirrors its
    membership into ('' when the user is in none; the first one if in several)."""
    units = sorted(g.name[len(prefix):] for g in user.groups if g.name.startswith(prefix))
    return units[0] if units else ""


def _interpreter_of(script: str) -> str | None:
    """The interpreter named on *script*'s ``#!`` line (console scripts of a venv)."""
    try:
        with open(script, "rb") as f:
            first = f.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    return words[0] if words else None


def _executable_problem(path: str) -> str | None:
    """Why another account could not run *path* (a directory above it, or its own mode)."""
    problem = accounts.traversable_problem(Path(path).parent)
    if problem:
        return problem
    try:
        mode = Path(path).stat().st_mode  # follows the venv's python symlink
    except OSError as e:
        return f"{path}: {e.strerror}"
    if not mode & stat.S_IXOTH:
        return f"{path} is mode {stat.S_IMODE(mode):o}: other accounts cannot execute it"
    return None


class GridSpawner(LocalProcessSpawner):
    """Each hub user's notebook server as that user's own system account (``jupyter-<name>``),
    with a private home and per-user memory, CPU and process limits. Needs a root hub."""

    account_prefix = Unicode(
        "jupyter-",
        help="""Prefix of the system account of each hub user: hub user ``alice`` runs as
        ``<prefix>alice`` (The Littlest JupyterHub's convention). The account is created with
        ``useradd --system`` at the user's first spawn.""",
    ).tag(config=True)

    home_root = Unicode(
        "/home",
        help="""Directory holding the users' homes: ``<home_root>/<account>``, owned by the
        account, mode 0700 (only that account, and root, can read it). Keep it outside the
        platform's ``var/`` and on a path every account can traverse.""",
    ).tag(config=True)

    shell = Unicode(
        "/bin/bash",
        help="""Login shell of the users' accounts, and ``$SHELL`` in their servers (what a
        JupyterLab terminal runs). The accounts have no password: nobody logs in with it.""",
    ).tag(config=True)

    unit_group_prefix = Unicode(
        "unit-",
        help="""Hub groups named ``<prefix><unit>`` tell a user's unit (the marketplace mirrors
        unit membership into them). The account joins that unit's system group
        ``gds-unit-<unit>`` and leaves the groups of units it no longer belongs to.""",
    ).tag(config=True)

    mem_limit = ByteSpecification(
        None,
        allow_none=True,
        help="""Memory limit of each user's server, e.g. ``4G`` (suffixes K, M, G, T); None:
        no limit. With cgroup v2 it is the ``memory.max`` of the server's cgroup: JupyterLab,
        its kernels and terminals together. Without cgroup v2 it is ``RLIMIT_AS``: the
        address space of each process of the server (a kernel that allocates past it gets
        MemoryError), which counts mapped but unused memory too, so leave room (a kernel with
        pyspark and torch maps over 1 GB).""",
    ).tag(config=True)

    cpu_limit = Float(
        None,
        allow_none=True,
        help="""CPU limit of each user's server in cores, e.g. ``1.5``; None: no limit. With
        cgroup v2 it is the server's ``cpu.max`` (a hard share of the machine). Without cgroup
        v2 there is no way to cap a CPU share: the server then runs at ``cpu_nice``, so the
        platform's own processes win when the CPUs are busy, and the limit is only passed to
        the server as ``$CPU_LIMIT`` for the user's information.""",
    ).tag(config=True)

    proc_limit = Integer(
        1024,
        help="""Most processes (threads included) a user's server may have at once; 0: no
        limit. cgroup v2: the server's ``pids.max``. Otherwise ``RLIMIT_NPROC`` of the
        account, which counts every thread the account runs: keep it well above what a
        JupyterLab with a few kernels uses (Spark Connect clients start dozens of threads).
        It stops a fork bomb in a terminal from taking the machine down.""",
    ).tag(config=True)

    cpu_nice = Integer(
        10,
        help="""Scheduling priority (``nice``, 0-19) of users' servers, so the hub, the service
        and the data platforms stay responsive when users keep the CPUs busy. It is what CPU
        limiting means on a machine without cgroup v2; 0 leaves the priority as it is.""",
    ).tag(config=True)

    start_here = Bool(
        True,
        help="""Put (and refresh) the "Start here" folder in each home at every spawn: a
        welcome notebook, the guided federated-learning notebooks and "Publish a product"
        (:mod:`marketplace_ext.start_here`). Files the user edited are never overwritten.""",
    ).tag(config=True)

    workshop_materials_dir = Unicode(
        "",
        help="""Where the marketplace stages enrolled trainees' workshop materials
        (``<var>/workshop_homes``); at every spawn they are installed into ``~/Workshops`` as
        the user's own account, never overwriting the trainee's edits. Empty: off.""",
    ).tag(config=True)

    cgroup_parent = Unicode(
        "gds-users",
        help="""cgroup v2 only: the cgroup (under /sys/fs/cgroup) holding one child cgroup
        per user's server, named after the account.""",
    ).tag(config=True)

    @property
    def account(self) -> str:
        return accounts.user_account(self.user.name, prefix=self.account_prefix)

    @property
    def home(self) -> str:
        return os.path.join(self.home_root, self.account)

    @property
    def unit(self) -> str:
        return unit_of_user(self.user, self.unit_group_prefix)

    @default("env_keep")
    def _env_keep_default(self):
        # the hub's own environment reaches servers only through this list: nothing that can
        # hold a secret (the proxy's token, MARKET_* settings with endpoints and keys)
        return ["JUPYTERHUB_SINGLEUSER_APP", "LANG", "LC_ALL", "PATH"]

    # --- start-up ----------------------------------------------------------------------------

    def _check_reachable(self) -> None:
        """The server runs as another account: it must be able to execute the command and its
        interpreter (a venv under /root, mode 0700, is not)."""
        script = shutil.which(self.cmd[0]) or self.cmd[0]
        for path in (script, _interpreter_of(script)):
            if path is None:
                continue
            problem = _executable_problem(path)
            if problem:
                raise SpawnError(f"the notebook server cannot run as {self.account}: "
                                 f"{problem}")

    def _leave_other_units(self, keep: str) -> None:
        """A user who moved to another unit must lose the old unit's data platform."""
        for group in grp.getgrall():
            if (group.gr_name.startswith("gds-unit-") and group.gr_name != keep
                    and self.account in group.gr_mem):
                done = subprocess.run(["gpasswd", "--delete", self.account, group.gr_name],
                                      capture_output=True, text=True, timeout=60)
                if done.returncode:
                    raise accounts.AccountError(f"gpasswd --delete {self.account} "
                                                f"{group.gr_name}: {done.stderr.strip()}")

    def _prepare(self) -> accounts.Account:
        """Blocking (useradd, chown): runs in a thread, not on the hub's event loop."""
        if os.geteuid() != 0:
            raise SpawnError("GridSpawner starts servers as the users' accounts and needs a "
                             "hub running as root (or choose c.JupyterHub.spawner_class = "
                             "'simple' for a single-account test setup)")
        self._check_reachable()
        unit = self.unit
        groups = (accounts.unit_group(unit),) if unit else ()
        try:
            account = accounts.ensure_account(self.account, home=self.home, groups=groups,
                                              shell=self.shell)
            self._leave_other_units(groups[0] if groups else "")
        except accounts.AccountError as e:
            raise SpawnError(f"no system account for {self.user.name}: {e}") from e
        self._install_start_here(account)
        if cgroup2_available():
            self._cgroup = self._make_cgroup()
        else:
            self._cgroup = None
            if self.cpu_limit:
                self.log.info("No cgroup v2 here: cpu_limit %s of %s is not enforced, the "
                              "server runs at nice %d", self.cpu_limit, self.account,
                              self.cpu_nice)
        return account

    def _install_start_here(self, account: accounts.Account) -> None:
        """Refresh the home's "Start here" folder (:mod:`marketplace_ext.start_here`) as the
        user's own account, so nothing in the home the user controls is written by root. A
        failure is logged and the server starts anyway."""
        if not self.start_here:
            return
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": self.home}
        try:
            runuser = shutil.which("runuser", path=env["PATH"]) or "runuser"
            done = subprocess.run(
                [runuser, "-u", account.name, "--", sys.executable, "-m",
                 "marketplace_ext.start_here", self.home],
                capture_output=True, text=True, timeout=60, env=env, cwd="/")
        except (OSError, subprocess.TimeoutExpired) as e:
            self.log.warning("Start-here folder of %s not refreshed: %s", self.user.name, e)
            return
        if done.returncode:
            self.log.warning("Start-here folder of %s not refreshed: %s", self.user.name,
                             done.stderr.strip()[-500:])
        else:
            self.log.info("Start-here folder of %s: %s", self.user.name, done.stdout.strip())
        if self.workshop_materials_dir:
            self._install_workshops(runuser, account, env)

    def _install_workshops(self, runuser: str, account: accounts.Account, env: dict) -> None:
        """``~/Workshops``: the materials of the user's workshops (exchange/workshops.py)."""
        import base64
        import json

        from .exchange.workshops import HOME_FOLDER, read_home_materials

        files = read_home_materials(Path(self.workshop_materials_dir), self.user.name)
        if not files:
            return
        payload = json.dumps({k: base64.b64encode(v).decode() for k, v in files.items()})
        try:
            done = subprocess.run(
                [runuser, "-u", account.name, "--", sys.executable, "-m",
                 "marketplace_ext.start_here", self.home, "--stdin", HOME_FOLDER],
                input=payload, capture_output=True, text=True, timeout=60, env=env, cwd="/")
        except (OSError, subprocess.TimeoutExpired) as e:
            self.log.warning("Workshop materials of %s not installed: %s", self.user.name, e)
            return
        level = self.log.warning if done.returncode else self.log.info
        level("Workshop materials of %s: %s", self.user.name,
              (done.stderr if done.returncode else done.stdout).strip()[-500:])

    async def start(self):
        self._account = await asyncio.to_thread(self._prepare)
        return await super().start()

    def user_env(self, env: dict) -> dict:
        env["USER"] = env["LOGNAME"] = self.account
        env["HOME"] = self.home
        env["SHELL"] = self.shell
        # the venv's python, pip and jupyter come first in a terminal
        bin_dir = os.path.dirname(sys.executable)
        path = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p != bin_dir]
        env["PATH"] = os.pathsep.join([bin_dir, *path])
        return env

    def get_env(self) -> dict:
        env = super().get_env()
        inherited = {k: env[k] for k in self.env_keep if k in env and k not in self.environment}
        for key in set(inherited) - set(without_secrets(inherited)):
            self.log.warning("Not passing %s from the hub's environment to %s's server",
                             key, self.user.name)
            del env[key]
        return env

    def get_args(self) -> list[str]:
        # JupyterLab terminals: a login shell would take PATH from /etc/profile, without the
        # venv; an interactive shell keeps the server's PATH (and still reads ~/.bashrc)
        return [*super().get_args(), f"--ServerApp.terminado_settings=shell_command={self.shell}"]

    def make_preexec_fn(self, name: str):
        """Runs in the child between fork and exec, as root: limits first (lowering them needs
        no privilege, but the cgroup move and ``oom_score_adj`` do), then the account."""
        account = self._account
        gids = os.getgrouplist(account.name, account.gid)
        home = self.home
        cgroup = self._cgroup
        rlimits: list[tuple[int, int]] = []
        if cgroup is None:
            if self.mem_limit:
                rlimits.append((resource.RLIMIT_AS, int(self.mem_limit)))
            if self.proc_limit:
                rlimits.append((resource.RLIMIT_NPROC, int(self.proc_limit)))
        nice = self.cpu_nice if cgroup is None else 0

        def preexec():
            if cgroup is not None:
                with open(cgroup / "cgroup.procs", "w") as f:
                    f.write(str(os.getpid()))
            for which, value in rlimits:
                resource.setrlimit(which, (value, value))
            if nice:
                os.nice(nice)
            # under memory pressure the kernel kills a user's kernel before the platform
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("500")
            os.setgid(account.gid)
            os.setgroups(gids)
            os.setuid(account.uid)
            os.umask(0o022)
            os.chdir(home)

        return preexec

    # --- cgroup v2 ---------------------------------------------------------------------------

    def _make_cgroup(self) -> Path:
        parent = CGROUP2_ROOT / self.cgroup_parent
        parent.mkdir(exist_ok=True)
        wanted = {"memory", "cpu", "pids"}
        for level in (CGROUP2_ROOT, parent):
            available = set((level / "cgroup.controllers").read_text().split())
            enable = " ".join(f"+{c}" for c in sorted(wanted & available))
            if enable:
                (level / "cgroup.subtree_control").write_text(enable)
        group = parent / self.account
        group.mkdir(exist_ok=True)
        limits = {
            "memory.max": str(int(self.mem_limit)) if self.mem_limit else "max",
            "cpu.max": f"{int(self.cpu_limit * 100000)} 100000" if self.cpu_limit else "max",
            "pids.max": str(self.proc_limit) if self.proc_limit else "max",
        }
        for name, value in limits.items():
            if (group / name).exists():
                (group / name).write_text(value)
        return group

    async def stop(self, now: bool = False):
        await super().stop(now=now)
        cgroup = getattr(self, "_cgroup", None)
        if cgroup is not None:
            try:  # empty once every process of the server is gone
                cgroup.rmdir()
            except OSError:
                pass

    async def move_certs(self, paths):
        # LocalProcessSpawner stages internal-SSL certificates in the home of the account
        # named like the hub user; ours is jupyter-<name>
        entry = pwd.getpwnam(self.account)
        out_dir = Path(self.home) / ".jupyterhub" / "jupyterhub-certs"
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
        moved = {}
        for key in ("keyfile", "certfile", "cafile"):
            target = out_dir / os.path.basename(paths[key])
            (shutil.copy if key == "cafile" else shutil.move)(paths[key], target)
            moved[key] = str(target)
        for path in (out_dir.parent, out_dir, *map(Path, moved.values())):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return moved
