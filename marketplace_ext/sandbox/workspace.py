"""The directories of one sandboxed run (or warm predict worker) and the spec that runs there.

Layout under the run's directory ``ROOT`` (``var/runs/run-<id>``, ``var/predict/w-...``)::

    ROOT/               0711 root   the marker every process of the run carries
    ROOT/bundle/        0750 root:<account's group>  the unpacked bundle, read-only inside
    ROOT/inputs/        0750 root:<account's group>  an uploaded input file, read-only inside
    ROOT/work/          0700 account  the working directory (cwd), read-write:
        <bundle entries>            each top-level entry of the bundle, bound read-only
        inputs/                     ROOT/inputs, bound read-only
        outputs/                    declared outputs are written here
        .market-run/                job, executed notebook, HTML, result, kernel runtime
    ROOT/tmp/           0700 account  /tmp (and /dev/shm) of the sandbox
    ROOT/sock/          0700 account  the relays' Unix sockets (made by the launcher)
    ROOT/spec.json      0600 root   the sandbox spec;  ROOT/runner.log: the run's output

Inside the sandbox the paths are the same; the sandbox sees ``work/`` (with the bundle and
inputs in it), ``tmp/`` as ``/tmp`` and ``sock/``, nothing else of ``ROOT``.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..envs import without_secrets
from .files import account_ids, give, owned_dir
from .limits import Limits
from .spec import MARKER_ENV, SandboxSpec, spark_relay

OUTPUT_DIR = "outputs"
INPUT_DIR = "inputs"
CONTROL_DIR = ".market-run"
RESERVED = frozenset({OUTPUT_DIR, INPUT_DIR, CONTROL_DIR})


def unpack_bundle(data: bytes, dest: Path) -> None:
    """Unpack a canonical bundle archive into ``dest``: trusted (it passed validation at
    publication) but still refused if a member would land outside ``dest`` or is a link."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            name = info.filename
            parts = PurePosixPath(name).parts
            if (not parts or name.startswith("/") or "\\" in name or ".." in parts
                    or re.match(r"^[A-Za-z]:", name) or "\x00" in name):
                raise ValueError(f"bundle member {name!r} would leave the working directory")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ValueError(f"bundle member {name!r} is a symbolic link")
            target = dest.joinpath(*parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as out, zf.open(info) as src:
                shutil.copyfileobj(src, out, 2**16)


def inside(path: str, root: Path) -> Path | None:
    """``root/path`` if ``path`` is relative and stays inside ``root`` (links resolved)."""
    p = PurePosixPath(path)
    if not path or p.is_absolute() or ".." in p.parts or "\\" in path:
        return None
    full = root.joinpath(*p.parts)
    try:
        full.resolve().relative_to(root.resolve())
    except ValueError:
        return None
    return full


def sandbox_env(extra: dict[str, str], marker: Path, runtime_dir: Path) -> dict[str, str]:
    """A sandboxed process's environment: the service's without its secrets, ``extra``
    (``SPARK_REMOTE``...) over it, the run's marker, and a home in the sandbox's /tmp."""
    env = without_secrets(dict(os.environ))
    env.update({str(k): str(v) for k, v in extra.items()})
    env[MARKER_ENV] = str(marker)
    env["JUPYTER_RUNTIME_DIR"] = str(runtime_dir)
    env["HOME"] = "/tmp"
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME"):
        env.pop(name, None)
    return env


@dataclass
class Workspace:
    """One run's (or worker's) directories, for the sandbox account ``account``."""

    root: Path
    account: str | None
    groups: tuple[str, ...] = ()

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"

    @property
    def inputs(self) -> Path:
        return self.root / INPUT_DIR

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def control(self) -> Path:
        return self.work / CONTROL_DIR

    @property
    def spec_file(self) -> Path:
        return self.root / "spec.json"

    @property
    def log_file(self) -> Path:
        return self.root / "runner.log"

    def create(self, bundle: bytes) -> None:
        """Make the layout with the bundle unpacked (blocking: run in a thread). The caller
        adds its own files under :attr:`control` and :attr:`inputs`, then calls
        :meth:`seal`."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True, mode=0o711)
        os.chmod(self.root, 0o711)  # the account traverses it to reach work/, tmp/, sock/
        self.bundle.mkdir(mode=0o755)
        unpack_bundle(bundle, self.bundle)
        for path in self.bundle.rglob("*"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        os.chmod(self.bundle, 0o755)
        self.inputs.mkdir(mode=0o755)
        self.work.mkdir(mode=0o700)
        (self.work / OUTPUT_DIR).mkdir()
        (self.control / "runtime").mkdir(parents=True)
        for entry in self.bundle.iterdir():
            if entry.name in RESERVED:  # cannot be bound over the run's own directories
                dest = self.work / entry.name
                if entry.is_dir():
                    shutil.copytree(entry, dest, dirs_exist_ok=True)
                else:
                    shutil.copyfile(entry, dest)

    def seal(self) -> None:
        """Hand the working directory and /tmp to the account (after the caller's files)."""
        ids = account_ids(self.account)
        give(self.work, ids)
        owned_dir(self.tmp, ids)
        if ids is not None:
            os.chmod(self.work, 0o700)
            # the bundle and the uploaded inputs are readable by the sandbox account's own
            # group only: run directories have guessable names, and another unit's users must
            # not read a product's files or a subscriber's upload from a terminal
            for top in (self.bundle, self.inputs):
                for path in (top, *top.rglob("*")):
                    if path.is_symlink():
                        continue
                    os.chown(path, 0, ids[1])
                    os.chmod(path, 0o750 if path.is_dir() else 0o640)

    def spec(self, command: list[str], env: dict[str, str], limits: Limits,
             read_only: list[str] = ()) -> SandboxSpec:
        """The sandbox running ``command`` here with ``env``: the bundle's entries and the
        inputs read-only over the working directory, ``read_only`` paths (a product
        environment) at their own names, the relay of ``env``'s ``SPARK_REMOTE``."""
        binds = [(str(entry), str(self.work / entry.name), False)
                 for entry in sorted(self.bundle.iterdir()) if entry.name not in RESERVED]
        binds.append((str(self.inputs), str(self.work / INPUT_DIR), False))
        binds += [(p, p, False) for p in read_only]
        relay = spark_relay(env.get("SPARK_REMOTE"))
        return SandboxSpec(
            command=list(command), workdir=str(self.work), account=self.account,
            groups=self.groups, binds=binds, tmp_dir=str(self.tmp),
            socket_dir=str(self.root / "sock"), relays=[relay] if relay else [],
            limits=limits)


_identities: dict[str | None, tuple[str | None, tuple[str, ...]]] = {}


def identity(unit: str | None) -> tuple[str | None, tuple[str, ...]]:
    """The sandbox account and groups of code run on ``unit``'s behalf (created on first
    use, blocking): ``gds-run-<unit>`` in ``gds-unit-<unit>``; ``gds-run`` for code run for no
    unit. Not root: (None, ()), the sandbox keeps the caller's account."""
    if os.geteuid() != 0:
        return None, ()
    if unit not in _identities:
        from .. import accounts

        name = accounts.sandbox_account(unit) if unit else "gds-run"
        groups = (accounts.unit_group(unit),) if unit else ()
        accounts.ensure_account(name, groups=groups)
        _identities[unit] = (name, groups)
    return _identities[unit]


def kernel_paths(kernel_name: str, env: dict[str, str]) -> list[str]:
    """What the sandbox must see, beyond the service's environment, to start the kernelspec
    ``kernel_name`` as found through ``env``'s ``JUPYTER_PATH``: its resource directory and the
    environment of its interpreter (a product environment under var/envs). Empty when the
    kernel is the service environment's own or unknown (papermill then names it)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    from jupyter_core.paths import jupyter_path

    extra = [os.path.join(p, "kernels") for p in env.get("JUPYTER_PATH", "").split(os.pathsep)
             if p]
    manager = KernelSpecManager(kernel_dirs=[*extra, *jupyter_path("kernels")])
    try:
        spec = manager.get_kernel_spec(kernel_name)
    except (NoSuchKernel, OSError, ValueError):
        return []
    return spec_paths(spec.resource_dir, spec.argv)


def spec_paths(resource_dir: str, argv: list[str]) -> list[str]:
    """A kernelspec's directory and its interpreter's environment, unless the service's own."""
    import sys

    paths = [resource_dir]
    if argv and os.path.isabs(argv[0]):
        paths.append(str(Path(argv[0]).parent.parent))  # .../venv/bin/python -> venv
    own = (sys.prefix.rstrip("/") + "/", "/usr/")
    return [p for p in dict.fromkeys(paths) if not (p.rstrip("/") + "/").startswith(own)]


def prepare_root(root: Path) -> str | None:
    """Create a work root (``var/runs``, ``var/predict``) that sandbox accounts may pass
    through (0711: bwrap mounts a run's directories as the account), and say what stops them
    from reaching it, if anything (a parent such as pytest's 0700 temporary root, or a home)."""
    root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return None  # the sandbox keeps the caller's account: nothing to pass
    os.chmod(root, 0o711)
    import sys

    from ..accounts import traversable_problem
    from .spec import PACKAGE_DIR

    # the run's directories, and the interpreter and package it runs from (read-only binds)
    for path in (root, Path(sys.prefix), PACKAGE_DIR):
        problem = traversable_problem(path)
        if problem:
            return f"the sandbox accounts cannot reach {path}: {problem}"
    return None
