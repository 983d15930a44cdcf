"""What one sandbox is (:class:`SandboxSpec`) and the command line that makes it.

A sandbox is started as ``python -P -m marketplace_ext.sandbox.launch SPEC.json``
(:func:`launcher_argv`). The launcher runs as its caller (root in the service, the user in
JupyterLab), starts the Spark relay's outer half and then the command of :func:`bwrap_argv`::

    prlimit --as=... --cpu=... --nproc=... --fsize=... --core=0 --
      setpriv --reuid=ACCOUNT --regid=GROUP --groups=UNIT_GROUP --no-new-privs --
        bwrap --unshare-all --die-with-parent --new-session --proc /proc --dev /dev
              --ro-bind /usr /usr ... (the view, below) --chdir WORKDIR --
          python -P -m marketplace_ext.sandbox.inside --relay PORT=SOCKET -- COMMAND...

Paths keep their names inside the sandbox (a run's working directory is the same path inside
and out), so a notebook's paths, a kernel's connection file and the interpreter need no
translation. The view: ``/usr`` (and the usrmerge links), a few files of ``/etc``, the
interpreter's environment (``sys.prefix``) and this package read-only, the spec's own binds
(the bundle, inputs, a product environment: read-only; the working directory: read-write),
``/tmp`` (a directory of the run's, so it counts against the disk limit), a private ``/proc``
and a minimal ``/dev``. Nothing else of the host exists in there: not ``var/``, not the
repository, not anyone's home.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from .limits import Limits

#: set in every sandboxed process: the kernel provisioner then starts kernels locally
INSIDE_ENV = "GRID_SANDBOX"
#: every process of a sandbox carries GRID_MARKET_RUN=<its working directory> (how the process
#: sweeps find what a crashed service left behind)
MARKER_ENV = "GRID_MARKET_RUN"

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # marketplace_ext/
# what of /etc a Python process needs: accounts and names (getpwuid, localhost), TLS roots,
# the dynamic linker's cache, the time zone, alternatives (links in /usr/bin point there)
ETC_FILES = ("passwd", "group", "hosts", "nsswitch.conf", "localtime", "timezone",
             "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "ssl", "ca-certificates",
             "alternatives", "mime.types", "os-release")
# with the network (environment builds only): name resolution and pip's configuration
NETWORK_ETC_FILES = ("resolv.conf", "gai.conf", "pip.conf", "xdg/pip")


class SandboxError(RuntimeError):
    """A sandbox cannot be set up here (bubblewrap missing, an account missing, ...)."""


@dataclass(frozen=True)
class Relay:
    """Inside the sandbox, 127.0.0.1:``port`` (and [::1]:``port``) forward to
    ``host``:``target_port`` outside, through a Unix socket."""

    port: int
    host: str
    target_port: int

    def to_dict(self) -> dict:
        return {"port": self.port, "host": self.host, "target_port": self.target_port}


def spark_relay(spark_remote: str | None) -> Relay | None:
    """The relay that keeps ``SPARK_REMOTE`` (``sc://localhost:PORT/;token=...``) working
    unchanged inside the sandbox, or None without a local endpoint. A Connect URL with a
    remote host would need TLS through the relay: not supported (the sandbox has no network)."""
    if not spark_remote:
        return None
    try:
        url = urlparse(spark_remote)
        host, port = url.hostname, url.port or 15002
    except ValueError:
        return None
    if url.scheme != "sc" or host not in ("localhost", "127.0.0.1", "::1"):
        return None
    return Relay(port, "127.0.0.1" if host != "::1" else "::1", port)


def public_url_relay(url: str | None) -> Relay | None:
    """The relay to the hub's public address (``MARKETPLACE_URL``'s host and port) for a
    user's own kernels: through it the kernel reaches what a browser reaches (the marketplace
    API, the hub's public pages), with the user's own token, and nothing behind the proxy's
    authentication. Product code never gets it. None unless the address is on loopback."""
    if not url:
        return None
    try:
        parsed = urlparse(url)
        host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError:
        return None
    if parsed.scheme not in ("http", "https") or host not in ("localhost", "127.0.0.1"):
        return None
    return Relay(port, "127.0.0.1", port)


@dataclass
class SandboxSpec:
    """One sandbox. ``account`` None: no change of account (the caller is unprivileged
    already, as a JupyterLab server is). ``binds`` are ``(source, destination, writable)``,
    applied in order after the working directory (so a read-only bind may sit inside it).
    ``socket_dir``: where the launcher creates the relays' Unix sockets (made the account's,
    0700). ``network``: keep the host's network (environment builds, for the package index);
    everything else gets a network namespace with only loopback."""

    command: list[str]
    workdir: str
    account: str | None = None
    groups: tuple[str, ...] = ()
    binds: list[tuple[str, str, bool]] = field(default_factory=list)
    tmp_dir: str | None = None
    socket_dir: str | None = None
    relays: list[Relay] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)
    network: bool = False
    chdir: str | None = None  # the command's directory, inside workdir (default: workdir)
    # the interpreter's environment and this package, read-only (the kernel and papermill run
    # from them); more read-only paths (a product environment) go in binds
    python_prefixes: tuple[str, ...] = field(default_factory=lambda: tuple(dict.fromkeys(
        (sys.prefix, sys.base_prefix))))

    def to_dict(self) -> dict:
        return {
            "command": list(self.command), "workdir": self.workdir, "account": self.account,
            "groups": list(self.groups), "binds": [list(b) for b in self.binds],
            "tmp_dir": self.tmp_dir, "socket_dir": self.socket_dir,
            "relays": [r.to_dict() for r in self.relays], "limits": self.limits.to_dict(),
            "network": self.network, "python_prefixes": list(self.python_prefixes),
            "chdir": self.chdir,
        }

    @classmethod
    def from_dict(cls, d: dict) -> SandboxSpec:
        return cls(
            command=[str(x) for x in d["command"]], workdir=str(d["workdir"]),
            account=d.get("account"), groups=tuple(d.get("groups") or ()),
            binds=[(str(s), str(t), bool(w)) for s, t, w in d.get("binds") or []],
            tmp_dir=d.get("tmp_dir"), socket_dir=d.get("socket_dir"),
            relays=[Relay(int(r["port"]), str(r["host"]), int(r["target_port"]))
                    for r in d.get("relays") or []],
            limits=Limits.from_dict(d.get("limits")), network=bool(d.get("network")),
            python_prefixes=tuple(d.get("python_prefixes") or ()), chdir=d.get("chdir"),
        )

    def socket_path(self, relay: Relay) -> str:
        if not self.socket_dir:
            raise SandboxError("a relay needs the spec's socket_dir")
        return os.path.join(self.socket_dir, f"relay-{relay.port}.sock")

    def write(self, path: str | Path) -> Path:
        """Write the spec for the launcher (mode 0600: it names the account and paths)."""
        path = Path(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f)
        return path


def bwrap_path() -> str:
    found = shutil.which("bwrap", path="/usr/bin:/usr/local/bin:/bin")
    if not found:
        raise SandboxError("bubblewrap (bwrap) is not installed: run `make install` as root, "
                           "or `apt-get install bubblewrap`")
    return found


def module_argv(module: str) -> list[str]:
    """``python -m marketplace_ext.sandbox.<module>``, started fast: without ``site`` (the
    environment's .pth files cost more than the module) and isolated (-I: no PYTHON*
    variables, no user site, and the working directory, a product's files, never shadows a
    module)."""
    code = (f"import sys; sys.path.insert(0, {str(PACKAGE_DIR.parent)!r}); "
            f"from marketplace_ext.sandbox.{module} import main; sys.exit(main())")
    return [sys.executable, "-I", "-S", "-c", code]


def launcher_argv(spec_path: str | Path) -> list[str]:
    """The command that starts the sandbox described by the spec file at ``spec_path``."""
    return [*module_argv("launch"), str(spec_path)]


def _prlimit(limits: Limits) -> list[str]:
    argv = ["prlimit", "--core=0"]
    if limits.memory:
        argv.append(f"--as={limits.memory}")
    if limits.cpu_seconds:
        # soft: SIGXCPU (the process may report it), hard a little later: SIGKILL
        argv.append(f"--cpu={limits.cpu_seconds}:{limits.cpu_seconds + 5}")
    if limits.processes:
        argv.append(f"--nproc={limits.processes}")
    if limits.file_size:
        argv.append(f"--fsize={limits.file_size}")
    return [*argv, "--"]


def _setpriv(spec: SandboxSpec) -> list[str]:
    if spec.account is None:
        return []
    import grp
    import pwd

    try:
        entry = pwd.getpwnam(spec.account)
    except KeyError:
        raise SandboxError(f"the sandbox account {spec.account!r} does not exist") from None
    groups = []
    for name in spec.groups:
        try:
            groups.append(str(grp.getgrnam(name).gr_gid))
        except KeyError:
            raise SandboxError(f"the sandbox group {name!r} does not exist") from None
    argv = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}"]
    argv += [f"--groups={','.join(groups)}"] if groups else ["--clear-groups"]
    return [*argv, "--no-new-privs", "--"]


def mounts(spec: SandboxSpec) -> list[tuple[str, str, bool]]:
    """The spec's own mounts, in order: ``(source, destination, writable)``. bwrap mounts them
    as the sandbox's account, so every directory above a source must let that account pass
    (mode 0711 or more: ``var/``, ``var/runs``, a run's directory; see
    :func:`marketplace_ext.accounts.traversable_problem`). Handing bwrap descriptors opened by
    root (``--bind-fd``) does not avoid that: bwrap 0.8 then fails with EACCES too."""
    out: list[tuple[str, str, bool]] = []
    # /tmp first: the interpreter, this package (a checkout under /tmp) and a working
    # directory (pytest's) may lie under it, and a later bind shows through an earlier one
    if spec.tmp_dir:
        # /dev/shm too: bwrap's /dev is a tmpfs (memory no limit sees); POSIX shared memory
        # and semaphores work as files there
        out += [(spec.tmp_dir, "/tmp", True), (spec.tmp_dir, "/dev/shm", True)]
    prefixes = [p for p in spec.python_prefixes if p and not p.startswith("/usr/")
                and p != "/usr"]
    out += [(p, p, False) for p in dict.fromkeys(prefixes)]
    if not any(str(PACKAGE_DIR).startswith(p.rstrip("/") + "/") for p in prefixes):
        out.append((str(PACKAGE_DIR), str(PACKAGE_DIR), False))  # an editable install
    out.append((spec.workdir, spec.workdir, True))
    out += list(spec.binds)
    if spec.socket_dir:  # the relays' sockets, and a kernel's (ipc transport)
        out.append((spec.socket_dir, spec.socket_dir, True))
    return out


def _view(spec: SandboxSpec) -> list[str]:
    argv = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / name
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            argv += ["--ro-bind", str(path), str(path)]
    for name in ETC_FILES + (NETWORK_ETC_FILES if spec.network else ()):
        argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    if not spec.tmp_dir:
        argv += ["--tmpfs", "/tmp"]
    for source, dest, writable in mounts(spec):
        argv += ["--bind" if writable else "--ro-bind", source, dest]
    return argv


def bwrap_argv(spec: SandboxSpec) -> list[str]:
    """The whole command the launcher runs (limits, account, namespaces, view, relay, the
    spec's command)."""
    inside = module_argv("inside")
    for relay in spec.relays:
        inside += ["--relay", f"{relay.port}={spec.socket_path(relay)}"]
    inside += ["--", *spec.command]
    bwrap = [bwrap_path(), "--unshare-all"]
    if spec.network:
        bwrap.append("--share-net")
    bwrap += ["--die-with-parent", "--new-session", "--hostname", "sandbox",
              "--proc", "/proc", "--dev", "/dev", *_view(spec),
              "--chdir", spec.chdir or spec.workdir, "--setenv", INSIDE_ENV, "1",
              "--remount-ro", "/", "--"]
    return [*_prlimit(spec.limits), *_setpriv(spec), *bwrap, *inside]
